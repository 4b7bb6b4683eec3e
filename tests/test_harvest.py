"""harvest against a real loopback tile server (real Blue Marble crops as JPEG) and the Earth source.

In-process runs use ``workers=1`` (no pipeline pool): the tile server's threads live in the
test process, and forking beside them is the hazard harvest itself avoids. The process pool
path is exercised by the CLI subprocess runs here and in test_harvest_kill.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from builder.acquire.harvest import PREFETCH, harvest
from builder.acquire.ledger import Claim, FetchLedger, FetchResult
from builder.acquire.sources import EarthSource, HttpSource, is_blank_tile
from builder.acquire.tiles import Sampler, tile_centre, tile_range
from builder.cli import main
from builder.core.library import Library
from builder.core.plans import load_plan
from builder.ops.verify import verify_library
from tests.support.cli import run_cli
from tests.support.tileserver import FAULTS, Rates, TileServer, distinct_tile, world_image

# What each injected fault must become in the report: (report field, key).
FAULT_SIGNATURE = {
    "500": ("faults", "http_500"),
    "502": ("faults", "http_502"),
    "503": ("faults", "http_503"),
    "429": ("faults", "http_429"),
    "hang": ("faults", "timeout"),
    "stall": ("faults", "timeout"),
    "reset": ("faults", "connection"),
    "truncated": ("faults", "truncated"),
    "html": ("faults", "not_image"),
    "empty": ("faults", "empty"),
    "wrong_size": ("failed", "bad_size"),  # permanent: the tile is given up at once
    "placeholder": ("rejected", "blank"),  # an unlisted placeholder passes the source, the prefilter drops it
    "404": ("missing", None),
}


@pytest.fixture(scope="module", autouse=True)
def warm_world_image():
    """Decode the server's world image once, up front: on a busy machine its first decode can
    outlast a test's short client read timeout, and the retry would be served the tile twice."""
    world_image()


class RoundRobinFaults:
    """The k-th distinct tile requested gets fault ``FAULTS[k % n]`` on its first two attempts.

    Whatever tiles the sampler picks, every fault kind is served (several times), and a
    client with three retries then gets each retryable tile.
    """

    def __init__(self, tiles_with_faults: int) -> None:
        self.limit = tiles_with_faults
        self.order: dict = {}
        self.lock = threading.Lock()

    def __call__(self, tile, attempt):
        with self.lock:
            k = self.order.setdefault(tile, len(self.order))
        if k >= self.limit or attempt > 2:
            return None
        return FAULTS[k % len(FAULTS)]


def stored_rows(lib: Library) -> list[tuple]:
    return lib.conn.execute(
        "SELECT id, bucket_id, source, z, x, y, lon, lat, region, harvested_at FROM tiles ORDER BY rowid").fetchall()


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def test_every_fault_kind_is_counted_and_no_bad_tile_is_stored(make_library):
    assert set(FAULT_SIGNATURE) == set(FAULTS), "a new server fault kind needs its expected report entry"
    lib = make_library()
    faults = RoundRobinFaults(3 * len(FAULTS))
    # A read timeout that a normal answer meets even on a loaded machine (else the retry of a tile
    # answered late is served twice), well below the server's hang and stall.
    with TileServer(distinct_tile, faults=faults, hang_seconds=4.0) as server:
        source = HttpSource(server.tile_template, retries=3, backoff_factor=0.01, timeout=(1.0, 1.0))
        report = harvest(lib, source, "1", zoom=10, threads=8, batch=25, max_tiles=60, seed=3, workers=1,
                         progress=False)
    # Counted once the server has stopped and every answer in progress has been recorded.
    served = server.outcome_counts()
    ok_counts = server.ok_counts()

    assert report.accepted == 60 and report.stop_reason == "max_tiles"
    for kind in FAULTS:
        assert served[kind] >= 1, f"server never injected {kind}"
        where, key = FAULT_SIGNATURE[kind]
        value = getattr(report, where)
        assert (value >= 1) if key is None else (value[key] >= 1), f"{kind} missing from report.{where}: {value}"
    # Every faulty answer the server sent is one faulty request of the report (no tile is not a fault).
    assert sum(report.faults.values()) == sum(n for kind, n in served.items() if kind not in {"ok", "404", "placeholder"})
    assert report.requests == sum(served.values())
    assert max(ok_counts.values()) == 1, "a tile was served successfully twice"

    check = verify_library(lib, workers=1, progress=False)
    assert check.ok, check.summary()
    rows = stored_rows(lib)
    assert len(rows) == 60
    for tile_id, bucket_id, _src, z, x, y, *_ in rows:
        stored = np.asarray(Image.open(lib.tile_path(bucket_id, tile_id)))
        # The stored pixels are exactly the served tile's (so not a placeholder, error page or half tile).
        assert np.array_equal(stored, decoded(distinct_tile(z, x, y)))
        assert not is_blank_tile(stored)

    statuses = Counter(s for (s,) in lib.conn.execute("SELECT status FROM fetched WHERE source = ?", (source.name,)))
    assert statuses["accepted"] == 60 and statuses["claimed"] == 0
    assert statuses["fault:bad_size"] == report.failed["bad_size"] >= 1
    assert statuses["none"] == report.missing >= 1
    assert statuses["rejected:blank"] == report.rejected["blank"] >= 1
    assert list(lib.temp_dir.iterdir()) == []


def test_provenance_columns_and_resume_never_refetches(make_library):
    lib = make_library()
    plan = load_plan("1")
    with TileServer(distinct_tile) as server:
        source = HttpSource(server.tile_template)
        start = datetime.now(UTC) - timedelta(seconds=1)
        first = harvest(lib, source, plan, zoom=12, threads=6, batch=20, max_tiles=30, seed=11, workers=1,
                        progress=False)
        # Same seed again: the sampler walks the same permutation, so every tile of the first run
        # comes up and must be skipped because `fetched` holds it.
        second = harvest(lib, source, plan, zoom=12, threads=6, batch=20, max_tiles=30, seed=11, workers=1,
                         progress=False)
        end = datetime.now(UTC) + timedelta(seconds=1)
        ok_counts = server.ok_counts()
        template = server.tile_template
    assert first.accepted == second.accepted == 30
    assert max(ok_counts.values()) == 1

    regions = {r.name: r for r in plan.regions}
    rows = stored_rows(lib)
    assert len(rows) == 60
    for _id, _bucket, src, z, x, y, lon, lat, region, harvested_at in rows:
        assert src == source.name == template
        assert z == 12
        assert (lon, lat) == pytest.approx(tile_centre(z, x, y), abs=1e-12)
        assert region in regions and tile_range(regions[region].bbox, z).contains(x, y)
        assert start <= datetime.fromisoformat(harvested_at) <= end
    fetched = lib.conn.execute("SELECT z, x, y, status, region FROM fetched").fetchall()
    assert len({(z, x, y) for z, x, y, *_ in fetched}) == len(fetched) == first.fetched + second.fetched
    assert {row[3] for row in fetched} <= {"accepted", "unused"} | {f"rejected:{r}" for r in ("duplicate", "bucket_full")}
    stored_by_region = Counter(row[8] for row in rows)
    for region, n in stored_by_region.items():
        assert first.by_region.get(region, {}).get("accepted", 0) + second.by_region.get(region, {}).get("accepted", 0) == n


@pytest.mark.slow
def test_earth_source_offline_fills_buckets_with_real_colours(tmp_path):
    root = tmp_path / "mosaic_library"
    Library.create(root).close()
    proc = run_cli("harvest", "--library", str(root), "--source", "earth", "--zoom", "6", "--max-tiles", "60",
                   "--seed", "4", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["accepted"] == 60 and report["stop_reason"] == "max_tiles"
    assert report["faults"] == {} and report["requests"] == report["accepted"] + sum(report["rejected"].values())
    assert report["buckets_populated"] >= 25
    assert sum(r["accepted"] for r in report["by_region"].values()) == 60

    earth = EarthSource()
    with Library.open(root, readonly=True) as lib:
        rows = lib.conn.execute("SELECT id, bucket_id, z, x, y, mean_l, mean_a, mean_b, region FROM tiles").fetchall()
        assert len(rows) == 60
        for tile_id, bucket_id, z, x, y, *_ in rows:
            assert np.array_equal(np.asarray(Image.open(lib.tile_path(bucket_id, tile_id))), earth.render(z, x, y))
        lab = np.array([r[5:8] for r in rows])
        regions = {r[8] for r in rows}
    # Real Earth colours: dark blue ocean (b < 0), sandy desert (b > 15), vegetation (a < 0).
    assert (lab[:, 2] < 0).any() and (lab[:, 2] > 15).any() and (lab[:, 1] < 0).any()
    assert lab[:, 0].min() < 30 < lab[:, 0].max()
    assert len(regions) >= 6


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--zoom", "23"], "--zoom 23 is out of range: zoom must be an integer from 0 to 22"),
        (["--zoom", "-1"], "from 0 to 22"),
        (["--zoom", "abc"], "not an integer: 'abc'"),
        (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
        (["--batch", "-5"], "--batch must be an integer >= 1, got -5"),
        (["--rate", "0"], "--rate must be a number of requests per second > 0, got 0.0"),
        (["--rate", "nan"], "--rate must be"),
        (["--max-tiles", "0"], "--max-tiles must be an integer >= 1"),
        (["--max-requests", "-1"], "--max-requests must be an integer >= 1"),
        (["--patience", "0"], "--patience must be an integer >= 1"),
        (["--source", "nowhere"], "--source 'nowhere' is not a known source"),
        (["--source", "ftp://x/{z}/{x}/{y}"], "only http:// and https:// URLs"),
        (["--source", "http://h/{z}/{x}"], "lacks {y}"),
        (["--plan", "PLAN_MISSING"], "does not exist"),
        (["--plan", "PLAN_BAD"], "is not valid JSON"),
        (["--phase", "3"], "invalid choice: '3'"),
        (["--phase", "2", "--plan", "PLAN_MISSING"], "not both"),
    ],
)
def test_bad_values_give_one_line_errors(args, expect, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    args = [{"PLAN_MISSING": str(tmp_path / "missing.json"), "PLAN_BAD": str(bad)}.get(a, a) for a in args]
    # No library exists: every value is checked before the library is opened.
    argv = ["harvest", "--library", str(tmp_path / "nolib"), "--source", "earth", *args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:") and "Traceback" not in err
    assert expect in err


def test_bad_value_from_the_command_line(tmp_path):
    proc = run_cli("harvest", "--library", str(tmp_path / "lib"), "--zoom", "30", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "error: --zoom 30 is out of range: zoom must be an integer from 0 to 22\n"
    assert proc.stdout == ""


def test_second_harvest_on_a_locked_library_gets_the_one_liner(tmp_path):
    root = tmp_path / "mosaic_library"
    with Library.create(root):  # this process holds the writer lock
        proc = run_cli("harvest", "--library", str(root), "--source", "earth", "--zoom", "3", "--max-tiles", "5", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {root} is being written by pid {os.getpid()}; wait for it to finish and retry\n"
    with Library.open(root, readonly=True) as lib:
        assert lib.conn.execute("SELECT COUNT(*) FROM fetched").fetchone()[0] == 0


def test_stop_rules_patience_max_requests_and_plan_exhausted(make_library):
    lib = make_library()
    # Every tile is the unlisted grey placeholder: nothing is ever accepted.
    with TileServer(distinct_tile, missing=lambda tile: True) as server:
        source = HttpSource(server.tile_template)
        stalled = harvest(lib, source, "1", zoom=9, threads=4, batch=10, seed=1, patience=3, workers=1,
                          progress=False)
        assert stalled.stop_reason == "no tile accepted in 3 consecutive batches"
        assert stalled.accepted == 0 and set(stalled.rejected) == {"blank"}
        # Three empty batches, plus at most PREFETCH batches already on the wire when it stopped (finished, not dropped).
        assert 30 <= stalled.fetched == sum(server.outcome_counts().values()) <= 30 + PREFETCH * 10
    with TileServer(distinct_tile) as server:
        source = HttpSource(server.tile_template)
        capped = harvest(lib, source, "1", zoom=9, threads=4, batch=10, max_requests=25, seed=1, workers=1,
                         progress=False)
        assert capped.stop_reason == "max_requests"
        assert capped.requests == 25 == sum(server.outcome_counts().values()) == capped.fetched
    # Phase 2 at zoom 6 is twelve tiles: the run ends when the plan has none left.
    exhausted = harvest(lib, EarthSource(), "2", zoom=6, threads=4, batch=5, seed=1, workers=1, progress=False)
    assert exhausted.stop_reason == "plan exhausted" and exhausted.fetched == exhausted.requests == 12
    again = harvest(lib, EarthSource(), "2", zoom=6, threads=4, batch=5, seed=2, workers=1, progress=False)
    assert again.stop_reason == "plan exhausted" and again.requests == 0
    assert lib.conn.execute("SELECT COUNT(*) FROM fetched WHERE status = 'claimed'").fetchone()[0] == 0


class Outage:
    """While ``down``: the first ``n_503`` distinct tiles requested answer 503 on every attempt, the
    next one a 512x512 image (a permanent fault). Once ``down`` is cleared the server is healthy."""

    def __init__(self, n_503: int) -> None:
        self.n_503 = n_503
        self.down = True
        self.failed: list = []  # tiles served 503, in order
        self.permanent: list = []  # tiles served wrong_size
        self.lock = threading.Lock()

    def __call__(self, tile, attempt):
        with self.lock:
            if not self.down:
                return None
            if tile in self.failed:
                return "503"
            if tile in self.permanent:
                return "wrong_size"
            if len(self.failed) < self.n_503:
                self.failed.append(tile)
                return "503"
            if not self.permanent:
                self.permanent.append(tile)
                return "wrong_size"
            return None


def test_retry_faults_asks_again_only_for_transient_faults(make_library):
    lib = make_library()
    root = lib.root
    outage = Outage(n_503=6)
    with TileServer(distinct_tile, faults=outage) as server:
        source = HttpSource(server.tile_template, retries=1, backoff_factor=0.01)
        first = harvest(lib, source, "1", zoom=10, threads=4, batch=10, max_tiles=15, seed=21, workers=1,
                        progress=False)
        failed, permanent = set(outage.failed), set(outage.permanent)
        assert first.failed == Counter({"http_503": 6, "bad_size": 1}) and first.accepted == 15
        rows = {(z, x, y): (rowid, status) for rowid, z, x, y, status in lib.conn.execute(
            "SELECT rowid, z, x, y, status FROM fetched")}
        assert {t for t, (_, s) in rows.items() if s == "fault:http_503"} == failed
        assert {t for t, (_, s) in rows.items() if s == "fault:bad_size"} == permanent

        outage.down = False  # the server has recovered: only the flag may bring the faulted tiles back
        n = len(server.records)
        second = harvest(lib, source, "1", zoom=10, threads=4, batch=10, max_tiles=5, seed=21, workers=1,
                         progress=False)
        run2 = {r.tile for r in server.records[n:]}
        assert second.accepted == 5 and second.retried_faults == 0
        assert not run2 & (failed | permanent) and not run2 & set(rows)
        lib.close()

        n = len(server.records)
        proc = run_cli("harvest", "--library", str(root), "--source", server.tile_template, "--zoom", "10",
                       "--batch", "10", "--max-tiles", "10", "--seed", "22", "--threads", "4", "--retry-faults",
                       "--json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        third = json.loads(proc.stdout)
        run3 = server.records[n:]
        ok_counts = server.ok_counts()

    assert third["retried_faults"] == 6 and third["failed"] == {} and third["accepted"] == 10
    before = set(rows) | run2
    assert {r.tile for r in run3} & before == failed, "run 3 asked for a tile that had not failed transiently"
    assert all(r.outcome == "ok" for r in run3) and len(run3) == len({r.tile for r in run3})
    assert max(ok_counts.values()) == 1, "a tile was served successfully twice"

    with Library.open(root) as lib:
        after = {(z, x, y): (rowid, status) for rowid, z, x, y, status in lib.conn.execute(
            "SELECT rowid, z, x, y, status FROM fetched")}
        stored = {(z, x, y) for z, x, y in lib.conn.execute("SELECT z, x, y FROM tiles")}
        check = verify_library(lib, workers=1, progress=False)
    assert check.ok, check.summary()
    for tile in failed:  # the same row (rowid and key), now with the retry's outcome
        rowid, status = after[tile]
        assert rowid == rows[tile][0]
        assert status == "accepted" or status.startswith("rejected:"), status
        assert (status == "accepted") == (tile in stored)
    assert after[next(iter(permanent))] == rows[next(iter(permanent))]
    assert len(after) == len(rows) + len(run2) + len(run3) - len(failed)
    assert not any(s == "claimed" or s.startswith("fault:http") for _, s in after.values())


# --- a dead source ---------------------------------------------------------------------------


def fetched_rows(root) -> int:
    with Library.open(root, readonly=True) as lib:
        return lib.conn.execute("SELECT COUNT(*) FROM fetched").fetchone()[0]


def timed_cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = run_cli(*args, timeout=120)
    return proc, time.monotonic() - started


DEAD_CASES = {
    # case: (server faults or None for no server, template, host in the message, verdict in the message)
    "connection refused": (None, "http://127.0.0.1:{port}/tile/{{z}}/{{y}}/{{x}}", "127.0.0.1:{port}",
                           "unreachable: connection refused (is the server running?)"),
    "unresolvable host": (None, "http://tiles.invalid/{{z}}/{{x}}/{{y}}.png", "tiles.invalid",
                          "unreachable: name resolution failed (no network?)"),
    "503 to everything": ("503", "{server}/tile/{{z}}/{{y}}/{{x}}", "127.0.0.1:{port}",
                          "failing: its last"),
}


@pytest.mark.parametrize("max_requests", [300, 40])
@pytest.mark.parametrize("case", sorted(DEAD_CASES))
def test_a_dead_source_stops_fast_with_one_line_exit_3_and_marks_no_tile(case, max_requests, tmp_path, free_port):
    """Nothing listening, a name that never resolves, a server that answers 503 to everything:
    the run stops in seconds (the 25 s bound is only a hang guard), names the host and the cause
    on one line, exits 3, leaves no fetched row, and never exceeds --max-requests, retries
    included (counted by the server itself).  With the small budget the 503 server has used it up
    before its failures lasted long enough for a verdict; the end-of-run verdict still tells."""
    faults, template, host, verdict = DEAD_CASES[case]
    root = tmp_path / "mosaic_library"
    Library.create(root).close()
    server = TileServer(distinct_tile, faults=lambda tile, attempt: faults).start() if faults else None
    try:
        port = server.port if server else free_port
        source = template.format(port=port, server=server.url if server else "")
        proc, seconds = timed_cli("harvest", "--library", str(root), "--source", source, "--zoom", "9", "--seed", "3",
                                  "--max-requests", str(max_requests), "--json")
        received = len(server.records) if server else 0
    finally:
        if server:
            server.stop()
    assert proc.returncode == 3, proc.stderr
    assert seconds < 25, f"{case}: {seconds:.1f} s"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: source {host.format(port=port)} {verdict}"), lines[0]
    assert lines[0].endswith("no tile marked as tried")
    report = json.loads(proc.stdout)
    assert report["stop_reason"] == "source unreachable" and report["source_down"] == lines[0][len("error: "):]
    assert report["accepted"] == 0 and report["failed"] == {} and report["requests"] <= max_requests
    assert received <= max_requests and (server is None or received == report["requests"])
    assert fetched_rows(root) == 0
    assert list((root / "inflight").iterdir()) == []


@pytest.mark.slow
def test_an_outage_shorter_than_the_retries_does_not_stop_the_run(tmp_path):
    """503 to everything for the first 1.5 s, then healthy: every tile's retries (3.75 s or more
    with the default backoff) outlast it, so nothing is lost and the run goes on."""
    root = tmp_path / "mosaic_library"
    Library.create(root).close()
    until = [None]

    def outage(tile, attempt):
        until[0] = until[0] or time.monotonic() + 1.5
        return "503" if time.monotonic() < until[0] else None

    with TileServer(distinct_tile, faults=outage) as server:
        proc, _seconds = timed_cli("harvest", "--library", str(root), "--source", server.tile_template, "--zoom", "9",
                                   "--seed", "3", "--max-tiles", "30", "--json")
        served = server.outcome_counts()
        ok_counts = server.ok_counts()
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["accepted"] == 30 and report["stop_reason"] == "max_tiles" and report["failed"] == {}
    assert served["503"] >= 20 and report["faults"]["http_503"] == served["503"]
    assert max(ok_counts.values()) == 1


def test_a_flaky_server_is_not_taken_for_a_dead_one(make_library):
    """25% of all requests fail (503, resets, 502), seeded: the run harvests on to its target."""
    lib = make_library()
    rates = Rates({"503": 0.12, "reset": 0.08, "502": 0.05}, seed=9, max_per_tile=3)
    with TileServer(distinct_tile, faults=rates) as server:
        source = HttpSource(server.tile_template, retries=4, backoff_factor=0.05)
        report = harvest(lib, source, "1", zoom=11, threads=8, batch=20, max_tiles=80, seed=5, workers=1,
                         progress=False)
        served = server.outcome_counts()
    assert report.stop_reason == "max_tiles" and report.accepted == 80 and report.source_down is None
    assert sum(served.values()) - served["ok"] >= 0.15 * sum(served.values())


def test_max_requests_is_a_hard_cap_and_cut_retries_are_released(make_library):
    """Every tile fails twice before it is served: with a budget of 25 attempts the server sees 25
    requests, no more, and the tiles whose retries the budget cut are not marked as faults."""
    lib = make_library()
    with TileServer(distinct_tile, faults=lambda tile, attempt: "503" if attempt <= 2 else None) as server:
        source = HttpSource(server.tile_template, retries=3, backoff_factor=0.01)
        report = harvest(lib, source, "1", zoom=9, threads=6, batch=10, max_requests=25, seed=2, workers=1,
                         progress=False)
        received = len(server.records)
        ok = set(server.ok_counts())
    assert received == report.requests == 25 and report.stop_reason == "max_requests"
    statuses = Counter(s for (s,) in lib.conn.execute("SELECT status FROM fetched"))
    assert statuses == Counter({"accepted": report.accepted, **({"rejected:blank": report.rejected["blank"]}
                                                                if report.rejected else {})})
    assert report.accepted + sum(report.rejected.values()) == len(ok) and report.failed == {}
    assert report.released >= 1  # tiles started but cut short: released, asked for again by a later run


def test_answers_fetched_before_a_kill_are_stored_not_asked_for_again(make_library):
    """The books a killed run left: three tiles answered (bytes in the in-flight log), one claimed
    but never requested.  The next run stores the answers before asking for anything, up to its
    tile target (what it leaves stays claimed for the run after), and the unrequested tile is
    released; the server is never asked for the answered tiles."""
    lib = make_library()
    with TileServer(distinct_tile) as server:
        source = HttpSource(server.tile_template)
        refs = [r for r in Sampler(load_plan("1"), 10, 77).sample(40)
                if not is_blank_tile(decoded(distinct_tile(*r[:3])))][:4]  # tiles the pipeline accepts
        books = FetchLedger(lib.root, lib.conn, source.name)
        log = books.claim([Claim(r) for r in refs])
        for r in refs[:3]:
            log.requested(r)
            log.answered(FetchResult(r, distinct_tile(*r[:3]), None, "", "2024-05-01T00:00:00+00:00"))
        log.close()  # the process died here

        first = harvest(lib, source, "1", zoom=10, threads=2, batch=5, max_tiles=1, seed=5, workers=1,
                        progress=False)
        second = harvest(lib, source, "1", zoom=10, threads=2, batch=5, max_tiles=3, seed=6, workers=1,
                         progress=False)
        asked = {r.tile for r in server.records}
    answered = {r[:3] for r in refs[:3]}
    assert first.recovery == {"released": 1, "settled": 0, "replayed": 3, "lost": 0}
    assert first.accepted == 1 and first.rejected == {} and first.unused == 0 and first.requests == 0
    assert second.recovery == {"released": 0, "settled": 0, "replayed": 2, "lost": 0}
    assert not answered & asked, "a tile answered before the kill was asked for again"
    statuses = {(z, x, y): s for z, x, y, s in lib.conn.execute("SELECT z, x, y, status FROM fetched")}
    assert all(statuses[t] == "accepted" for t in answered)
    harvested = dict(((z, x, y), at) for z, x, y, at in lib.conn.execute("SELECT z, x, y, harvested_at FROM tiles"))
    assert all(harvested[t] == "2024-05-01T00:00:00+00:00" for t in answered)  # the time of the answer
    assert "claimed" not in statuses.values() and list((lib.root / "inflight").iterdir()) == []
    assert verify_library(lib, workers=1, progress=False).ok
