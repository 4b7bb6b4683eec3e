"""The fetch engine: tiles of one source fetched on threads, politely, through a fetch ledger.

A driver (:class:`~builder.acquire.run.FetchRun`, for ``harvest`` and the colour atlas) decides what to claim,
when to stop and what to do with the answers; the engine does the rest, the same way for
every driver:

- :meth:`FetchEngine.submit` claims a batch through its :class:`~builder.acquire.ledger.FetchLedger`
  (in-flight log first, then the ``claimed`` rows, committed) and queues one fetch per tile on
  a ``ThreadPoolExecutor`` (I/O bound); the driver keeps a few batches queued ahead of the one
  it processes, so the network stays busy while it works;
- each fetch thread logs the tile's request before the first attempt goes out and its answer
  after (remote sources only, see :mod:`builder.acquire.ledger`), so a SIGKILL costs at most the
  requests on the wire;
- every attempt, retries included, passes the run's :class:`~builder.acquire.sources.RequestGate`: a
  hard request budget (``max_requests``), the run's halt, and the dead-source verdict
  (:attr:`FetchEngine.down`), after which no request starts and the backoff pauses end;
- :meth:`FetchEngine.halt` (any stop, the first Ctrl-C): no further tile starts and no retry
  begins, requests on the wire finish, and tiles that did not start come back unstarted for
  the driver to release; :meth:`FetchEngine.abandon` (a second Ctrl-C) cancels what is queued.

:class:`~builder.acquire.run.FetchRun` is the driver ``harvest`` and the atlas share (the loop,
Ctrl-C, the request budget, the source found down).

A driver whose answers need no pipeline, in full (a ledger table of its own, see
:class:`~builder.acquire.ledger.FetchLedger`)::

    ledger = FetchLedger(lib.root, lib.conn, source.name, table="...", stored_in=None)
    found = ledger.recover_inflight()     # a killed run's answers: use found.images, then settle found.logs
    with FetchEngine(source, ledger, threads=8, max_requests=500) as engine:
        engine.submit([Claim(ref) for ref in refs if ref.key not in ledger.known(zoom)])
        while engine.pending:                 # once engine.down is set, release faults, do not record them
            batch, results = engine.next_results()
            with lib.conn:                # use the bytes, then book every tile in one transaction
                ledger.record(lib.conn, [(r.ref, status_of(r), r.at) for r in results if r.started])
                ledger.release(lib.conn, [r.ref for r in results if not r.started])
            ledger.settle(batch.log)
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import NamedTuple

from ..core.db import utc_now
from ..core.errors import SourceError
from .ledger import BatchLog, Claim, FetchLedger, FetchResult
from .sources import FetchStats, GateClosed, RequestGate, TileFault, TileSource
from .tiles import TileRef

logger = logging.getLogger(__name__)


class Batch(NamedTuple):
    """One claimed batch: its claims, one future per tile (a :class:`FetchResult`), its in-flight log."""

    claims: list[Claim]
    futures: list[Future]
    log: BatchLog

    @property
    def refs(self) -> list[TileRef]:
        return [c.ref for c in self.claims]


class FetchEngine:
    """Fetch claimed tiles of ``source`` on ``threads`` threads; use as a context manager.

    ``max_requests``: the hard cap on attempts (HTTP retries included; for a source that does
    not retry, fetch calls).  ``pending`` holds the submitted batches, oldest first.  ``stats``
    counts the run's answers (:class:`~builder.acquire.sources.FetchStats`): the engine counts each
    tile's outcome, and every attempt of a source that does not retry; a source that retries
    reports its attempts itself.
    """

    def __init__(self, source: TileSource, ledger: FetchLedger, threads: int,
                 max_requests: int | None = None) -> None:
        self.source = source
        self.ledger = ledger
        self.threads = threads
        self.gate = RequestGate(max_requests)
        self.pending: deque[Batch] = deque()
        # A remote source's requests are logged (a kill must never lead to asking twice); a
        # local one's are not (reading a tile again costs nobody anything).
        self._remote = source.remote
        # A source that retries inside fetch() takes the gate itself, once per attempt.
        self._gated_source = source.takes_gate
        self._lock = threading.RLock()  # RLock: halt() may run in a signal handler on the main thread
        self._halted = False
        self._executor: ThreadPoolExecutor | None = None
        self.stats = FetchStats()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FetchEngine:
        """Start the threads and attach the run's gate and counts to a source that retries by itself."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="fetch")
            if self._gated_source:
                self.source.attach(self.gate, self.stats)
        return self

    def __enter__(self) -> FetchEngine:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(wait=exc_type is None)

    def close(self, wait: bool = True) -> None:
        """Stop the threads (``wait`` False: do not wait for requests on the wire)."""
        if not wait:
            self.halt()
            for batch in self.pending:
                for fut in batch.futures:
                    fut.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None
        if self._gated_source:
            self.source.detach()

    # -- state ----------------------------------------------------------------------------------

    @property
    def down(self) -> str | None:
        """The dead-source verdict (``"unreachable: ..."``, ``"failing: ..."``), once given."""
        return self.gate.down

    def conclude(self) -> str | None:
        """The driver is done: the end-of-run dead-source verdict, if any (see SourceHealth.conclude)."""
        return self.gate.conclude()

    @property
    def halted(self) -> bool:
        return self._halted

    def requests(self) -> int:
        """Attempts so far (HTTP retries included), as the gate allowed them."""
        return self.gate.spent

    def in_flight(self) -> int:
        """Tiles of the queued batches not answered yet."""
        return sum(1 for b in self.pending for f in b.futures if not f.done())

    def queued_tiles(self) -> int:
        return sum(len(b.claims) for b in self.pending)

    # -- work ------------------------------------------------------------------------------------

    def submit(self, claims: Sequence[Claim], predicted: dict | None = None) -> Batch:
        """Claim ``claims`` through the ledger (with the atlas's ``predicted`` buckets, see
        :meth:`FetchLedger.claim`) and queue their fetches."""
        assert self._executor is not None, "start the engine first (or use it as a context manager)"
        claims = list(claims)
        log = self.ledger.claim(claims, predicted)
        batch = Batch(claims, [self._executor.submit(self._fetch, c.ref, log) for c in claims], log)
        self.pending.append(batch)
        return batch

    def next_results(self) -> tuple[Batch, list[FetchResult]]:
        """Wait for the oldest queued batch; its results in claim order (cancelled: unstarted)."""
        batch = self.pending.popleft()
        results = []
        for ref, fut in zip(batch.refs, batch.futures):
            try:
                results.append(fut.result())
            except CancelledError:
                results.append(FetchResult(ref, started=False))
        return batch, results

    def halt(self) -> None:
        """No tile starts from now on, no retry begins; requests on the wire finish."""
        with self._lock:
            self._halted = True
            self.gate.close()

    def abandon(self) -> list[TileRef]:
        """Cancel every queued fetch not started; returns their tiles (to be released).  The
        batches' logs stay: their other tiles may still be on the wire."""
        self.halt()
        cancelled = [ref for b in self.pending for ref, fut in zip(b.refs, b.futures) if fut.cancel()]
        self.pending.clear()
        return cancelled

    def _fetch(self, ref: TileRef, log: BatchLog) -> FetchResult:
        """One tile, on a worker thread; never raises for the source's faults."""
        with self._lock:
            if self._halted or self.gate.closed:
                return FetchResult(ref, started=False)
            if not self._gated_source and not self.gate.take():
                return FetchResult(ref, started=False)
            if self._remote:
                log.requested(ref)  # before the request goes out, and only if it does
        result = self._ask(ref)
        if self._remote:
            log.answered(result)
        return result

    def _ask(self, ref: TileRef) -> FetchResult:
        gate, stats = self.gate, self.stats
        try:
            data = self.source.fetch(ref.z, ref.x, ref.y)
        except GateClosed:
            return FetchResult(ref, started=False)
        except TileFault as fault:
            if not self._gated_source:
                stats.attempted(fault)
                if self._remote:
                    gate.attempted(fault)
            stats.incr("failed")
            gate.gave_up()
            return FetchResult(ref, None, fault.kind, str(fault), utc_now())
        except SourceError as exc:  # a source that cannot answer at all (closed, unreadable archive)
            if not self._gated_source:
                gate.attempted(TileFault("source_error", str(exc), retryable=False))
            gate.gave_up()
            return FetchResult(ref, None, "source_error", str(exc), utc_now())
        if not self._gated_source:
            stats.attempted(None)
            gate.attempted(None)
        stats.incr("ok" if data is not None else "missing")
        return FetchResult(ref, data, None, "", utc_now())
