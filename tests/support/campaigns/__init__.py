"""SIGKILL campaigns against real ``python -m builder`` writers, shared by the tests (short runs)
and ``bench/kill_campaign.py`` (long runs with figures)."""
