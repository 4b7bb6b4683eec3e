"""The library's layout diagram (``builder.core.layout``'s docstring) is complete: every name the
layout module defines for a library is drawn in it, and every name a real library holds at its
top level, through a writer's life, a harvest, a repair and a recover, matches a line of it."""

from __future__ import annotations

import re

import builder.core.layout as layout
from builder.acquire.harvest import harvest
from builder.core.layout import bucket_name
from builder.core.library import Library
from builder.ops.recover import recover_library
from builder.ops.verify import verify_library
from tests.support.libraries import build_published_library


def diagram() -> list[str]:
    """The diagram's lines under ``mosaic_library/`` (up to the blank line that ends it)."""
    doc = layout.__doc__
    return doc[doc.index("mosaic_library/\n"):].split("\n\n")[0].splitlines()[1:]


def diagram_entries() -> dict[str, re.Pattern]:
    """``{name as drawn: pattern}`` of the diagram's entries: its lines indented by six spaces
    (deeper lines continue a description).  ``XXXX`` stands for four digits, ``<...>`` for any text."""
    names = [line.split()[0] for line in diagram() if re.match(r"^ {6}\S", line)]
    patterns = {}
    for name in names:
        text = re.escape(name.rstrip("/")).replace("XXXX", r"\d{4}")
        patterns[name] = re.compile("^" + re.sub(r"<[^>]*>", ".+", text) + "$")
    return patterns


def test_every_name_the_layout_module_defines_is_drawn():
    """Each ``*_NAME``, ``*_DIR`` and ``*_PREFIX`` string of builder.core.layout (names inside a library:
    its paths of the project are Path objects) is in the diagram, as an entry or, for a name
    inside a folder (``journal.json`` in ``temp/``), in its entry's description."""
    text = "\n".join(diagram())
    defined = {key: value for key, value in vars(layout).items()
               if key.endswith(("_NAME", "_DIR", "_PREFIX")) and isinstance(value, str)}
    assert {"LOCK_NAME", "CACHE_DIR", "INFLIGHT_DIR", "QUARANTINE_DIR", "TEMP_DIR", "DB_NAME"} <= set(defined)
    missing = {key: value for key, value in defined.items() if value not in text}
    assert not missing, f"names defined in builder.core.layout but not in its diagram: {missing}"


def _undrawn(root, patterns) -> set[str]:
    return {name for name in (p.name for p in root.iterdir()) if not any(p.match(name) for p in patterns.values())}


def test_every_name_a_library_holds_is_in_the_diagram(tmp_path, bluemarble):
    patterns = diagram_entries()
    root = build_published_library(tmp_path / "mosaic_library", bluemarble, n_ingest=12, n_harvest=4)
    seen: set[str] = set()
    with Library.open(root) as lib:
        seen |= {p.name for p in root.iterdir()}  # a writer's lock, the WAL, the ingest's thumbnails
        harvest(lib, "earth", plan="all", zoom=5, threads=2, batch=8, max_tiles=4, seed=1, progress=False, workers=1)
        (root / bucket_name(lib.conn.execute("SELECT bucket_id FROM tiles").fetchone()[0]) / "notes.txt").write_text("x")
        verify_library(lib, repair=True, workers=1, progress=False)  # the stray file goes to quarantine/
        seen |= {p.name for p in root.iterdir()}
        assert not _undrawn(root, patterns)
    recover_library(root, workers=1, progress=False)  # sets the old tiles.db aside
    seen |= {p.name for p in root.iterdir()}
    assert not _undrawn(root, patterns)
    expected = {"tiles.db", "tiles.db-wal", "centroids.npy", "temp", ".lock", ".cache", "inflight", "quarantine"}
    assert expected <= seen and any(name.startswith(layout.BROKEN_DB_PREFIX) for name in seen)
    assert not {name for name in seen if not any(p.match(name) for p in patterns.values())}
