"""``harvest``: sample tiles from a plan, fetch them concurrently, assign and store them.

One harvest run, in order:

1. validate every option (one-line :class:`~builder.errors.UsageError` for a bad value);
2. create the assignment :class:`~builder.assign.Pipeline` *before* any thread exists: its
   process pool forks when it is created, and forking beside running threads can copy a lock
   some thread holds.  The workers are forked with SIGINT ignored, so a Ctrl-C reaches only
   this process, which decides what to do with it;
3. draw tiles with the seeded :class:`~builder.regions.Sampler`, skipping every z/x/y that the
   ``fetched`` table already holds for this source (any status), so no tile is requested
   twice across runs;
4. **claim** a batch before fetching it: insert its ``fetched`` rows with status ``claimed``
   and commit.  A run killed with SIGKILL leaves its in-flight batch claimed, and claimed
   tiles are never requested again: losing a batch of random candidates costs nothing,
   fetching a tile twice is what the project promised never to do;
5. fetch the batch on a ``ThreadPoolExecutor`` of ``threads`` (I/O bound); up to
   :data:`PREFETCH` further batches are queued while the main thread runs the current one
   through the pipeline, so the network and both CPU cores stay busy;
6. feed the tiles to ``pipe.process(..., on_commit=...)``; ``on_commit`` writes each tile's
   final ``fetched`` status in the same transaction as the tiles themselves.

``fetched.status`` values: ``claimed`` (requested or about to be, outcome unknown: a crashed
or abandoned batch), ``accepted``, ``rejected:<reason>`` (``rejected:blank``,
``rejected:bucket_full``, ``rejected:duplicate``, ...), ``fault:<kind>`` (the source gave up:
``fault:http_503``, ``fault:timeout``, ``fault:bad_size``, ...), ``none`` (no tile there: 404,
known placeholder) and ``unused`` (fetched after ``max_tiles`` was reached; never stored).
A claim whose request never started (the run stopped first) is deleted again.

``retry_faults`` (CLI ``--retry-faults``): tiles of this source, zoom and plan whose status is
a *transient* fault (``fault:<kind>`` with ``kind`` in
:data:`~builder.sources.TRANSIENT_KINDS`: ``http_503``, ``http_429``, ``timeout``,
``connection``, ``truncated``, ...) are eligible again, so an hour of server trouble does not
lose its tiles for good.  They are claimed before any new tile is sampled (a fresh seed would
almost never draw them again), in place: the same ``fetched`` row goes back to ``claimed`` and
then to its new outcome; a retried claim released unstarted gets its fault status back.
Every other status stays excluded: a permanent fault will not change, and a ``claimed`` tile
of a killed run may have been served, and no tile is ever fetched twice successfully.
``report.retried_faults`` counts the retried tiles requested.  Without the flag the run is
exactly as described above.

The run stops when it has accepted ``max_tiles`` tiles (this run's count, so re-running a
killed command adds that many again; the batch that reaches the target is stored in chunks
so the target is met exactly), at ``max_requests`` requests (HTTP attempts, retries
included; the retries of the last tiles in flight may add a few), when the plan is
exhausted, or when ``patience`` consecutive batches accept nothing (the buckets reachable
from this plan stopped filling, or the source is down).  Ctrl-C stops submitting, lets
requests already on the wire finish, stores the batches in hand and returns the report
(``interrupted`` set; the CLI exits 130); a second Ctrl-C abandons in-flight work at once
(the pipeline's batch is atomic, unfinished claims stay ``claimed``).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from .assign import Candidate, Outcome, Pipeline, utc_now
from .defaults import DEFAULT_BATCH, DEFAULT_PATIENCE, DEFAULT_THREADS
from .errors import LibraryError, SourceError, UsageError
from .layout import DEFAULT_ZOOM, MAX_ZOOM, MIN_ZOOM
from .library import Library
from .regions import Plan, Sampler, TileRef, load_plan, tile_centre, tile_range
from .sources import TRANSIENT_KINDS, TileFault, TileSource, is_blank_tile, open_source
from .summary import format_counts

logger = logging.getLogger(__name__)

# Batches queued for fetching beyond the one in the pipeline: one keeps the threads busy
# while the main thread processes; a second covers the time the main thread spends claiming.
PREFETCH = 2
# Floor of the yield estimate that sizes batches near --max-tiles (see _Run.next_size).
MIN_YIELD_ESTIMATE = 0.05
# Keys of source.stats that are outcomes or counters rather than fault kinds.
NON_FAULT_STATS = frozenset({"request", "retry", "ok", "missing", "failed", "placeholder"})

CLAIMED = "claimed"
ACCEPTED = "accepted"
NO_TILE = "none"
UNUSED = "unused"
# ``fetched`` statuses a --retry-faults run may ask again (sorted: a stable SQL parameter list).
TRANSIENT_STATUSES = tuple(sorted(f"fault:{kind}" for kind in TRANSIENT_KINDS))


def reject_blank(rgb: np.ndarray) -> str | None:
    """Pipeline prefilter: ``"blank"`` for flat, placeholder or nodata tiles, else None.

    Module level so the pipeline's worker processes can use it.  Runs on the decoded pixels
    before colour and hash work, so a placeholder costs one decode and is never stored.
    """
    return "blank" if is_blank_tile(rgb) else None


# --- values -----------------------------------------------------------------------------------


class FetchResult(NamedTuple):
    """One tile's fetch: bytes, no tile (``data`` None, ``fault`` None), or a fault kind.

    ``started`` False means the run stopped before the request was made: the claim is
    released, since the tile was never asked for.
    """

    ref: TileRef
    data: bytes | None = None
    fault: str | None = None
    detail: str = ""
    at: str = ""
    started: bool = True


@dataclass
class HarvestReport:
    """What one harvest run did; ``as_dict()`` is the CLI's ``--json``."""

    source: str = ""
    plan: str = ""
    zoom: int = DEFAULT_ZOOM
    seed: int | None = None
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # pipeline reason -> tiles
    missing: int = 0  # tiles the source does not have (404, known placeholder)
    failed: Counter = field(default_factory=Counter)  # fault kind -> tiles given up on
    faults: Counter = field(default_factory=Counter)  # fault kind -> faulty requests (incl. cured by a retry)
    unused: int = 0  # fetched after max_tiles was reached
    released: int = 0  # claims dropped because the run stopped before requesting them
    retried_faults: int = 0  # tiles of earlier transient faults requested again (--retry-faults)
    requests: int = 0
    batches: int = 0
    seconds: float = 0.0
    buckets_populated: int = 0
    buckets_new: int = 0
    by_region: dict = field(default_factory=dict)  # region -> Counter(fetched=, accepted=)
    stop_reason: str = ""
    interrupted: bool = False

    @property
    def fetched(self) -> int:
        """Tiles the source was asked for and answered (image, no tile, or fault)."""
        return self.accepted + sum(self.rejected.values()) + self.missing + sum(self.failed.values()) + self.unused

    @property
    def tiles_per_s(self) -> float:
        """Images assigned (accepted + rejected) per second of run time."""
        assigned = self.accepted + sum(self.rejected.values())
        return assigned / self.seconds if self.seconds > 0 else 0.0

    def region_yield(self) -> dict[str, dict]:
        out = {}
        for region, c in sorted(self.by_region.items()):
            tried = c["fetched"]
            out[region] = {"fetched": tried, "accepted": c["accepted"],
                           "yield": round(c["accepted"] / tried, 4) if tried else 0.0}
        return out

    def summary(self) -> str:
        rejected = sum(self.rejected.values())
        parts = [f"{self.accepted} accepted",
                 f"{rejected} rejected" + (f" ({format_counts(self.rejected)})" if rejected else "")]
        if self.missing:
            parts.append(f"{self.missing} no tile")
        if self.failed:
            parts.append(f"{sum(self.failed.values())} failed ({format_counts(self.failed)})")
        faults = sum(self.faults.values())
        if self.retried_faults:
            parts.append(f"{self.retried_faults} earlier faults retried")
        parts.append(f"{self.requests} requests, {faults} faults"
                     + (f" ({format_counts(self.faults)})" if faults else ""))
        parts.append(f"{self.tiles_per_s:.1f} tiles/s")
        parts.append(f"{self.buckets_populated} buckets populated (+{self.buckets_new})")
        return "; ".join(parts) + f"; stopped: {self.stop_reason}"

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "plan": self.plan,
            "zoom": self.zoom,
            "seed": self.seed,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "missing": self.missing,
            "failed": dict(sorted(self.failed.items())),
            "faults": dict(sorted(self.faults.items())),
            "unused": self.unused,
            "released": self.released,
            "retried_faults": self.retried_faults,
            "requests": self.requests,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "tiles_per_s": round(self.tiles_per_s, 2),
            "buckets_populated": self.buckets_populated,
            "buckets_new": self.buckets_new,
            "by_region": self.region_yield(),
            "stop_reason": self.stop_reason,
            "interrupted": self.interrupted,
        }


# --- validation -------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def validate_options(*, zoom: int, threads: int, batch: int, max_tiles: int | None = None,
                     max_requests: int | None = None, rate: float | None = None,
                     patience: int = DEFAULT_PATIENCE) -> None:
    """Raise a one-line UsageError for the first bad value (the CLI and notebooks alike)."""
    if not _is_int(zoom) or not MIN_ZOOM <= zoom <= MAX_ZOOM:
        raise UsageError(f"--zoom {zoom!r} is out of range: zoom must be an integer from {MIN_ZOOM} to {MAX_ZOOM}")
    for name, value in (("--threads", threads), ("--batch", batch), ("--patience", patience)):
        if not _is_int(value) or value < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in (("--max-tiles", max_tiles), ("--max-requests", max_requests)):
        if value is not None and (not _is_int(value) or value < 1):
            raise UsageError(f"{name} must be an integer >= 1 (or left out for no limit), got {value!r}")
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0 or rate == float("inf"):
            raise UsageError(f"--rate must be a number of requests per second > 0, got {rate!r}")


def resolve_plan(plan: Plan | str | int | Path | None) -> Plan:
    """A Plan from a Plan, a phase (``1``, ``2``, ``all``) or a JSON file; default phase 1."""
    if isinstance(plan, Plan):
        return plan
    return load_plan("1" if plan is None else plan)


# --- signals ----------------------------------------------------------------------------------


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while the pipeline forks: workers inherit SIG_IGN.

    A terminal's Ctrl-C goes to the whole process group; a pool worker that takes it dies
    or aborts its task and breaks the pool mid-batch.  With SIG_IGN inherited, only this
    process sees the signal and stops the run in order.
    """
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _graceful_sigint(on_first: Callable[[], None]) -> Iterator[None]:
    """First Ctrl-C calls ``on_first`` (stop in order); a second raises KeyboardInterrupt."""
    if not _in_main_thread():
        yield
        return
    fired = threading.Event()

    def handler(signum, frame) -> None:
        if fired.is_set():
            raise KeyboardInterrupt
        fired.set()
        on_first()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --- the run ----------------------------------------------------------------------------------


def fetch_tile(source: TileSource, ref: TileRef, halt: threading.Event) -> FetchResult:
    """Fetch one tile on a worker thread; never raises for the source's faults."""
    if halt.is_set():
        return FetchResult(ref, started=False)
    try:
        data = source.fetch(ref.z, ref.x, ref.y)
    except TileFault as fault:
        return FetchResult(ref, None, fault.kind, str(fault), utc_now())
    except SourceError as exc:  # a source that cannot answer at all (closed, unreadable archive)
        return FetchResult(ref, None, "source_error", str(exc), utc_now())
    return FetchResult(ref, data, None, "", utc_now())


class _Batch(NamedTuple):
    refs: list[TileRef]
    futures: list[Future]


class _Retry(NamedTuple):
    """A transient-fault tile to ask again, and the row it had (restored if the claim is released)."""

    ref: TileRef
    status: str
    tried_at: str | None


def transient_faults(conn, source: str, plan: Plan, zoom: int) -> list[_Retry]:
    """This source's tiles at ``zoom`` recorded with a transient fault and inside ``plan``, oldest first.

    A tile is matched to the region it was drawn for (the row's ``region``) when the plan
    still has that region and it covers the tile, else to the first region that covers it;
    tiles outside the plan are left for a run with a plan that holds them.  A tile already
    in ``tiles`` (however its row came to say otherwise) is never asked again.
    """
    ranges = [(r.name, tile_range(r.bbox, zoom)) for r in plan.regions]
    marks = ", ".join("?" * len(TRANSIENT_STATUSES))
    rows = conn.execute(
        f"SELECT x, y, status, region, tried_at FROM fetched WHERE source = ? AND z = ? AND status IN ({marks}) "
        "ORDER BY rowid", (source, zoom, *TRANSIENT_STATUSES)).fetchall()
    stored = set(conn.execute("SELECT x, y FROM tiles WHERE source = ? AND z = ?", (source, zoom))) if rows else set()
    out = []
    for x, y, status, region, tried_at in rows:
        covering = [name for name, rng in ranges if rng.contains(x, y)]
        if not covering or (x, y) in stored:
            continue
        lon, lat = tile_centre(zoom, x, y)
        out.append(_Retry(TileRef(zoom, x, y, region if region in covering else covering[0], lon, lat), status,
                          tried_at))
    return out


class _Run:
    """State of one harvest; :func:`harvest` is the interface."""

    def __init__(self, lib: Library, source: TileSource, plan: Plan, zoom: int, threads: int, batch: int,
                 max_tiles: int | None, max_requests: int | None, seed: int | None, patience: int,
                 report: HarvestReport, retry_faults: bool = False) -> None:
        self.lib = lib
        self.conn = lib.conn
        self.source = source
        self.name = source.name
        self.zoom = zoom
        self.threads = threads
        self.batch = batch
        self.max_tiles = max_tiles
        self.max_requests = max_requests
        self.patience = patience
        self.report = report
        self.done = self._already_fetched()
        # --retry-faults: queued ahead of the sampler; they stay in self.done so it never draws them.
        self.retry_queue: deque[_Retry] = deque(transient_faults(self.conn, self.name, plan, zoom)
                                                if retry_faults else ())
        self.retrying: dict[tuple[int, int, int], _Retry] = {}  # claimed retries, by z/x/y
        # Resuming with the same seed walks the same permutation past every tile done before;
        # the sampler's skip guard must not mistake that for an exhausted region.
        self.sampler = Sampler(plan, zoom, seed, max_skips=max(100_000, len(self.done) + 1))
        report.seed = self.sampler.seed
        self.halt = threading.Event()  # set on any stop: queued fetches return unstarted
        self.interrupt = threading.Event()  # set by the first Ctrl-C
        self.pending: deque[_Batch] = deque()
        self.exhausted = False
        self.in_hand = 0  # tiles of the batch being processed
        self.zero_streak = 0
        self._calls = 0
        self._calls_lock = threading.Lock()
        self._stats0 = self._stats_now()
        self.pipe: Pipeline | None = None
        self.executor: ThreadPoolExecutor | None = None

    # -- bookkeeping -------------------------------------------------------------------------

    def _already_fetched(self) -> set[tuple[int, int, int]]:
        """Every z/x/y of this source at this zoom that was claimed or stored before."""
        done = {(self.zoom, x, y) for x, y in self.conn.execute(
            "SELECT x, y FROM fetched WHERE source = ? AND z = ?", (self.name, self.zoom))}
        done.update((self.zoom, x, y) for x, y in self.conn.execute(
            "SELECT x, y FROM tiles WHERE source = ? AND z = ?", (self.name, self.zoom)))
        return done

    def _stats_now(self) -> Counter:
        """A copy of the source's counters (``SourceStats.snapshot`` is consistent under threads)."""
        stats = self.source.stats
        return Counter(stats.snapshot() if hasattr(stats, "snapshot") else stats)

    def stats_delta(self) -> Counter:
        """Counts added since the run started (Counter subtraction keeps only the positive ones)."""
        return self._stats_now() - self._stats0

    def requests(self) -> int:
        """Requests so far: the source's own count (HTTP attempts incl. retries), or fetch calls."""
        return max(self.stats_delta().get("request", 0), self._calls)

    def in_flight(self) -> int:
        return sum(1 for b in self.pending for f in b.futures if not f.done())

    def stop(self, reason: str) -> None:
        if not self.report.stop_reason:
            self.report.stop_reason = reason
            logger.info("harvest stopping: %s", reason)
        self.halt.set()

    def _fetch(self, ref: TileRef) -> FetchResult:
        if not self.halt.is_set():
            with self._calls_lock:
                self._calls += 1
        return fetch_tile(self.source, ref, self.halt)

    # -- claiming and fetching -----------------------------------------------------------------

    def outstanding(self) -> int:
        """Claimed tiles whose outcome is not counted yet (queued, fetching, or being processed)."""
        return self.in_hand + sum(len(b.refs) for b in self.pending)

    def next_size(self) -> int:
        """Tiles to claim next: a full batch, less what the request budget or the tile target
        can still use.  Near ``max_tiles`` the yield seen so far sizes the batch, so the
        prefetch does not claim (and spend requests on) tiles the target no longer needs."""
        size = self.batch
        if self.max_requests is not None:
            size = min(size, self.max_requests - self.requests() - self.in_flight())
        if self.max_tiles is not None:
            rep = self.report
            tried = rep.fetched
            rate = max(rep.accepted / tried, MIN_YIELD_ESTIMATE) if tried else 1.0
            need = self.max_tiles - rep.accepted - rate * self.outstanding()
            size = min(size, math.ceil(need / rate)) if need > 0 else 0
        return size

    def fill(self) -> None:
        """Claim and queue batches until PREFETCH are waiting (unless stopping)."""
        while len(self.pending) < PREFETCH and not self.report.stop_reason and not self.exhausted:
            size = self.next_size()
            if size <= 0:
                return
            refs = self.take_retries(size)
            if len(refs) < size:
                fresh = self.sampler.sample(size - len(refs), exclude=self.done)
                if len(fresh) < size - len(refs):
                    self.exhausted = True
                refs += fresh
            if not refs:
                return
            self.claim(refs)
            assert self.executor is not None
            self.pending.append(_Batch(refs, [self.executor.submit(self._fetch, ref) for ref in refs]))

    def take_retries(self, size: int) -> list[TileRef]:
        """Up to ``size`` queued transient-fault tiles (--retry-faults), now counted as retrying."""
        refs = []
        while self.retry_queue and len(refs) < size:
            retry = self.retry_queue.popleft()
            self.retrying[(retry.ref.z, retry.ref.x, retry.ref.y)] = retry
            refs.append(retry.ref)
        return refs

    def claim(self, refs: Sequence[TileRef]) -> None:
        """Mark ``refs`` claimed and commit: new rows, or (retries) their fault rows updated in place."""
        now = utc_now()
        fresh = [r for r in refs if (r.z, r.x, r.y) not in self.retrying]
        again = [self.retrying[(r.z, r.x, r.y)] for r in refs if (r.z, r.x, r.y) in self.retrying]
        with self.conn:
            self.conn.executemany(
                "INSERT INTO fetched (source, z, x, y, status, region, tried_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(self.name, r.z, r.x, r.y, CLAIMED, r.region, now) for r in fresh],
            )
            if again:
                # Guarded by the old status: a row that is no longer that fault is not ours to claim.
                cur = self.conn.executemany(
                    "UPDATE fetched SET status = ?, region = ?, tried_at = ? "
                    "WHERE source = ? AND z = ? AND x = ? AND y = ? AND status = ?",
                    [(CLAIMED, t.ref.region, now, self.name, t.ref.z, t.ref.x, t.ref.y, t.status) for t in again],
                )
                if cur.rowcount != len(again):
                    raise LibraryError(f"{self.lib.db_path}: {len(again) - cur.rowcount} of {len(again)} "
                                       "faulted tiles changed status while this run held the lock; not retrying")
        self.done.update((r.z, r.x, r.y) for r in refs)

    @staticmethod
    def collect(batch: _Batch) -> list[FetchResult]:
        results = []
        for ref, fut in zip(batch.refs, batch.futures):
            try:
                results.append(fut.result())
            except CancelledError:
                results.append(FetchResult(ref, started=False))
        return results

    # -- processing ------------------------------------------------------------------------------

    def candidate(self, res: FetchResult) -> Candidate:
        r = res.ref
        return Candidate(
            name=f"{r.z}/{r.x}/{r.y}",
            data=res.data,
            provenance={"source": self.name, "z": r.z, "x": r.x, "y": r.y, "lon": r.lon, "lat": r.lat,
                        "region": r.region, "harvested_at": res.at},
        )

    def process(self, results: list[FetchResult]) -> None:
        """Store one fetched batch and every tile's final status, in as few transactions as the
        ``max_tiles`` limit allows (one, unless the limit falls inside this batch)."""
        rep = self.report
        images = [r for r in results if r.started and r.fault is None and r.data is not None]
        others: list[tuple[str, FetchResult]] = []  # (status, result) written with the last chunk
        released: list[FetchResult] = []
        for r in results:
            if not r.started:
                released.append(r)
            elif r.fault is not None:
                others.append((f"fault:{r.fault}", r))
            elif r.data is None:
                others.append((NO_TILE, r))
        accepted_here = 0
        start = 0
        while True:
            room = len(images) - start
            if self.max_tiles is not None:
                room = max(0, min(room, self.max_tiles - rep.accepted))
            chunk = images[start:start + room]
            start += len(chunk)
            final = room == 0 or start >= len(images)
            extra = others + [(UNUSED, r) for r in images[start:]] if final else []
            gone = released if final else []
            outcomes = self.pipe.process(  # type: ignore[union-attr]
                [self.candidate(r) for r in chunk],
                on_commit=lambda conn, outs, c=chunk, e=extra, g=gone: self.write_status(conn, c, outs, e, g),
            )
            accepted_here += self.account(chunk, outcomes, extra, gone)
            if final:
                break
        rep.batches += 1
        started = sum(1 for r in results if r.started)
        if started:
            self.zero_streak = 0 if accepted_here else self.zero_streak + 1

    def write_status(self, conn, chunk: list[FetchResult], outcomes: list[Outcome],
                     extra: list[tuple[str, FetchResult]], released: list[FetchResult]) -> None:
        """``on_commit``: final ``fetched`` statuses, in the transaction that stores the tiles."""
        rows = [(ACCEPTED if o.accepted else f"rejected:{o.reason}", r.at, self.name, r.ref.z, r.ref.x, r.ref.y)
                for r, o in zip(chunk, outcomes)]
        rows += [(status, r.at, self.name, r.ref.z, r.ref.x, r.ref.y) for status, r in extra]
        conn.executemany("UPDATE fetched SET status = ?, tried_at = ? WHERE source = ? AND z = ? AND x = ? AND y = ?",
                         rows)
        never = [r for r in released if r.ref[:3] not in self.retrying]
        conn.executemany(
            "DELETE FROM fetched WHERE source = ? AND z = ? AND x = ? AND y = ? AND status = ?",
            [(self.name, r.ref.z, r.ref.x, r.ref.y, CLAIMED) for r in never],
        )
        # A retried tile not asked after all keeps the fault it had (and stays retryable).
        conn.executemany(
            "UPDATE fetched SET status = ?, tried_at = ? WHERE source = ? AND z = ? AND x = ? AND y = ? AND status = ?",
            [(t.status, t.tried_at, self.name, t.ref.z, t.ref.x, t.ref.y, CLAIMED)
             for t in (self.retrying[r.ref[:3]] for r in released if r.ref[:3] in self.retrying)],
        )

    def account(self, chunk: list[FetchResult], outcomes: list[Outcome],
                extra: list[tuple[str, FetchResult]], released: list[FetchResult]) -> int:
        """Count a committed chunk into the report; returns the tiles it accepted."""
        rep = self.report
        accepted = 0
        for r, o in zip(chunk, outcomes):
            region = rep.by_region.setdefault(r.ref.region, Counter())
            region["fetched"] += 1
            if o.accepted:
                accepted += 1
                region["accepted"] += 1
            else:
                rep.rejected[o.reason] += 1
                logger.debug("rejected %s: %s %s", o.name, o.reason, o.detail)
        rep.accepted += accepted
        for status, r in extra:
            rep.by_region.setdefault(r.ref.region, Counter())["fetched"] += 1
            if status == NO_TILE:
                rep.missing += 1
            elif status == UNUSED:
                rep.unused += 1
            else:
                rep.failed[r.fault] += 1
                logger.debug("gave up on %s/%s/%s: %s", r.ref.z, r.ref.x, r.ref.y, r.detail)
        rep.released += len(released)
        rep.retried_faults += sum(1 for r in [*chunk, *(r for _, r in extra)] if r.ref[:3] in self.retrying)
        return accepted

    def check_stop(self) -> None:
        rep = self.report
        if self.interrupt.is_set():
            rep.interrupted = True
            self.stop("interrupted")
        elif self.max_tiles is not None and rep.accepted >= self.max_tiles:
            self.stop("max_tiles")
        elif self.max_requests is not None and self.requests() >= self.max_requests:
            self.stop("max_requests")
        elif self.zero_streak >= self.patience:
            self.stop(f"no tile accepted in {self.patience} consecutive batches")
        elif self.exhausted and not self.pending:
            self.stop("plan exhausted")

    # -- driving ---------------------------------------------------------------------------------

    def on_sigint(self) -> None:
        self.interrupt.set()
        self.halt.set()
        logger.warning("interrupted: finishing the requests in flight; Ctrl-C again to abandon them")

    def loop(self, bar: tqdm) -> None:
        while True:
            self.fill()
            if not self.pending:
                self.check_stop()
                if not self.report.stop_reason:
                    self.stop("plan exhausted" if self.exhausted else "max_requests")
                return
            results = self.collect(self.pending.popleft())
            self.in_hand = len(results)
            self.fill()
            self.process(results)
            self.in_hand = 0
            self.check_stop()
            self.show(bar)

    def show(self, bar: tqdm) -> None:
        rep = self.report
        assert self.pipe is not None
        bar.n = rep.accepted if self.max_tiles is not None else rep.fetched
        rejected = " ".join(f"{k}:{v}" for k, v in sorted(rep.rejected.items())) or "0"
        faults = sum(v for k, v in self.stats_delta().items() if k not in NON_FAULT_STATS)
        bar.set_postfix_str(
            f"acc {rep.accepted} rej {rejected} none {rep.missing} faults {faults} "
            f"buckets {int((self.pipe.counts > 0).sum())}", refresh=False)
        bar.refresh()

    def abandon(self) -> None:
        """After a second Ctrl-C: cancel queued fetches and release their claims at once."""
        self.halt.set()
        released = []
        for batch in self.pending:
            for ref, fut in zip(batch.refs, batch.futures):
                if fut.cancel():
                    released.append(FetchResult(ref, started=False))
        self.pending.clear()
        if released:
            with self.conn:
                self.write_status(self.conn, [], [], [], released)
            self.report.released += len(released)


def harvest(
    lib: Library,
    source: TileSource | str = "arcgis",
    plan: Plan | str | int | Path | None = None,
    zoom: int = DEFAULT_ZOOM,
    threads: int = DEFAULT_THREADS,
    batch: int = DEFAULT_BATCH,
    max_tiles: int | None = None,
    max_requests: int | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    *,
    rate: float | None = None,
    patience: int = DEFAULT_PATIENCE,
    workers: int | None = None,
    retry_faults: bool = False,
) -> HarvestReport:
    """Harvest tiles from ``source`` into ``lib`` (opened for writing); see the module doc.

    ``source``: a TileSource, or a ``--source`` spec opened (with ``rate``) and closed here.
    ``plan``: a Plan, a phase ``1``/``2``/``all``, or a plan JSON path (default phase 1).
    ``progress``: show a tqdm bar (None: when stderr is a terminal).  ``workers``: pipeline
    processes (default: CPU count).  ``retry_faults``: ask again for the tiles that ended in
    a transient fault in earlier runs (see the module doc).  Returns the run's
    :class:`HarvestReport`; an interrupted run returns normally with ``report.interrupted`` set.
    """
    validate_options(zoom=zoom, threads=threads, batch=batch, max_tiles=max_tiles, max_requests=max_requests,
                     rate=rate, patience=patience)
    lib._require_writer()
    the_plan = resolve_plan(plan)
    owned = isinstance(source, str)
    src: TileSource = open_source(source, **({"rate": rate} if rate else {})) if owned else source  # type: ignore[arg-type]
    report = HarvestReport(source=src.name, plan=the_plan.name, zoom=zoom)
    try:
        run = _Run(lib, src, the_plan, zoom, threads, batch, max_tiles, max_requests, seed, patience, report,
                   retry_faults=retry_faults)
        before = int((lib.bucket_counts() > 0).sum())
        _drive(run, progress, workers, getattr(src, "screen_blank", True))
        report.requests = run.requests()
        report.faults = Counter({k: v for k, v in run.stats_delta().items() if k not in NON_FAULT_STATS})
        report.buckets_populated = int((lib.bucket_counts() > 0).sum())
        report.buckets_new = report.buckets_populated - before
    finally:
        if owned:
            src.close()
    return report


def _drive(run: _Run, progress: bool | None, workers: int | None, screen_blank: bool) -> None:
    """Pipeline first (fork), then signals, threads and the bar; tear down in reverse."""
    lib, report = run.lib, run.report
    show = sys.stderr.isatty() if progress is None else progress
    started = time.perf_counter()
    clean = False
    with _sigint_ignored():
        pipe = Pipeline(lib, workers=workers, prefilter=reject_blank if screen_blank else None)
    run.pipe = pipe
    try:
        with _graceful_sigint(run.on_sigint):
            executor = ThreadPoolExecutor(run.threads, thread_name_prefix="harvest-fetch")
            run.executor = executor
            bar = tqdm(total=run.max_tiles, unit="tile", desc="harvest", disable=not show, dynamic_ncols=True)
            try:
                run.loop(bar)
                clean = True
            except KeyboardInterrupt:
                report.interrupted = True
                run.stop("interrupted")
                run.abandon()
            finally:
                if not clean:
                    run.halt.set()
                    for b in run.pending:
                        for f in b.futures:
                            f.cancel()
                executor.shutdown(wait=clean, cancel_futures=True)
                bar.close()
    finally:
        report.seconds = time.perf_counter() - started
        pipe.close()
        if not clean:
            lib.recover()  # scratch of an abandoned batch; the journal protocol kept the DB consistent
