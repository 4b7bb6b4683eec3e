"""A real HTTP tile server on 127.0.0.1 with fault injection, for tests of sources and harvest.

    with TileServer(faults={(6, 33, 27): ["503", "truncated"]}) as server:
        src = HttpSource(server.tile_template, timeout=(2, 0.5))
        src.fetch(6, 33, 27)            # 503, then a truncated body, then the tile
        assert server.ok_counts()[(6, 33, 27)] == 1

Layouts served (all the same tiles, so URL templates in any field order can be tested):

- ``/tile/{z}/{y}/{x}``, also under any prefix such as ``/ArcGIS/rest/services/World_Imagery/
  MapServer/tile/{z}/{y}/{x}`` (the ArcGIS layout, ``?blankTile=false`` understood);
- ``/xyz/{z}/{x}/{y}`` with an optional extension (OSM layout);
- ``/q?z=..&x=..&y=..`` with the parameters in any order.

Faults are chosen per tile and per attempt (1 = first request of that tile), so "fail the
first N attempts, then succeed" is how every fault is exercised with retries. ``faults`` is a
mapping ``{(z, x, y): [kind, kind, ...]}`` (kinds for attempts 1, 2, ...), a :class:`Schedule`,
:class:`Rates` (seeded pseudo-random faults, at most N per tile), or any callable
``(tile, attempt) -> kind | None``. Kinds (:data:`FAULTS`):

    "500" "502" "503"   that status with a short text body
    "429"               429 with ``Retry-After: <server.retry_after>``
    "hang"              send nothing for ``hang_seconds`` (past the client timeout), then the tile
    "stall"             headers and half the body, then nothing for ``hang_seconds``, then the rest
    "reset"             close the socket with an RST before any response
    "truncated"         200 with Content-Length of the whole tile, half the body, then close
    "html"              200 text/html error page
    "empty"             200 image/jpeg with an empty body
    "placeholder"       200 with the ArcGIS-like grey "Map data not yet available" JPEG
    "wrong_size"        200 with a real 512x512 JPEG
    "404"               404

A successful (or truncated) answer honours ``Range: bytes=first-last`` (206 with that slice of
the tile), as a server of one big archive read by byte ranges would.

Tiles listed in ``missing`` have no imagery: like ArcGIS, they are answered with the
placeholder, or with 404 when the request carries ``blankTile=false``.

Every request is logged (:class:`RequestRecord`, thread-safe) so tests can assert, say, that
each tile was served successfully exactly once. The server is bounded: ``stop()`` (called by
the context manager) ends it, hanging handlers wake up at once, and a timer stops it after
``lifetime`` seconds in case a test forgets.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from random import Random
from urllib.parse import parse_qs, urlsplit

import mercantile
from PIL import Image, ImageDraw

from tests.support.images import jpeg_bytes
from tests.support.paths import BLUEMARBLE

TileKey = tuple[int, int, int]  # (z, x, y)
FaultPlan = Callable[[TileKey, int], "str | None"]

FAULTS = (
    "500", "502", "503", "429", "hang", "stall", "reset", "truncated", "html", "empty", "placeholder", "wrong_size", "404",
)
STATUS_OF = {
    "ok": 200, "500": 500, "502": 502, "503": 503, "429": 429, "hang": 200, "stall": 200, "reset": None,
    "truncated": 200,
    "html": 200, "empty": 200, "placeholder": 200, "wrong_size": 200, "404": 404, "no_route": 404,
}
HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>503 Service Temporarily Unavailable</title></head>"
    b"<body><h1>Service Temporarily Unavailable</h1><p>Please try again later.</p></body></html>"
)

# --- tile bytes ----------------------------------------------------------------------------

_world_lock = threading.Lock()
_world: Image.Image | None = None


def world_image() -> Image.Image:
    """The Blue Marble image (equirectangular), decoded once per process."""
    global _world
    with _world_lock:
        if _world is None:
            with Image.open(BLUEMARBLE) as img:
                _world = img.convert("RGB")
        return _world


def bluemarble_tile(z: int, x: int, y: int) -> bytes:
    """The tile's lon/lat box cut from the Blue Marble image, 256x256 JPEG.

    Geographically faithful (a Sahara tile is sandy), but the image has ~6.7 km pixels, so
    above zoom ~7 neighbouring tiles are near-uniform and near-identical: for many distinct
    tiles at a high zoom use :func:`distinct_tile`.
    """
    img = world_image()
    w, h = img.size
    b = mercantile.bounds(x, y, z)
    box = ((b.west + 180) / 360 * w, (90 - b.north) / 180 * h, (b.east + 180) / 360 * w, (90 - b.south) / 180 * h)
    return jpeg_bytes(img.resize((256, 256), Image.BILINEAR, box=box), quality=85)


@lru_cache(maxsize=4096)
def distinct_tile(z: int, x: int, y: int) -> bytes:
    """A full-resolution 256x256 window of Blue Marble at a position seeded by z/x/y, as JPEG.

    Real imagery, varied colours, different for every tile at any zoom (windows come from
    between about 60N and 60S, so few are polar white).
    """
    img = world_image()
    w, h = img.size
    rng = Random(f"{z}/{x}/{y}")
    left = rng.randrange(0, w - 256)
    top = rng.randrange(h // 6, h - h // 6 - 256)
    return jpeg_bytes(img.crop((left, top, left + 256, top + 256)), quality=85)


@lru_cache(maxsize=1)
def placeholder_jpeg() -> bytes:
    """A grey "Map data not yet available" 256x256 JPEG like ArcGIS's (~2.5 KB), same bytes every call."""
    img = Image.new("RGB", (256, 256), (204, 204, 204))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(("Map data", "not yet", "available")):
        draw.text((92, 104 + 16 * i), line, fill=(120, 120, 120))
    return jpeg_bytes(img, quality=85)


PLACEHOLDER_SHA256 = hashlib.sha256(placeholder_jpeg()).hexdigest()


def wrong_size_jpeg(tile_bytes: bytes) -> bytes:
    """The tile scaled to 512x512: a real image, just not a 256 tile."""
    with Image.open(io.BytesIO(tile_bytes)) as img:
        return jpeg_bytes(img.convert("RGB").resize((512, 512)), quality=85)


# --- fault plans ---------------------------------------------------------------------------


class Schedule:
    """Faults by attempt: ``per_tile[tile][attempt - 1]``, else ``every_tile[attempt - 1]``.

    ``Schedule({(6, 1, 2): ["503", "503"]})``: that tile fails twice, then succeeds.
    ``Schedule(every_tile=["hang"])``: every tile hangs once. ``None`` in a list = no fault.
    """

    def __init__(self, per_tile: Mapping[TileKey, Sequence[str | None]] | None = None,
                 every_tile: Sequence[str | None] = ()) -> None:
        self.per_tile = {tuple(k): list(v) for k, v in (per_tile or {}).items()}
        self.every_tile = list(every_tile)
        for kinds in [*self.per_tile.values(), self.every_tile]:
            for kind in kinds:
                if kind is not None and kind not in FAULTS:
                    raise ValueError(f"unknown fault {kind!r}; known: {FAULTS}")

    def __call__(self, tile: TileKey, attempt: int) -> str | None:
        kinds = self.per_tile.get(tile, self.every_tile)
        return kinds[attempt - 1] if attempt <= len(kinds) else None


class Rates:
    """Seeded pseudo-random faults: each attempt draws ``kind`` with probability ``rates[kind]``.

    Deterministic for (seed, tile, attempt), whatever the thread interleaving. Attempts after
    ``max_per_tile`` never fault, so a client with more retries always gets the tile.
    """

    def __init__(self, rates: Mapping[str, float], seed: int = 0, max_per_tile: int = 2) -> None:
        unknown = set(rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {FAULTS}")
        if sum(rates.values()) > 1:
            raise ValueError(f"fault rates sum to {sum(rates.values())} > 1")
        self.rates = sorted(rates.items())
        self.seed = seed
        self.max_per_tile = max_per_tile

    def __call__(self, tile: TileKey, attempt: int) -> str | None:
        if attempt > self.max_per_tile:
            return None
        draw = Random(f"{self.seed}:{tile}:{attempt}").random()
        total = 0.0
        for kind, rate in self.rates:
            total += rate
            if draw < total:
                return kind
        return None


# --- server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw and answered it."""

    path: str
    query: str
    tile: TileKey | None
    attempt: int
    outcome: str  # "ok", a fault kind, "404"/"placeholder" for missing tiles, "no_route"
    status: int | None  # status line sent (None: connection reset)
    user_agent: str


_ARCGIS = re.compile(r"^(?:/.*)?/tile/(\d+)/(\d+)/(\d+)/?$")
_XYZ = re.compile(r"^/xyz/(\d+)/(\d+)/(\d+)(?:\.\w+)?$")


def parse_tile(path: str, query: str) -> TileKey | None:
    """(z, x, y) from any of the served layouts, or None."""
    m = _ARCGIS.match(path)
    if m:
        z, y, x = (int(v) for v in m.groups())
        return z, x, y
    m = _XYZ.match(path)
    if m:
        z, x, y = (int(v) for v in m.groups())
        return z, x, y
    if path == "/q":
        params = parse_qs(query)
        try:
            return int(params["z"][0]), int(params["x"][0]), int(params["y"][0])
        except (KeyError, ValueError, IndexError):
            return None
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real tile servers: exercises pooled connections
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms on Linux) on every keep-alive response, a cost no real server adds.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence stderr
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        owner = self.server.owner
        owner._begin()
        try:
            self._get(owner)
        finally:
            owner._end()

    def _get(self, owner: TileServer) -> None:
        split = urlsplit(self.path)
        tile = parse_tile(split.path, split.query)
        user_agent = self.headers.get("User-Agent", "")
        if tile is None:
            owner._record(RequestRecord(split.path, split.query, None, 0, "no_route", 404, user_agent))
            self._send(404, b"no such route", "text/plain")
            return
        attempt = owner._next_attempt(tile)
        kind = owner.faults(tile, attempt) if owner.faults else None
        if kind is None and owner._is_missing(tile):
            kind = "404" if "blankTile=false" in split.query else "placeholder"
        outcome = kind or "ok"
        owner._record(RequestRecord(split.path, split.query, tile, attempt, outcome, STATUS_OF[outcome], user_agent))
        delay = owner.delay(tile, attempt) if callable(owner.delay) else owner.delay
        if delay:
            owner._stopping.wait(delay)
        try:
            self._answer(outcome, tile)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True  # the client gave up (e.g. timed out): nothing to do

    def _answer(self, outcome: str, tile: TileKey) -> None:
        owner = self.server.owner
        if outcome in ("500", "502", "503", "404"):
            self._send(int(outcome), f"{outcome} error".encode(), "text/plain")
        elif outcome == "429":
            self._send(429, b"slow down", "text/plain", {"Retry-After": owner.retry_after})
        elif outcome == "reset":
            self._reset()
        elif outcome == "html":
            self._send(200, HTML_PAGE, "text/html; charset=utf-8")
        elif outcome == "empty":
            self._send(200, b"", "image/jpeg")
        elif outcome == "placeholder":
            self._send(200, placeholder_jpeg(), "image/jpeg")
        elif outcome == "wrong_size":
            self._send(200, wrong_size_jpeg(owner.tile_bytes(*tile)), "image/jpeg")
        elif outcome == "truncated":
            status, body, headers = self._ranged(owner.tile_bytes(*tile))
            self._send(status, body[: len(body) // 2], "image/jpeg", headers, declared_length=len(body))
            self.close_connection = True
        elif outcome == "stall":
            body = owner.tile_bytes(*tile)
            self.close_connection = True
            self._send(200, body[: len(body) // 2], "image/jpeg", declared_length=len(body))
            owner._stopping.wait(owner.hang_seconds)
            self.wfile.write(body[len(body) // 2:])
        elif outcome == "hang":
            owner._stopping.wait(owner.hang_seconds)
            self.close_connection = True
            self._send(200, owner.tile_bytes(*tile), "image/jpeg")
        else:
            self._send_tile(owner.tile_bytes(*tile))

    def _send_tile(self, body: bytes) -> None:
        status, part, headers = self._ranged(body)
        self._send(status, part, "image/jpeg", headers)

    def _ranged(self, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        """``(200, body, {})``, or 206 with the slice a ``Range: bytes=first-last`` header asks for."""
        wanted = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", "").strip())
        if wanted is None:
            return 200, body, {}
        first, last = int(wanted[1]), min(int(wanted[2]), len(body) - 1)
        return 206, body[first:last + 1], {"Content-Range": f"bytes {first}-{last}/{len(body)}"}

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None,
              declared_length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if declared_length is None else declared_length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        """Abort the connection with an RST (SO_LINGER 0), as a crashed proxy would."""
        self.close_connection = True
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.wfile.close()
        self.request.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: eight fetching threads reconnecting at once (after
    # resets and timeouts) overflow it, the kernel drops a SYN and the client's connect times out
    # on a request the server never sees. Real tile servers listen with a deep backlog.
    request_queue_size = 128
    owner: TileServer

    def handle_error(self, request, client_address) -> None:
        pass  # client aborts are expected here; failures show up in the request log instead


class TileServer:
    """A threaded tile server on 127.0.0.1 (ephemeral port); use as a context manager.

    ``tiles(z, x, y) -> bytes``: the body of a successful answer (default: Blue Marble
    crops). ``delay``: seconds before each answer, or ``(tile, attempt) -> seconds``.
    """

    def __init__(
        self,
        tiles: Callable[[int, int, int], bytes] = bluemarble_tile,
        *,
        faults: Mapping[TileKey, Sequence[str | None]] | FaultPlan | None = None,
        missing: Collection[TileKey] | Callable[[TileKey], bool] = (),
        delay: float | Callable[[TileKey, int], float] = 0.0,
        retry_after: str = "0",
        hang_seconds: float = 5.0,
        lifetime: float = 120.0,
    ) -> None:
        self.tiles = tiles
        self.faults: FaultPlan | None = Schedule(faults) if isinstance(faults, Mapping) else faults
        self.missing = missing
        self.delay = delay
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._active = 0  # requests being answered (recorded, answer not yet written)
        self._idle = threading.Condition(self._lock)
        self._attempts: Counter = Counter()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # lifecycle
    def start(self) -> TileServer:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="tileserver", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._idle:  # answers in progress (hangs have just been woken) finish their records
            self._idle.wait_for(lambda: self._active == 0, timeout=5)

    def __enter__(self) -> TileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # addresses
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("tile server is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tile_template(self) -> str:
        return self.url + "/tile/{z}/{y}/{x}"

    @property
    def arcgis_template(self) -> str:
        return self.url + "/ArcGIS/rest/services/World_Imagery/MapServer/tile/{z}/{y}/{x}"

    @property
    def xyz_template(self) -> str:
        return self.url + "/xyz/{z}/{x}/{y}.jpg"

    @property
    def query_template(self) -> str:
        return self.url + "/q?y={y}&x={x}&z={z}"

    # what was served
    def tile_bytes(self, z: int, x: int, y: int) -> bytes:
        """The body a successful request for z/x/y gets."""
        return self.tiles(z, x, y)

    @property
    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def attempts(self, tile: TileKey) -> int:
        with self._lock:
            return self._attempts[tuple(tile)]

    def outcomes(self, tile: TileKey) -> list[str]:
        return [r.outcome for r in self.records if r.tile == tuple(tile)]

    def ok_counts(self) -> Counter:
        """Counter of tile -> number of successful (200 with the real tile) answers."""
        return Counter(r.tile for r in self.records if r.outcome == "ok")

    def outcome_counts(self) -> Counter:
        """Counter of outcome ("ok", "503", "hang", ...) -> number of requests."""
        return Counter(r.outcome for r in self.records)

    # internals (called from handler threads)
    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def _begin(self) -> None:
        with self._lock:
            self._active += 1

    def _end(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def _next_attempt(self, tile: TileKey) -> int:
        with self._lock:
            self._attempts[tile] += 1
            return self._attempts[tile]

    def _is_missing(self, tile: TileKey) -> bool:
        return self.missing(tile) if callable(self.missing) else tile in self.missing
