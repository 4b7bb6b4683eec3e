"""Where the checkout under test and its shipped data are (one ``REPO`` for tests and ``bench/``)."""

from __future__ import annotations

from pathlib import Path

# The checkout under test: pyproject.toml's `pythonpath` puts it first on sys.path, and tests
# that start `python -m builder` give it to the child as PYTHONPATH.
REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
BLUEMARBLE = DATA / "bluemarble_5400x2700.jpg"
