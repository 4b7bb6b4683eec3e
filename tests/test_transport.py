"""The HTTP transport on its own, against a real server on 127.0.0.1: what a source that is not
an XYZ template (a byte-range reader of one big archive) gets from it without writing a retry
loop: retries of 5xx, 429 with ``Retry-After`` and truncated bodies, the run's gate, and the
caller's body check inside each attempt."""

from __future__ import annotations

import mercantile
import pytest

from builder.acquire.sources import FetchStats, GateClosed, HttpTransport, RequestGate, TileFault, check_tile_bytes
from tests.support.tileserver import TileServer

TILE = (lambda t: (t.z, t.x, t.y))(mercantile.tile(10.0, 23.0, 6))
QUICK = {"timeout": (2.0, 1.0), "backoff_factor": 0.001, "jitter": False}


def tile_url(server: TileServer) -> str:
    z, x, y = TILE
    return server.tile_template.format(z=z, x=x, y=y)


def test_a_byte_range_survives_5xx_429_and_a_truncated_body_with_every_attempt_gated_and_counted():
    with TileServer(faults={TILE: ["503", "429", "truncated"]}, retry_after="0") as server:
        transport = HttpTransport("archive", **QUICK)
        gate, counts = RequestGate(limit=10), FetchStats()
        transport.gate, transport.attempts = gate, counts
        try:
            body = transport.get(tile_url(server), "archive bytes 10-109", headers={"Range": "bytes=10-109"},
                                 ok_statuses=(206,))
        finally:
            transport.close()
        whole = server.tile_bytes(*TILE)
        assert server.outcomes(TILE) == ["503", "429", "truncated", "ok"]
    assert body == whole[10:110]
    assert gate.spent == 4 and gate.down is None
    assert dict(counts) == {"request": 4, "http_503": 1, "http_429": 1, "truncated": 1, "retry": 3}


def test_retry_after_of_a_429_is_the_pause_capped_by_retry_after_max():
    pauses: list[float] = []
    with TileServer(faults={TILE: ["429", "429"]}, retry_after="7") as server:
        transport = HttpTransport("archive", retry_after_max=3.0, sleep=pauses.append, **QUICK)
        with_range = transport.get(tile_url(server), "archive", headers={"Range": "bytes=0-9"}, ok_statuses=(206,))
        transport.close()
        assert with_range == server.tile_bytes(*TILE)[:10]
    assert pauses == [3.0, 3.0]


def test_a_range_the_server_ignores_is_a_permanent_fault_asked_once():
    with TileServer() as server:
        transport = HttpTransport("archive", **QUICK)
        transport.attempts = counts = FetchStats()
        with pytest.raises(TileFault) as caught:
            transport.get(tile_url(server), "archive", ok_statuses=(206,))  # no Range header: 200, not 206
        transport.close()
        assert server.attempts(TILE) == 1
    assert caught.value.kind == "http_200" and not caught.value.retryable and caught.value.attempts == 1
    assert dict(counts) == {"request": 1, "http_200": 1}


def test_the_callers_body_check_runs_inside_each_attempt_so_a_bad_body_is_retried():
    def image_only(body: bytes, content_type: str | None, shown: str) -> bytes:
        check_tile_bytes(body, shown, content_type=content_type)
        return body

    with TileServer(faults={TILE: ["html", "empty"]}) as server:
        transport = HttpTransport("tiles", **QUICK)
        transport.attempts = counts = FetchStats()
        body = transport.get(tile_url(server), "tiles", check=image_only)
        placeholder = transport.get(tile_url(server), "tiles", check=lambda body, ct, shown: None)
        transport.close()
        assert server.outcomes(TILE) == ["html", "empty", "ok", "ok"]
        assert body == server.tile_bytes(*TILE)
    assert placeholder is None
    assert dict(counts) == {"request": 4, "not_image": 1, "empty": 1, "retry": 2}


def test_a_spent_gate_stops_the_retries_and_no_request_goes_out_after_it():
    with TileServer(faults={TILE: ["503"] * 5}) as server:
        transport = HttpTransport("archive", **QUICK)
        counts = FetchStats()
        transport.gate, transport.attempts = RequestGate(limit=2), counts
        with pytest.raises(GateClosed):
            transport.get(tile_url(server), "archive")
        transport.close()
        assert server.attempts(TILE) == 2
    assert dict(counts) == {"request": 2, "http_503": 2, "retry": 2}


def test_a_closed_transport_refuses_to_ask():
    transport = HttpTransport("archive")
    transport.close()
    with pytest.raises(Exception, match="'archive' is closed"):
        transport.get("http://127.0.0.1:9/", "archive")
