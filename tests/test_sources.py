"""Tile sources against real servers, files and imagery: every fault kind over real loopback HTTP,
MBTiles and folder round trips, and the Earth source's projection and colours."""

from __future__ import annotations

import io
import math
import pickle
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mercantile
import numpy as np
import pytest
from PIL import Image

from builder.acquire.sources import (
    KNOWN_PLACEHOLDER_SHA256,
    USER_AGENT,
    EarthSource,
    FetchStats,
    FolderSource,
    GateClosed,
    HttpSource,
    MBTilesSource,
    RateLimiter,
    RequestGate,
    SourceHealth,
    TileFault,
    TileSource,
    arcgis_source,
    check_tile_bytes,
    is_blank_tile,
    open_source,
    sniff_format,
)
from builder.acquire.sources.base import DOWN_AFTER_FAILURES, DOWN_AFTER_SECONDS, DOWN_MIN_SECONDS, UNREACHABLE_AFTER
from builder.acquire.sources.transport import NO_NAME, REFUSED, parse_retry_after
from builder.core.errors import SourceError, UsageError
from tests.support.tileserver import (
    PLACEHOLDER_SHA256,
    Rates,
    TileServer,
    bluemarble_tile,
    distinct_tile,
    placeholder_jpeg,
    world_image,
)

SAHARA = mercantile.tile(10.0, 23.0, 6)
TILE = (SAHARA.z, SAHARA.x, SAHARA.y)
FAST = {"timeout": (2.0, 1.0), "backoff_factor": 0.001, "jitter": False}

# server fault -> the stats key the HTTP source counts it under
FAULT_KIND = {
    "500": "http_500",
    "502": "http_502",
    "503": "http_503",
    "429": "http_429",
    "hang": "timeout",
    "stall": "timeout",
    "reset": "connection",
    "truncated": "truncated",
    "html": "not_image",
    "empty": "empty",
}


@pytest.fixture(scope="module", autouse=True)
def warm_tiles():
    """Decode the world image once, so no first request pays for it inside a client timeout."""
    world_image()
    bluemarble_tile(*TILE)


def decode(body: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(body)) as img:
        return np.asarray(img.convert("RGB"))


class SleepLog:
    """Records requested waits instead of sleeping, so backoff policy is visible and tests fast."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)


# --- HTTP: clean path, faults, retries ------------------------------------------------------


def counted(src: HttpSource, gate: RequestGate | None = None) -> FetchStats:
    """The counts a run keeps of ``src``'s attempts (attached as the fetch engine attaches them)."""
    stats = FetchStats()
    src.attach(gate, stats)
    return stats


def test_clean_fetch_returns_the_served_jpeg_and_identifies_itself():
    with TileServer() as server, HttpSource(server.tile_template, **FAST) as src:
        stats = counted(src)
        body = src.fetch(*TILE)
        assert body == server.tile_bytes(*TILE)
        assert sniff_format(body) == "JPEG" and decode(body).shape == (256, 256, 3)
        assert dict(stats) == {"request": 1}
        (record,) = server.records
        assert record.path == f"/tile/{TILE[0]}/{TILE[2]}/{TILE[1]}"
        assert record.user_agent == USER_AGENT and record.user_agent.startswith("mosaic-library-builder/")
        assert isinstance(src, TileSource) and src.screen_blank


@pytest.mark.parametrize("fault", sorted(FAULT_KIND))
def test_each_transient_fault_is_counted_retried_and_never_returned(fault):
    """Two faulty answers, then the tile: the source returns the real bytes and counts both faults."""
    with TileServer(faults={TILE: [fault, fault]}, hang_seconds=3.0) as server:
        with HttpSource(server.tile_template, retries=3, timeout=(2.0, 0.5), backoff_factor=0.001) as src:
            stats = counted(src)
            body = src.fetch(*TILE)
        assert body == server.tile_bytes(*TILE)
        assert server.outcomes(TILE) == [fault, fault, "ok"]
        assert server.ok_counts() == {TILE: 1}
        kind = FAULT_KIND[fault]
        assert dict(stats) == {kind: 2, "retry": 2, "request": 3}


def test_faults_past_the_retry_budget_raise_with_kind_and_attempts():
    with TileServer(faults={TILE: ["503"] * 10}) as server, HttpSource(server.tile_template, retries=2, **FAST) as src:
        stats = counted(src)
        with pytest.raises(TileFault) as info:
            src.fetch(*TILE)
        assert info.value.kind == "http_503" and info.value.retryable and info.value.attempts == 3
        assert isinstance(info.value, SourceError)
        assert dict(stats) == {"http_503": 3, "retry": 2, "request": 3}
        assert server.attempts(TILE) == 3 and not server.ok_counts()


def test_wrong_size_image_is_refused_without_retry():
    with TileServer(faults={TILE: ["wrong_size"]}) as server, HttpSource(server.tile_template, **FAST) as src:
        stats = counted(src)
        with pytest.raises(TileFault) as info:
            src.fetch(*TILE)
        assert info.value.kind == "bad_size" and not info.value.retryable
        assert "512x512" in str(info.value)
        assert server.attempts(TILE) == 1 and dict(stats) == {"bad_size": 1, "request": 1}


def test_oversized_body_is_refused_without_retry():
    with TileServer() as server, HttpSource(server.tile_template, max_bytes=1000, **FAST) as src:
        with pytest.raises(TileFault) as info:
            src.fetch(*TILE)
        assert info.value.kind == "too_large" and not info.value.retryable and server.attempts(TILE) == 1


def test_tile_faults_survive_pickling():
    fault = pickle.loads(pickle.dumps(TileFault("http_503", "u", attempts=3, retry_after=2.0)))
    assert (fault.kind, fault.attempts, fault.retryable, fault.retry_after) == ("http_503", 3, True, 2.0)


def test_404_is_no_tile_not_a_fault():
    with TileServer(faults={TILE: ["404"]}) as server, HttpSource(server.tile_template, **FAST) as src:
        stats = counted(src)
        assert src.fetch(*TILE) is None
        assert dict(stats) == {"request": 1}


def test_out_of_range_tile_is_missing_without_a_request():
    with TileServer() as server, HttpSource(server.tile_template, **FAST) as src:
        assert src.fetch(3, 8, 0) is None and src.fetch(3, 0, -1) is None
        assert server.records == []


def test_retry_after_is_honoured_and_capped():
    waits = SleepLog()
    with TileServer(faults={TILE: ["429"]}, retry_after="7") as server:
        with HttpSource(server.tile_template, sleep=waits, retry_after_max=60) as src:
            assert src.fetch(*TILE) == server.tile_bytes(*TILE)
    assert waits.waits == [7.0]
    capped = SleepLog()
    with TileServer(faults={TILE: ["429"]}, retry_after="7") as server:
        with HttpSource(server.tile_template, sleep=capped, retry_after_max=2.5) as src:
            assert src.fetch(*TILE) == server.tile_bytes(*TILE)
    assert capped.waits == [2.5]


def test_exponential_backoff_is_capped():
    waits = SleepLog()
    with TileServer(faults={TILE: ["500", "502", "500"]}) as server:
        with HttpSource(server.tile_template, sleep=waits, backoff_factor=0.1, backoff_max=0.25, jitter=False) as src:
            assert src.fetch(*TILE) == server.tile_bytes(*TILE)
    assert waits.waits == pytest.approx([0.1, 0.2, 0.25])


def test_parse_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_many_threads_count_every_fault_the_server_served():
    """8 threads, 40 tiles, seeded faults of eight kinds: each tile arrives intact exactly once,
    and the source's counters agree with the server's log request for request."""
    tiles = [(7, 60 + i % 8, 50 + i // 8) for i in range(40)]
    rates = Rates({"500": 0.1, "502": 0.05, "503": 0.1, "429": 0.05, "reset": 0.05, "truncated": 0.05,
                   "html": 0.05, "empty": 0.05}, seed=3, max_per_tile=2)
    with TileServer(distinct_tile, faults=rates) as server:
        for t in tiles:
            server.tile_bytes(*t)
        with HttpSource(server.tile_template, retries=3, **FAST) as src, ThreadPoolExecutor(8) as pool:
            counts = counted(src)
            bodies = list(pool.map(lambda t: src.fetch(*t), tiles))
        assert bodies == [server.tile_bytes(*t) for t in tiles]
        assert server.ok_counts() == {t: 1 for t in tiles}
        served = server.outcome_counts()
        stats = counts.snapshot()
    faults_served = {kind: n for kind, n in served.items() if kind != "ok"}
    assert sum(faults_served.values()) >= 10  # the seed really injects faults
    assert len(faults_served) >= 5
    for kind, n in faults_served.items():
        assert stats[FAULT_KIND[kind]] == n, kind
    assert stats["request"] == sum(served.values())
    assert stats["retry"] == sum(faults_served.values())
    assert all(r.user_agent == USER_AGENT for r in server.records)


def test_rate_limiter_spaces_requests_across_threads_with_a_shared_bucket():
    now = [0.0]
    waits = SleepLog()
    bucket = RateLimiter(2.0, burst=1, clock=lambda: now[0], sleep=waits)
    assert [bucket.acquire() for _ in range(3)] == [0.0, 0.5, 1.0]  # a queue: 2 per second
    now[0] = 1.0  # two tokens' worth of time pays off the debt of the queued two
    assert bucket.acquire() == pytest.approx(0.5)
    now[0] = 10.0
    assert bucket.acquire() == 0.0  # refill is capped at the burst, so no credit piles up
    assert bucket.acquire() == 0.5
    with pytest.raises(UsageError, match="rate"):
        RateLimiter(0)


def test_rate_capped_source_takes_a_token_per_request():
    waits = SleepLog()
    frozen = RateLimiter(4.0, clock=lambda: 0.0, sleep=waits)  # no time passes: every wait is queueing
    with TileServer(faults={(6, 1, 20): ["503"]}) as server:
        with HttpSource(server.tile_template, rate=frozen, **FAST) as src:
            stats = counted(src)
            for x in range(3):
                assert src.fetch(6, x, 20) is not None
    assert stats["request"] == 4  # a retry pays a token too
    assert waits.waits == pytest.approx([0.25, 0.5, 0.75])


# --- the request gate: budget, halt, dead-source verdict -------------------------------------


def test_gate_budget_counts_every_attempt_including_retries_and_is_never_exceeded():
    """One budget for 8 threads and their retries: the server receives exactly the budget, every
    fetch either ends (tile or fault) or is cut by GateClosed, and nothing starts after."""
    tiles = [(7, 40 + i, 50) for i in range(16)]
    with TileServer(distinct_tile, faults=lambda tile, attempt: "503" if attempt <= 2 else None) as server:
        gate = RequestGate(limit=23)
        with HttpSource(server.tile_template, retries=3, **FAST) as src, ThreadPoolExecutor(8) as pool:
            stats = counted(src, gate)

            def fetch(t):
                try:
                    return src.fetch(*t)
                except GateClosed:
                    return "cut"

            got = list(pool.map(fetch, tiles))
        served = len(server.records)
    assert served == gate.spent == stats["request"] == 23
    assert gate.take() is False and gate.closed and gate.down is None
    assert got.count("cut") >= len(tiles) - 23 // 3  # a tile needs three attempts; the rest were cut
    assert all(g == "cut" or g == server.tile_bytes(*t) for g, t in zip(got, tiles))


def test_gate_close_ends_a_backoff_pause_at_once():
    with TileServer(faults={TILE: ["503"] * 5}) as server:
        gate = RequestGate()
        with HttpSource(server.tile_template, retries=3, backoff_factor=30, jitter=False) as src:
            src.attach(gate, None)
            threading.Timer(0.3, gate.close).start()
            started = time.monotonic()
            with pytest.raises(GateClosed):
                src.fetch(*TILE)
            waited = time.monotonic() - started
    assert waited < 10  # the 30 s pause ended with the gate (hang guard; ~0.3 s in practice)
    assert server.attempts(TILE) == 1


@pytest.mark.parametrize(("template", "cause"), [
    ("http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png", REFUSED),
    ("http://tiles.invalid/{{z}}/{{x}}/{{y}}.png", NO_NAME),
])
def test_unreachable_hosts_say_why_and_settle_the_verdict(template, cause, free_port):
    """Connection refused and an unresolvable name (.invalid never resolves) are told apart from
    a host that answered badly; three of them before any answer settle the verdict."""
    gate = RequestGate()
    with HttpSource(template.format(port=free_port), retries=4, backoff_factor=0.01) as src:
        stats = counted(src, gate)
        with pytest.raises((TileFault, GateClosed)) as info:
            src.fetch(*TILE)
    first_fault = info.value if isinstance(info.value, TileFault) else info.value.__cause__
    assert first_fault.kind == "connection" and first_fault.unreachable == cause
    assert gate.down == f"unreachable: {cause}" and gate.closed
    assert stats["request"] == UNREACHABLE_AFTER


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_health_verdicts_for_dead_failing_and_flaky_sources():
    refused = TileFault("connection", "x", unreachable=REFUSED)
    http503 = TileFault("http_503", "x")
    # Unreachable before any answer: settled after UNREACHABLE_AFTER requests.
    health = SourceHealth(Clock())
    assert [health.attempted(refused) for _ in range(UNREACHABLE_AFTER)][-1] == f"unreachable: {REFUSED}"
    # Once the source has answered, a refusal is judged like any failure.
    clock = Clock()
    health = SourceHealth(clock)
    health.attempted(None)
    assert all(health.attempted(refused) is None for _ in range(2 * DOWN_AFTER_FAILURES))
    # Failures in a row, but too briefly and with no tile lost: still alive.
    clock = Clock()
    health = SourceHealth(clock)
    for _ in range(3 * DOWN_AFTER_FAILURES):
        assert health.attempted(http503) is None
    for _ in range(3):
        assert health.gave_up() is None  # three tiles lost, but within DOWN_MIN_SECONDS
    clock.now = DOWN_MIN_SECONDS
    n = 3 * DOWN_AFTER_FAILURES + 1
    assert health.attempted(http503) == f"failing: its last {n} requests all failed (http_503 {n})"
    # No tile given up (retries still curing), but nothing answered for DOWN_AFTER_SECONDS.
    clock = Clock()
    health = SourceHealth(clock)
    for i in range(DOWN_AFTER_FAILURES):
        clock.now = i
        assert health.attempted(http503) is None
    clock.now = DOWN_AFTER_SECONDS
    assert health.attempted(http503).startswith("failing:")
    # 429s are a live server slowing us down: never a failure, never an answer.
    clock = Clock()
    health = SourceHealth(clock)
    for i in range(100):
        clock.now = i
        assert health.attempted(TileFault("http_429", "x", retry_after=1.0)) is None


def test_health_never_trips_on_a_flaky_server():
    """30% faults on every request, seeded, 20,000 requests and 600 tiles given up: no verdict."""
    import random

    rng = random.Random(7)
    clock = Clock()
    health = SourceHealth(clock)
    for i in range(20_000):
        clock.now = i * 0.01
        fault = TileFault("http_503", "x") if rng.random() < 0.3 else None
        assert health.attempted(fault) is None
        if i % 33 == 0:
            assert health.gave_up() is None


# --- URL templates -------------------------------------------------------------------------


def test_url_templates_in_other_field_orders_fetch_the_same_tile():
    with TileServer() as server:
        expected = server.tile_bytes(*TILE)
        for template in (server.tile_template, server.xyz_template, server.query_template):
            with open_source(template, **FAST) as src:
                assert src.name == template
                assert src.fetch(*TILE) == expected, template
        assert [r.tile for r in server.records] == [TILE] * 3
        assert {r.path.split("/")[1] for r in server.records} == {"tile", "xyz", "q"}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("http://tiles.example/{z}/{x}.png", "lacks {y}"),
        ("https://tiles.example/{z}/{x}/{y}/{s}.png", "uses {s}"),
        ("https://tiles.example/{Z}/{x}/{y}", "uses {Z}"),
        ("https://tiles.example/{z/{x}/{y}", "malformed"),
        ("ftp://tiles.example/{z}/{x}/{y}", "only http:// and https://"),
    ],
)
def test_bad_templates_are_refused_naming_the_value(template, message):
    with pytest.raises(UsageError) as info:
        open_source(template)
    assert message in str(info.value) and "tiles.example" in str(info.value)


def test_credentials_in_a_template_stay_out_of_the_name_and_errors():
    with TileServer(faults={TILE: ["500"] * 5}) as server:
        template = server.xyz_template + "?api_key=SECRET123&style=sat"
        with open_source(template, retries=1, **FAST) as src:
            assert "SECRET123" not in src.name and "style=sat" in src.name
            with pytest.raises(TileFault) as info:
                src.fetch(*TILE)
        assert "SECRET123" not in str(info.value)
        assert "api_key=SECRET123" in server.records[0].query  # it was sent, just never shown


# --- ArcGIS and placeholders ---------------------------------------------------------------


def test_arcgis_asks_for_404_instead_of_the_placeholder():
    with TileServer(missing={TILE}) as server:
        with arcgis_source(server.arcgis_template, **FAST) as src:
            assert src.name == "arcgis"
            assert src.fetch(*TILE) is None
        (record,) = server.records
        assert "blankTile=false" in record.query and record.outcome == "404"
        # an ArcGIS MapServer template given as --source gets the same treatment
        with open_source(server.arcgis_template, **FAST) as src:
            assert src.fetch(*TILE) is None
        assert server.records[-1].outcome == "404"


def test_default_source_is_arcgis_world_imagery():
    src = open_source("arcgis")
    assert src.name == "arcgis"
    assert src.url(15, 1, 2) == (
        "https://server.arcgisonline.com/ArcGIS/rest/services/World_Imagery/MapServer/tile/15/2/1?blankTile=false"
    )
    assert "9eafd300d61393184a4abc1d458564cfd1cd9b6f9c4e9c74687045c0a0e5b858" in KNOWN_PLACEHOLDER_SHA256
    src.close()


def test_placeholder_served_anyway_is_caught_by_digest_or_by_is_blank_tile():
    with TileServer(missing={TILE}) as server:
        with HttpSource(server.tile_template, placeholder_sha256=[PLACEHOLDER_SHA256], **FAST) as src:
            stats = counted(src)
            assert src.fetch(*TILE) is None and dict(stats) == {"request": 1}  # one request, answered: no tile
        with HttpSource(server.tile_template, **FAST) as src:  # digest unknown: bytes come through...
            body = src.fetch(*TILE)
        assert body == placeholder_jpeg() and 2000 < len(body) < 3000
        assert is_blank_tile(decode(body))  # ...and the decoded-tile check catches them
        assert server.outcomes(TILE) == ["placeholder", "placeholder"]


def test_closed_source_refuses_to_fetch():
    with TileServer() as server:
        src = HttpSource(server.tile_template, **FAST)
        src.close()
        with pytest.raises(SourceError, match="closed"):
            src.fetch(*TILE)


# --- is_blank_tile and body checks ---------------------------------------------------------


def test_is_blank_tile_flags_flat_and_nodata_tiles_only():
    flat = np.full((256, 256, 3), (30, 60, 120), np.uint8)
    assert is_blank_tile(flat)
    real = decode(distinct_tile(9, 100, 200))
    assert not is_blank_tile(real)
    nodata = np.zeros_like(real)
    nodata[:, :20] = real[:, :20]  # 8% imagery at the edge of coverage, the rest black fill
    assert is_blank_tile(nodata)
    half = np.zeros_like(real)
    half[:, :128] = real[:, :128]
    assert not is_blank_tile(half)
    assert is_blank_tile(flat[..., 0])  # greyscale accepted
    with pytest.raises(ValueError):
        is_blank_tile(flat, mode_fraction=0.4)


def test_check_tile_bytes_reads_formats_from_magic_bytes():
    img = Image.fromarray(decode(distinct_tile(5, 3, 4)))
    for fmt in ("PNG", "JPEG", "WEBP"):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        assert check_tile_bytes(buf.getvalue(), "t", content_type="application/octet-stream") == fmt
    with pytest.raises(TileFault) as info:
        check_tile_bytes(b"<html>nope</html>", "t", content_type="image/jpeg")
    assert info.value.kind == "not_image"
    with pytest.raises(TileFault) as info:
        check_tile_bytes(b"", "t")
    assert info.value.kind == "empty"


# --- MBTiles -------------------------------------------------------------------------------


def make_mbtiles(path: Path, tiles: dict[tuple[int, int, int], bytes], fmt: str = "jpg", as_view: bool = False):
    """A real MBTiles file: metadata + tiles (TMS rows), or the map/images + view layout."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE metadata (name TEXT, value TEXT)")
    conn.executemany("INSERT INTO metadata VALUES (?, ?)", [("name", "test"), ("format", fmt)])
    rows = [(z, x, (1 << z) - 1 - y, data) for (z, x, y), data in tiles.items()]
    if as_view:
        conn.execute("CREATE TABLE map (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_id TEXT)")
        conn.execute("CREATE TABLE images (tile_id TEXT PRIMARY KEY, tile_data BLOB)")
        for i, (z, x, row, data) in enumerate(rows):
            conn.execute("INSERT INTO map VALUES (?, ?, ?, ?)", (z, x, row, f"t{i}"))
            conn.execute("INSERT INTO images VALUES (?, ?)", (f"t{i}", data))
        conn.execute(
            "CREATE VIEW tiles AS SELECT zoom_level, tile_column, tile_row, tile_data "
            "FROM map JOIN images ON map.tile_id = images.tile_id"
        )
    else:
        conn.execute(
            "CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB)"
        )
        conn.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("as_view", [False, True])
def test_mbtiles_round_trip_with_tms_rows(tmp_path, as_view):
    tiles = {(3, 2, 1): distinct_tile(3, 2, 1), (3, 5, 6): distinct_tile(3, 5, 6), (4, 0, 15): distinct_tile(4, 0, 15)}
    path = make_mbtiles(tmp_path / "world.mbtiles", tiles, as_view=as_view)
    with open_source(str(path), retries=9) as src:  # HTTP-only options are ignored here
        assert isinstance(src, MBTilesSource) and src.name == "mbtiles:world.mbtiles"
        for (z, x, y), data in tiles.items():
            assert src.fetch(z, x, y) == data
        assert src.fetch(3, 2, 6) is None  # the TMS row of (3, 2, 1) is not an XYZ tile here
        assert src.fetch(9, 0, 0) is None
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"


def test_mbtiles_is_opened_read_only(tmp_path):
    path = make_mbtiles(tmp_path / "ro.mbtiles", {(1, 0, 0): distinct_tile(1, 0, 0)})
    with MBTilesSource(path) as src:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            src._conn.execute("DELETE FROM tiles")


def test_mbtiles_bad_files_fail_at_open(tmp_path):
    (tmp_path / "text.mbtiles").write_text("not a database at all, just text that is long enough" * 10)
    with pytest.raises(SourceError, match="text.mbtiles"):
        open_source(str(tmp_path / "text.mbtiles"))
    conn = sqlite3.connect(tmp_path / "empty.mbtiles")
    conn.execute("CREATE TABLE other (a)")
    conn.close()
    with pytest.raises(SourceError, match="no 'tiles' table"):
        open_source(str(tmp_path / "empty.mbtiles"))
    make_mbtiles(tmp_path / "vector.mbtiles", {(0, 0, 0): b"\x1a\x00"}, fmt="pbf")
    with pytest.raises(SourceError, match="pbf"):
        open_source(str(tmp_path / "vector.mbtiles"))
    with pytest.raises(SourceError, match="absent.mbtiles"):
        open_source(str(tmp_path / "absent.mbtiles"))


def test_mbtiles_corrupt_tile_is_a_permanent_fault(tmp_path):
    path = make_mbtiles(tmp_path / "bad.mbtiles", {(2, 1, 1): b"<html>oops</html>"})
    with MBTilesSource(path) as src:
        with pytest.raises(TileFault) as info:
            src.fetch(2, 1, 1)
    assert info.value.kind == "not_image" and not info.value.retryable


# --- folder --------------------------------------------------------------------------------


def test_folder_source_reads_z_x_y_files(tmp_path):
    root = tmp_path / "mytiles"
    png = io.BytesIO()
    Image.fromarray(decode(distinct_tile(6, 10, 20))).save(png, format="PNG")
    (root / "6" / "10").mkdir(parents=True)
    (root / "6" / "10" / "20.png").write_bytes(png.getvalue())
    (root / "6" / "11").mkdir()
    (root / "6" / "11" / "20.jpg").write_bytes(distinct_tile(6, 11, 20))
    (root / "6" / "11" / "21.jpeg").write_bytes(b"garbage")
    with open_source(str(root), timeout=3) as src:
        assert isinstance(src, FolderSource) and src.name == "folder:mytiles"
        assert src.fetch(6, 10, 20) == png.getvalue()
        assert src.fetch(6, 11, 20) == distinct_tile(6, 11, 20)
        assert src.fetch(6, 10, 21) is None and src.fetch(7, 0, 0) is None
        with pytest.raises(TileFault) as info:
            src.fetch(6, 11, 21)
        assert info.value.kind == "not_image"


def test_folder_source_validates_the_path(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"x")
    with pytest.raises(SourceError, match="no numeric zoom folders"):
        open_source(str(tmp_path / "flat"))


# --- Earth ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def earth():
    with EarthSource() as src:
        yield src


def mean_rgb(body: bytes) -> np.ndarray:
    return decode(body).reshape(-1, 3).mean(axis=0)


def test_earth_tiles_are_256_png_with_real_colours(earth):
    sahara = earth.fetch(5, *mercantile.tile(10.0, 23.0, 5)[:2])
    with Image.open(io.BytesIO(sahara)) as img:
        assert (img.format, img.size, img.mode) == ("PNG", (256, 256), "RGB")
    r, g, b = mean_rgb(sahara)
    assert r > 120 and r > b + 30 and g > b  # sand
    pacific = earth.fetch(5, *mercantile.tile(-140.0, -5.0, 5)[:2])
    r, g, b = mean_rgb(pacific)
    assert b > r + 20 and b > g  # deep blue
    amazon = earth.fetch(5, *mercantile.tile(-62.0, -5.0, 5)[:2])
    r, g, b = mean_rgb(amazon)
    assert g > b and g >= r  # forest green
    assert earth.name == "earth" and earth.screen_blank is False
    assert earth.fetch(5, 32, 0) is None


def scalar_sample(image: np.ndarray, lon: float, lat: float) -> np.ndarray:
    """An independent, one-point bilinear sample of the equirectangular image."""
    h, w = image.shape[:2]
    u = (lon + 180.0) / 360.0 * w - 0.5
    v = (90.0 - lat) / 180.0 * h - 0.5
    i0, j0 = math.floor(v), math.floor(u)
    fu, fv = u - j0, v - i0
    out = np.zeros(3)
    for di, wv in ((0, 1 - fv), (1, fv)):
        for dj, wu in ((0, 1 - fu), (1, fu)):
            out += wv * wu * image[min(max(i0 + di, 0), h - 1), (j0 + dj) % w].astype(float)
    return out


@pytest.mark.parametrize(("z", "x", "y"), [(0, 0, 0), (3, 4, 2), (6, 33, 27), (4, 15, 12)])
def test_earth_pixels_sample_the_inverse_mercator_position(earth, z, x, y):
    tile = earth.render(z, x, y)
    image = earth.image
    for px, py in ((0, 0), (128, 77), (255, 255), (31, 200)):
        # the centre of pixel (px, py) is the centre of tile (x*256+px, y*256+py) at zoom z+8
        b = mercantile.bounds(x * 256 + px, y * 256 + py, z + 8)
        lat = max(-85.0511, min(85.0511, (b.south + b.north) / 2))
        expected = scalar_sample(image, (b.west + b.east) / 2, lat)
        assert np.abs(tile[py, px].astype(float) - expected).max() <= 1.5, (px, py)


def test_earth_is_thread_safe_from_a_cold_start():
    tiles = [(4, x, y) for x in range(4, 8) for y in range(5, 7)]
    with EarthSource() as cold, ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda t: cold.fetch(*t), tiles * 2))
    with EarthSource() as warm:
        sequential = [warm.fetch(*t) for t in tiles * 2]
    assert parallel == sequential and all(tile is not None for tile in parallel)


# --- open_source dispatch ------------------------------------------------------------------


def test_open_source_dispatches_and_explains_unknown_values(tmp_path):
    assert isinstance(open_source("earth", retries=3, timeout=1), EarthSource)
    assert isinstance(open_source("ARCGIS"), HttpSource)
    with pytest.raises(UsageError) as info:
        open_source("bogus-source")
    assert "bogus-source" in str(info.value) and "arcgis" in str(info.value) and ".mbtiles" in str(info.value)
    (tmp_path / "tiles.txt").write_text("x")
    with pytest.raises(UsageError, match="tiles.txt"):
        open_source(str(tmp_path / "tiles.txt"))
    with pytest.raises(UsageError, match="empty"):
        open_source("  ")


def test_earth_source_takes_a_world_image_larger_than_the_tile_decode_limit(tmp_path):
    """Importing the tile decoder must not shrink Pillow's global limit under other decoders:
    an 8200x4100 world image (33.6 Mpx: Pillow refused it at twice a 16.7 Mpx global) still serves tiles."""
    import builder.core.decode  # noqa: F401  (the module whose import once lowered the global limit)

    world = np.zeros((4100, 8200, 3), dtype=np.uint8)
    world[:, :, 2] = 180  # all ocean blue
    path = tmp_path / "world.jpg"
    Image.fromarray(world).save(path, quality=80)
    source = EarthSource(path)
    try:
        tile = Image.open(io.BytesIO(source.fetch(2, 1, 1))).convert("RGB")
    finally:
        source.close()
    assert tile.size == (256, 256)
    assert np.asarray(tile)[..., 2].mean() > 150


def test_the_source_base_declares_what_a_run_reads_with_conservative_defaults():
    """A new source subclasses TileSource: without fetch and close it cannot be made; with them it
    is taken as remote (never asked twice) and screened for blank tiles until it says otherwise."""

    class Half(TileSource):
        def close(self) -> None:
            pass

    with pytest.raises(TypeError, match="fetch"):
        Half()

    class Bytes(Half):
        name = "bytes"

        def fetch(self, z: int, x: int, y: int) -> bytes | None:
            return None

    with Bytes() as src:
        assert (src.remote, src.screen_blank, src.host, src.takes_gate) == (True, True, None, False)
    assert [(s.remote, s.takes_gate) for s in (EarthSource(), HttpSource("http://127.0.0.1:9/{z}/{x}/{y}"))] == [
        (False, False), (True, True)]
