"""One fetch run, whatever it fetches for: the loop, Ctrl-C, the request budget, source health.

``harvest`` and the colour atlas drive a :class:`~builder.acquire.engine.FetchEngine` the same way;
:class:`FetchRun` is that way, written once.  What differs between them is a
:class:`RunHooks` object: which tiles to claim next, what the answers become, when the run
has reached its own goal, and what the progress bar shows.

The run, in order (:meth:`FetchRun.run`):

1. ``hooks.prepare()`` before any thread exists (harvest forks its pipeline there);
2. under :func:`graceful_sigint`, with the engine's threads started: the answers a killed run
   fetched (:attr:`FetchRun.recovery`) are folded first, then the loop keeps up to
   :data:`PREFETCH` batches queued beyond the one being folded, each sized to what the request
   budget still allows, and folds each batch as it completes;
3. every batch is split by :func:`split_answers` (the same rule for every run): a tile whose
   request never started, or that faulted once the source was found down, is *released*
   (its claim goes: the fault says nothing about the tile); no-tile and fault answers are
   *settled* to a status; image bytes go to the hooks;
4. the stop checks after each batch: Ctrl-C, the dead-source verdict, the hooks' goal, the
   request budget, the hooks' stall;
5. the epilogue: the engine's end-of-run verdict; if the source is down, the faults recorded
   while it was failing are taken back (:meth:`FetchRun.retract_failing`) and
   :class:`~builder.core.errors.SourceUnreachable` is raised with the report attached.

The report is any object with the fields of :class:`RunReport`; the driver writes those
fields, the hooks the others.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple, Protocol

from tqdm import tqdm

from ..core.errors import SourceUnreachable
from ..core.library import Library
from .engine import FetchEngine
from .ledger import NO_TILE, BatchLog, Claim, FetchLedger, FetchResult, Prior, answer_status
from .sources import TileSource
from .tiles import TileRef

logger = logging.getLogger(__name__)

# Batches queued for fetching beyond the one being folded: one keeps the threads busy while the
# main thread folds; a second covers the time the main thread spends claiming.
PREFETCH = 2
SOURCE_DOWN = "source unreachable"  # the stop reason of a run whose source was found down


class RunReport(Protocol):
    """The fields of a run's report that the driver writes (``HarvestReport``, ``AtlasReport``)."""

    missing: int  # tiles the source does not have
    failed: Counter  # fault kind -> tiles given up on
    released: int  # claims dropped because no request for them went out
    requests: int
    seconds: float
    stop_reason: str
    interrupted: bool
    source_down: str | None
    recovery: dict


class Answers(NamedTuple):
    """One batch's results, split the way every run books them (see :func:`split_answers`)."""

    results: list[FetchResult]  # all of them, in claim order
    images: list[FetchResult]  # answered with bytes: for the hooks to use
    settled: list[tuple[str, FetchResult]]  # (status, result): no tile and faults, recorded as they are
    released: list[FetchResult]  # never started, or a fault once the source was down: the claim goes
    faulted: list[tuple[TileRef, str, Prior | None]]  # of ``settled``, the faults (with the row they replace)
    answered: bool  # the source said something (an image or "no tile"): its failing streak ends


def split_answers(results: Sequence[FetchResult], down: bool,
                  prior: Callable[[tuple[int, int, int]], Prior | None] = lambda key: None) -> Answers:
    """Split a batch: released (not started, or a fault of a source found ``down``), settled
    (``none`` and ``fault:<kind>``), images.  ``prior`` gives the fault row a retried claim
    replaced (:meth:`FetchLedger.prior`), read now, before the statuses are written."""
    images = [r for r in results if r.started and r.fault is None and r.data is not None]
    settled: list[tuple[str, FetchResult]] = []
    released: list[FetchResult] = []
    for r in results:
        status = answer_status(r)
        if not r.started or (down and r.fault is not None):
            released.append(r)
        elif status is not None:
            settled.append((status, r))
    faulted = [(r.ref, status, prior(r.ref.key)) for status, r in settled if r.fault is not None]
    answered = bool(images) or any(status == NO_TILE for status, _ in settled)
    return Answers(list(results), images, settled, released, faulted, answered)


class RunHooks(Protocol):
    """What a fetch run does that the driver does not: the tiles, and what their answers become."""

    desc: str  # the progress bar's label and the log's name for the run ("harvest", "atlas")
    exhausted: bool  # nothing left to claim
    exhausted_reason: str  # the stop reason then ("plan exhausted", "area done")
    predicted: dict | None  # buckets predicted for the claims, committed with them (see FetchLedger.claim)

    def prepare(self) -> None:
        """Before any thread starts (a process pool forks here)."""

    def bar_total(self) -> int | None:
        """The progress bar's total (None: unknown)."""

    def next_claims(self, size: int, outstanding: int) -> list[Claim]:
        """Up to ``size`` tiles to claim (the request budget already counted); ``outstanding``
        tiles are claimed but not yet folded.  Sets ``exhausted`` when nothing is left; an
        empty list holds the claiming back for now."""

    def fold(self, answers: Answers, recovered: bool) -> bool:
        """Book one batch: use the images, record every status of ``answers.settled`` and
        release ``answers.released`` in the same transactions.  ``recovered``: answers of a killed
        run.  Returns True when every tile of the batch is booked (its in-flight logs may go)."""

    def target_reached(self) -> str | None:
        """A stop reason checked before the request budget (harvest: ``max_tiles``)."""

    def stalled(self) -> str | None:
        """A stop reason checked after the request budget (harvest: patience, plan exhausted)."""

    def retracted(self, rows: list[tuple[TileRef, str, Prior | None]]) -> None:
        """``rows`` were taken back from the ledger (the source is down): uncount them."""

    def show(self, bar: tqdm, answers: Answers) -> None:
        """Update the progress bar after a batch."""

    def finish(self, clean: bool) -> None:
        """After the threads have stopped (``clean``: the loop ended without a second Ctrl-C)."""

    def tally(self) -> None:
        """The report's closing figures, before a dead source is raised."""


class FetchRun:
    """The driver of one fetch run of ``source`` through ``ledger``; see the module doc.

    Made before the hooks (which read :attr:`ledger`, :attr:`engine`, :attr:`recovery`): the
    killed run's in-flight logs are resolved here, before anyone asks what the ledger knows.
    """

    def __init__(self, lib: Library, source: TileSource, ledger: FetchLedger, report: RunReport, *,
                 threads: int, batch: int, max_requests: int | None) -> None:
        self.lib = lib
        self.source = source
        self.ledger = ledger
        self.report = report
        self.batch = batch
        self.max_requests = max_requests
        self.recovery = ledger.recover_inflight()  # before known(): released claims may be drawn again
        report.recovery = self.recovery.as_dict()
        self.engine = FetchEngine(source, ledger, threads, max_requests)
        self.interrupt = threading.Event()  # set by the first Ctrl-C
        self.in_hand = 0  # tiles of the batch being folded
        # Fault rows committed since the last batch in which the source answered anything,
        # with the status written and the row they replaced: retracted if the source is found down.
        self.failing: list[tuple[TileRef, str, Prior | None]] = []
        self.hooks: RunHooks | None = None

    # -- figures -------------------------------------------------------------------------------

    def requests(self) -> int:
        """Requests so far: HTTP attempts incl. retries, or fetch calls of a source that does not retry."""
        return self.engine.requests()

    def outstanding(self) -> int:
        """Claimed tiles whose answers are not folded yet (queued, fetching, or being folded)."""
        return self.in_hand + self.engine.queued_tiles()

    def budget_room(self) -> int | None:
        """Requests the budget still allows beyond those queued (None: no budget)."""
        if self.max_requests is None:
            return None
        return self.max_requests - self.requests() - self.engine.in_flight()

    # -- the run ---------------------------------------------------------------------------------

    def run(self, hooks: RunHooks, progress: bool | None) -> None:
        """Drive the run to its end (see the module doc); ``progress``: show a bar (None: when
        stderr is a terminal).  Raises :class:`~builder.core.errors.SourceUnreachable` when the source
        was found down; an interrupted run returns with ``report.interrupted`` set."""
        self.hooks = hooks
        report = self.report
        show = sys.stderr.isatty() if progress is None else progress
        started = time.perf_counter()
        clean = False
        try:
            hooks.prepare()
            bar = tqdm(total=hooks.bar_total(), unit="tile", desc=hooks.desc, disable=not show, dynamic_ncols=True)
            try:
                clean = self.drive(bar)
            finally:
                bar.close()
        finally:
            report.seconds = time.perf_counter() - started
            hooks.finish(clean)
        report.requests = self.requests()
        hooks.tally()
        self.raise_if_down()

    def drive(self, bar: tqdm) -> bool:
        """The loop under :func:`graceful_sigint`, the engine's threads running: the first Ctrl-C
        stops in order, a second abandons what is queued.  The engine is closed in all cases,
        waiting for its threads only after a clean end.  True when the loop ended cleanly."""
        clean = False
        with graceful_sigint(self.on_sigint):
            self.engine.start()
            try:
                self.loop(bar)
                clean = True
            except KeyboardInterrupt:
                self.abandon()
            finally:
                self.engine.close(wait=clean)
        return clean

    def loop(self, bar: tqdm) -> None:
        hooks = self.hooks
        assert hooks is not None
        if self.recovery.images:  # answers a killed run fetched: booked before anything is asked
            images, self.recovery.images = self.recovery.images, []
            self.fold(images, self.recovery.logs, recovered=True)
            self.check_stop()
        while True:
            self.fill()
            if not self.engine.pending:
                self.check_stop()
                if not self.report.stop_reason:
                    self.stop(hooks.exhausted_reason if hooks.exhausted else "max_requests")
                break
            batch, results = self.engine.next_results()
            self.in_hand = len(results)  # popped from the queue, not folded yet: still outstanding
            self.fill()
            answers = self.fold(results, [batch.log])
            self.check_stop()
            hooks.show(bar, answers)
        if self.engine.conclude() is not None:
            self.retract_failing()
            if not self.report.interrupted:
                self.report.stop_reason = SOURCE_DOWN

    def fill(self) -> None:
        """Claim and queue batches until PREFETCH are waiting (unless stopping or exhausted)."""
        hooks = self.hooks
        assert hooks is not None
        while len(self.engine.pending) < PREFETCH and not self.report.stop_reason and not hooks.exhausted:
            room = self.budget_room()
            size = self.batch if room is None else min(self.batch, room)
            if size <= 0:
                return
            claims = hooks.next_claims(size, self.outstanding())
            if not claims:
                return
            self.engine.submit(claims, hooks.predicted)

    def fold(self, results: list[FetchResult], logs: Sequence[BatchLog], recovered: bool = False) -> Answers:
        """Split a batch, let the hooks book it, count what the driver counts, settle its logs."""
        assert self.hooks is not None
        answers = split_answers(results, self.engine.down is not None, self.ledger.prior)
        self.in_hand = len(results)
        booked = self.hooks.fold(answers, recovered)
        self.in_hand = 0
        rep = self.report
        for status, r in answers.settled:
            if status == NO_TILE:
                rep.missing += 1
            else:
                rep.failed[r.fault] += 1
                logger.debug("gave up on %s/%s/%s: %s", r.ref.z, r.ref.x, r.ref.y, r.detail)
        rep.released += len(answers.released)
        if booked:
            for log in logs:
                self.ledger.settle(log)
        self.failing = answers.faulted if answers.answered else self.failing + answers.faulted
        return answers

    def check_stop(self) -> None:
        hooks = self.hooks
        assert hooks is not None
        if self.interrupt.is_set():
            self.report.interrupted = True
            self.stop("interrupted")
        elif self.engine.down is not None:
            self.stop(SOURCE_DOWN)
        elif reason := hooks.target_reached():
            self.stop(reason)
        elif self.max_requests is not None and self.requests() >= self.max_requests:
            self.stop("max_requests")
        elif reason := hooks.stalled():
            self.stop(reason)

    def stop(self, reason: str) -> None:
        """Stop claiming (the first reason is the one reported); requests on the wire finish."""
        if not self.report.stop_reason:
            self.report.stop_reason = reason
            logger.info("%s stopping: %s", self.hooks.desc if self.hooks else "fetch run", reason)
        self.engine.halt()

    # -- the source found down ------------------------------------------------------------------

    def retract_failing(self) -> None:
        """The source is down: the faults recorded while it was failing go too (released, or a
        retried tile's earlier fault restored), so the run marks no tile as tried for it."""
        if not self.failing:
            return
        rows, self.failing = self.failing, []
        with self.lib.conn:
            self.ledger.retract(self.lib.conn, rows)
        rep = self.report
        for _ref, status, _prior in rows:
            rep.failed[status.partition(":")[2]] -= 1
        rep.failed = +rep.failed
        rep.released += len(rows)
        if self.hooks is not None:
            self.hooks.retracted(rows)

    def raise_if_down(self) -> None:
        """Raise SourceUnreachable (the report attached) when the run stopped on a dead source."""
        report = self.report
        if self.engine.down is None or report.stop_reason != SOURCE_DOWN:
            return
        where = self.source.host or self.source.name
        report.source_down = (f"source {where} {self.engine.down}; stopped after {report.requests} requests, "
                              "no tile marked as tried")
        raise SourceUnreachable(report.source_down, report)

    # -- Ctrl-C ------------------------------------------------------------------------------------

    def on_sigint(self) -> None:
        """The first Ctrl-C: stop submitting; what is on the wire finishes and is booked."""
        self.interrupt.set()
        self.engine.halt()
        logger.warning("interrupted: finishing the requests in flight; Ctrl-C again to abandon them")

    def abandon(self) -> None:
        """After a second Ctrl-C: cancel queued fetches and release their claims at once (the
        tiles on the wire stay ``claimed`` until the next run's recovery)."""
        self.report.interrupted = True
        self.stop("interrupted")
        cancelled = self.engine.abandon()
        if cancelled:
            with self.lib.conn:
                self.ledger.release(self.lib.conn, cancelled)
            self.report.released += len(cancelled)


@contextmanager
def graceful_sigint(on_first: Callable[[], None]) -> Iterator[None]:
    """First Ctrl-C calls ``on_first`` (stop in order); a second raises KeyboardInterrupt.

    Does nothing off the main thread (signal handlers can only be set there).
    """
    if threading.current_thread() is not threading.main_thread():
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
