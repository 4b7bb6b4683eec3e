"""Building an atlas: the ``atlas`` command's report, its area, and the atlas's hooks on the fetch
driver (:class:`~builder.acquire.run.FetchRun`) that fold each batch of overview tiles in."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from ...core import db
from ...core.defaults import DEFAULT_BATCH, DEFAULT_THREADS
from ...core.layout import ATLAS_SAMPLE_PER_BUCKET, DEFAULT_ZOOM
from ...core.library import Library
from ...core.plans import Plan, bbox_plan, resolve_plan, world_plan
from ..ledger import ACCEPTED, Claim, FetchLedger, Prior, rejected
from ..options import AtlasOptions
from ..run import Answers, FetchRun
from ..sources import TileSource, open_source
from ..tiles import TileRef
from .blocks import Blocks, fold_tile
from .geometry import block_size, ledger_source, overview_refs
from .samples import AtlasInfo, SampleStore, _ensure_meta, atlas_size


@dataclass
class AtlasReport:
    """What one ``atlas`` run did; ``as_dict()`` is the CLI's ``--json``."""

    source: str = ""
    area: str = ""
    zoom: int = DEFAULT_ZOOM
    atlas_zoom: int = 0
    block: int = 1
    overview_tiles: int = 0  # tiles of the area at the atlas zoom
    already: int = 0  # of those, in the ledger before this run
    read: int = 0  # overview tiles folded in by this run
    blank: int = 0  # flat fills skipped
    missing: int = 0  # no tile there
    rejected: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    released: int = 0
    blocks: int = 0  # blocks folded in by this run
    requests: int = 0
    seconds: float = 0.0
    buckets_reachable: int = 0  # buckets with a candidate in the atlas (after calibration)
    samples: int = 0  # sample rows the atlas holds
    stop_reason: str = ""
    interrupted: bool = False
    source_down: str | None = None
    recovery: dict = field(default_factory=dict)
    calibration: dict | None = None

    def summary(self) -> str:
        parts = [f"{self.read} overview tiles read at zoom {self.atlas_zoom} ({self.block}x{self.block} px a "
                 f"zoom-{self.zoom} tile), {self.already + self.read} of {self.overview_tiles} in the atlas"]
        if self.blank or self.missing:
            parts.append(f"{self.blank} flat, {self.missing} no tile")
        if self.failed:
            parts.append(f"{sum(self.failed.values())} failed")
        parts.append(f"{self.requests} requests")
        parts.append(f"{self.buckets_reachable} buckets reachable, {self.samples} candidate tiles")
        if self.calibration:
            c = self.calibration
            parts.append(f"calibration on {c['tiles']} tiles: hit rate {c['hit_rate_before']:.1%} -> "
                         f"{c['hit_rate_after']:.1%} ({'kept' if c['kept'] else 'not kept'})")
        return "; ".join(parts) + f"; stopped: {self.stop_reason}"

    def as_dict(self) -> dict:
        out = {k: (dict(sorted(v.items())) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}
        out["seconds"] = round(self.seconds, 3)
        return out


def build_atlas(lib: Library, source: TileSource | str, plan: Plan | None = None, zoom: int = DEFAULT_ZOOM,
                atlas_zoom: int | None = None, *, threads: int = DEFAULT_THREADS, batch: int = DEFAULT_BATCH,
                max_requests: int | None = None, rate: float | None = None, rebuild: bool = False,
                progress: bool | None = None, seed: int = 0,
                sample_size: int = ATLAS_SAMPLE_PER_BUCKET) -> AtlasReport:
    """Fetch the overview tiles of ``plan`` (default: the whole world) and fold them into the
    atlas of ``source`` at ``zoom`` (see :mod:`builder.acquire.atlas`).  Resumable: tiles in the atlas's
    ledger are not asked again.  Raises :class:`~builder.core.errors.SourceUnreachable` (with
    ``.report``) when the source is found down."""
    options = AtlasOptions(source=source if isinstance(source, str) else source.name, zoom=zoom,
                           atlas_zoom=atlas_zoom, threads=threads, batch=batch, max_requests=max_requests, rate=rate,
                           rebuild=rebuild, seed=seed, sample_size=sample_size)
    return run_atlas(lib, options, source=None if isinstance(source, str) else source, plan=plan, progress=progress)


def area_plan(options: AtlasOptions) -> Plan:
    """The area the options name: ``--bbox``, ``--plan``, ``--phase``, else the whole world."""
    if options.bbox is not None:
        return bbox_plan(options.bbox)
    if options.plan is not None or options.phase is not None:
        return resolve_plan(options.plan if options.plan is not None else options.phase)
    return world_plan()


def run_atlas(lib: Library, options: AtlasOptions, *, source: TileSource | None = None, plan: Plan | None = None,
              progress: bool | None = None) -> AtlasReport:
    """:func:`build_atlas` with its options made (and so checked) already: the command line's way in.

    ``source``: an open source (closed by the caller), else ``options.source`` is opened and
    closed here; ``plan``: the area, else :func:`area_plan` of the options."""
    lib.require_writer("atlas")
    the_plan = plan if plan is not None else area_plan(options)
    src = source if source is not None else open_source(options.source, **options.source_options)
    try:
        return _build(lib, src, the_plan, options, progress)
    finally:
        if source is None:
            src.close()


class _Atlas:
    """The atlas's part of a fetch run (:class:`~builder.acquire.run.RunHooks`): the overview tiles
    left to read, in order, and each batch's images folded into blocks, stored with the batch's
    statuses in one transaction.  :class:`~builder.acquire.run.FetchRun` is the driver."""

    desc = "atlas"
    exhausted_reason = "area done"
    predicted = None

    def __init__(self, run: FetchRun, info: AtlasInfo, report: AtlasReport, todo: list[TileRef]) -> None:
        self.run = run
        self.lib, self.info, self.report, self.todo = run.lib, info, report, todo
        self.name = run.source.name
        self.ledger = run.ledger
        self.zoom = info.zoom
        self.store = SampleStore(self.lib.conn, self.name, info.zoom, info.sample_size, info.calibration,
                                 self.lib.index)
        self.folder: ThreadPoolExecutor | None = None

    @property
    def exhausted(self) -> bool:
        return not self.todo

    def prepare(self) -> None:
        # The fold's decoding, LAB and KD-tree query release the GIL: one thread a core.
        self.lib.index.tree  # noqa: B018 - built here, not by two folding threads at once
        self.folder = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="atlas-fold")

    def bar_total(self) -> int | None:
        return len(self.todo)

    def next_claims(self, size: int, outstanding: int) -> list[Claim]:
        take, self.todo = self.todo[:size], self.todo[size:]
        return [Claim(ref) for ref in take]

    def fold(self, answers: Answers, recovered: bool) -> bool:
        """Fold the images into blocks (on a thread a core); the blocks, every status and the
        released claims commit in one transaction."""
        assert self.folder is not None
        rep = self.report
        rows = [(r.ref, status, r.at) for status, r in answers.settled]
        parts: list[Blocks] = []
        folded = [(r, self.folder.submit(fold_tile, r.data, r.ref.key, self.zoom, self.lib.index))
                  for r in answers.images]
        for r, future in folded:
            reason, found = future.result()
            if reason is not None:
                if reason == "blank":
                    rep.blank += 1
                else:
                    rep.rejected[reason] += 1
                rows.append((r.ref, rejected(reason), r.at))
                continue
            parts.append(found)
            rows.append((r.ref, ACCEPTED, r.at))
            rep.read += 1
        blocks = Blocks.concat(parts)
        with self.lib.conn:
            self.store.add(blocks)
            self.ledger.record(self.lib.conn, rows)
            self.ledger.release(self.lib.conn, [r.ref for r in answers.released])
            self.lib.conn.execute("UPDATE atlas_meta SET updated_at = ? WHERE source = ? AND zoom = ?",
                                  (db.utc_now(), self.name, self.zoom))
        rep.blocks += len(blocks)
        return True

    def target_reached(self) -> str | None:
        return None

    def stalled(self) -> str | None:
        return None

    def retracted(self, rows: list[tuple[TileRef, str, Prior | None]]) -> None:
        """Nothing of the atlas's own counts a fault."""

    def show(self, bar: tqdm, answers: Answers) -> None:
        bar.update(sum(1 for r in answers.results if r.started))

    def finish(self, clean: bool) -> None:
        if self.folder is not None:
            self.folder.shutdown(wait=True, cancel_futures=True)

    def tally(self) -> None:
        self.report.samples, self.report.buckets_reachable = atlas_size(self.lib.conn, self.name, self.zoom)


def _build(lib: Library, src: TileSource, plan: Plan, options: AtlasOptions, progress: bool | None) -> AtlasReport:
    zoom, atlas_zoom = options.zoom, options.overview_zoom
    info = _ensure_meta(lib, src.name, zoom, atlas_zoom, options.rebuild, options.sample_size)
    report = AtlasReport(source=src.name, area=plan.name, zoom=zoom, atlas_zoom=atlas_zoom,
                         block=block_size(zoom, atlas_zoom))
    ledger = FetchLedger(lib.root, lib.conn, ledger_source(src.name, info.zoom), table=db.ATLAS_LEDGER_TABLE,
                         stored_in=None)
    run = FetchRun(lib, src, ledger, report, threads=options.threads, batch=options.batch,
                   max_requests=options.max_requests)
    refs = overview_refs(plan, atlas_zoom, options.seed)
    known = ledger.known(atlas_zoom)
    todo = [r for r in refs if r.key not in known]
    report.overview_tiles = len(refs)
    report.already = len(refs) - len(todo)
    run.run(_Atlas(run, info, report, todo), progress)
    return report
