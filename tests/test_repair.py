"""``verify --repair`` is a writer like any other: through the store's journal, killed at each step
of its batches it loses no tile, and it never deletes a tile file (adoption, ``quarantine/``).

The kills are SIGKILLs of a forked writer armed to die at a chosen step (as ``tests/test_store.py``
does for ingest's batches); ``tests/test_crash.py`` kills real ``python -m builder verify
--repair`` processes at moments found by polling the file system.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid

import numpy as np
import pytest
from PIL import Image

from builder.core import quarantine, store
from builder.core.layout import JOURNAL_NAME, bucket_name
from builder.core.library import Library
from builder.ops.verify import QUICK_THUMBNAIL_SAMPLE, verify_library
from tests.support.campaigns.crash import (
    bucket_files,
    build_library,
    committed_rows,
    misfile,
    tile_copies,
)
from tests.support.cli import run_cli
from tests.support.images import png_bytes, real_crops
from tests.support.kill import die_on_call, die_on_unlink
from tests.support.libraries import copy_library

MISFILED = 300


def _arm(step: str) -> None:
    """Make this (child) process SIGKILL itself at ``step`` of a repair's batches (64 moves each)."""
    if step == "journal":  # batch 1's journal written, no file linked yet
        die_on_call(store, "_link_or_move", 1)
    elif step == "linking":  # 29 files of batch 1 linked into their new folders, rows not committed
        die_on_call(store, "_link_or_move", 30)
    elif step == "committed":  # batch 1's rows committed, every old name still there
        die_on_call(store, "settle_relocation", 1)
    elif step == "settling":  # batch 1 committed, 29 old names dropped
        die_on_call(store, "settle_relocation", 30)
    elif step == "journal_left":  # batch 1 wholly done but its journal
        die_on_unlink(lambda path: path.name == JOURNAL_NAME)
    elif step == "third_batch":  # two batches done, the third not begun
        die_on_call(store, "apply_repairs", 3)
    elif step == "quarantine_committed":  # rows dropped, their files not yet moved
        die_on_call(store, "settle_quarantine", 1)
    elif step == "quarantine_moving":  # rows dropped, 29 files moved into quarantine/
        die_on_call(store, "settle_quarantine", 30)
    else:
        raise ValueError(step)


def _repair_in_a_child(root: pathlib.Path, step: str) -> int:
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            with Library.open(root) as lib:
                _arm(step)
                verify_library(lib, deep=False, repair=True, workers=1, progress=False)
        finally:
            os._exit(3)  # reached only if the kill did not happen
    _pid, status = os.waitpid(pid, 0)
    return status


@pytest.fixture(scope="module")
def stored_library(tmp_path_factory) -> tuple[pathlib.Path, set[str]]:
    """A library of 320 tiles (copy it before changing it: :func:`copy_library`)."""
    root = tmp_path_factory.mktemp("repair") / "mosaic_library"
    rows = build_library(root, 320, seed=21)
    assert len(rows) >= MISFILED
    return root, set(rows)


@pytest.fixture
def misfiled_library(stored_library, tmp_path) -> tuple[pathlib.Path, set[str]]:
    """A copy of ``stored_library`` with 300 tiles moved (file and row) into the wrong bucket."""
    base, expected = stored_library
    root = tmp_path / "mosaic_library"
    copy_library(base, root, link_tiles=True)
    misfile(root, MISFILED, seed=5)
    return root, expected


def _check_no_tile_lost(root: pathlib.Path, expected: set[str]) -> None:
    """What a user finds after the kill, then after the next writer's open (replay)."""
    copies = tile_copies(root)
    assert [t for t in expected if not copies.get(t)] == []  # every tile has a file somewhere
    rows = committed_rows(root)
    assert [i for i, (b, _h) in rows.items() if not (root / bucket_name(b) / f"{i}.png").is_file()] == []
    with Library.open(root) as lib:  # replay
        assert list(lib.temp_dir.iterdir()) == []
    rows = committed_rows(root)
    assert set(rows) == expected
    assert bucket_files(root) == {(b, f"{i}.png") for i, (b, _h) in rows.items()}


@pytest.mark.parametrize("step", ["journal", "linking", "committed", "settling", "journal_left", "third_batch"])
def test_a_repair_of_300_wrong_bucket_rows_killed_at_each_step_loses_no_tile(misfiled_library, step):
    root, expected = misfiled_library
    status = _repair_in_a_child(root, step)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {step}: {status}"
    if step not in ("third_batch",):
        assert (root / "temp" / JOURNAL_NAME).exists()
    _check_no_tile_lost(root, expected)
    with Library.open(root) as lib:  # the next repair finishes the job
        verify_library(lib, deep=False, repair=True, workers=1, progress=False)
        after = verify_library(lib, deep=True, workers=1, progress=False)
    assert after.ok, after.summary()
    assert set(committed_rows(root)) == expected
    assert not (root / "quarantine").exists()  # nothing had to be put aside


def _plant_duplicates(root: pathlib.Path, n: int) -> set[str]:
    """``n`` copies of stored tiles under new ids, in their own buckets, with rows: duplicates."""
    conn = sqlite3.connect(root / "tiles.db")
    copies = set()
    try:
        with conn:
            for tile_id, bucket in conn.execute("SELECT id, bucket_id FROM tiles ORDER BY rowid LIMIT ?", (n,)).fetchall():
                new = str(uuid.uuid4())
                shutil.copyfile(root / bucket_name(bucket) / f"{tile_id}.png", root / bucket_name(bucket) / f"{new}.png")
                conn.execute("INSERT INTO tiles (id, bucket_id, filepath, phash, mean_l, mean_a, mean_b, source) "
                             "SELECT ?, bucket_id, ?, phash, mean_l, mean_a, mean_b, 'copy' FROM tiles WHERE id = ?",
                             (new, f"{root.name}/{bucket_name(bucket)}/{new}.png", tile_id))
                copies.add(new)
    finally:
        conn.close()
    return copies


@pytest.mark.parametrize("step", ["quarantine_committed", "quarantine_moving"])
def test_a_repair_moving_duplicates_to_quarantine_killed_midway_loses_nothing(stored_library, tmp_path, step):
    base, originals = stored_library
    root = tmp_path / "mosaic_library"
    copy_library(base, root, link_tiles=True)
    duplicates = _plant_duplicates(root, 70)
    status = _repair_in_a_child(root, step)
    assert os.WIFSIGNALED(status), status
    copies = tile_copies(root)
    assert [t for t in originals | duplicates if not copies.get(t)] == []
    with Library.open(root) as lib:  # replay finishes the committed batch's moves
        assert verify_library(lib, deep=False, repair=True, workers=1, progress=False).repaired["duplicate_phash"] <= 70
        assert verify_library(lib, deep=True, workers=1, progress=False).ok
    assert set(committed_rows(root)) == originals
    held = {pathlib.Path(item.path).name[:-4] for item in quarantine.list_items(root)}
    assert held == duplicates  # every duplicate's file kept, in quarantine
    assert all(item.reason == "duplicate" for item in quarantine.list_items(root))


def test_rows_deleted_behind_the_librarys_back_come_back_with_their_ids(stored_library, tmp_path):
    base, _expected = stored_library
    root = tmp_path / "mosaic_library"
    copy_library(base, root, link_tiles=True)
    columns = "id, bucket_id, filepath, phash, mean_l, mean_a, mean_b"
    conn = sqlite3.connect(root / "tiles.db")
    before = {r[0]: r for r in conn.execute(f"SELECT {columns} FROM tiles")}
    gone = [r[0] for r in conn.execute("SELECT id FROM tiles ORDER BY random() LIMIT 100")]
    with conn:
        conn.executemany("DELETE FROM tiles WHERE id = ?", [(i,) for i in gone])
    conn.close()
    found = run_cli("verify", "--quick", "--library", root)
    assert found.returncode == 1 and "orphan_file 100" in found.stdout, found.stdout
    fixed = run_cli("verify", "--repair", "--quick", "--library", root, "--workers", "2")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "adopted 100 files without a row" in fixed.stdout
    conn = sqlite3.connect(root / "tiles.db")
    after = {r[0]: r for r in conn.execute(f"SELECT {columns} FROM tiles")}
    sources = dict(conn.execute("SELECT id, source FROM tiles").fetchall())
    conn.close()
    assert after == before  # same ids, buckets, paths, hashes and LAB, to the last bit
    assert {sources[i] for i in gone} == {"adopted"}
    assert not (root / "quarantine").exists()


def _tile_png(bluemarble, seed: int) -> bytes:
    return png_bytes(real_crops(bluemarble, 1, seed=seed)[0])


def test_what_cannot_be_adopted_goes_to_quarantine_with_its_reason(tmp_path, bluemarble):
    root = tmp_path / "mosaic_library"
    with Library.create(root, cap=2) as lib:
        from builder.ops.ingest import ingest

        folder = tmp_path / "in"
        folder.mkdir()
        for i, crop in enumerate(real_crops(bluemarble, 12, seed=31)):
            crop.save(folder / f"{i}.png")
        ingest(lib, [folder], workers=1, progress=False)
    rows = committed_rows(root)
    (tile_id, (bucket, _h)), (other_id, (other_bucket, _h2)) = list(rows.items())[:2]
    folder = root / bucket_name(bucket)
    planted = {
        "subfolder": folder / "holiday",
        "bad_name": folder / "notes.txt",
        "bad_image": folder / f"{uuid.uuid4()}.png",
        "not_a_file": folder / f"{uuid.uuid4()}.png",
        "copy": root / bucket_name((other_bucket + 7) % 5000) / f"{other_id}.png",
        "duplicate": folder / f"{uuid.uuid4()}.png",
    }
    planted["subfolder"].mkdir()
    (planted["subfolder"] / "a.png").write_bytes(b"x")
    planted["bad_name"].write_text("my notes")
    small = Image.new("RGB", (100, 100), (9, 9, 9))
    planted["bad_image"].write_bytes(png_bytes(small))
    os.symlink("/etc/passwd", planted["not_a_file"])
    planted["copy"].parent.mkdir(exist_ok=True)
    shutil.copyfile(root / bucket_name(other_bucket) / f"{other_id}.png", planted["copy"])
    shutil.copyfile(folder / f"{tile_id}.png", planted["duplicate"])  # same pixels, new id: a duplicate
    with Library.open(root) as lib:
        assert verify_library(lib, workers=1, progress=False).counts == {"orphan_file": len(planted)}
        fixed = verify_library(lib, repair=True, workers=1, progress=False)
        assert fixed.repaired["orphan_file"] == len(planted) and fixed.adopted == 0
        assert fixed.quarantined == dict.fromkeys(planted, 1)
    items = {item.reason: item for item in quarantine.list_items(root)}
    assert set(items) == set(planted)
    for reason, path in planted.items():
        moved = root / items[reason].path
        assert not os.path.lexists(path) and os.path.lexists(moved), reason
        assert items[reason].origin == f"{path.parent.name}/{path.name}" and items[reason].detail
    assert (root / items["subfolder"].path / "a.png").read_bytes() == b"x"  # moved whole
    assert os.readlink(root / items["not_a_file"].path) == "/etc/passwd"  # the link moved, never followed
    assert "100x100" in items["bad_image"].detail
    assert set(committed_rows(root)) == set(rows)  # every stored tile kept
    listed = run_cli("verify", "--library", root)
    assert listed.returncode == 0 and "quarantine/ holds 6 entries" in listed.stdout, listed.stdout
    for item in items.values():
        assert f"  {item.path}: {item.reason}" in listed.stdout
    assert "verify --empty-quarantine" in listed.stdout
    emptied = run_cli("verify", "--empty-quarantine", "--library", root)
    assert emptied.returncode == 0 and "emptied quarantine/: 6 entries deleted" in emptied.stdout, emptied.stdout
    assert not (root / "quarantine").exists() and list((root / "temp").iterdir()) == []
    assert set(committed_rows(root)) == set(rows)


def test_an_orphan_tile_whose_bucket_is_full_is_kept_in_quarantine(tmp_path, bluemarble):
    root = tmp_path / "mosaic_library"
    with Library.create(root, cap=1) as lib:
        from builder.assign.pipeline import Candidate, Pipeline

        with Pipeline(lib, workers=1) as pipe:
            first = pipe.process([Candidate("a", data=_tile_png(bluemarble, 1))])[0]
    tile = real_crops(bluemarble, 1, seed=1)[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # same colour, other hash
    stray = root / bucket_name(first.bucket_id) / f"{uuid.uuid4()}.png"
    stray.write_bytes(png_bytes(tile))
    with Library.open(root) as lib:
        report = verify_library(lib, repair=True, workers=1, progress=False)
    assert report.quarantined == {"bucket_full": 1} and report.adopted == 0
    (item,) = quarantine.list_items(root)
    assert item.reason == "bucket_full" and (root / item.path).read_bytes() == png_bytes(tile)


def test_a_row_whose_file_went_to_another_bucket_gets_it_back(make_library, bluemarble):
    """What an interrupted move used to leave: the row in one bucket, its file in another."""
    lib = make_library()
    from builder.assign.pipeline import Candidate, Pipeline

    with Pipeline(lib, workers=1) as pipe:
        out = pipe.process([Candidate(str(i), data=_tile_png(bluemarble, 40 + i)) for i in range(3)])
    moved = out[0]
    elsewhere = lib.root / bucket_name((moved.bucket_id + 1) % 5000)
    elsewhere.mkdir(exist_ok=True)
    os.replace(lib.tile_path(moved.bucket_id, moved.tile_id), elsewhere / f"{moved.tile_id}.png")
    before = dict(lib.conn.execute("SELECT id, phash FROM tiles").fetchall())
    report = verify_library(lib, repair=True, workers=1, progress=False)
    assert report.counts == {"missing_file": 1, "orphan_file": 1}
    assert dict(lib.conn.execute("SELECT id, phash FROM tiles").fetchall()) == before
    assert lib.tile_path(moved.bucket_id, moved.tile_id).is_file()
    assert verify_library(lib, workers=1, progress=False).ok


def test_repair_refuses_a_quarantine_that_is_a_symlink(make_library, tmp_path):
    lib = make_library()
    (lib.root / "bucket_0001").mkdir()
    (lib.root / "bucket_0001" / "junk.txt").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, lib.root / "quarantine")
    from builder.core.errors import UnsafePath

    with pytest.raises(UnsafePath, match="quarantine is a symlink"):
        verify_library(lib, repair=True, workers=1, progress=False)
    assert (lib.root / "bucket_0001" / "junk.txt").exists() and list(outside.iterdir()) == []


# ----------------------------------------------------------------- the mosaic's thumbnail cache


@pytest.fixture(scope="module")
def cached_base(tmp_path_factory, bluemarble) -> pathlib.Path:
    from builder.assign.pipeline import Candidate, Pipeline

    root = tmp_path_factory.mktemp("cached") / "mosaic_library"
    with Library.create(root) as lib, Pipeline(lib, workers=1) as pipe:
        pipe.process([Candidate(str(i), data=png_bytes(c)) for i, c in enumerate(real_crops(bluemarble, 40, seed=17))])
    return root


@pytest.fixture
def cached_library(cached_base, tmp_path):
    """A library of 40 tiles whose thumbnails are in the mosaic cache (the store put them there)."""
    root = tmp_path / "mosaic_library"
    copy_library(cached_base, root, link_tiles=True)
    with Library.open(root) as lib:
        yield lib


def _cache_pixels(lib) -> np.memmap:
    from builder.core.thumbcache import ThumbnailCache

    cache = ThumbnailCache.of(lib.root)
    return np.memmap(cache.pixels_path, dtype=np.uint8, mode="r+").reshape(-1, 64, 64, 3)


def _fresh_thumbnails(lib, ids) -> dict[str, np.ndarray]:
    from builder.core.thumbcache import tile_thumbnail

    buckets = dict(lib.conn.execute("SELECT id, bucket_id FROM tiles"))
    return {i: tile_thumbnail(lib, buckets[i], i) for i in ids}


def _table_thumbnails(table) -> dict[str, np.ndarray]:
    return {table.tile_id(r): np.asarray(table.thumbs[table.thumb_rows[r]]) for r in range(len(table))}


def _swap_rows(lib) -> tuple[list[str], set[str]]:
    """Swap the cached thumbnails of tiles 3 and 4 (keys intact) and set tile 5's to a flat colour."""
    ids = [r[0] for r in lib.conn.execute("SELECT id FROM tiles ORDER BY rowid")]
    pixels = _cache_pixels(lib)
    assert len(pixels) == len(ids)  # the store cached one row per tile, in commit order
    a, b = pixels[3].copy(), pixels[4].copy()
    pixels[3], pixels[4], pixels[5] = b, a, 200
    pixels.flush()
    return ids, {ids[3], ids[4], ids[5]}


def test_a_cache_with_swapped_rows_is_caught_by_verify_and_repaired(cached_library):
    lib = cached_library
    ids, damaged = _swap_rows(lib)
    report = verify_library(lib, workers=1, progress=False)
    assert {p.tile_id for p in report.problems if p.kind == "bad_thumbnail"} == damaged
    assert report.counts == {"bad_thumbnail": 3} and report.thumbnails_checked == len(ids)
    fixed = verify_library(lib, repair=True, workers=1, progress=False)
    assert fixed.repaired == {"bad_thumbnail": 3}
    assert verify_library(lib, workers=1, progress=False).ok  # the rows written win over the wrong ones


def test_a_mosaic_never_uses_a_row_verify_found_wrong(cached_library):
    from builder.core.thumbcache import ThumbnailCache
    from builder.mosaic.tiletable import load_tile_table

    lib = cached_library
    ids, damaged = _swap_rows(lib)
    assert not verify_library(lib, workers=1, progress=False).ok  # read-only: marks the rows, repairs nothing
    assert ThumbnailCache.of(lib.root).bad_rows().tolist() == [3, 4, 5]
    table = load_tile_table(lib, progress=False)
    fresh = _fresh_thumbnails(lib, ids)
    used = _table_thumbnails(table)
    assert set(used) == set(ids) and all(np.array_equal(t, fresh[i]) for i, t in used.items())


def test_quick_verify_samples_the_cache(cached_library):
    lib = cached_library
    pixels = _cache_pixels(lib)
    pixels[:] = np.random.default_rng(0).integers(0, 256, pixels.shape, dtype=np.uint8)  # every row random
    pixels.flush()
    report = verify_library(lib, deep=False, workers=1, progress=False)
    assert report.thumbnails_checked == min(QUICK_THUMBNAIL_SAMPLE, 40)
    assert report.counts["bad_thumbnail"] == report.thumbnails_checked
    fixed = verify_library(lib, deep=False, repair=True, workers=1, progress=False)  # what its own sample found
    assert fixed.repaired["bad_thumbnail"] == fixed.counts["bad_thumbnail"] > 0
    full = verify_library(lib, deep=True, workers=1, progress=False)
    assert full.counts == {"bad_thumbnail": 40 - fixed.repaired["bad_thumbnail"]}


def test_a_mosaic_never_draws_a_swapped_row_it_can_see_without_verify(cached_library, caplog, monkeypatch):
    """No verify run: the load compares each cached thumbnail's mean colour with its tile's LAB.

    The load's random spot checks are turned off: they would catch a swapped row one time in
    seven by themselves (and rebuild the whole cache), hiding whether the colour check did."""
    from builder.mosaic import tiletable
    from builder.mosaic.tiletable import load_tile_table

    monkeypatch.setattr(tiletable, "SPOT_CHECKS", 0)
    lib = cached_library
    labs = {r[0]: r[1:] for r in lib.conn.execute("SELECT id, mean_l, mean_a, mean_b FROM tiles ORDER BY rowid")}
    ids = list(labs)
    # Two tiles of clearly different colours, their cached rows swapped.
    far = max(range(1, len(ids)), key=lambda k: np.linalg.norm(np.subtract(labs[ids[0]], labs[ids[k]])))
    pixels = _cache_pixels(lib)
    a, b = pixels[0].copy(), pixels[far].copy()
    pixels[0], pixels[far] = b, a
    pixels.flush()
    table = load_tile_table(lib, progress=False)
    fresh = _fresh_thumbnails(lib, ids)
    assert all(np.array_equal(t, fresh[i]) for i, t in _table_thumbnails(table).items())
    assert any("2 thumbnails disagree with their tiles" in m for m in caplog.messages)
    again = load_tile_table(lib, progress=False)  # the fresh rows were appended: they win from now on
    assert all(np.array_equal(t, fresh[i]) for i, t in _table_thumbnails(again).items())


def test_a_full_verify_decodes_each_tile_once(cached_library, monkeypatch):
    import builder.ops.inspection as verify

    calls = []
    real = verify.decode_tile
    monkeypatch.setattr(verify, "decode_tile", lambda data: calls.append(1) or real(data))
    report = verify_library(cached_library, deep=True, workers=1, progress=False)
    assert report.ok and report.rows == 40
    assert len(calls) == 40 and report.thumbnails_checked == 40  # LAB, pHash, validity and thumbnail: one decode


def test_quarantine_is_invisible_to_every_reader(cached_library, tmp_path):
    """Valid tiles in quarantine/ (duplicates a repair took out) count nowhere: stats, the build,
    the report, the mosaic's tiles and the card's load_bucket see the rows' tiles only."""
    from builder.mosaic.tiletable import load_tile_table
    from builder.ops.report import render_report
    from builder.publish import build_staging
    from tests.support.card import card_snippet

    lib = cached_library
    rows = committed_rows(lib.root)
    tile_id, (bucket, _h) = next(iter(rows.items()))
    folder = lib.root / bucket_name(bucket)
    for _ in range(2):
        shutil.copyfile(folder / f"{tile_id}.png", folder / f"{uuid.uuid4()}.png")
    verify_library(lib, repair=True, workers=1, progress=False)
    held = quarantine.list_items(lib.root)
    assert len(held) == 2 and all(item.path.endswith(".png") for item in held)
    in_bucket = sum(1 for b, _h in rows.values() if b == bucket)
    assert lib.stats()["tiles"] == len(rows)
    assert set(load_tile_table(lib, progress=False).ids.tolist()) == set(rows)
    report = render_report(lib, tmp_path / "report", threads=1)
    assert {e.bucket_id: e.count for e in report.buckets}[bucket] == in_bucket
    lib.close()
    import pyarrow.parquet as pq

    staging = tmp_path / "staging"
    build_staging(lib.root, staging)
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in staging.glob("data/*.parquet")) == len(rows)
    snippet = card_snippet("load_bucket").replace("bucket_id=42", f"bucket_id={bucket}")
    res = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=lib.root.parent)
    assert res.returncode == 0 and res.stdout.strip() == f"({in_bucket}, 256, 256, 3)", res.stderr
