"""The commit protocol (``builder.core.store``): a real writer process SIGKILLed at each step of a
batch's store, then the library checked as a user finds it (``tests.support.campaigns.crash``'s checks)
and the batch found either wholly stored or wholly gone, as the step dictates.

``tests/test_crash.py`` kills real CLI runs at random moments; this pins each step instead.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal

import pytest

from builder.assign.pipeline import Candidate, Pipeline
from builder.core import store
from builder.core.layout import JOURNAL_NAME
from builder.core.library import Library
from tests.support.campaigns.crash import Figures, bucket_files, check_after_kill, committed_rows
from tests.support.images import one_bucket_pngs, png_bytes, real_crops
from tests.support.kill import die_on_unlink, sigkill_self

BATCH = 3


def _arm(step: str) -> dict:
    """Patch this (child) process so it SIGKILLs itself at ``step``; returns ``process`` kwargs."""
    if step == "staged":  # every tile in temp/, before the journal is written
        store.write_journal = lambda *a, **k: sigkill_self()
    elif step in ("journal", "renamed"):  # journal on disk; before the first / the last rename
        renames_before_kill = 0 if step == "journal" else BATCH - 1
        real_replace, done = os.replace, []

        def replace(src, dst, *args, **kwargs):
            into_bucket = pathlib.Path(dst).parent.name.startswith("bucket_")
            if into_bucket and len(done) == renames_before_kill:
                sigkill_self()
            result = real_replace(src, dst, *args, **kwargs)
            if into_bucket:  # counted once done: a rename retried after making the bucket's folder counts once
                done.append(dst)
            return result

        os.replace = replace
    elif step == "inserted":  # rows inserted, transaction not committed
        return {"on_commit": lambda conn, outcomes: sigkill_self()}
    elif step == "committed":  # committed, journal not yet removed
        die_on_unlink(lambda path: path.name == JOURNAL_NAME)
    elif step == "evicting":  # committed, an evicted tile's file not yet removed
        die_on_unlink(lambda path: path.parent.name.startswith("bucket_"))
    else:
        raise ValueError(step)
    return {}


def _store_batch_in_a_child(root: pathlib.Path, payloads: list[bytes], step: str) -> int:
    """Fork a writer that stores one batch and is killed at ``step``; returns its wait status."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            with Library.open(root) as lib, Pipeline(lib, workers=1) as pipe:
                kwargs = _arm(step)
                pipe.process([Candidate(f"{i}.png", data=p) for i, p in enumerate(payloads)], **kwargs)
        finally:
            os._exit(3)  # reached only if the kill did not happen
    _pid, status = os.waitpid(pid, 0)
    return status


@pytest.fixture(scope="module")
def payloads(bluemarble) -> list[bytes]:
    return [png_bytes(c) for c in real_crops(bluemarble, 4 + BATCH, seed=33)]


STEPS = {  # step -> (batch committed?, journal left behind?)
    "staged": (False, False),
    "journal": (False, True),
    "renamed": (False, True),
    "inserted": (False, True),
    "committed": (True, True),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_replay_after_a_kill_at_each_step_keeps_all_or_nothing(make_library, payloads, step):
    lib = make_library()
    with Pipeline(lib, workers=1) as pipe:  # an earlier batch, fully stored
        assert all(o.accepted for o in pipe.process([Candidate(f"old{i}", data=p) for i, p in enumerate(payloads[:4])]))
    root = lib.root
    lib.close()
    before = committed_rows(root)

    status = _store_batch_in_a_child(root, payloads[4:], step)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {step}: {status}"

    committed, journal_left = STEPS[step]
    assert (root / "temp" / JOURNAL_NAME).exists() == journal_left
    leftovers = list((root / "temp").iterdir())
    assert leftovers, "a kill mid-batch leaves scratch (staged tiles or a journal)"
    after_kill = committed_rows(root)
    assert len(after_kill) == len(before) + (BATCH if committed else 0)
    if step == "renamed":  # two files in their buckets whose rows never committed
        rows = {(b, f"{i}.png") for i, (b, _h) in after_kill.items()}
        assert len(bucket_files(root) - rows) == BATCH - 1

    figures = Figures(rounds=1)
    check_after_kill(root, before, cap=100, figures=figures)  # opens a writer: the replay
    assert figures.violations == [], figures.violations
    assert figures.tiles_lost == 0 and figures.mid_batch == int(journal_left)
    final = committed_rows(root)
    assert final == after_kill  # replay never adds or drops a row, it matches the files to them
    assert {(b, f"{i}.png") for i, (b, _h) in final.items()} == bucket_files(root)
    assert list((root / "temp").iterdir()) == []


@pytest.mark.parametrize("step, done", [("renamed", store.Replay(0, BATCH, 1)),
                                        ("committed", store.Replay(BATCH, 0, 0))])
def test_replay_reports_what_it_did(make_library, payloads, caplog, step, done):
    """Killed before the last rename: every journal entry rolled back, the tile still staged
    removed as scratch.  Killed after the commit: every entry kept, no scratch (the journal
    itself is not counted)."""
    lib = make_library()
    root = lib.root
    lib.close()
    assert os.WIFSIGNALED(_store_batch_in_a_child(root, payloads[:BATCH], step))
    leftovers = sorted(p.name for p in (root / "temp").iterdir())
    with caplog.at_level(logging.INFO, logger="builder.core.store"), Library.open(root) as again:
        assert again.recover() == store.Replay()._asdict()  # a second replay finds nothing
    assert f"recovered {root}: {done._asdict()}" in caplog.messages, (leftovers, caplog.messages)


def test_an_unreadable_journal_never_stops_a_writer(make_library):
    lib = make_library()
    root = lib.root
    lib.close()
    (root / "temp" / JOURNAL_NAME).write_text("{not json")
    (root / "temp" / "x.part").write_bytes(b"half")
    with Library.open(root) as again:
        assert list(again.temp_dir.iterdir()) == []
    (root / "temp" / JOURNAL_NAME).write_text('{"tiles": [["../../etc/passwd", 1], [1, 2], "x", ["' + "a" * 36 + '"]]}')
    with Library.open(root) as again:
        assert list(again.temp_dir.iterdir()) == [] and again.stats()["tiles"] == 0


# ----------------------------------------------------------------- a real tile evicting a synthetic one


EVICT_STEPS = {  # step -> batch committed?
    "journal": False,
    "inserted": False,
    "evicting": True,
    "committed": True,
}


@pytest.mark.parametrize("step", list(EVICT_STEPS))
def test_an_eviction_killed_at_each_step_is_all_or_nothing(make_library, bluemarble, step):
    """A bucket at its cap with synthetic tiles; a real tile arrives and one synthetic tile gives way
    (row deleted in the batch's commit, file after it).  Killed anywhere: the real tile is in and one
    synthetic tile is wholly gone (row and file), or nothing changed."""
    lib = make_library(cap=2)
    tiles = one_bucket_pngs(bluemarble, 3)
    synthetic = {"source": "synthetic", "synthetic": 1}
    with Pipeline(lib, workers=1, default_provenance=synthetic) as pipe:
        stored = pipe.process([Candidate(f"s{i}", data=p) for i, p in enumerate(tiles[:2])])
    assert all(o.accepted for o in stored) and stored[0].bucket_id == stored[1].bucket_id
    root = lib.root
    lib.close()
    before = committed_rows(root)
    pid = os.fork()
    if pid == 0:
        try:
            with Library.open(root) as writer, Pipeline(writer, workers=1) as pipe:
                kwargs = _arm(step)
                pipe.process([Candidate("real", data=tiles[2])], **kwargs)
        finally:
            os._exit(3)
    _pid, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {step}: {status}"
    assert (root / "temp" / JOURNAL_NAME).exists()
    figures = Figures(rounds=1)
    check_after_kill(root, before, cap=2, figures=figures, synthetic=set(before))
    assert figures.violations == [], figures.violations
    assert figures.tiles_lost == 0
    final = committed_rows(root)
    if EVICT_STEPS[step]:
        assert len(final) == 2 and figures.evicted == 1 and len(set(before) & set(final)) == 1
    else:
        assert final == before and figures.evicted == 0
    assert {(b, f"{i}.png") for i, (b, _h) in final.items()} == bucket_files(root)
    with Library.open(root, readonly=True) as reader:
        real = reader.conn.execute("SELECT COUNT(*) FROM tiles WHERE synthetic = 0").fetchone()[0]
    assert real == int(EVICT_STEPS[step])


# ----------------------------------------------------------------- repair's relocations and quarantine moves


@pytest.mark.parametrize("row", ["dst", "src", "none"])
@pytest.mark.parametrize("files", ["src", "dst", "linked", "different"])
def test_replay_settles_a_relocation_where_its_row_says(make_library, payloads, row, files):
    """A relocation journal entry after a kill: the row decides which name the file keeps; the
    other name goes only when it is a link of the same file.  No state loses the tile."""
    lib = make_library()
    tile_id = "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a"
    src, dst = lib.tile_path(3, tile_id), lib.tile_path(4, tile_id)
    for path in (src, dst):
        path.parent.mkdir(exist_ok=True)
    if files in ("src", "linked", "different"):
        src.write_bytes(payloads[0])
    if files == "dst":
        dst.write_bytes(payloads[0])
    elif files == "linked":
        os.link(src, dst)
    elif files == "different":
        dst.write_bytes(payloads[1])
    if row != "none":
        bucket = 4 if row == "dst" else 3
        with lib.conn:
            lib.conn.execute("INSERT INTO tiles (id, bucket_id, filepath) VALUES (?, ?, ?)",
                             (tile_id, bucket, lib.filepath_for(bucket, tile_id)))
    store._write_journal_body(lib.temp_dir, {"relocate": [[tile_id, 3, 4]], "quarantine": []})
    lib.recover()
    keep, other = (dst, src) if row == "dst" else (src, dst)
    assert keep.read_bytes() == payloads[0] or (files == "different" and keep.exists())
    if files == "different":  # two different files: both kept (the stray one is verify's to quarantine)
        assert src.read_bytes() == payloads[0] and dst.read_bytes() == payloads[1]
    else:
        assert not other.exists()
    assert not (lib.temp_dir / JOURNAL_NAME).exists()


@pytest.mark.parametrize("row_stays", [True, False])
def test_replay_finishes_or_undoes_a_quarantine_move(make_library, payloads, row_stays):
    lib = make_library()
    tile_id = "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a"
    src = lib.tile_path(5, tile_id)
    src.parent.mkdir()
    src.write_bytes(payloads[0])
    if row_stays:  # killed before the batch's commit deleted the row
        with lib.conn:
            lib.conn.execute("INSERT INTO tiles (id, bucket_id, filepath) VALUES (?, 5, ?)",
                             (tile_id, lib.filepath_for(5, tile_id)))
    dst = f"quarantine/duplicate/bucket_0005/{tile_id}.png"
    hostile = ["../../outside.png", "quarantine/../../x", tile_id, 5]  # paths from a file: never followed
    store._write_journal_body(lib.temp_dir, {"relocate": [], "quarantine": [
        [f"bucket_0005/{tile_id}.png", dst, tile_id, 5], hostile]})
    lib.recover()
    moved = lib.root / dst
    assert (src.read_bytes() if row_stays else moved.read_bytes()) == payloads[0]
    assert not (moved if row_stays else src).exists()
    assert not (lib.root.parent / "outside.png").exists() and not (lib.root.parent / "x").exists()
