"""``harvest``: sample tiles from a plan, fetch them concurrently, assign and store them.

One harvest run, in order:

1. validate every option once, in :class:`~builder.acquire.options.HarvestOptions` (one-line
   :class:`~builder.core.errors.UsageError` for a bad value);
2. settle what a killed run of this source left in flight (:meth:`FetchLedger.recover_inflight
   <builder.acquire.ledger.FetchLedger.recover_inflight>`): claims never requested are released, answers
   saved before the kill are stored first, so a kill costs at most the requests on the wire;
3. create the assignment :class:`~builder.assign.pipeline.Pipeline` *before* any thread exists: its
   process pool forks when it is created, and forking beside running threads can copy a lock
   some thread holds.  The workers are forked with SIGINT ignored, so a Ctrl-C reaches only
   this process, which decides what to do with it;
4. draw tiles with the seeded :class:`~builder.acquire.tiles.Sampler`, skipping every z/x/y that the
   fetch ledger knows for this source (any status, or stored), so no tile is requested twice
   across runs;
5. hand each batch to the :class:`~builder.acquire.engine.FetchEngine`, which claims it through the
   ledger (committed before any request) and fetches it on ``threads`` threads; up to
   :data:`~builder.acquire.run.PREFETCH` further batches are queued while the main thread runs the current one
   through the pipeline, so the network and both CPU cores stay busy;
6. feed the tiles to ``pipe.process(..., on_commit=...)``; ``on_commit`` writes each tile's
   final ledger status in the same transaction as the tiles themselves.

The ``fetched`` statuses and the in-flight logs that make a kill cheap are described in
:mod:`builder.acquire.ledger`.  A claim whose request never started (the run stopped first, or the
request budget ran out before a retry) is released again: the row goes.

``retry_faults`` (CLI ``--retry-faults``): tiles of this source, zoom and plan whose status is
a *transient* fault (``fault:<kind>`` with ``kind`` in
:data:`~builder.acquire.sources.TRANSIENT_KINDS`: ``http_503``, ``http_429``, ``timeout``,
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
so the target is met exactly), at ``max_requests`` requests (a hard cap on attempts, HTTP
retries included: none starts once it is spent, and a tile whose retries it cut short is
released, not marked a fault), when the plan is exhausted, or when ``patience`` consecutive
batches accept nothing (the buckets reachable from this plan stopped filling).  A source
found down (:class:`~builder.acquire.sources.SourceHealth`: no name resolution, connection refused,
or nothing but failures for a while) stops the run within seconds: its unsettled faults are
released rather than recorded, those recorded while it was failing are taken back, and
:func:`harvest` raises :class:`~builder.core.errors.SourceUnreachable` (CLI: one line, exit status
3) with the report attached.  Any stop lets requests already on the wire finish and releases
the tiles not started (or waiting for a retry).  Ctrl-C stops submitting, stores the batches
in hand and returns the report (``interrupted`` set; the CLI exits 130); a second
Ctrl-C abandons in-flight work at once (the pipeline's batch is atomic, unfinished claims
stay ``claimed`` until the next run's recovery).

The loop, Ctrl-C, the request budget, the released / settled split and the dead source are the
fetch-run driver's (:class:`~builder.acquire.run.FetchRun`, shared with the atlas); this module
holds harvest's hooks on it (:class:`_Harvest`) and its report.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..assign.pipeline import Candidate, Outcome, Pipeline, check_radius
from ..core.defaults import (
    DEFAULT_BATCH,
    DEFAULT_NEAR_DUPLICATE_RADIUS,
    DEFAULT_PATIENCE,
    DEFAULT_SOURCE,
    DEFAULT_THREADS,
)
from ..core.errors import UsageError
from ..core.layout import DEFAULT_ZOOM, MAX_ZOOM
from ..core.library import Library
from ..core.plans import Plan, resolve_plan, world_plan
from ..core.stats import per_thousand
from ..core.summary import fields_dict, format_counts
from .atlas import aimed_sampler, calibration_pairs, recalibrate
from .ledger import (
    ACCEPTED,
    UNUSED,
    Claim,
    FetchLedger,
    FetchResult,
    Prior,
    rejected,
)
from .options import HarvestOptions
from .run import PREFETCH, SOURCE_DOWN, Answers, FetchRun
from .sources import TileSource, fault_counts, is_blank_tile, open_source
from .tiles import Sampler, TileRef, tile_centre, tile_range

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BATCH", "DEFAULT_PATIENCE", "DEFAULT_THREADS", "DEFAULT_ZOOM", "MAX_ZOOM", "PREFETCH",
           "SOURCE_DOWN", "FetchResult", "HarvestOptions", "HarvestReport", "harvest", "reject_blank",
           "resolve_plan", "run_harvest"]

# Floor of the yield estimate that sizes batches near --max-tiles (see _Harvest.next_claims).
MIN_YIELD_ESTIMATE = 0.05


def reject_blank(rgb: np.ndarray) -> str | None:
    """Pipeline prefilter: ``"blank"`` for flat, placeholder or nodata tiles, else None.

    Module level so the pipeline's worker processes can use it.  Runs on the decoded pixels
    before colour and hash work, so a placeholder costs one decode and is never stored.
    """
    return "blank" if is_blank_tile(rgb) else None


# --- values -----------------------------------------------------------------------------------


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
    released: int = 0  # claims dropped because no request for them went out (or the budget cut their retries)
    retried_faults: int = 0  # tiles of earlier transient faults requested again (--retry-faults)
    requests: int = 0
    batches: int = 0
    seconds: float = 0.0
    buckets_populated: int = 0
    buckets_new: int = 0
    by_region: dict = field(default_factory=dict)  # region -> Counter(fetched=, accepted=)
    stop_reason: str = ""
    interrupted: bool = False
    source_down: str | None = None  # why the source was found down (the SourceUnreachable message)
    recovery: dict = field(default_factory=dict)  # what a killed run left in flight (Recovery.as_dict)
    target: str | None = None  # --target empty|underfilled: tiles drawn from the colour atlas
    aimed: int = 0  # tiles drawn for a predicted bucket whose colour was measured (decoded)
    hits: int = 0  # of those, tiles that landed in their predicted bucket
    reachable: int = 0  # --target: buckets the atlas has candidates for
    calibration: dict | None = None  # --target: the atlas calibration run at the start, if any

    @property
    def fetched(self) -> int:
        """Tiles the source was asked for and answered (image, no tile, or fault)."""
        return self.accepted + sum(self.rejected.values()) + self.missing + sum(self.failed.values()) + self.unused

    @property
    def tiles_per_s(self) -> float:
        """Images assigned (accepted + rejected) per second of run time."""
        assigned = self.accepted + sum(self.rejected.values())
        return assigned / self.seconds if self.seconds > 0 else 0.0

    @property
    def hit_rate(self) -> float:
        """Share of the aimed tiles that landed in their predicted bucket."""
        return self.hits / self.aimed if self.aimed else 0.0

    @property
    def new_per_1000(self) -> float:
        """New buckets populated per 1,000 requests."""
        return per_thousand(self.buckets_new, self.requests)

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
        if any(self.recovery.values()):
            parts.append("after a kill: " + ", ".join(f"{k} {v}" for k, v in self.recovery.items() if v))
        parts.append(f"{self.buckets_populated} buckets populated (+{self.buckets_new})")
        if self.target:
            parts.append(f"target {self.target}: hit rate {self.hit_rate:.1%} ({self.hits}/{self.aimed}), "
                         f"{self.new_per_1000:g} new buckets per 1,000 requests")
        return "; ".join(parts) + f"; stopped: {self.stop_reason}"

    def as_dict(self) -> dict:
        """Every field, with the figures derived from them beside the fields they come from."""
        return fields_dict(self, seconds=round(self.seconds, 3), by_region=self.region_yield(),
                           after={"seconds": {"tiles_per_s": round(self.tiles_per_s, 2)},
                                  "hits": {"hit_rate": round(self.hit_rate, 4),
                                           "new_buckets_per_1000_requests": self.new_per_1000}})


# --- signals ----------------------------------------------------------------------------------


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while the pipeline forks: workers inherit SIG_IGN.

    A terminal's Ctrl-C goes to the whole process group; a pool worker that takes it dies
    or aborts its task and breaks the pool mid-batch.  With SIG_IGN inherited, only this
    process sees the signal and stops the run in order.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --- the run ----------------------------------------------------------------------------------


def transient_claims(ledger: FetchLedger, plan: Plan, zoom: int) -> list[Claim]:
    """The ledger's transient-fault tiles at ``zoom`` that lie inside ``plan``, oldest first, as
    claims that remember the row they replace.

    A tile is matched to the region it was drawn for (the row's ``region``) when the plan
    still has that region and it covers the tile, else to the first region that covers it;
    tiles outside the plan are left for a run with a plan that holds them.
    """
    ranges = [(r.name, tile_range(r.bbox, zoom)) for r in plan.regions]
    out = []
    for row in ledger.transient(zoom):
        covering = [name for name, rng in ranges if rng.contains(row.x, row.y)]
        if not covering:
            continue
        lon, lat = tile_centre(zoom, row.x, row.y)
        region = row.region if row.region in covering else covering[0]
        out.append(Claim(TileRef(zoom, row.x, row.y, region, lon, lat), Prior(row.status, row.tried_at)))
    return out


class _Harvest:
    """Harvest's part of a fetch run (:class:`~builder.acquire.run.RunHooks`): what to claim next
    (retries first, then the sampler or the atlas's aimed sampler, sized near ``max_tiles``),
    the pipeline that stores the images with every tile's status, and when the run has done
    enough.  :func:`harvest` is the interface, :class:`~builder.acquire.run.FetchRun` the driver."""

    desc = "harvest"
    exhausted_reason = "plan exhausted"

    def __init__(self, run: FetchRun, plan: Plan, zoom: int, max_tiles: int | None, seed: int | None,
                 patience: int, report: HarvestReport, retry_faults: bool = False, target: str | None = None,
                 processes: int | None = None, screen_blank: bool = True, radius: int = 0) -> None:
        self.run = run
        self.lib = run.lib
        self.name = run.source.name
        self.ledger = run.ledger
        self.zoom = zoom
        self.max_tiles = max_tiles
        self.patience = patience
        self.report = report
        self.processes = processes
        self.screen_blank = screen_blank
        self.radius = radius
        self.taken = self.ledger.known(zoom)
        # --retry-faults: queued ahead of the sampler; they stay in self.taken so it never draws them.
        self.retry_queue: deque[Claim] = deque(transient_claims(self.ledger, plan, zoom) if retry_faults else ())
        self.aimed = None
        self.measured = 0  # aimed tiles answered so far (an upper bound of those with a measured colour)
        if target is None:
            # Resuming with the same seed walks the same permutation past every tile done before;
            # the sampler's skip guard must not mistake that for an exhausted region.
            self.sampler = Sampler(plan, zoom, seed, max_skips=max(100_000, len(self.taken) + 1))
        else:  # drawn from the colour atlas, weighted by what each bucket still needs
            self.aimed, report.calibration = aimed_sampler(self.lib, self.name, zoom, target, self._counts, seed)
            self.measured = len(calibration_pairs(self.lib.conn, self.name, zoom)[0])
            self.sampler = self.aimed
            report.reachable = self.aimed.reachable
        report.seed = self.sampler.seed
        self.exhausted = False
        self.zero_streak = 0
        self.pipe: Pipeline | None = None
        self.buckets_before = int((self.lib.bucket_counts() > 0).sum())

    @property
    def predicted(self) -> dict | None:
        """An aimed tile's predicted bucket, committed with its claim."""
        return self.aimed.predicted if self.aimed is not None else None

    def _counts(self) -> np.ndarray:
        """Real tiles per bucket now (the pipeline's running counts once it exists): a bucket that
        holds only synthetic tiles still needs real ones, and they would take their place."""
        return self.pipe.real_counts if self.pipe is not None else self.lib.bucket_counts(real_only=True)

    # -- around the run --------------------------------------------------------------------------

    def prepare(self) -> None:
        """The pipeline first: its process pool forks here, before any thread exists."""
        with _sigint_ignored():
            self.pipe = Pipeline(self.lib, workers=self.processes, prefilter=reject_blank if self.screen_blank else None,
                                 near_duplicate_radius=self.radius)

    def bar_total(self) -> int | None:
        return self.max_tiles

    def finish(self, clean: bool) -> None:
        if self.pipe is not None:
            self.pipe.close()
        if not clean:
            self.lib.recover()  # scratch of an abandoned batch; the journal protocol kept the DB consistent

    def tally(self) -> None:
        rep = self.report
        rep.faults = fault_counts(self.run.engine.stats.snapshot())
        rep.buckets_populated = int((self.lib.bucket_counts() > 0).sum())
        rep.buckets_new = rep.buckets_populated - self.buckets_before

    # -- claiming ------------------------------------------------------------------------------

    def next_claims(self, size: int, outstanding: int) -> list[Claim]:
        """Retries first, then fresh tiles.  Near ``max_tiles`` the yield seen so far sizes the
        batch, so the prefetch does not claim (and spend requests on) tiles the target no
        longer needs."""
        if self.max_tiles is not None:
            rep = self.report
            tried = rep.fetched
            rate = max(rep.accepted / tried, MIN_YIELD_ESTIMATE) if tried else 1.0
            need = self.max_tiles - rep.accepted - rate * outstanding
            size = min(size, math.ceil(need / rate)) if need > 0 else 0
        if size <= 0:
            return []
        claims = self.take_retries(size)
        if len(claims) < size:
            fresh = self.sampler.sample(size - len(claims), exclude=self.taken)
            # An aimed sampler may hold back while its buckets' tiles are in flight: only
            # "done" (no bucket that needs a tile has a candidate left) is exhaustion.
            if len(fresh) < size - len(claims) and self.sampler.all_exhausted:
                self.exhausted = True
            claims += [Claim(ref) for ref in fresh]
        self.taken.update(c.ref.key for c in claims)
        return claims

    def take_retries(self, size: int) -> list[Claim]:
        """Up to ``size`` queued transient-fault tiles (--retry-faults)."""
        claims = []
        while self.retry_queue and len(claims) < size:
            claims.append(self.retry_queue.popleft())
        return claims

    # -- folding -------------------------------------------------------------------------------

    def candidate(self, res: FetchResult) -> Candidate:
        r = res.ref
        return Candidate(
            name=f"{r.z}/{r.x}/{r.y}",
            data=res.data,
            provenance={"source": self.name, "z": r.z, "x": r.x, "y": r.y, "lon": r.lon, "lat": r.lat,
                        "region": r.region, "harvested_at": res.at},
        )

    def fold(self, answers: Answers, recovered: bool) -> bool:
        """Store one fetched batch and every tile's final status, in as few transactions as the
        ``max_tiles`` limit allows (one, unless the limit falls inside this batch).  ``recovered``:
        answers a killed run fetched; those the tile target leaves over stay claimed in their
        logs for a later run, rather than ``unused``."""
        rep = self.report
        results, images = answers.results, answers.images
        retried = {r.ref.key for r in results if r.started and self.ledger.prior(r.ref.key)}
        accepted_here = 0
        start = 0
        while True:
            room = len(images) - start
            if self.max_tiles is not None:
                room = max(0, min(room, self.max_tiles - rep.accepted))
            chunk = images[start:start + room]
            start += len(chunk)
            final = room == 0 or start >= len(images)
            left = [] if recovered else [(UNUSED, r) for r in images[start:]]
            extra = answers.settled + left if final else []
            gone = answers.released if final else []
            outcomes = self.pipe.process(  # type: ignore[union-attr]
                [self.candidate(r) for r in chunk],
                on_commit=lambda conn, outs, c=chunk, e=extra, g=gone: self.write_status(conn, c, outs, e, g),
            )
            accepted_here += self.account(chunk, outcomes, extra, retried)
            if final:
                break
        rep.batches += 1
        if any(r.started for r in results):
            self.zero_streak = 0 if accepted_here else self.zero_streak + 1
        if self.aimed is not None:
            self.aimed.settle(r.ref for r in results)
            self.measured += sum(1 for r in results if r.ref.key in self.aimed.predicted)
            if self.measured >= (self.aimed.next_fit or math.inf):
                # The true count (decoded candidates of the atlas, earlier runs included) decides.
                n = len(calibration_pairs(self.lib.conn, self.name, self.zoom)[0])
                self.measured = n
                fit = recalibrate(self.lib, self.aimed, n, self.taken)
                if fit is not None:
                    self.report.calibration = fit
        return start >= len(images) or not recovered

    def write_status(self, conn, chunk: list[FetchResult], outcomes: list[Outcome],
                     extra: list[tuple[str, FetchResult]], released: list[FetchResult]) -> None:
        """``on_commit``: final ledger statuses, in the transaction that stores the tiles."""
        rows = [(r.ref, ACCEPTED if o.accepted else rejected(o.reason), r.at) for r, o in zip(chunk, outcomes)]
        rows += [(r.ref, status, r.at) for status, r in extra]
        self.ledger.record(conn, rows)
        self.ledger.record_outcomes(conn, [(r.ref, o.bucket_id, o.lab) for r, o in zip(chunk, outcomes)
                                           if o.bucket_id is not None and o.lab is not None])
        self.ledger.release(conn, [r.ref for r in released])

    def account(self, chunk: list[FetchResult], outcomes: list[Outcome],
                extra: list[tuple[str, FetchResult]], retried: set) -> int:
        """Count a committed chunk into the report (the driver counts no-tile, faults and
        released); returns the tiles it accepted."""
        rep = self.report
        accepted = 0
        for r, o in zip(chunk, outcomes):
            predicted = self.aimed.predicted.get(r.ref.key) if self.aimed is not None else None
            if predicted is not None and o.bucket_id is not None:
                rep.aimed += 1
                rep.hits += int(o.bucket_id == predicted)
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
            if status == UNUSED:
                rep.unused += 1
        rep.retried_faults += sum(1 for r in [*chunk, *(r for _, r in extra)] if r.ref.key in retried)
        return accepted

    def retracted(self, rows: list[tuple[TileRef, str, Prior | None]]) -> None:
        for ref, _status, _prior in rows:
            self.report.by_region[ref.region]["fetched"] -= 1

    # -- stopping and showing ----------------------------------------------------------------------

    def target_reached(self) -> str | None:
        if self.max_tiles is not None and self.report.accepted >= self.max_tiles:
            return "max_tiles"
        return None

    def stalled(self) -> str | None:
        if self.zero_streak >= self.patience:
            return f"no tile accepted in {self.patience} consecutive batches"
        if self.exhausted and not self.run.engine.pending:
            return "plan exhausted"
        return None

    def show(self, bar: tqdm, answers: Answers) -> None:
        rep = self.report
        assert self.pipe is not None
        bar.n = rep.accepted if self.max_tiles is not None else rep.fetched
        rejected_text = " ".join(f"{k}:{v}" for k, v in sorted(rep.rejected.items())) or "0"
        faults = sum(fault_counts(self.run.engine.stats.snapshot()).values())
        bar.set_postfix_str(
            f"acc {rep.accepted} rej {rejected_text} none {rep.missing} faults {faults} "
            f"buckets {int((self.pipe.counts > 0).sum())}", refresh=False)
        bar.refresh()


def harvest(
    lib: Library,
    source: TileSource | str = DEFAULT_SOURCE,
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
    target: str | None = None,
    near_duplicate_radius: int = DEFAULT_NEAR_DUPLICATE_RADIUS,
) -> HarvestReport:
    """Harvest tiles from ``source`` into ``lib`` (opened for writing); see the module doc.

    ``source``: a TileSource, or a ``--source`` spec opened (with ``rate``) and closed here.
    ``plan``: a Plan, a phase ``1``/``2``/``all``, or a plan JSON path (default phase 1).
    ``progress``: show a tqdm bar (None: when stderr is a terminal).  ``workers``: pipeline
    processes (default: CPU count).  ``retry_faults``: ask again for the tiles that ended in
    a transient fault in earlier runs (see the module doc).  ``target`` (``"empty"`` or
    ``"underfilled"``): draw tiles from the library's colour atlas of this source and zoom instead
    of ``plan`` (see :class:`builder.acquire.atlas.AimedSampler`).  ``near_duplicate_radius``: pHash bits
    within which two tiles of a bucket are duplicates (:class:`~builder.assign.pipeline.Pipeline`).  Returns the run's
    :class:`HarvestReport`; an interrupted run returns normally with ``report.interrupted`` set.
    Raises :class:`~builder.core.errors.SourceUnreachable` (``.report`` set) when the source is found
    down.
    """
    options = HarvestOptions(
        source=source if isinstance(source, str) else source.name, zoom=zoom, threads=threads, batch=batch,
        max_tiles=max_tiles, max_requests=max_requests, seed=seed, rate=rate, patience=patience, workers=workers,
        retry_faults=retry_faults, target=target, near_duplicate_radius=near_duplicate_radius)
    if target is not None and plan is not None:
        raise UsageError(f"--target {target} draws its tiles from the atlas: give it without --phase or --plan")
    return run_harvest(lib, options, source=None if isinstance(source, str) else source, plan=plan, progress=progress)


def run_harvest(lib: Library, options: HarvestOptions, *, source: TileSource | None = None,
                plan: Plan | str | int | Path | None = None, progress: bool | None = None) -> HarvestReport:
    """:func:`harvest` with its options made (and so checked) already: the command line's way in.

    ``source``: an open source (closed by the caller), else ``options.source`` is opened and
    closed here; ``plan``: a Plan, a phase or a plan file, else ``options.plan_spec``."""
    check_radius(options.near_duplicate_radius)
    lib.require_writer("harvest")
    if options.target is not None:
        the_plan = world_plan()._replace(name=f"target:{options.target}")
    else:
        the_plan = resolve_plan(plan if plan is not None else options.plan_spec)
    src = source if source is not None else open_source(options.source, **options.source_options)
    report = HarvestReport(source=src.name, plan=the_plan.name, zoom=options.zoom, target=options.target)
    try:
        run = FetchRun(lib, src, FetchLedger(lib.root, lib.conn, src.name), report,
                       threads=options.threads, batch=options.batch, max_requests=options.max_requests)
        hooks = _Harvest(run, the_plan, options.zoom, options.max_tiles, options.seed, options.patience, report,
                         retry_faults=options.retry_faults, target=options.target, processes=options.workers,
                         screen_blank=src.screen_blank, radius=options.near_duplicate_radius)
        run.run(hooks, progress)
    finally:
        if source is None:
            src.close()
    return report
