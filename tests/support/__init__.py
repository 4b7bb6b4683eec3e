"""What the tests and ``bench/`` share: paths, image and CLI helpers, libraries built from
recipes, servers the tests start on 127.0.0.1 (tiles, a local Hugging Face Hub), the SIGKILL
campaigns and the process-group plumbing they kill with.  Fixtures live in ``tests/conftest.py``;
nothing here is a test, and no test module is imported by another."""
