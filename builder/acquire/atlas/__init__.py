"""The colour atlas: a source's overview tiles predict the bucket of every zoom-``z`` tile.

One pixel of a tile at zoom ``z - 8`` covers one whole tile at zoom ``z`` (256 = 2**8), so the
overview tiles of a source tell the mean colour, and so the bucket, of every zoom-``z`` tile
without fetching it.  ``atlas_zoom`` may be finer (``z - 6``: a 4x4 block of pixels a tile,
for sources whose low zooms come from other imagery); for ``z < 8`` the atlas reads zoom 0 in
blocks of ``2**(8 - z)`` pixels.  A block's prediction is made with assignment's colour maths:
the LAB (:func:`builder.core.color.rgb_to_lab`) of the block's mean RGB, then the library's
KD-tree.  Blocks holding a nodata pixel (pure black or pure white) are skipped, and so is a
whole overview tile that is a flat fill (90% of its pixels one exact colour, the test of
:func:`builder.acquire.sources.is_blank_tile` without its smoothness test: smooth ocean is real
imagery); a source's known placeholder answers "no tile" already.

What is kept (tables in ``tiles.db``, DDL in :mod:`builder.core.db`), per atlas ``(source, zoom)``:

- ``atlas_buckets``: per bucket, the blocks seen in it (``pixels``);
- ``atlas_sample``: per bucket, a uniform sample of at most
  :data:`~builder.core.layout.ATLAS_SAMPLE_PER_BUCKET` candidate tiles: every block draws a random
  ``key`` (seeded by its overview tile, so a rebuild gives the same atlas) and a bucket keeps
  the blocks with the smallest keys, a sample that merges exactly across batches and runs.
  The atlas is therefore at most 5,000 x 64 rows whatever the area (``--world`` at zoom 15:
  16,384 overview requests, 320,000 rows at most);
- ``atlas_fetched``: the overview tiles' fetch ledger (:class:`~builder.acquire.ledger.FetchLedger`):
  polite, resumable and fail-fast exactly as harvest (the same driver,
  :class:`~builder.acquire.run.FetchRun`, with the atlas's hooks :class:`_Atlas`),
  and each batch's samples commit in the transaction that records its tiles, so a kill loses
  nothing and a rerun continues.  Everything in these tables is derived from the source:
  ``--rebuild`` drops an atlas and makes it again.
- ``atlas_meta``: the overview zoom, the sample size, the centroids checksum (an atlas made
  with other centroids is refused) and the calibration.

**Calibration** (:func:`calibrate`, ``atlas --calibrate``; ``harvest --target`` runs it by
itself, see :data:`AUTO_CALIBRATE_MIN`): an affine map in LAB, ``lab_true ~ A @ lab_atlas + t``,
fitted by least squares on the fetched tiles that have both an atlas LAB (their sample row)
and a measured one (``fetched.mean_l/a/b``).  The hit rate before (the raw prediction) and
after (5-fold cross-validated, so the figure is not measured on the tiles it was fitted to)
is reported; the map is kept only when it helps, and then every sample's ``predicted`` bucket
is the bucket of its mapped LAB.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ...core import db
from ...core.color import CentroidIndex, rgb_to_lab
from ...core.decode import decode_tile
from ...core.defaults import DEFAULT_BATCH, DEFAULT_THREADS, TARGETS
from ...core.errors import ImageRejected, LibraryError, UsageError
from ...core.layout import (
    ATLAS_SAMPLE_PER_BUCKET,
    CENTROIDS_NAME,
    DEFAULT_ZOOM,
    N_BUCKETS,
    TILE_SIZE,
)
from ...core.library import Library, file_sha256
from ...core.plans import Plan, bbox_plan, resolve_plan, world_plan
from ...core.stats import aimed_figures, reachability, reachable_buckets
from ..ledger import ACCEPTED, Claim, FetchLedger, Prior, rejected
from ..options import AtlasOptions, default_atlas_zoom
from ..run import Answers, FetchRun
from ..sources import TileSource, is_blank_tile, open_source
from ..tiles import TileRef, tile_centre, tile_range

logger = logging.getLogger(__name__)

# harvest --target calibrates by itself once this many aimed tiles have a measured colour and
# the fit raises the cross-validated hit rate (see :func:`calibrate`).
AUTO_CALIBRATE_MIN = 30
CALIBRATION_FOLDS = 5


# --- zooms and areas ---------------------------------------------------------------------------


def block_size(zoom: int, atlas_zoom: int) -> int:
    """Overview pixels a side that cover one zoom-``zoom`` tile (1 at ``zoom - 8``)."""
    return TILE_SIZE >> (zoom - atlas_zoom)


def overview_refs(plan: Plan, atlas_zoom: int, seed: int = 0) -> list[TileRef]:
    """The overview tiles that cover the plan's regions, in a seeded random order (a request
    budget then spreads over the whole area instead of its first rows)."""
    seen: dict[tuple[int, int], TileRef] = {}
    for region in plan.regions:
        rng = tile_range(region.bbox, atlas_zoom)
        for y in range(rng.ymin, rng.ymax + 1):
            for x in range(rng.xmin, rng.xmax + 1):
                if (x, y) not in seen:
                    lon, lat = tile_centre(atlas_zoom, x, y)
                    seen[(x, y)] = TileRef(atlas_zoom, x, y, region.name, lon, lat)
    refs = [seen[k] for k in sorted(seen)]
    random.Random(f"atlas|{seed}|{atlas_zoom}").shuffle(refs)
    return refs


def ledger_source(source: str, zoom: int) -> str:
    """The atlas ledger's ``source`` value: atlases of two harvest zooms keep separate books."""
    return f"{source}@z{zoom}"


# --- one overview tile -> blocks ------------------------------------------------------------------


class Blocks:
    """The usable blocks of overview tiles: candidate tile x/y at the harvest zoom, mean RGB's
    LAB, bucket and sampling key (arrays of equal length)."""

    def __init__(self, x, y, lab, bucket, key) -> None:
        self.x, self.y, self.lab, self.bucket, self.key = x, y, lab, bucket, key

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def concat(cls, parts: Sequence[Blocks]) -> Blocks:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0, np.int64),
                       np.zeros(0))
        return cls(*(np.concatenate([getattr(p, a) for p in parts]) for a in ("x", "y", "lab", "bucket", "key")))


def fold_tile(data: bytes, ref: tuple[int, int, int], zoom: int, index: CentroidIndex) -> tuple[str | None, Blocks | None]:
    """One fetched overview tile: ``(None, its blocks)``, or the reason it gives none (``blank``,
    or the decoder's rejection)."""
    try:
        rgb = np.asarray(decode_tile(data).image)
    except ImageRejected as exc:
        return exc.reason, None
    if is_flat_fill(rgb):
        return "blank", None
    return None, tile_blocks(rgb, ref, zoom, index)


def is_flat_fill(rgb: np.ndarray) -> bool:
    """A placeholder or nodata fill: 90% of the pixels one exact colour (not merely smooth)."""
    return is_blank_tile(rgb, std_threshold=0.0)


# Blocks per overview tile from which the colours are deduplicated before the LAB conversion and
# the KD-tree query: an overview tile of real imagery holds 65,536 one-pixel blocks but only about
# a fifth as many distinct colours, and the query is most of the cost of folding a tile in.
DEDUPE_MIN_BLOCKS = 1024


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` in half the time (one stable argsort)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.empty(len(values), dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(values), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse


def tile_blocks(rgb: np.ndarray, ref: tuple[int, int, int], zoom: int, index: CentroidIndex) -> Blocks:
    """Every block of an overview tile ``ref = (atlas_zoom, x, y)`` that holds no nodata pixel.

    One vectorised pass: integer block sums, then the LAB and the bucket of each *distinct*
    block colour (the same floats and buckets as block by block: a block's mean is its integer
    sum over the block's pixels, and equal sums give equal LAB and bucket).
    """
    az, ax, ay = ref
    b = block_size(zoom, az)
    n = TILE_SIZE // b
    arr = np.asarray(rgb, dtype=np.uint8)[:TILE_SIZE, :TILE_SIZE, :3]
    wide = arr.astype(np.int64)
    packed = (wide[..., 0] << 32) | (wide[..., 1] << 16) | wide[..., 2]
    bad = (packed == 0) | (packed == 0xFF00FF00FF)  # pure black or pure white: nodata
    if b == 1:
        rows, cols = np.nonzero(~bad)
        block_sums, packed = wide[rows, cols], packed[rows, cols]
    else:
        bad_block = bad.reshape(n, b, n, b).any(axis=(1, 3))
        rows, cols = np.nonzero(~bad_block)
        block_sums = wide.reshape(n, b, n, b, 3).sum(axis=(1, 3))[rows, cols]
        packed = (block_sums[:, 0] << 32) | (block_sums[:, 1] << 16) | block_sums[:, 2]
    if len(block_sums) >= DEDUPE_MIN_BLOCKS:  # b <= 16 here, so a sum fits in 16 bits a channel
        distinct, inverse = _distinct(packed)
        colours = np.stack([distinct >> 32, (distinct >> 16) & 0xFFFF, distinct & 0xFFFF], axis=-1)
    else:
        colours, inverse = block_sums, np.arange(len(block_sums))
    mean = colours / float(b * b)
    lab = rgb_to_lab(mean) if len(mean) else np.zeros((0, 3))
    bucket = index.assign_lab(lab)[0] if len(lab) else np.zeros(0, np.int64)
    keys = np.random.default_rng([az, ax, ay, zoom]).random(n * n).reshape(n, n)[rows, cols]
    return Blocks(ax * n + cols.astype(np.int64), ay * n + rows.astype(np.int64), lab[inverse], bucket[inverse], keys)


# --- calibration ---------------------------------------------------------------------------------


@dataclass
class Calibration:
    """``lab_true ~ lab @ matrix.T + offset``, fitted on ``tiles`` tiles."""

    matrix: np.ndarray
    offset: np.ndarray
    tiles: int
    hit_rate_before: float
    hit_rate_after: float

    def apply(self, lab: np.ndarray) -> np.ndarray:
        return np.asarray(lab, np.float64).reshape(-1, 3) @ self.matrix.T + self.offset

    def to_json(self) -> str:
        return json.dumps({"matrix": self.matrix.tolist(), "offset": self.offset.tolist(), "tiles": self.tiles,
                           "hit_rate_before": self.hit_rate_before, "hit_rate_after": self.hit_rate_after})

    @classmethod
    def from_json(cls, text: str, where: str) -> Calibration:
        try:
            data = json.loads(text)
            matrix = np.array(data["matrix"], dtype=np.float64)
            offset = np.array(data["offset"], dtype=np.float64)
            out = cls(matrix, offset, int(data["tiles"]), float(data["hit_rate_before"]),
                      float(data["hit_rate_after"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise LibraryError(f"{where}: the atlas calibration is not readable ({exc}); run atlas --rebuild") from None
        if matrix.shape != (3, 3) or offset.shape != (3,) or not (np.isfinite(matrix).all() and np.isfinite(offset).all()):
            raise LibraryError(f"{where}: the atlas calibration is not a finite 3x3 map and offset; run atlas --rebuild")
        return out


def fit_affine(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``y ~ x @ M.T + t`` for LAB rows."""
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef[:3].T.copy(), coef[3].copy()


def cross_validated_hits(x: np.ndarray, truth: np.ndarray, index: CentroidIndex, folds: int = CALIBRATION_FOLDS,
                         seed: int = 0) -> float:
    """Share of tiles whose bucket the affine map predicts right, each fold fitted on the others."""
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    hits = 0
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        if len(test) == 0 or len(train) < 4:
            continue
        matrix, offset = fit_affine(x[train], truth[train])
        pred = index.assign_lab(x[test] @ matrix.T + offset)[0]
        actual = index.assign_lab(truth[test])[0]
        hits += int((pred == actual).sum())
    return hits / n if n else 0.0


# --- the atlas in the library ---------------------------------------------------------------------


@dataclass
class AtlasInfo:
    source: str
    zoom: int
    atlas_zoom: int
    sample_size: int
    calibration: Calibration | None


def atlas_info(lib: Library, source: str, zoom: int) -> AtlasInfo | None:
    """The atlas of ``source`` at ``zoom``, checked against the library's centroids; None if none."""
    conn = lib.conn
    if "atlas_meta" not in db.table_names(conn):
        return None
    row = conn.execute("SELECT atlas_zoom, sample_size, centroids_sha256, calibration FROM atlas_meta "
                       "WHERE source = ? AND zoom = ?", (source, zoom)).fetchone()
    if row is None:
        return None
    atlas_zoom, sample_size, sha, calibration = row
    where = str(lib.root / db.DB_NAME)
    if sha != file_sha256(lib.root / CENTROIDS_NAME):
        raise LibraryError(f"{where}: the atlas of {source} at zoom {zoom} was made with other centroids than "
                           f"{CENTROIDS_NAME}; run atlas --rebuild")
    if not (isinstance(atlas_zoom, int) and default_atlas_zoom(zoom) <= atlas_zoom <= zoom
            and isinstance(sample_size, int) and 1 <= sample_size <= 100_000):
        raise LibraryError(f"{where}: the atlas of {source} at zoom {zoom} has a damaged atlas_meta row; "
                           "run atlas --rebuild")
    cal = Calibration.from_json(calibration, where) if calibration else None
    return AtlasInfo(source, zoom, atlas_zoom, sample_size, cal)


def drop_atlas(lib: Library, source: str, zoom: int) -> None:
    """Remove an atlas and its ledger (``--rebuild``)."""
    with lib.conn:
        for table in ("atlas_meta", "atlas_buckets", "atlas_sample"):
            lib.conn.execute(f"DELETE FROM {table} WHERE source = ? AND zoom = ?", (source, zoom))
        lib.conn.execute(f"DELETE FROM {db.ATLAS_LEDGER_TABLE} WHERE source = ?", (ledger_source(source, zoom),))


class SampleStore:
    """The per-bucket samples of one atlas: merges blocks in, keeping the smallest keys."""

    def __init__(self, conn, source: str, zoom: int, size: int, calibration: Calibration | None,
                 index: CentroidIndex) -> None:
        self.conn, self.source, self.zoom, self.size = conn, source, zoom, size
        self.calibration, self.index = calibration, index
        self.count = np.zeros(N_BUCKETS, np.int64)
        self.max_key = np.full(N_BUCKETS, np.inf)
        for bucket, n, top in conn.execute("SELECT bucket_id, COUNT(*), MAX(key) FROM atlas_sample "
                                           "WHERE source = ? AND zoom = ? GROUP BY bucket_id", (source, zoom)):
            if not (isinstance(bucket, int) and 0 <= bucket < N_BUCKETS):
                raise LibraryError(f"atlas of {source} at zoom {zoom}: a sample names bucket {bucket!r}; "
                                   "run atlas --rebuild")
            self.count[bucket], self.max_key[bucket] = n, top

    def predicted(self, lab: np.ndarray, bucket: np.ndarray) -> np.ndarray:
        if self.calibration is None or not len(lab):
            return bucket
        return self.index.assign_lab(self.calibration.apply(lab))[0]

    def add(self, blocks: Blocks) -> int:
        """Fold blocks in (inside the caller's transaction); returns the sample rows added."""
        if not len(blocks):
            return 0
        conn, k = self.conn, self.size
        pixels = np.bincount(blocks.bucket, minlength=N_BUCKETS)
        conn.executemany(
            "INSERT INTO atlas_buckets (source, zoom, bucket_id, pixels) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(source, zoom, bucket_id) DO UPDATE SET pixels = pixels + excluded.pixels",
            [(self.source, self.zoom, int(b), int(pixels[b])) for b in np.nonzero(pixels)[0]])
        # A block of a full bucket with a key above the bucket's largest kept one can never be
        # kept, and it ranks after every block that can: drop those before sorting.
        maybe = np.flatnonzero((self.count[blocks.bucket] < k) | (blocks.key < self.max_key[blocks.bucket]))
        order = maybe[np.lexsort((blocks.key[maybe], blocks.bucket[maybe]))]
        bucket = blocks.bucket[order]
        starts = np.r_[0, np.nonzero(np.diff(bucket))[0] + 1]
        rank = np.arange(len(bucket)) - np.repeat(starts, np.diff(np.r_[starts, len(bucket)]))
        chosen = order[rank < k]
        if not len(chosen):
            return 0
        lab = blocks.lab[chosen]
        raw = blocks.bucket[chosen]
        pred = self.predicted(lab, raw)
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO atlas_sample (source, zoom, x, y, bucket_id, predicted, key, mean_l, mean_a, mean_b) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(self.source, self.zoom, int(x), int(y), int(b), int(p), float(kk), float(v[0]), float(v[1]), float(v[2]))
             for x, y, b, p, kk, v in zip(blocks.x[chosen].tolist(), blocks.y[chosen].tolist(), raw.tolist(),
                                         np.asarray(pred).tolist(), blocks.key[chosen].tolist(), lab.tolist())])
        # ``chosen`` is sorted by bucket, then key: each bucket's last row holds its largest key.
        touched, first, added = np.unique(raw, return_index=True, return_counts=True)
        if conn.total_changes - before == len(chosen):  # every row new: a bucket still within its
            within = self.count[touched] + added <= k    # sample size needs no trimming or recount
            fits, top = touched[within], blocks.key[chosen][(first + added - 1)[within]]
            self.max_key[fits] = np.where(self.count[fits] == 0, top, np.maximum(self.max_key[fits], top))
            self.count[fits] += added[within]
            touched = touched[~within]
        for b in touched.tolist():
            conn.execute(
                "DELETE FROM atlas_sample WHERE source = ? AND zoom = ? AND bucket_id = ? AND key > "
                "(SELECT key FROM atlas_sample WHERE source = ? AND zoom = ? AND bucket_id = ? "
                "ORDER BY key LIMIT 1 OFFSET ?)", (self.source, self.zoom, b, self.source, self.zoom, b, k - 1))
            n, top = conn.execute("SELECT COUNT(*), MAX(key) FROM atlas_sample WHERE source = ? AND zoom = ? "
                                  "AND bucket_id = ?", (self.source, self.zoom, b)).fetchone()
            self.count[b], self.max_key[b] = n, top if top is not None else np.inf
        return len(chosen)


# --- building -------------------------------------------------------------------------------------


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
    atlas of ``source`` at ``zoom`` (see the module doc).  Resumable: tiles in the atlas's
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


def _ensure_meta(lib: Library, source: str, zoom: int, atlas_zoom: int, rebuild: bool, sample_size: int) -> AtlasInfo:
    db.create_atlas_tables(lib.conn)
    if rebuild:
        drop_atlas(lib, source, zoom)
    info = atlas_info(lib, source, zoom)
    if info is not None:
        if info.atlas_zoom != atlas_zoom:
            raise UsageError(f"the atlas of {source} at zoom {zoom} reads overview zoom {info.atlas_zoom}, not "
                             f"{atlas_zoom}: pass --atlas-zoom {info.atlas_zoom}, or --rebuild to make a new one")
        return info
    now = db.utc_now()
    with lib.conn:
        lib.conn.execute("INSERT INTO atlas_meta (source, zoom, atlas_zoom, sample_size, centroids_sha256, "
                         "calibration, created_at, updated_at) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                         (source, zoom, atlas_zoom, sample_size, file_sha256(lib.root / CENTROIDS_NAME), now, now))
    return AtlasInfo(source, zoom, atlas_zoom, sample_size, None)


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


def atlas_size(conn, source: str, zoom: int) -> tuple[int, int]:
    """``(sample rows, distinct predicted buckets)`` of one atlas."""
    return conn.execute("SELECT COUNT(*), COUNT(DISTINCT predicted) FROM atlas_sample WHERE source = ? AND zoom = ?",
                        (source, zoom)).fetchone()


# --- calibration against fetched tiles -------------------------------------------------------------


def calibration_pairs(conn, source: str, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    """``(atlas LAB, measured LAB)`` of the fetched tiles of ``source`` at ``zoom`` that are in
    the atlas's sample and were decoded."""
    rows = conn.execute(
        "SELECT s.mean_l, s.mean_a, s.mean_b, f.mean_l, f.mean_a, f.mean_b FROM fetched f JOIN atlas_sample s "
        "ON s.source = f.source AND s.zoom = f.z AND s.x = f.x AND s.y = f.y "
        "WHERE f.source = ? AND f.z = ? AND f.mean_l IS NOT NULL AND f.mean_a IS NOT NULL AND f.mean_b IS NOT NULL",
        (source, zoom)).fetchall()
    arr = np.array(rows, dtype=np.float64).reshape(-1, 6)
    ok = np.isfinite(arr).all(axis=1)
    return arr[ok, :3], arr[ok, 3:]


def calibrate(lib: Library, source: str, zoom: int, *, min_tiles: int = 8, force: bool = False) -> dict:
    """Fit and (when it raises the hit rate, or ``force``) keep the atlas's LAB calibration;
    re-predicts every sample.  Returns ``{tiles, hit_rate_before, hit_rate_after, kept}``."""
    info = atlas_info(lib, source, zoom)
    if info is None:
        raise UsageError(f"no atlas of {source} at zoom {zoom} in {lib.root}: run `atlas` first")
    x, truth = calibration_pairs(lib.conn, source, zoom)
    index = lib.index
    out = {"tiles": int(len(x)), "hit_rate_before": 0.0, "hit_rate_after": 0.0, "kept": False}
    if len(x) < min_tiles:
        out["note"] = f"needs {min_tiles} fetched tiles of the atlas with a measured colour, has {len(x)}"
        return out
    actual = index.assign_lab(truth)[0]
    before = float((index.assign_lab(x)[0] == actual).mean())
    after = cross_validated_hits(x, truth, index)
    out.update(hit_rate_before=round(before, 4), hit_rate_after=round(after, 4))
    if after <= before and not force:
        return out
    matrix, offset = fit_affine(x, truth)
    cal = Calibration(matrix, offset, len(x), before, after)
    samples = lib.conn.execute("SELECT x, y, mean_l, mean_a, mean_b FROM atlas_sample WHERE source = ? AND zoom = ?",
                               (source, zoom)).fetchall()
    arr = np.array(samples, dtype=np.float64).reshape(-1, 5)
    pred = index.assign_lab(cal.apply(arr[:, 2:]))[0] if len(arr) else np.zeros(0, np.int64)
    with lib.conn:
        lib.conn.execute("UPDATE atlas_meta SET calibration = ?, updated_at = ? WHERE source = ? AND zoom = ?",
                         (cal.to_json(), db.utc_now(), source, zoom))
        lib.conn.executemany("UPDATE atlas_sample SET predicted = ? WHERE source = ? AND zoom = ? AND x = ? AND y = ?",
                             [(int(p), source, zoom, int(r[0]), int(r[1])) for p, r in zip(pred, arr)])
    out["kept"] = True
    return out


# --- reading the atlas: candidates, reachability, hit rates ---------------------------------------


def candidates(conn, source: str, zoom: int) -> dict[int, list[tuple[int, int]]]:
    """``{predicted bucket: [(x, y), ...]}`` of one atlas, in key order."""
    out: dict[int, list[tuple[int, int]]] = {}
    for bucket, x, y in conn.execute("SELECT predicted, x, y FROM atlas_sample WHERE source = ? AND zoom = ? "
                                     "ORDER BY predicted, key", (source, zoom)):
        if not (isinstance(bucket, int) and 0 <= bucket < N_BUCKETS and isinstance(x, int) and isinstance(y, int)
                and 0 <= x < (1 << zoom) and 0 <= y < (1 << zoom)):
            raise LibraryError(f"atlas of {source} at zoom {zoom}: a damaged sample row ({bucket!r}, {x!r}, {y!r}); "
                               "run atlas --rebuild")
        out.setdefault(bucket, []).append((x, y))
    return out


# --- aimed sampling (harvest --target) ---------------------------------------------------------------

AIMED_REGION = "atlas"


class AimedSampler:
    """Draws candidate tiles from an atlas for ``harvest --target``, weighted by how many tiles
    each bucket still needs (``empty``: 1 for a bucket with no tile; ``underfilled``: the cap
    less its tiles) less the tiles already drawn for it and not yet settled; never a z/x/y in
    ``exclude``.  ``counts()`` gives the library's current tiles per bucket (the pipeline's)."""

    def __init__(self, conn, source: str, zoom: int, target: str, cap: int, counts, seed: int | None = None) -> None:
        if target not in TARGETS:
            raise UsageError(f"--target {target!r}: use one of {', '.join(TARGETS)}")
        import secrets

        self.conn, self.source = conn, source
        self.zoom, self.target, self.cap, self.counts = zoom, target, cap, counts
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        self.rng = random.Random(self.seed)
        self.outstanding: Counter = Counter()
        self.predicted: dict[tuple[int, int, int], int] = {}  # tile drawn -> the bucket it was drawn for
        self.next_fit: int | None = None  # measured aimed tiles at which to calibrate again (None: never)
        self.reload()

    def reload(self, exclude=None) -> None:
        """Read the atlas's candidates again (after a calibration re-predicted them)."""
        self.pool = candidates(self.conn, self.source, self.zoom)
        for tiles in self.pool.values():
            if exclude is not None:
                tiles[:] = [t for t in tiles if (self.zoom, *t) not in exclude]
            self.rng.shuffle(tiles)
        self.reachable = len(self.pool)

    def need(self, bucket: int) -> int:
        have = int(self.counts()[bucket])
        if self.target == "empty":
            return 1 if have == 0 else 0
        return max(0, self.cap - have)

    @property
    def all_exhausted(self) -> bool:
        """No bucket that needs a tile has a candidate left."""
        return not any(tiles and self.need(b) > 0 for b, tiles in self.pool.items())

    def sample(self, n: int, exclude=None) -> list[TileRef]:
        out: list[TileRef] = []
        weights = {b: self.need(b) - self.outstanding[b] for b, tiles in self.pool.items() if tiles}
        weights = {b: w for b, w in weights.items() if w > 0}
        while len(out) < n and weights:
            buckets = list(weights)
            b = self.rng.choices(buckets, weights=[weights[k] for k in buckets])[0]
            tiles = self.pool[b]
            ref = None
            while tiles:
                x, y = tiles.pop()
                if exclude is None or (self.zoom, x, y) not in exclude:
                    lon, lat = tile_centre(self.zoom, x, y)
                    ref = TileRef(self.zoom, x, y, AIMED_REGION, lon, lat)
                    break
            if ref is None:
                del weights[b]
                continue
            out.append(ref)
            self.outstanding[b] += 1
            self.predicted[ref.key] = b
            weights[b] -= 1
            if weights[b] <= 0 or not tiles:
                del weights[b]
        return out

    def settle(self, refs) -> None:
        """The tiles' outcomes are known: they no longer count as drawn for their buckets."""
        for ref in refs:
            b = self.predicted.get(ref.key)
            if b is not None and self.outstanding[b] > 0:
                self.outstanding[b] -= 1


def aimed_sampler(lib: Library, source: str, zoom: int, target: str, counts, seed: int | None,
                  auto_calibrate: bool = True) -> tuple[AimedSampler, dict | None]:
    """The sampler for ``harvest --target`` from the library's atlas of ``source`` at ``zoom``,
    after calibrating it when enough aimed tiles have a measured colour (see :func:`calibrate`).
    With ``auto_calibrate`` the sampler's ``next_fit`` says when :func:`recalibrate` should fit
    again during the run."""
    info = atlas_info(lib, source, zoom)
    if info is None:
        raise UsageError(f"--target needs an atlas of {source} at zoom {zoom}: run "
                         f"`python -m builder atlas --library {lib.root} --source {source} --zoom {zoom}` first")
    cal = None
    fitted = info.calibration.tiles if info.calibration is not None else 0
    if auto_calibrate:
        n = len(calibration_pairs(lib.conn, source, zoom)[0])
        if n >= max(AUTO_CALIBRATE_MIN, 2 * fitted):
            cal = calibrate(lib, source, zoom, min_tiles=AUTO_CALIBRATE_MIN)
            fitted = n
    sampler = AimedSampler(lib.conn, source, zoom, target, lib.cap, counts, seed)
    if auto_calibrate:
        sampler.next_fit = max(AUTO_CALIBRATE_MIN, 2 * fitted)
    return sampler, cal


def recalibrate(lib: Library, sampler: AimedSampler, measured: int, exclude) -> dict | None:
    """During an aimed harvest: once ``measured`` (the atlas's fetched candidates with a measured
    colour, this run's and earlier ones) reaches ``sampler.next_fit``, fit again; when the fit is
    kept, the sampler draws from the re-predicted candidates (less ``exclude``).  The next fit is
    due when the count has doubled, so a run fits O(log n) times."""
    if sampler.next_fit is None or measured < sampler.next_fit:
        return None
    result = calibrate(lib, sampler.source, sampler.zoom, min_tiles=AUTO_CALIBRATE_MIN)
    sampler.next_fit = 2 * max(measured, result["tiles"])
    if result["kept"]:
        sampler.reload(exclude)
    logger.info("atlas calibration on %d tiles: hit rate %.3f -> %.3f (%s)", result["tiles"],
                result["hit_rate_before"], result["hit_rate_after"], "kept" if result["kept"] else "not kept")
    return result


__all__ = ["AUTO_CALIBRATE_MIN", "TARGETS", "AimedSampler", "AtlasOptions", "AtlasReport", "Calibration",
           "aimed_figures", "aimed_sampler", "area_plan", "block_size", "build_atlas", "calibrate",
           "default_atlas_zoom", "reachability", "reachable_buckets", "run_atlas", "tile_blocks"]
