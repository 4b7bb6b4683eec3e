"""GET over HTTP(S) politely and countably: retries, backoff, ``Retry-After``, the run's gate.

What a source that asks a server for bytes needs, apart from what it asks for: an XYZ server
through a URL template (:class:`~builder.acquire.sources.http.HttpSource`), or a source that reads byte
ranges of one big file (a PMTiles archive, a cloud-optimised GeoTIFF) with
``get(url, shown, headers={"Range": "bytes=a-b"}, ok_statuses=(206,))``.

Retries are done here, not by ``urllib3.Retry`` inside the adapter, for two reasons that
harvest depends on: ``Retry`` hides the failures it cured (harvest must count every 503,
timeout and reset, even when the second attempt worked), and it cannot retry faults found in
the body after the status line (a truncated body, an HTML error page or an empty body sent
with status 200: the caller's ``check`` runs inside each attempt, so they are retried too).
The adapter gets ``Retry(total=0)`` so each fault surfaces here once.  Backoff is exponential
with jitter; ``Retry-After`` (seconds or HTTP date) is honoured on 429/503 but capped, so a
hostile header cannot park a thread for an hour.

Each calling thread gets its own ``requests.Session`` (with one pooled keep-alive connection):
requests does not promise that a Session is thread-safe, and a thread-local Session reuses its
connection just as well.  A token bucket shared by all threads caps the request rate when
asked to.

When a run sets ``gate`` (a :class:`~builder.acquire.sources.base.RequestGate`), every attempt,
retries included, needs its permission: the request budget is a hard cap, a backoff pause
ends as soon as the run stops or the source is found down (raising
:class:`~builder.acquire.sources.base.GateClosed`), and each attempt's outcome feeds the gate's
dead-source detection.  Connection faults say why the host could not be reached
(``TileFault.unreachable``: name resolution, refused, connect timeout), which is what lets a
run stop at once when there is no network.
"""

from __future__ import annotations

import email.utils
import errno
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from ...core.errors import SourceError, UsageError
from ...core.layout import MAX_TILE_BYTES
from .base import FetchStats, GateClosed, RequestGate, TileFault

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MISSING_STATUSES = frozenset({204, 404})

# What an unreachable host looks like in the exception chain, as the one-line cause shown.
NO_NAME = "name resolution failed (no network?)"
REFUSED = "connection refused (is the server running?)"
NO_ROUTE = "network unreachable (no network?)"
CONNECT_TIMEOUT = "connection timed out (no network?)"

# ``check(body, content_type, shown)``: the caller's test of a body, run inside the attempt so a
# bad body is retried like a bad status.  Returns the body to keep, or None for "nothing there"
# (a placeholder served instead of a 404); raises TileFault for a body that will not do.
BodyCheck = Callable[[bytes, str | None, str], bytes | None]


def accept_any(body: bytes, content_type: str | None, shown: str) -> bytes:
    """The default :data:`BodyCheck`: every body as it came."""
    return body


def unreachable_cause(exc: BaseException) -> str | None:
    """Why a connection could not be made at all, from a requests/urllib3 exception chain, or
    None when the host was reached (a reset, a read timeout, a bad status...)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, socket.gaierror) or type(item).__name__ == "NameResolutionError":
            return NO_NAME
        if isinstance(item, ConnectionRefusedError):
            return REFUSED
        if isinstance(item, OSError) and item.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return NO_ROUTE
        if isinstance(item, requests.exceptions.ConnectTimeout) or type(item).__name__ == "ConnectTimeoutError":
            return CONNECT_TIMEOUT
        todo.extend([*item.args, getattr(item, "reason", None), item.__cause__, item.__context__])
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


class RateLimiter:
    """A token bucket shared by all fetch threads: at most ``rate`` requests per second.

    Each caller reserves a token under the lock (the balance may go negative: that is the
    queue) and sleeps off its own debt outside the lock, so waiting threads are spaced
    ``1/rate`` apart without a busy loop. ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise UsageError(f"rate must be > 0 requests per second, got {rate}")
        if not burst >= 1:
            raise UsageError(f"burst must be >= 1, got {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()

    def acquire(self) -> float:
        """Take one token, sleeping as long as needed; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class HttpTransport:
    """GETs with retries, backoff, rate limit and the run's gate; see the module doc.

    ``name`` is how errors name the source that uses it.  ``attempts``, when a run sets it (a
    :class:`~builder.acquire.sources.base.FetchStats`), counts every attempt, each faulty one under its
    kind (``http_503``, ``timeout``, ``connection``, ``truncated``, ``not_image``, ``empty``,
    ...), and every retry.  Safe to use from many threads at once.
    """

    def __init__(
        self,
        name: str,
        *,
        retries: int = 4,
        backoff_factor: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 60.0,
        timeout: float | tuple[float, float] = (5.0, 20.0),
        rate: float | RateLimiter | None = None,
        burst: float = 1.0,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = MAX_TILE_BYTES,
        jitter: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0:
            raise UsageError(f"retries must be >= 0, got {retries}")
        self.name = name
        self.retries = int(retries)
        self.backoff_factor = float(backoff_factor)
        self.backoff_max = float(backoff_max)
        self.retry_after_max = float(retry_after_max)
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.max_bytes = int(max_bytes)
        self.jitter = jitter
        self._sleep = sleep
        # ``rate`` may be a RateLimiter, to share one bucket between sources (or fake its clock).
        if isinstance(rate, RateLimiter) or not rate:
            self._limiter = rate or None  # None or 0: no cap
        else:
            self._limiter = RateLimiter(rate, burst, sleep=sleep)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []
        self._closed = False
        self.gate: RequestGate | None = None  # set by the fetch engine for the length of a run
        self.attempts: FetchStats | None = None  # as the gate

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self, url: str, shown: str, *, headers: Mapping[str, str] | None = None,
            ok_statuses: Collection[int] = (200,), missing_statuses: Collection[int] = MISSING_STATUSES,
            check: BodyCheck = accept_any) -> bytes | None:
        """The body of ``url`` (``shown`` in messages and logs: the URL without secrets), or None
        for a status of ``missing_statuses`` or a body ``check`` calls nothing; retried while
        the fault is transient and the retries last.  Raises :class:`TileFault` when it gives
        up, :class:`GateClosed` when the run's gate refuses an attempt."""
        if self._closed:
            raise SourceError(f"tile source {self.name!r} is closed")
        gate, counts = self.gate, self.attempts
        attempt = 0
        while True:
            attempt += 1
            if self._limiter is not None and not (gate is not None and gate.closed):
                self._limiter.acquire()  # (a closed gate refuses below: no token spent waiting for it)
            if gate is not None and not gate.take():
                raise GateClosed(f"{shown}: no request allowed after {attempt - 1} attempts")
            try:
                body = self._attempt(url, shown, headers, ok_statuses, missing_statuses, check)
            except TileFault as fault:
                fault.attempts = attempt
                if counts is not None:
                    counts.attempted(fault)
                if gate is not None:
                    gate.attempted(fault)
                if not fault.retryable or attempt > self.retries:
                    logger.debug("giving up on %s: %s", shown, fault)
                    raise
                delay = self.retry_delay(attempt, fault.retry_after)
                if counts is not None:
                    counts.incr("retry")
                logger.debug("retry %d of %s in %.2fs after %s", attempt, shown, delay, fault.kind)
                if gate is not None:
                    if not gate.wait(delay):
                        raise GateClosed(f"{shown}: stopped during the pause after attempt {attempt}") from fault
                elif delay > 0:
                    self._sleep(delay)
                continue
            if counts is not None:
                counts.attempted(None)
            if gate is not None:
                gate.attempted(None)
            return body

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before attempt ``attempt + 1``: ``Retry-After`` capped, else exponential backoff."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        delay = min(self.backoff_max, self.backoff_factor * (2 ** (attempt - 1)))
        if self.jitter:
            delay *= 0.5 + 0.5 * random.random()
        return delay

    # -- one attempt ---------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # Retries happen in get() so that each fault is seen and counted.
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=Retry(total=0, read=False))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update(self.headers)
            with self._lock:
                if self._closed:
                    session.close()
                    raise SourceError(f"tile source {self.name!r} is closed")
                self._sessions.append(session)
            self._local.session = session
        return session

    def _attempt(self, url: str, shown: str, headers: Mapping[str, str] | None, ok_statuses: Collection[int],
                 missing_statuses: Collection[int], check: BodyCheck) -> bytes | None:
        """One GET: the checked body, None for "nothing there", or a TileFault naming what went wrong."""
        try:
            with self._session().get(url, headers=headers, timeout=self.timeout, stream=True) as resp:
                status = resp.status_code
                if status in missing_statuses:
                    return None
                if status not in ok_statuses:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
                    raise TileFault(
                        f"http_{status}", f"{shown}: HTTP {status}",
                        retryable=status in RETRY_STATUSES, retry_after=retry_after,
                    )
                body = self._read_body(resp, shown)
                content_type = resp.headers.get("Content-Type")
        except requests.exceptions.Timeout as exc:
            raise TileFault("timeout", f"{shown}: {type(exc).__name__}", unreachable=unreachable_cause(exc)) from exc
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            raise TileFault("truncated", f"{shown}: body cut short ({type(exc).__name__})") from exc
        except requests.exceptions.ConnectionError as exc:
            if any(isinstance(arg, ReadTimeoutError) for arg in exc.args):
                raise TileFault("timeout", f"{shown}: read timed out in the body") from exc
            cause = unreachable_cause(exc)
            raise TileFault("connection", f"{shown}: {cause or type(exc).__name__}", unreachable=cause) from exc
        except requests.exceptions.RequestException as exc:
            raise TileFault("request_error", f"{shown}: {type(exc).__name__}: {exc}", retryable=False) from exc
        return check(body, content_type, shown)

    def _read_body(self, resp: requests.Response, shown: str) -> bytes:
        """Read at most ``max_bytes``; a body shorter than its Content-Length is truncated.

        urllib3 normally raises on a short read (enforce_content_length); the explicit
        comparison covers servers and proxies where it cannot tell.
        """
        chunks: list[bytes] = []
        total = 0
        for chunk in resp.iter_content(chunk_size=65536):
            total += len(chunk)
            if total > self.max_bytes:
                raise TileFault("too_large", f"{shown}: body exceeds {self.max_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        declared = resp.headers.get("Content-Length")
        encoding = resp.headers.get("Content-Encoding", "identity").lower()
        if declared is not None and encoding == "identity":
            try:
                expected = int(declared)
            except ValueError:
                expected = None
            if expected is not None and expected != len(body):
                raise TileFault("truncated", f"{shown}: got {len(body)} of {expected} bytes")
        return body
