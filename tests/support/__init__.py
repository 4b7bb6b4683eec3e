"""Support code shared by the tests and ``bench/``: servers the tests start on 127.0.0.1."""
