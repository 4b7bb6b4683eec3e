"""The colour atlas and aimed harvest (``atlas``, ``harvest --target``), on real SQLite, real tile
folders, the ``earth`` source and a real loopback HTTP server (tests/support/tileserver.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builder.acquire.atlas import (
    AimedSampler,
    Blocks,
    SampleStore,
    atlas_info,
    build_atlas,
    calibrate,
    reachability,
    tile_blocks,
)
from builder.acquire.harvest import harvest
from builder.acquire.sources import open_source
from builder.assign.pipeline import mean_rgb_64
from builder.core.color import rgb_to_lab
from builder.core.db import ATLAS_LEDGER_TABLE
from builder.core.decode import decode_tile
from builder.core.errors import LibraryError, UsageError
from builder.core.library import Library
from tests.support.atlas_reference import per_block_tile_blocks, per_bucket_add
from tests.support.cli import builder_argv, cli_env, run_cli
from tests.support.images import png_bytes
from tests.support.paths import REPO
from tests.support.tileserver import TileServer, bluemarble_tile

ZOOM = 3  # 8x8 tiles; the atlas reads zoom 0 in 32x32-pixel blocks


def robust_colours(lib: Library, n: int, rng: np.random.Generator, margin: float = 2.0) -> list[np.ndarray]:
    """``n`` RGB colours in distinct buckets, each at least ``margin`` LAB units nearer its
    centroid than the next one, so a tile's texture cannot move it to another bucket."""
    out, used = [], set()
    while len(out) < n:
        rgb = rng.integers(50, 206, 3).astype(np.float64)
        (bucket, second), (d0, d1) = (v[0] for v in lib.index.assign_lab(rgb_to_lab(rgb[None]), k=2))
        if d1 - d0 >= margin and int(bucket) not in used:
            used.add(int(bucket))
            out.append(rgb)
    return out


def make_tile_folder(root: Path, lib: Library, wrong: int = 0, seed: int = 0) -> tuple[dict, dict]:
    """A z/x/y folder: 64 textured zoom-3 tiles and their zoom-0 overview, each of whose 32x32
    blocks is the box-downsampled tile.  The first ``wrong`` tiles' blocks show another colour
    (a source whose overview disagrees).  Returns ``({(x, y): tile bytes}, {(x, y): block rgb})``."""
    rng = np.random.default_rng(seed)
    colours = robust_colours(lib, 64 + wrong, rng)
    overview = np.zeros((256, 256, 3), np.uint8)
    tiles, shown = {}, {}
    for k in range(64):
        x, y = k % 8, k // 8
        noise = rng.integers(-20, 21, (256, 256, 3))
        rgb = np.clip(colours[k] + noise, 1, 254).astype(np.uint8)
        data = png_bytes(rgb)
        path = root / str(ZOOM) / str(x) / f"{y}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        tiles[(x, y)] = data
        block = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.Resampling.BOX))
        if k < wrong:
            block = np.clip(colours[64 + k] + rng.integers(-3, 4, (32, 32, 3)), 1, 254).astype(np.uint8)
        overview[y * 32:(y + 1) * 32, x * 32:(x + 1) * 32] = block
        shown[(x, y)] = block
    path = root / "0" / "0" / "0.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(overview))
    return tiles, shown


def assigned_bucket(lib: Library, data: bytes) -> int:
    """The bucket assignment gives a tile: 64x64 mean RGB -> LAB -> nearest centroid."""
    return int(lib.index.assign_rgb([mean_rgb_64(decode_tile(data).image)])[0].bucket_id)


def samples(lib: Library, source: str, zoom: int) -> dict:
    return {(x, y): (b, p, k) for x, y, b, p, k in lib.conn.execute(
        "SELECT x, y, bucket_id, predicted, key FROM atlas_sample WHERE source = ? AND zoom = ?", (source, zoom))}


# --- predictions ----------------------------------------------------------------------------------


def test_atlas_predicts_the_bucket_assignment_gives_when_the_overview_is_the_downsampled_tile(make_library, tmp_path):
    lib = make_library()
    tiles, _ = make_tile_folder(tmp_path / "tiles", lib)
    source = open_source(str(tmp_path / "tiles"))
    report = build_atlas(lib, source, zoom=ZOOM, progress=False)
    assert (report.atlas_zoom, report.block, report.read, report.blocks) == (0, 32, 1, 64)
    kept = samples(lib, source.name, ZOOM)
    assert set(kept) == set(tiles)  # 64 distinct buckets, one candidate each
    for (x, y), (bucket, predicted, _key) in kept.items():
        assert bucket == predicted == assigned_bucket(lib, tiles[(x, y)]), (x, y)
    assert report.buckets_reachable == 64 and report.requests == 1


def test_hit_rate_and_new_buckets_per_1000_on_a_constructed_case(make_library, tmp_path):
    """Eight of 64 overview blocks show another colour: the aimed harvest lands 56 of 64 tiles in
    their predicted bucket, and the report, --json and stats all say so."""
    lib = make_library()
    tiles, _ = make_tile_folder(tmp_path / "tiles", lib, wrong=8, seed=1)
    source = open_source(str(tmp_path / "tiles"))
    build_atlas(lib, source, zoom=ZOOM, progress=False)
    predicted = {xy: p for xy, (_b, p, _k) in samples(lib, source.name, ZOOM).items()}
    expected_hits = sum(predicted[xy] == assigned_bucket(lib, data) for xy, data in tiles.items())
    assert expected_hits == 56
    report = harvest(lib, source, zoom=ZOOM, target="underfilled", seed=0, progress=False, workers=1)
    assert report.aimed == 64 and report.hits == expected_hits and report.hit_rate == pytest.approx(56 / 64)
    assert report.requests == 64 and report.new_per_1000 == pytest.approx(1000 * report.buckets_new / 64, abs=0.05)
    assert report.as_dict()["hit_rate"] == round(56 / 64, 4)
    rows = lib.conn.execute("SELECT x, y, predicted_bucket, bucket_id FROM fetched WHERE source = ?",
                            (source.name,)).fetchall()
    assert {(x, y): p for x, y, p, _b in rows} == predicted
    assert all(b == assigned_bucket(lib, tiles[(x, y)]) for x, y, _p, b in rows)
    lib.close()
    with Library.open(lib.root, readonly=True) as reader:
        stats = reader.stats()
    assert stats["aimed"]["hits"] == 56 and stats["aimed"]["decoded"] == 64 and stats["aimed"]["hit_rate"] == 0.875
    assert stats["aimed"]["new_buckets"] == report.buckets_new
    reach = stats["reachability"]
    assert reach["populated"] == stats["buckets_populated"]
    assert reach["populated"] + reach["reachable_empty"] + reach["not_seen"] == 5000


def cast_source(root: Path) -> tuple[object, int]:
    """A tile folder whose zoom-0 overview is darker and bluer than its 64 zoom-3 tiles."""
    rng = np.random.default_rng(5)
    overview = np.zeros((256, 256, 3), np.uint8)
    zoom = 3  # 8x8 tiles, 32x32-pixel blocks
    for k in range(64):
        x, y = k % 8, k // 8
        colour = rng.integers(60, 200, 3).astype(np.float64)
        rgb = np.clip(colour + rng.integers(-15, 16, (256, 256, 3)), 1, 254).astype(np.uint8)
        (root / str(zoom) / str(x)).mkdir(parents=True, exist_ok=True)
        (root / str(zoom) / str(x) / f"{y}.png").write_bytes(png_bytes(rgb))
        cast = np.clip(colour * 0.8 + np.array([0, 0, 25]), 1, 254)
        overview[y * 32:(y + 1) * 32, x * 32:(x + 1) * 32] = cast.astype(np.uint8)
    (root / "0" / "0").mkdir(parents=True)
    (root / "0" / "0" / "0.png").write_bytes(png_bytes(overview))
    return open_source(str(root)), zoom


def test_calibration_learns_a_colour_cast_and_raises_the_hit_rate(make_library, tmp_path):
    """A source whose overview is darker and bluer than its tiles (another imagery, as ArcGIS's low
    zooms): the affine LAB map fitted on the fetched tiles takes the cross-validated hit rate up."""
    lib = make_library()
    source, zoom = cast_source(tmp_path / "tiles")
    build_atlas(lib, source, zoom=zoom, progress=False)
    first = harvest(lib, source, zoom=zoom, target="empty", max_requests=40, seed=0, progress=False, workers=1)
    result = calibrate(lib, source.name, zoom)
    assert result["tiles"] == first.aimed and result["kept"]
    assert result["hit_rate_after"] > result["hit_rate_before"] + 0.3
    assert first.hit_rate == pytest.approx(result["hit_rate_before"], abs=1e-4)
    info = atlas_info(lib, source.name, zoom)
    assert info.calibration is not None and info.calibration.tiles == first.aimed
    second = harvest(lib, source, zoom=zoom, target="empty", seed=1, progress=False, workers=1)
    assert second.aimed > 0 and second.hit_rate > first.hit_rate + 0.3


def test_an_aimed_harvest_calibrates_itself_on_the_way(make_library, tmp_path):
    """One run, batches of 10: after 30 measured tiles it fits the map, keeps it, and the tiles it
    draws afterwards land in their predicted bucket far more often than those before."""
    lib = make_library()
    source, zoom = cast_source(tmp_path / "tiles")
    build_atlas(lib, source, zoom=zoom, progress=False)
    report = harvest(lib, source, zoom=zoom, target="underfilled", batch=10, seed=0, progress=False, workers=1)
    assert report.calibration is not None and report.calibration["kept"] and report.calibration["tiles"] >= 30
    rows = lib.conn.execute("SELECT predicted_bucket = bucket_id FROM fetched ORDER BY rowid").fetchall()
    before = np.mean([hit for (hit,) in rows[:30]])
    after = np.mean([hit for (hit,) in rows[50:]])
    assert report.aimed == len(rows) == 64 and after > before + 0.3, (before, after)


# --- the sample ------------------------------------------------------------------------------------


def test_the_sample_is_bounded_and_merges_exactly_across_batches(make_library):
    """At most N candidates per bucket, every block counted once; folding in four batches keeps
    the very tiles that one batch does (the smallest keys), and a second run asks for nothing."""
    one, four = make_library("one"), make_library("four")
    a = build_atlas(one, "earth", zoom=9, atlas_zoom=1, progress=False, sample_size=3, batch=4)
    b = build_atlas(four, "earth", zoom=9, atlas_zoom=1, progress=False, sample_size=3, batch=1)
    # Earth's pure white (polar) and black pixels count as nodata: a little under 4 x 65,536 blocks.
    assert a.read == b.read == 4 and a.blocks == b.blocks and 3 * 65536 < a.blocks < 4 * 65536
    kept = samples(one, "earth", 9)
    assert kept == samples(four, "earth", 9)
    per_bucket = np.bincount([bucket for bucket, _p, _k in kept.values()], minlength=5000)
    assert per_bucket.max() == 3
    pixels = dict(one.conn.execute("SELECT bucket_id, pixels FROM atlas_buckets"))
    assert sum(pixels.values()) == a.blocks
    assert all(per_bucket[b] == min(3, n) for b, n in pixels.items())
    again = build_atlas(one, "earth", zoom=9, atlas_zoom=1, progress=False, sample_size=3)
    assert again.requests == 0 and again.already == 4 and samples(one, "earth", 9) == kept


def test_a_reservoir_keeps_the_smallest_keys_whatever_the_order(make_library):
    lib = make_library()
    rng = np.random.default_rng(0)
    n = 5000
    blocks = Blocks(np.arange(n), np.zeros(n, np.int64), np.zeros((n, 3)), rng.integers(0, 7, n), rng.random(n))
    lib.conn.execute("CREATE TABLE IF NOT EXISTS atlas_buckets (source, zoom, bucket_id, pixels, "
                     "PRIMARY KEY (source, zoom, bucket_id))")
    from builder.core.db import create_atlas_tables

    create_atlas_tables(lib.conn)
    store = SampleStore(lib.conn, "s", 9, 10, None, lib.index)
    for part in np.array_split(rng.permutation(n), 37):
        with lib.conn:
            store.add(Blocks(blocks.x[part], blocks.y[part], blocks.lab[part], blocks.bucket[part], blocks.key[part]))
    kept = {x for (x,) in lib.conn.execute("SELECT x FROM atlas_sample")}
    expected = set()
    for b in range(7):
        members = np.flatnonzero(blocks.bucket == b)
        expected |= set(members[np.argsort(blocks.key[members])[:10]].tolist())
    assert kept == expected


def test_nodata_pixels_and_flat_fills_are_skipped(make_library):
    lib = make_library()
    rgb = np.random.default_rng(2).integers(30, 220, (256, 256, 3)).astype(np.uint8)
    rgb[:4, :4] = 0  # one black pixel block at zoom z-6 (4x4 blocks)
    rgb[100, 100] = 255
    blocks = tile_blocks(rgb, (3, 1, 2), 9, lib.index)
    assert len(blocks) == 64 * 64 - 2
    assert (0 + 1 * 64, 0 + 2 * 64) not in set(zip(blocks.x.tolist(), blocks.y.tolist()))
    from builder.acquire.atlas import is_flat_fill

    flat = np.full((256, 256, 3), 128, np.uint8)
    flat[:10] = 7
    assert is_flat_fill(flat) and not is_flat_fill(rgb)


# --- aimed harvest ------------------------------------------------------------------------------------


def test_target_never_asks_for_a_tile_already_tried(make_library):
    """Tiles a plan harvest tried, and those a first aimed run tried, are never requested again:
    the server serves every tile at most once over three runs."""
    lib = make_library()
    with TileServer(bluemarble_tile) as server:
        source = open_source(server.tile_template)
        try:
            harvest(lib, source, plan="1", zoom=6, max_requests=40, seed=0, progress=False, workers=1)
            build_atlas(lib, source, zoom=6, atlas_zoom=0, progress=False)
            tried = {(z, x, y) for z, x, y in lib.conn.execute("SELECT z, x, y FROM fetched")}
            for seed in (1, 2):
                rep = harvest(lib, source, zoom=6, target="underfilled", max_requests=60, seed=seed, progress=False,
                              workers=1)
                assert rep.requests > 0
        finally:
            source.close()
        ok = server.ok_counts()
    assert max(ok.values()) == 1
    aimed = {(z, x, y) for z, x, y in lib.conn.execute("SELECT z, x, y FROM fetched WHERE predicted_bucket IS NOT NULL")}
    assert len(aimed) == 120 and not aimed & tried


def test_aimed_sampler_weights_by_need_and_holds_back_while_in_flight(make_library, tmp_path):
    lib = make_library()
    make_tile_folder(tmp_path / "tiles", lib)
    source = open_source(str(tmp_path / "tiles"))
    build_atlas(lib, source, zoom=ZOOM, progress=False)
    counts = np.zeros(5000, np.int64)
    sampler = AimedSampler(lib.conn, source.name, ZOOM, "empty", lib.cap, lambda: counts, seed=0)
    first = sampler.sample(40)
    assert len(first) == 40 and len({sampler.predicted[r[:3]] for r in first}) == 40
    rest = sampler.sample(100)
    assert len(rest) == 24 and sampler.sample(10) == []  # every bucket's one candidate is out
    for r in first[:5]:
        counts[sampler.predicted[r[:3]]] = 1
    sampler.settle(first)
    # 35 buckets still need a tile, but their one candidate was tried: nothing left to draw.
    assert sampler.all_exhausted is True and sampler.sample(10) == []


# --- errors, dead sources, kills -----------------------------------------------------------------------


@pytest.mark.slow
def test_bad_values_are_one_line_errors(tmp_path):
    root = tmp_path / "mosaic_library"
    Library.create(root).close()
    cases = [
        (("atlas", "--source", "earth", "--zoom", "9", "--atlas-zoom", "0"), "--atlas-zoom 0 must be"),
        (("atlas", "--source", "earth", "--zoom", "9", "--atlas-zoom", "10"), "--atlas-zoom 10 must be"),
        (("atlas", "--source", "earth", "--zoom", "23"), "--zoom 23 is out of range"),
        (("atlas", "--source", "earth", "--bbox", "10", "5", "0", "6"), "lon_min 10.0 must be less"),
        (("atlas", "--source", "earth", "--world", "--phase", "1"), "not allowed with argument"),
        (("atlas", "--source", "earth", "--max-requests", "0"), "--max-requests must be"),
        (("harvest", "--source", "earth", "--target", "empty", "--phase", "1"), "without --phase or --plan"),
        (("harvest", "--source", "earth", "--target", "empty", "--zoom", "8"), "--target needs an atlas of earth"),
        (("harvest", "--source", "earth", "--target", "full"), "invalid choice"),
    ]
    for argv, message in cases:
        proc = run_cli(argv[0], "--library", root, *argv[1:], timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (argv, proc.stderr)


def test_an_atlas_made_with_other_centroids_or_damaged_is_refused_with_one_line(make_library):
    lib = make_library()
    build_atlas(lib, "earth", zoom=8, atlas_zoom=0, progress=False)
    with lib.conn:
        lib.conn.execute("UPDATE atlas_meta SET centroids_sha256 = 'f00d'")
    with pytest.raises(LibraryError, match="made with other centroids"):
        harvest(lib, "earth", zoom=8, target="empty", progress=False)
    with lib.conn:
        lib.conn.execute("UPDATE atlas_meta SET centroids_sha256 = ?", (__import__("builder.core.library").core.library.file_sha256(
            lib.root / "centroids.npy"),))
        lib.conn.execute("UPDATE atlas_meta SET calibration = '{not json'")
    with pytest.raises(LibraryError, match="calibration is not readable"):
        harvest(lib, "earth", zoom=8, target="empty", progress=False)
    with lib.conn:
        lib.conn.execute("UPDATE atlas_meta SET calibration = NULL")
        lib.conn.execute("UPDATE atlas_sample SET predicted = 7000 WHERE rowid = (SELECT MIN(rowid) FROM atlas_sample)")
    with pytest.raises(LibraryError, match="damaged sample row"):
        harvest(lib, "earth", zoom=8, target="empty", progress=False)
    with pytest.raises(UsageError, match="reads overview zoom 0"):
        build_atlas(lib, "earth", zoom=8, atlas_zoom=1, progress=False)
    report = build_atlas(lib, "earth", zoom=8, atlas_zoom=1, rebuild=True, progress=False)
    assert report.read == 4 and atlas_info(lib, "earth", 8).atlas_zoom == 1


@pytest.mark.parametrize("case", ["connection refused", pytest.param("503 to everything", marks=pytest.mark.slow)])
def test_atlas_of_a_dead_source_stops_fast_with_exit_3(case, tmp_path, free_port):
    root = tmp_path / "mosaic_library"
    Library.create(root).close()
    server = TileServer(faults=lambda tile, attempt: "503").start() if case != "connection refused" else None
    try:
        port = server.port if server else free_port
        started = time.monotonic()
        proc = run_cli("atlas", "--library", root, "--source", f"http://127.0.0.1:{port}/tile/{{z}}/{{y}}/{{x}}",
                       "--zoom", "13", "--max-requests", "300", "--json", timeout=120)
        seconds = time.monotonic() - started
        received = len(server.records) if server else 0
    finally:
        if server:
            server.stop()
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: source 127.0.0.1:{port} "), proc.stderr
    assert lines[0].endswith("no tile marked as tried") and seconds < 25
    report = json.loads(proc.stdout)
    assert report["stop_reason"] == "source unreachable" and report["requests"] <= 300 and received <= 300
    with Library.open(root, readonly=True) as lib:
        assert lib.conn.execute(f"SELECT COUNT(*) FROM {ATLAS_LEDGER_TABLE}").fetchone()[0] == 0
    assert list((root / "inflight").iterdir()) == []


def test_atlas_against_a_server_with_faults_gets_every_tile_once(make_library):
    faults = {(2, 1, 1): ["503", "truncated"], (2, 3, 0): ["reset"], (2, 0, 2): ["html"]}
    lib = make_library()
    with TileServer(bluemarble_tile, faults=faults) as server:
        source = open_source(server.tile_template, retries=3)
        try:
            report = build_atlas(lib, source, zoom=8, atlas_zoom=2, progress=False)
        finally:
            source.close()
        ok = server.ok_counts()
    assert report.read == 16 and not report.failed and max(ok.values()) == 1 and len(ok) == 16
    assert report.requests == 16 + 4


@pytest.mark.slow
def test_a_killed_atlas_resumes_and_folds_every_fetched_tile_exactly_once(tmp_path):
    """SIGKILL an atlas run against a slow server three times, then let it finish: no overview
    tile is served twice, and the pixel counts are exactly those of the tiles the ledger accepted
    (none folded twice, none lost), whatever the kills interrupted."""
    root = tmp_path / "mosaic_library"
    Library.create(root).close()
    with TileServer(bluemarble_tile, delay=0.2, lifetime=600) as server:
        argv = builder_argv("atlas", "--library", root, "--source", server.tile_template, "--zoom", "11",
                            "--atlas-zoom", "4", "--threads", "4", "--batch", "8")
        progress = []
        for more in (20, 45, 30):  # kill once the server has answered this many more tiles
            kill_when_served(argv, server, more)
            progress.append(len(server.ok_counts()))
        final = run_cli(*argv[3:], "--json", timeout=300)
        ok = server.ok_counts()
    assert final.returncode == 0, final.stderr
    assert 0 < progress[0] < progress[-1] < 256, progress  # every kill landed in the work
    assert max(ok.values()) == 1
    with Library.open(root) as lib:
        statuses = dict(lib.conn.execute(f"SELECT status, COUNT(*) FROM {ATLAS_LEDGER_TABLE} GROUP BY status"))
        accepted = lib.conn.execute(f"SELECT z, x, y FROM {ATLAS_LEDGER_TABLE} WHERE status = 'accepted'").fetchall()
        pixels = dict(lib.conn.execute("SELECT bucket_id, pixels FROM atlas_buckets"))
        expected = np.zeros(5000, np.int64)
        for z, x, y in accepted:
            rgb = np.asarray(decode_tile(bluemarble_tile(z, x, y)).image)
            expected += np.bincount(tile_blocks(rgb, (z, x, y), 11, lib.index).bucket, minlength=5000)
        assert set(statuses) <= {"accepted", "claimed"} and statuses["accepted"] + statuses.get("claimed", 0) == 256
        assert statuses.get("claimed", 0) <= 3 * 4  # at most the requests on the wire at each kill
        assert {b: n for b, n in enumerate(expected.tolist()) if n} == pixels
        assert reachability(lib.conn, lib.bucket_counts())["reachable_empty"] > 0


# --- the card ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_card_states_reachability_with_an_atlas_and_is_unchanged_without(make_library):
    """Card text from a library's own stats: without an atlas no word of it (the card as before);
    with one, the empty buckets split into reachable and not seen, with the library's figures."""
    from builder.publish.card import CardStats, reachability_note, render_card

    lib = make_library()
    harvest(lib, "earth", plan="1", zoom=6, max_tiles=40, seed=0, progress=False, workers=1)

    def card() -> str:
        s = lib.stats()
        return render_card(CardStats(tiles=s["tiles"], buckets_populated=s["buckets_populated"],
                                     buckets_full=s["buckets_full"], cap=s["cap"], by_source=s["by_source"],
                                     reachability=s.get("reachability")))

    plain = card()
    assert "reachability" not in lib.stats() and "atlas" not in plain
    assert plain == render_card(CardStats(tiles=40, buckets_populated=lib.stats()["buckets_populated"],
                                          buckets_full=0, cap=lib.cap, by_source={"earth": 40}))
    build_atlas(lib, "earth", zoom=8, atlas_zoom=1, progress=False)
    reach = lib.stats()["reachability"]
    text = card()
    empty = 5000 - reach["populated"]
    assert (f"Of the {empty:,} empty buckets, {reach['reachable_empty']:,} were seen by the library's colour atlas"
            in text) and f"{reach['not_seen']:,} were not seen on the source" in text
    note = reachability_note(CardStats(tiles=40, buckets_populated=reach["populated"], buckets_full=0, cap=lib.cap,
                                       by_source={"earth": 40}, reachability=reach))
    assert note and note in text and text.replace(note, "", 1) == plain  # the note, and nothing else, added


def kill_when_served(argv: list[str], server: TileServer, more: int) -> None:
    """Start ``argv`` and SIGKILL it once the server has answered ``more`` further tiles."""
    proc = subprocess.Popen(argv, cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    goal, deadline = len(server.ok_counts()) + more, time.monotonic() + 120
    while len(server.ok_counts()) < goal and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkills_during_an_aimed_harvest_leave_a_consistent_library(tmp_path):
    """Three SIGKILLs of ``harvest --target underfilled`` against a slow server, then a run to the
    end: after each kill every crash invariant holds (tests/support/campaigns/crash.py), no tile is served
    twice, and the aimed fetches carry their prediction and measured colour."""
    from tests.support.campaigns.crash import Figures, check_after_kill, committed_rows

    root = tmp_path / "mosaic_library"
    Library.create(root).close()
    figures = Figures(writer="harvest --target")
    with TileServer(bluemarble_tile, delay=0.1, lifetime=900) as server:
        with Library.open(root) as lib:
            source = open_source(server.tile_template)
            try:
                build_atlas(lib, source, zoom=8, atlas_zoom=3, progress=False)
            finally:
                source.close()
        atlas_served = len(server.ok_counts())
        argv = builder_argv("harvest", "--library", root, "--source", server.tile_template,
                            "--zoom", "8", "--target", "underfilled", "--threads", "4", "--batch", "10", "--workers", "1",
                            "--max-requests", "150", "--seed", "4")
        for more in (25, 40, 30):
            snapshot = committed_rows(root)
            kill_when_served(argv, server, more)
            figures.rounds += 1
            figures.kills += 1
            check_after_kill(root, snapshot, 100, figures, harvest=True)
        final = run_cli(*argv[3:], "--json", timeout=300)
        ok = server.ok_counts()
    assert final.returncode == 0, final.stderr
    assert figures.violations == [], figures.violations
    assert max(ok.values()) == 1 and len(ok) > atlas_served + 95
    with Library.open(root, readonly=True) as lib:
        rows = lib.conn.execute("SELECT status, predicted_bucket, bucket_id, mean_l FROM fetched").fetchall()
    decoded = [r for r in rows if r[0] == "accepted" or r[0].startswith("rejected:bucket") or r[0] == "rejected:duplicate"]
    assert decoded and all(r[2] is not None and r[3] is not None for r in decoded)
    assert all(r[1] is not None for r in rows)  # committed with each claim, so no kill loses one


# --- the vectorised fold against the per-block code it replaced ---------------------------------


@pytest.mark.parametrize("zoom, atlas_zoom", [(15, 7), (14, 7), (12, 7), (11, 7), (6, 0)])
def test_vectorised_fold_gives_the_per_block_results_on_real_overview_tiles(make_library, zoom, atlas_zoom):
    """Blocks (positions, LAB bit for bit, buckets, keys) and the samples kept after folding a run
    of real overview tiles (earth's, with a nodata corner) equal the per-block code's."""
    from builder.core import db

    lib = make_library()
    earth = open_source("earth")
    refs = [(atlas_zoom, x, y) for x, y in ([(60, 40), (61, 40), (20, 50), (100, 61)] if atlas_zoom else [(0, 0)])]
    stores = {}
    for name in ("vectorised", "per_block"):
        conn = db.connect(lib.root / f"{name}.db")
        db.create_schema(conn)
        db.create_atlas_tables(conn)
        stores[name] = SampleStore(conn, "earth", zoom, 8, None, lib.index)
    for ref in refs:
        rgb = earth.render(*ref)
        rgb[:3, :5] = 0  # nodata
        new, old = tile_blocks(rgb, ref, zoom, lib.index), per_block_tile_blocks(rgb, ref, zoom, lib.index)
        for field in ("x", "y", "lab", "bucket", "key"):
            assert np.array_equal(getattr(new, field), getattr(old, field)), field
        with stores["vectorised"].conn:
            stores["vectorised"].add(new)
        with stores["per_block"].conn:
            per_bucket_add(stores["per_block"], old)
    tables = {name: [s.conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4").fetchall()
                     for t in ("atlas_sample", "atlas_buckets")] for name, s in stores.items()}
    assert tables["vectorised"] == tables["per_block"] and tables["vectorised"][0]
    assert np.array_equal(stores["vectorised"].count, stores["per_block"].count)
    assert np.array_equal(stores["vectorised"].max_key, stores["per_block"].max_key)
