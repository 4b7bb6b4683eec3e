"""Crash safety: SIGKILL real ``ingest``, ``harvest``, ``verify --repair`` and ``recover`` runs at
random moments, many times.

Each kill takes down the whole process group (the CLI and its process pool), then the
library is checked as a user would find it (see :mod:`tests.support.campaigns.crash` for the list).
``bench/kill_campaign.py`` runs the long form of the same campaigns and prints the figures.
"""

from __future__ import annotations

import random

import pytest

from tests.support.campaigns.crash import (
    bucket_files,
    build_library,
    committed_rows,
    deep_verify,
    harvest_campaign,
    ingest_campaign,
    make_tile_pool,
    recover_campaign,
    repair_campaign,
    run_and_kill,
)
from tests.support.cli import builder_argv, run_cli
from tests.support.tileserver import TileServer, distinct_tile

pytestmark = pytest.mark.slow  # kill campaigns: minutes of SIGKILL rounds

INGEST_KILLS = 20
HARVEST_KILLS = 8
REPAIR_KILLS = 4
RECOVER_KILLS = 4


@pytest.fixture(scope="module")
def ingest_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash_ingest")
    pool = make_tile_pool(base / "pool", 1200, seed=11)
    root = base / "mosaic_library"
    figures = ingest_campaign(root, pool, kills=INGEST_KILLS, seed=5, min_mid_batch=1, max_rounds=60)
    print(figures.summary())
    return root, pool, figures


def test_ingest_survives_sigkill_at_random_moments(ingest_run):
    _root, _pool, figures = ingest_run
    assert figures.violations == []
    assert figures.tiles_lost == 0
    assert figures.kills >= INGEST_KILLS
    assert figures.mid_batch >= 1, figures.summary()  # at least one kill between rename and commit
    assert figures.scratch_cleaned > 0  # kills left scratch behind, and the next open removed it
    assert figures.rows >= 100  # the library grew between kills


def test_library_is_fully_consistent_after_the_ingest_campaign(ingest_run):
    root, _pool, _figures = ingest_run
    assert deep_verify(root) is None  # every file decoded: bucket, LAB, phash, cap, orphans
    res = run_cli("ingest", "--library", root, *_pool[:200])
    assert res.returncode == 0, res.stderr  # an uninterrupted run after it all works as usual
    assert deep_verify(root) is None


def test_repair_after_a_kill_gives_a_clean_second_verify(ingest_run):
    """Kill once more and leave the wreck as it is: read-only verify reports it, --repair fixes it."""
    root, pool, _figures = ingest_run
    rng = random.Random(3)
    cmd = builder_argv("ingest", "--library", root, "--workers", "2", *pool)
    for _ in range(10):  # until a kill leaves scratch or uncommitted files (nearly always the first)
        killed, snapshot, _code, _fired = run_and_kill(cmd, root, "scratch", rng, 6.0, root.parent / "repair.log")
        rows = committed_rows(root)
        leftovers = list((root / "temp").iterdir()) + sorted(
            bucket_files(root) - {(b, f"{i}.png") for i, (b, _h) in rows.items()})
        if killed and leftovers:
            break
    assert killed and leftovers
    before = run_cli("verify", "--library", root)
    assert before.returncode == 1 and "orphan_file" in before.stdout, before.stdout + before.stderr
    repaired = run_cli("verify", "--library", root, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    again = run_cli("verify", "--library", root)
    assert again.returncode == 0 and "no problems" in again.stdout, again.stdout
    assert set(snapshot) <= set(committed_rows(root))  # repair dropped nothing that had committed
    assert list((root / "temp").iterdir()) == []


def test_harvest_survives_sigkill_and_never_fetches_a_tile_twice(tmp_path):
    with TileServer(distinct_tile, lifetime=300) as server:
        def served_twice() -> int:
            return sum(1 for n in server.ok_counts().values() if n > 1)

        figures = harvest_campaign(tmp_path / "mosaic_library", server.tile_template, kills=HARVEST_KILLS, seed=2,
                                   served_twice=served_twice, max_rounds=30)
        served = sum(server.ok_counts().values())
    print(figures.summary(), f"{served} tiles served")
    assert figures.violations == []
    assert figures.tiles_lost == 0 and figures.served_twice == 0
    assert figures.kills >= HARVEST_KILLS
    assert figures.rows >= 40 and served > figures.rows
    assert deep_verify(tmp_path / "mosaic_library") is None


@pytest.fixture(scope="module")
def maintained(tmp_path_factory):
    """A library of 320 tiles for the maintenance campaigns (repair first, then recover)."""
    root = tmp_path_factory.mktemp("crash_maintenance") / "mosaic_library"
    build_library(root, 320, seed=13)
    return root


def test_repair_of_300_wrong_bucket_rows_survives_sigkill_at_every_step(maintained):
    """``verify --repair`` killed with its journal on disk, while linking files into their buckets,
    right after a batch's commit, and at random; run again after each kill until it completes."""
    figures = repair_campaign(maintained, kills=REPAIR_KILLS, misfiled=300, seed=4, max_rounds=20)
    print(figures.summary())
    assert figures.violations == []
    assert figures.tiles_lost == 0 and figures.tiles_after == figures.tiles_before
    assert figures.kills >= REPAIR_KILLS and figures.completed >= 1


def test_recover_survives_sigkill_and_gives_back_every_tile_and_its_provenance(maintained, tmp_path):
    release = tmp_path / "release"
    res = run_cli("build", "--library", maintained, "--output", release)
    assert res.returncode == 0, res.stderr
    figures = recover_campaign(maintained, kills=RECOVER_KILLS, release=release, seed=6, max_rounds=20)
    print(figures.summary())
    assert figures.violations == []
    assert figures.tiles_lost == 0 and figures.tiles_after == figures.tiles_before
    assert figures.kills >= RECOVER_KILLS and figures.completed >= 1
