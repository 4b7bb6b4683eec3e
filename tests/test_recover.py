"""``recover``: a way back from a damaged ``tiles.db`` (truncated, a damaged page, not SQLite).

Every tile comes back with its id; given the release, with its provenance; the damaged file is
kept aside, never overwritten; killed anywhere, ``recover`` run again completes
(``tests/test_crash.py`` kills real runs at moments found by polling the file system).
"""

from __future__ import annotations

import random
import sqlite3

import numpy as np
import pytest

from builder.core.errors import UsageError
from builder.core.library import Library
from builder.ops.recover import readable_rows, recover_library
from tests.support.campaigns.crash import (
    bucket_files,
    build_library,
    committed_rows,
    damage_db,
    provenance,
)
from tests.support.cli import run_cli
from tests.support.libraries import copy_library


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A library of about 200 tiles (some of them synthetic) and its release (a staging folder)."""
    from builder.ops.synthesize import synthesize

    base = tmp_path_factory.mktemp("recover")
    root = base / "mosaic_library"
    build_library(root, 200, seed=9)
    with Library.open(root) as lib:
        made = synthesize(lib, per_bucket=1, buckets=list(range(0, 5000, 500)), progress=False)
        with lib.conn:  # a fetch ledger, as a harvest leaves one
            lib.conn.executemany("INSERT INTO fetched (source, z, x, y, status, region) VALUES (?, ?, ?, ?, ?, ?)",
                                 [("earth", 6, x, 9, "none" if x % 2 else "rejected:blank", "test") for x in range(7)])
            lib.conn.execute("INSERT INTO meta (key, value) VALUES ('note', 'kept')")
    assert made.made >= 5
    res = run_cli("build", "--library", root, "--output", base / "release")
    assert res.returncode == 0, res.stderr
    return root, base / "release"


@pytest.fixture
def library(released, tmp_path):
    base, release = released
    root = tmp_path / "mosaic_library"
    copy_library(base, root, link_tiles=True)
    return root, release, provenance(root)


def _checkpoint(root) -> None:
    conn = sqlite3.connect(root / "tiles.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def test_recover_after_truncating_tiles_db_gives_back_every_tile_with_its_provenance(library):
    root, release, before = library
    rows_before = committed_rows(root)
    _checkpoint(root)
    (root / "tiles.db").write_bytes((root / "tiles.db").read_bytes()[:3 * 4096 + 100])  # truncated
    damaged = (root / "tiles.db").read_bytes()
    stats = run_cli("stats", "--library", root)
    assert stats.returncode == 2 and len(stats.stderr.splitlines()) == 1
    assert f"`python -m builder recover --library {root}`" in stats.stderr
    res = run_cli("recover", "--library", root, "--release", release)
    assert res.returncode == 0, res.stdout + res.stderr
    n = len(before)
    assert f"recovered {n} tiles" in res.stdout and f"{n} with provenance from the release" in res.stdout
    assert provenance(root) == before  # source, z/x/y, region, synthetic flag, derived_from
    assert committed_rows(root) == rows_before  # same ids, buckets, hashes
    (aside,) = root.glob("tiles.db.broken-*Z")
    assert aside.read_bytes() == damaged  # kept as it was
    assert run_cli("verify", "--library", root).returncode == 0
    with Library.open(root, readonly=True) as lib:  # the fetch ledger and meta came back from the release
        assert lib.conn.execute("SELECT COUNT(*) FROM fetched WHERE region = 'test'").fetchone()[0] == 7
        assert lib.cap == 100 and dict(lib.conn.execute("SELECT key, value FROM meta"))["note"] == "kept"
    assert sum(p[5] for p in before.values()) >= 5  # synthetic tiles among them, flagged again


def test_recover_without_a_release_salvages_what_sqlite_can_read(library):
    """One damaged page: most rows read back from the damaged file; the rest adopted."""
    root, _release, before = library
    rows_before = committed_rows(root)
    _checkpoint(root)
    damage_db(root, "page", random.Random(4))
    report = recover_library(root, workers=1, progress=False)
    assert report.tiles == len(before) == report.from_salvage + report.adopted
    assert report.from_release == 0 and report.from_salvage > len(before) // 2
    assert committed_rows(root) == rows_before
    after = provenance(root)
    assert sum(after[t] == before[t] for t in before) == report.from_salvage
    assert {after[t][0] for t in before if after[t] != before[t]} <= {"adopted"}
    assert "tiles" in report.salvaged and report.aside in report.summary()


def test_recover_of_a_file_that_is_not_sqlite_adopts_every_tile(library):
    root, _release, before = library
    rows_before = committed_rows(root)
    (root / "tiles.db").write_bytes(b"this is not a database" * 200)
    for suffix in ("-wal", "-shm"):
        (root / f"tiles.db{suffix}").unlink(missing_ok=True)
    report = recover_library(root, workers=2, progress=False)
    assert report.adopted == len(before) and report.salvaged == {}
    assert committed_rows(root) == rows_before
    assert {p[0] for p in provenance(root).values()} == {"adopted"}
    with Library.open(root, readonly=True) as lib:
        assert lib.cap == 100 and lib.stats()["tiles"] == len(before)


def test_recover_keeps_every_damaged_file_it_sets_aside(library):
    root, _release, before = library
    for _ in range(2):
        (root / "tiles.db").write_bytes(b"garbage" * 1000)
        recover_library(root, workers=1, progress=False)
    asides = sorted(p.name for p in root.glob("tiles.db.broken-*") if not p.name.endswith(("-wal", "-shm")))
    assert len(asides) == 2 and all((root / a).read_bytes() == b"garbage" * 1000 for a in asides)
    assert set(committed_rows(root)) == set(before)


def test_recover_refuses_a_release_of_another_library(library, tmp_path):
    root, release, _before = library
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "centroids.npy", np.load(release / "centroids.npy") + 1.0)
    (other / "tiles.db").write_bytes((release / "tiles.db").read_bytes())
    with pytest.raises(UsageError, match="other centroids"):
        recover_library(root, release=other, workers=1, progress=False)
    assert not list(root.glob("tiles.db.broken-*"))  # nothing was touched


def test_an_interrupted_recover_is_named_by_every_command(library):
    root, _release, _before = library
    (root / "tiles.db.recovered").write_bytes(b"")
    res = run_cli("stats", "--library", root)
    assert res.returncode == 2 and res.stderr.strip() == (
        f"error: a recover of {root} was interrupted: run `python -m builder recover --library {root}` to finish it")


def test_a_tile_stored_twice_gets_one_row_and_the_copy_goes_to_quarantine(library):
    root, _release, before = library
    _checkpoint(root)
    tile_id, (bucket, _h) = next(iter(committed_rows(root).items()))
    stray = root / f"bucket_{(bucket + 1) % 5000:04d}" / f"{tile_id}.png"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes((root / f"bucket_{bucket:04d}" / f"{tile_id}.png").read_bytes())
    (root / "tiles.db").write_bytes(b"garbage" * 1000)
    report = recover_library(root, workers=1, progress=False)
    assert set(committed_rows(root)) == set(before) and report.tiles == len(before)
    assert "copy 1" in report.repair or "duplicate 1" in report.repair
    assert not stray.exists() and len(list((root / "quarantine").rglob(f"{tile_id}.png"))) == 1
    assert bucket_files(root) == {(b, f"{i}.png") for i, (b, _h) in committed_rows(root).items()}


def test_readable_rows_steps_over_a_damaged_page(tmp_path):
    """Rows before and after a damaged stretch of a table come back."""
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (a TEXT)")
    with conn:
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 200,)] * 2000)  # about 100 leaf pages
    conn.close()
    with open(path, "r+b") as fh:
        fh.seek(4096 * 50)
        fh.write(b"\xff" * 4096)
    conn = sqlite3.connect(path)
    rows = list(readable_rows(conn, "t", ["a"]))
    assert 1800 <= len(rows) < 2000
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("SELECT COUNT(a) FROM t").fetchone()
