"""Concurrency: one writer at a time (the second gets one line, exit 2); readers work beside it.

A real ``python -m builder harvest`` (process pool, fetch threads) runs against a loopback
tile server while the tests poke at the library: other writers are refused with the
``LibraryLocked`` one-liner, and every reader (stats, the card's SQLite snippets, verify
without --repair, the ``datasets`` builder) works and only ever sees rows whose files exist.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from builder.core.library import Library
from builder.ops.verify import verify_library
from tests.support.campaigns.crash import committed_rows, make_tile_pool
from tests.support.card import card_snippet
from tests.support.cli import builder_argv, run_cli
from tests.support.kill import group_killed_on_exit, start_group
from tests.support.tileserver import TileServer, distinct_tile


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def rows_without_files(root) -> list[str]:
    return [i for i, (b, _h) in committed_rows(root).items() if not (root / f"bucket_{b:04d}" / f"{i}.png").is_file()]


@pytest.fixture(scope="module")
def harvesting(tmp_path_factory):
    """A library with a harvest writing into it for the whole module (stopped with Ctrl-C at the end)."""
    base = tmp_path_factory.mktemp("concurrency")
    root = base / "mosaic_library"
    Library.create(root).close()
    with TileServer(distinct_tile, delay=0.02, lifetime=600) as server:
        cmd = builder_argv("harvest", "--library", root, "--source", server.tile_template,
                           "--zoom", "12", "--threads", "4", "--batch", "12", "--phase", "all", "--patience", "1000",
                           "--seed", "9")
        log = base / "harvest.stderr"
        with open(log, "wb") as err:
            proc = start_group(cmd, stdout=subprocess.PIPE, stderr=err)
        with group_killed_on_exit(proc):
            wait_until(lambda: Library.writer_active(root) and len(committed_rows(root)) >= 12, 60, "first batches")
            yield root, proc
            assert proc.poll() is None, f"the harvest stopped early: {log.read_text()[-1000:]}"
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: finishes what is in hand, then exits 130
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 130, log.read_text()[-1000:]
            assert out.decode().startswith("harvest: ")
    with Library.open(root, readonly=True) as lib:
        report = verify_library(lib, deep=True, workers=2)
    assert report.ok, report.summary()
    assert list((root / "temp").iterdir()) == []


@pytest.mark.slow  # every user of `harvesting`: it keeps a harvest running for their whole module
@pytest.mark.parametrize("command", ["ingest", "harvest", "verify --repair"])
def test_a_second_writer_gets_one_line_and_exit_2(harvesting, tmp_path, command):
    root, proc = harvesting
    inputs = make_tile_pool(tmp_path / "in", 3)
    args = {
        "ingest": ["ingest", *map(str, inputs)],
        "harvest": ["harvest", "--source", "earth", "--zoom", "5", "--max-tiles", "5"],
        "verify --repair": ["verify", "--repair"],
    }[command]
    before = committed_rows(root)
    res = run_cli(args[0], "--library", str(root), *args[1:])
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and res.stdout == "", res.stderr
    assert lines[0] == f"error: {root} is being written by pid {proc.pid}; wait for it to finish and retry"
    after = committed_rows(root)
    assert set(before) <= set(after)
    assert all(row_source not in ("ingest", "earth") for row_source in sources(root))  # nothing of theirs stored


def sources(root) -> set[str]:
    conn = sqlite3.connect(f"{(root / 'tiles.db').as_uri()}?mode=ro", uri=True)
    try:
        return {s for (s,) in conn.execute("SELECT DISTINCT source FROM tiles")}
    finally:
        conn.close()


@pytest.mark.slow
def test_two_ingests_at_once(tmp_path):
    """The second of two ingests is refused while the first runs; the first completes untouched."""
    root = tmp_path / "mosaic_library"
    Library.create(root).close()
    pool = make_tile_pool(tmp_path / "pool", 900, seed=4)
    first = start_group(builder_argv("ingest", "--library", root, "--workers", "2", *pool), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    with group_killed_on_exit(first):
        wait_until(lambda: Library.writer_active(root) or first.poll() is not None, 60, "the first ingest")
        second = run_cli("ingest", "--library", root, *map(str, pool[:40]))
        still_running = first.poll() is None
        out, err = first.communicate(timeout=300)
    assert still_running, "the first ingest ended before the second started: make the pool bigger"
    assert second.returncode == 2 and second.stderr == (
        f"error: {root} is being written by pid {first.pid}; wait for it to finish and retry\n")
    assert first.returncode == 0, err
    accepted = int(out.split()[1])
    assert accepted == len(committed_rows(root)) > 500
    with Library.open(root, readonly=True) as lib:
        assert verify_library(lib, deep=False).ok


@pytest.mark.slow
def test_readers_work_beside_the_writer_and_see_only_rows_with_files(harvesting):
    root, _proc = harvesting
    seen: list[int] = []
    checks = 0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline or len(set(seen)) < 3:
        assert time.monotonic() < deadline + 60, "the harvest stopped committing"
        # builder readers: stats and verify without --repair
        with Library.open(root, readonly=True) as lib:
            stats = lib.stats()
            report = verify_library(lib, deep=False)
        assert report.ok, report.summary()  # no false orphans while batches land
        assert not seen or stats["tiles"] >= seen[-1]
        seen.append(stats["tiles"])
        # the card's plain sqlite3 snippets, as a notebook user runs them
        conn = sqlite3.connect(root / "tiles.db")
        try:
            (n,) = conn.execute("SELECT COUNT(*) FROM tiles").fetchone()
            conn.execute("SELECT bucket_id, COUNT(*) as n FROM tiles GROUP BY bucket_id HAVING n >= 100").fetchall()
            bucket = conn.execute("SELECT bucket_id FROM tiles ORDER BY random() LIMIT 1").fetchone()[0]
            paths = [fp for (fp,) in conn.execute("SELECT filepath FROM tiles WHERE bucket_id = ?", (bucket,))]
        finally:
            conn.close()
        assert n >= stats["tiles"]
        images = np.stack([np.array(Image.open(os.path.join(root.parent, fp)).convert("RGB")) for fp in paths])
        assert images.shape[1:] == (256, 256, 3)
        assert rows_without_files(root) == []
        checks += 1
    assert len(set(seen)) >= 3, f"the library did not grow while reading: {seen}"
    # The same through the CLI and the card's own load_bucket snippet, in fresh processes.
    res = run_cli("stats", "--library", root)
    assert res.returncode == 0 and " tiles in " in res.stdout, res.stderr
    res = run_cli("verify", "--library", root)
    assert res.returncode == 0 and "no problems" in res.stdout, res.stdout + res.stderr
    populated = committed_rows(root)
    bucket = next(iter(populated.values()))[0]
    snippet = card_snippet("load_bucket").replace("bucket_id=42", f"bucket_id={bucket}")
    res = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=root.parent)
    assert res.returncode == 0 and res.stdout.strip().endswith(", 256, 256, 3)"), res.stderr
    assert checks >= 3


@pytest.mark.slow
def test_deep_verify_beside_the_writer_is_clean(harvesting):
    """A deep verify decodes every file (seconds); batches land meanwhile and are not orphans."""
    root, _proc = harvesting
    before = len(committed_rows(root))
    with Library.open(root, readonly=True) as lib:
        report = verify_library(lib, deep=True, workers=1)
    assert report.ok, report.summary()
    assert report.rows >= before


@pytest.mark.slow
def test_the_datasets_builder_reads_a_consistent_library_beside_the_writer(harvesting, tmp_path):
    from mosaic_library import MosaicLibrary

    root, _proc = harvesting
    before = set(committed_rows(root))
    builder = MosaicLibrary(data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train").cast_column("image", __import__("datasets").Image(decode=False))
    after = committed_rows(root)
    ids = ds["id"]
    assert before <= set(ids) <= set(after)  # a snapshot between the two reads
    assert len(ids) == len(set(ids))
    for row in ds.select(range(0, len(ds), max(1, len(ds) // 25))):
        bucket = after[row["id"]][0]
        assert row["label"] == bucket
        assert row["image"]["bytes"] == (root / f"bucket_{bucket:04d}" / f"{row['id']}.png").read_bytes()


@pytest.mark.slow
def test_a_harvest_keeps_its_lock_when_lock_file_is_deleted(tmp_path):
    """``.lock`` deleted during a harvest, then a second writer: refused with one line (its open
    would have emptied temp/ under the harvest), the harvest finishes, verify is clean."""
    root = tmp_path / "mosaic_library"
    Library.create(root).close()
    inputs = make_tile_pool(tmp_path / "in", 3)
    with TileServer(distinct_tile, delay=0.02, lifetime=600) as server:
        cmd = builder_argv("harvest", "--library", root, "--source", server.tile_template,
                           "--zoom", "12", "--threads", "4", "--batch", "12", "--phase", "all", "--patience", "1000",
                           "--seed", "5", "--max-tiles", "120")
        harvest = start_group(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with group_killed_on_exit(harvest):
            wait_until(lambda: len(committed_rows(root)) >= 12 or harvest.poll() is not None, 120, "first batches")
            (root / ".lock").unlink()
            refused = [run_cli("ingest", "--library", root, *map(str, inputs)), run_cli("verify", "--repair", "--library", root)]
            still_running = harvest.poll() is None
            out, err = harvest.communicate(timeout=300)
    assert still_running, "the harvest ended before the second writer came: make it longer"
    for res in refused:
        assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
        assert res.stderr == f"error: {root} is being written by pid {harvest.pid}; wait for it to finish and retry\n"
    assert harvest.returncode == 0, err
    assert out.startswith("harvest: ") and len(committed_rows(root)) == 120
    assert "ingest" not in sources(root)  # nothing of the refused writer stored
    assert list((root / "temp").iterdir()) == []
    with Library.open(root, readonly=True) as lib:
        report = verify_library(lib, deep=True, workers=2)
    assert report.ok, report.summary()
