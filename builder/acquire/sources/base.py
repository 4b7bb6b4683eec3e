"""What every tile source shares: the protocol, the fault type, fault counters and body checks.

A source answers one question, "what are the bytes of tile z/x/y?", with three possible
answers: image bytes, ``None`` (nothing there: a 404, a placeholder, a hole in an archive), or
a :class:`TileFault` (the source misbehaved). Harvest treats the three very differently: bytes
go to the assignment pipeline, ``None`` is recorded as "no tile" and never asked again, and a
fault is counted by its ``kind`` and may be asked again in a later run. Keeping that contract
identical for HTTP, MBTiles, folders and the embedded Earth image is what lets one harvest
loop drive all of them.

A run's requests all pass through one :class:`RequestGate`: the request budget
(``--max-requests``, retries included), the run's halt, and :class:`SourceHealth`, which
tells a dead source (no name resolution, connection refused, or nothing but failures for a
while) from a flaky one, so a run against a source that cannot answer stops in seconds
instead of marking every tile of its plan as a fault.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Self

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...core.decode import sniff_format
from ...core.errors import SourceError
from ...core.layout import MAX_TILE_BYTES, TILE_SIZE

logger = logging.getLogger(__name__)

# Fault kinds a source raises (``http_<code>`` stands for any unexpected HTTP status).
# Transient kinds are retried by the HTTP source and are worth asking again later;
# the others will not change on a retry.
TRANSIENT_KINDS = frozenset(
    {"http_429", "http_500", "http_502", "http_503", "http_504", "timeout", "connection", "truncated", "not_image",
     "empty"}
)
PERMANENT_KINDS = frozenset({"bad_size", "too_large", "request_error"})

# sha256 of placeholder bodies known to be served instead of a 404. ArcGIS World Imagery's
# grey "Map data not yet available" JPEG (2521 bytes) is reported by public client code with
# this digest; `is_blank_tile` on the decoded tile is the harvest's second line of defence, for
# placeholders nobody listed.
KNOWN_PLACEHOLDER_SHA256 = frozenset(
    {
        "9eafd300d61393184a4abc1d458564cfd1cd9b6f9c4e9c74687045c0a0e5b858",  # ArcGIS World Imagery, 2521 B
    }
)

class TileFault(SourceError):
    """A source failed to give a usable answer for one tile.

    ``kind`` is a short stable tag ("http_503", "timeout", "truncated", ...) that harvest
    counts; ``retryable`` says whether asking again (now or in a later run) can help;
    ``attempts`` is how many requests were made before giving up; ``unreachable`` names why
    the host could not be reached at all ("name resolution failed (no network?)",
    "connection refused (is the server running?)", ...), None when it answered something.
    """

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
        unreachable: str | None = None,
    ) -> None:
        self.kind = kind
        self.detail = detail
        self.retryable = kind in TRANSIENT_KINDS if retryable is None else retryable
        self.retry_after = retry_after
        self.attempts = attempts
        self.unreachable = unreachable
        super().__init__(f"{kind}: {detail}")

    def __reduce__(self):
        # The default reduce passes only ``args`` back to __init__, which needs more.
        state = {"retryable": self.retryable, "retry_after": self.retry_after, "attempts": self.attempts,
                 "unreachable": self.unreachable}
        return (_rebuild_fault, (self.kind, self.detail, state))

    def __str__(self) -> str:
        suffix = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{self.kind}: {self.detail}{suffix}"


def _rebuild_fault(kind: str, detail: str, state: dict) -> TileFault:
    return TileFault(kind, detail, **state)


class GateClosed(SourceError):
    """No request may start: the run's request budget is spent, the run is stopping, or its
    source was found down.  Not a fault of the tile: a tile cut short by it was not answered,
    and harvest releases its claim so a later run asks for it."""


# Keys of FetchStats that are counters or tile outcomes; every other key is a fault kind.
OUTCOME_STATS = frozenset({"request", "retry", "ok", "missing", "failed"})


def fault_counts(stats: Mapping[str, int]) -> Counter:
    """The fault kinds of a run's counts (``http_503``: 2, ...), counters and outcomes left out."""
    return Counter({k: v for k, v in stats.items() if k not in OUTCOME_STATS and v > 0})


class FetchStats(Counter):
    """What a run counts of its source's answers (the fetch engine's, not the source's):
    ``request`` (every attempt, retries included), one key per fault kind for every faulty
    attempt (including faults a retry later cured: :func:`fault_counts`), ``retry``, and the
    tiles' outcomes ``ok``, ``missing`` and ``failed``.

    Many fetch threads write at once, and ``c[k] += 1`` is a read-modify-write that loses
    counts under threads, so writers go through the methods; readers use the Counter API, or
    :meth:`snapshot` for a consistent copy.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def incr(self, key: str, n: int = 1) -> None:
        with self._lock:
            self[key] += n

    def attempted(self, fault: TileFault | None) -> None:
        """One request went out: answered (``fault`` None) or faulty."""
        with self._lock:
            self["request"] += 1
            if fault is not None:
                self[fault.kind] += 1

    def snapshot(self) -> Counter:
        with self._lock:
            return Counter(dict(self))

    def __reduce__(self):  # pickling a lock fails; a copy of the counts is what callers want
        return (Counter, (dict(self),))


class TileSource(ABC):
    """One provider of 256x256 XYZ (Web-Mercator, y down) tiles; every source subclasses it.

    ``name`` is the stable identity written to the ``source`` column and the ``fetched`` key.
    ``fetch`` answers (bytes, None, or a raised :class:`TileFault`) and counts nothing: the
    fetch engine counts the answers (:class:`FetchStats`), and a source that retries inside
    ``fetch`` reports each attempt to the counts it is attached to.  ``fetch`` must be safe to
    call from many threads at once; use a source as a context manager (``with
    open_source(...) as source:``) or :meth:`close` it.

    What a run reads from it, declared here with the conservative defaults:

    - ``remote``: each fetch costs a server a request, so no tile may be asked for twice (the
      fetch engine logs every request before it goes out); local sources set False, since
      reading a file again costs nobody anything;
    - ``screen_blank``: decoded tiles go through :func:`is_blank_tile` (True where placeholders
      or nodata fill can occur: servers and archives scraped from them; False for rendered
      sources, whose flat ocean is real);
    - ``host``: the server a remote source asks, named by the "source ... unreachable" line
      (None: the source's ``name`` is shown);
    - ``takes_gate``: the source retries inside ``fetch``, takes the run's
      :class:`RequestGate` once per attempt and reports every attempt to the run's
      :class:`FetchStats` (:meth:`attach`); otherwise the fetch engine does both once per fetch.
    """

    name: str
    remote: bool = True
    screen_blank: bool = True
    host: str | None = None
    takes_gate: bool = False

    @abstractmethod
    def fetch(self, z: int, x: int, y: int) -> bytes | None:
        """The tile's bytes, or None when there is no tile there; raises :class:`TileFault` when
        the source misbehaved, :class:`GateClosed` when the run's gate refused an attempt."""

    def attach(self, gate: RequestGate | None, attempts: FetchStats | None) -> None:  # noqa: B027 - takes_gate only
        """For the length of a run (``takes_gate`` sources): pass every attempt through ``gate``
        and report it to ``attempts`` (either may be None: no gate, nothing counted)."""

    def detach(self) -> None:  # noqa: B027 - as attach
        """The run is over: no gate, no counts."""

    @abstractmethod
    def close(self) -> None:
        """Release what the source holds (sessions, an open archive, nothing for a folder)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the run's gate: request budget, halt and source health ----------------------------------

# A source is declared down when, since its last answer (or since the run's first request),
# at least DOWN_AFTER_FAILURES requests in a row failed (5xx, timeouts, resets, bad bodies;
# a 429 is a live server asking to slow down and counts neither way) over at least
# DOWN_MIN_SECONDS, and either DOWN_AFTER_GIVEN_UP tiles were given up on after all their
# retries or DOWN_AFTER_SECONDS have passed.  A server faulting 30% of the time fails ten
# requests in a row about once in 170,000 runs of ten, and then has not also lost three
# tiles to exhausted retries; an outage shorter than a tile's retries (3.75 to 7.5 s with
# the HTTP source's defaults) loses no tile, and a burst of failures shorter than
# DOWN_MIN_SECONDS is a blip, however fast the retries were.
DOWN_AFTER_FAILURES = 10
DOWN_AFTER_GIVEN_UP = 3
DOWN_MIN_SECONDS = 3.0
DOWN_AFTER_SECONDS = 15.0
# Before the source has answered anything in this run, this many requests that could not
# connect at all (no name resolution, connection refused) settle it: there is nothing to wait for.
UNREACHABLE_AFTER = 3


class SourceHealth:
    """Tells a dead source from a flaky one, from the outcome of each request; see the constants.

    Not thread-safe on its own: :class:`RequestGate` calls it under its lock.  ``clock`` is
    injectable for tests.

    >>> h = SourceHealth()
    >>> [h.attempted(TileFault("connection", "x", unreachable="connection refused")) for _ in range(3)][-1]
    'unreachable: connection refused'
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.answered = False  # the source answered at least once in this run
        self._since: float | None = None  # last answer, or the first request
        self._failed: Counter = Counter()  # fault kind -> failed requests since the last answer
        self._causes: Counter = Counter()  # unreachable cause -> requests since the last answer
        self._given_up = 0
        self.verdict: str | None = None

    def attempted(self, fault: TileFault | None) -> str | None:
        """Count one request: None for an answer (image, no tile), else its fault.  Returns the
        verdict once the source is down (and from then on)."""
        now = self._clock()
        if self._since is None:
            self._since = now
        if fault is None:
            self.answered = True
            self._since = now
            self._failed.clear()
            self._causes.clear()
            self._given_up = 0
        elif fault.kind != "http_429":
            self._failed[fault.kind] += 1
            if fault.unreachable:
                self._causes[fault.unreachable] += 1
        return self._judge(now)

    def gave_up(self) -> str | None:
        """Count one tile given up on after its retries (or at once, for a permanent fault)."""
        if self._failed:
            self._given_up += 1
        return self._judge(self._clock())

    def conclude(self) -> str | None:
        """At the end of a run: a source that never answered, with at least DOWN_AFTER_FAILURES
        failed requests, is down even if the run stopped (its request budget spent, say) before
        the failures lasted long enough for a verdict."""
        if self.verdict is None and not self.answered and sum(self._failed.values()) >= DOWN_AFTER_FAILURES:
            self.verdict = self._describe()
        return self.verdict

    def _judge(self, now: float) -> str | None:
        if self.verdict is not None:
            return self.verdict
        failures = sum(self._failed.values())
        lasted = now - (now if self._since is None else self._since)
        if not self.answered and sum(self._causes.values()) >= UNREACHABLE_AFTER:
            self.verdict = f"unreachable: {self._causes.most_common(1)[0][0]}"
        elif failures >= DOWN_AFTER_FAILURES and lasted >= DOWN_MIN_SECONDS and (
                self._given_up >= DOWN_AFTER_GIVEN_UP or lasted >= DOWN_AFTER_SECONDS):
            self.verdict = self._describe()
        return self.verdict

    def _describe(self) -> str:
        failures = sum(self._failed.values())
        if sum(self._causes.values()) == failures and len(self._causes) == 1:
            return f"unreachable: {next(iter(self._causes))}"
        kinds = ", ".join(f"{k} {v}" for k, v in self._failed.most_common())
        return f"failing: its last {failures} requests all failed ({kinds})"


class RequestGate:
    """What every request of one run passes through: the budget, the halt, the source's health.

    ``take()`` before each attempt (an HTTP retry included) returns False once ``limit``
    attempts were made, the gate was closed (the run is stopping) or the source was found
    down; ``wait(seconds)`` is a backoff pause that ends early when the gate closes;
    ``attempted(fault)`` and ``gave_up()`` feed :class:`SourceHealth`, and close the gate
    when it gives its verdict (kept in ``down``).  Safe to use from many threads.

    >>> gate = RequestGate(limit=2)
    >>> gate.take(), gate.take(), gate.take(), gate.spent
    (True, True, False, 2)
    """

    def __init__(self, limit: int | None = None, *, health: SourceHealth | None = None) -> None:
        self.limit = limit
        self.spent = 0
        self.health = health or SourceHealth()
        self.down: str | None = None  # the health verdict that closed the gate
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.spent)

    def take(self) -> bool:
        """Reserve one attempt; False when none may start."""
        with self._lock:
            if self._closed.is_set() or (self.limit is not None and self.spent >= self.limit):
                return False
            self.spent += 1
            if self.limit is not None and self.spent >= self.limit:
                self._closed.set()  # the last attempt is out: retries waiting for it are cut now
            return True

    def close(self) -> None:
        self._closed.set()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the gate closes first; True when the full pause elapsed."""
        return not self._closed.wait(seconds) if seconds > 0 else not self._closed.is_set()

    def attempted(self, fault: TileFault | None) -> None:
        with self._lock:
            self._judged(self.health.attempted(fault))

    def gave_up(self) -> None:
        with self._lock:
            self._judged(self.health.gave_up())

    def conclude(self) -> str | None:
        """The run is over: let the health give its end-of-run verdict (see SourceHealth.conclude)."""
        with self._lock:
            self._judged(self.health.conclude())
            return self.down

    def _judged(self, verdict: str | None) -> None:
        if verdict is not None and self.down is None:
            self.down = verdict
            self._closed.set()
            logger.info("source down: %s", verdict)


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_tile_bytes(
    body: bytes,
    where: str,
    *,
    content_type: str | None = None,
    tile_size: int | None = TILE_SIZE,
    max_bytes: int = MAX_TILE_BYTES,
    retryable: bool | None = None,
) -> str:
    """Raise a :class:`TileFault` unless ``body`` is a PNG/JPEG/WebP of the tile size.

    Reads only the image header (no pixel decode), so it costs tens of microseconds.
    Returns the image format. ``retryable`` overrides the kind's default: a bad body in a
    local archive will be just as bad next time.
    """
    if not body:
        raise TileFault("empty", f"{where}: empty body", retryable=retryable)
    if len(body) > max_bytes:
        raise TileFault("too_large", f"{where}: {len(body)} bytes", retryable=retryable)
    fmt = sniff_format(body)  # magic bytes, not Content-Type: servers mislabel error pages and tiles
    if fmt is None:
        head = body[:16]
        raise TileFault(
            "not_image",
            f"{where}: content-type {content_type or 'unknown'!s}, starts {head!r}",
            retryable=retryable,
        )
    if tile_size is not None:
        try:
            with Image.open(io.BytesIO(body)) as img:
                size = img.size
        except Image.DecompressionBombError as exc:
            raise TileFault("bad_size", f"{where}: {exc}", retryable=False) from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise TileFault("not_image", f"{where}: unreadable {fmt} header: {exc}", retryable=retryable) from exc
        if size != (tile_size, tile_size):
            raise TileFault(
                "bad_size", f"{where}: {fmt} is {size[0]}x{size[1]}, expected {tile_size}x{tile_size}",
                retryable=False,
            )
    return fmt


def is_blank_tile(rgb: np.ndarray, *, std_threshold: float = 2.0, mode_fraction: float = 0.9) -> bool:
    """True for tiles that carry no imagery: one flat colour, or mostly a single nodata colour.

    Catches placeholders and fill nobody listed by hash: the ArcGIS grey "Map data not yet
    available" tile, black/white nodata borders at the edge of coverage, flat fills. Two
    tests, cheapest first: luminance std below ``std_threshold`` (flat), or at least
    ``mode_fraction`` of the pixels exactly equal to the most common colour (nodata fill,
    text on a flat background). Exact equality is what separates fill from real ocean or
    ice, whose pixels vary by a few levels even when they look uniform.

    The mode is found without a histogram: when more than half the pixels share one colour,
    that colour is the median of the packed 24-bit values (hence ``mode_fraction > 0.5``).

    ``rgb``: uint8 array (H, W, 3) (alpha, if any, is ignored), or (H, W) greyscale.
    """
    if not 0.5 < mode_fraction <= 1.0:
        raise ValueError(f"mode_fraction must be in (0.5, 1], got {mode_fraction}")
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = arr[..., None].repeat(3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 3) image array, got shape {arr.shape}")
    arr = arr[..., :3]
    rgb_f = arr.reshape(-1, 3).astype(np.float32)
    lum = rgb_f @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if float(lum.std()) < std_threshold:
        return True
    px = arr.reshape(-1, 3).astype(np.uint32)
    packed = (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]
    mid = packed.size // 2
    median = np.partition(packed, mid)[mid]
    return bool(np.count_nonzero(packed == median) >= mode_fraction * packed.size)
