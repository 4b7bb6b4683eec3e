"""``synthesize``: flagged synthetic tiles for the buckets the source cannot fill.

For every bucket that holds no real tile (and fewer than ``per_bucket`` synthetic ones: a rerun
tops up), a tile is made by colour transfer from a real tile of the nearest populated colours,
keeping its texture, so that the card's recipe on the stored PNG (64x64 mean RGB -> LAB ->
nearest centroid, :func:`builder.assign.pipeline.mean_rgb_64`, :class:`builder.core.color.CentroidIndex`)
puts it in the target bucket.  A result that lands elsewhere is retried from the next source
and, failing that, skipped.

The transfer (:func:`transfer`), per pixel in CIE LAB: ``L' = t_L + s (L - mean L)``,
``a' = t_a + s (a - mean a)``, ``b' = t_b + s (b - mean b)``, with ``t`` starting at the target
centroid.  ``s`` (at most 1) is chosen so the source's light-dark spread (its 1st..99th
percentiles) fits within 0..100 around the target lightness, so a contrasty source sent to a
very light or dark colour keeps a scaled copy of its pattern instead of clipped, flattened
highlights; the offsets are then corrected a few times until the recipe's mean LAB hits the
centroid (sRGB clipping moves the mean), and where the gamut's edge leaves the mean no room the
spread is shrunk and the corrections run again.  Measured against a plain shift (``s = 1``) on
150 demo tiles sent to far colours (bench/README.md): the same median texture kept (0.993), a
lower 10th percentile (0.78 against 0.82: the demo's smooth tiles rarely clip); on a contrasty
source sent near white the plain shift's pattern correlates below 0.8 with the source's.

A source tile is used at most a limit of times (counted over the library's existing synthetic
tiles too), so one texture does not repeat more than it must: by default the limit follows
from the need, the tiles wanted over the usable sources, rounded up (:func:`uses_limit`), so
every empty bucket gets a textured tile whenever the library holds a textured real tile and
the uses are spread evenly; ``max_uses`` caps it.  Flat sources (contrast below
:data:`builder.assign.phash.MIN_HASH_CONTRAST`) are passed over.  Only when no usable source is left
does a bucket get a *flat* tile (one colour, ``derived_from`` NULL); the report counts them.

Every core works (``workers`` processes): the parent plans which source each bucket gets (a
seeded, deterministic walk, nearest colours first), the workers read the sources and make the
tiles, and the parent stores them in plan order through the pipeline.  A tile that lands in
another bucket, or whose source turns out unusable, is planned again in the next round, from
the next source.  So the same seed gives the same tiles whatever the number of processes.

Rows: ``synthetic = 1``, ``derived_from`` = the source tile's id, ``source = 'synthetic'``;
``phash`` and LAB are those of the stored file, as for every tile.  Tiles are stored through
the same :class:`~builder.assign.pipeline.Pipeline` and commit protocol as ingest and harvest (cap,
duplicate and near-duplicate checks, crash-safe journal).  Real tiles always win: a synthetic
tile gives way when a real one needs its place (see :mod:`builder.assign.pipeline`).

From a notebook::

    from builder.core.library import Library
    from builder.ops.synthesize import synthesize

    with Library.open("mosaic_library") as lib:
        report = synthesize(lib)          # or per_bucket=2, max_uses=4, workers=2
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..assign.phash import MIN_HASH_CONTRAST, contrast
from ..assign.pipeline import (
    Analysis,
    Candidate,
    Pipeline,
    Worker,
    check_radius,
    exit_with_parent,
    mean_rgb_64,
    pool_context,
)
from ..core.color import CentroidIndex, rgb_to_lab
from ..core.decode import DecodedTile, decode_tile, encode_png
from ..core.defaults import DEFAULT_MAX_USES, DEFAULT_NEAR_DUPLICATE_RADIUS, DEFAULT_PER_BUCKET, DEFAULT_SYNTH_SEED
from ..core.errors import BadTile, ImageRejected, UsageError
from ..core.layout import N_BUCKETS, TILE_SIZE
from ..core.library import Library
from ..core.store import unstage
from ..core.summary import format_counts, plural
from ..core.tilefiles import TileFiles

SOURCE_NAME = "synthetic"  # the ``source`` column of a synthetic tile
# Sources tried for one bucket before it gets a flat tile instead.
SOURCE_TRIES = 4
# The nearest this many usable sources are candidates; the seed picks among them, so reruns
# with other seeds give other textures and one colour region is not one source's copies.
SOURCE_CHOICES = 3
# Offset corrections on the 64x64 preview, then on the full tile.
PREVIEW_ITERATIONS = 6
FULL_ITERATIONS = 3
# A preview still this far off after its corrections is clipped at the gamut's edge: the spread
# is shrunk by SPREAD_SHRINK and the corrections start again, at most SPREAD_SHRINKS times.
PREVIEW_MISS = 1.0
SPREAD_SHRINK = 0.6
SPREAD_SHRINKS = 4
LAB_TOLERANCE = 0.25  # LAB units between the recipe's mean and the centroid that end the corrections
BATCH = 64  # tiles handed to the pipeline (and committed) together
# Decoded sources kept per process (about 1.5 MB each: RGB and SourceStats).  Buckets are
# visited nearest colour first, so a source's next use, if any, usually comes soon.
SOURCE_CACHE = 32
# Tiles a worker makes per task (consecutive in the plan, so they tend to share sources), and
# tasks in flight per worker (enough to keep it busy while the parent stores; bounded, so
# made tiles do not pile up in memory when the parent is slower).
JOB_CHUNK = 4
IN_FLIGHT_PER_WORKER = 4
# Below this many tiles to make, one process does it all (a pool costs more than it saves).
POOL_MIN_JOBS = 32


@dataclass
class SynthesizeReport:
    """What a run made: tiles per kind, buckets covered, texture kept, time per tile."""

    made: int = 0  # stored synthetic tiles (textured + flat)
    flat: int = 0  # of which flat fills (no usable source left)
    buckets_targeted: int = 0
    buckets_covered_before: int = 0
    buckets_covered_after: int = 0
    retried: int = 0  # results that landed outside their bucket and were made again
    skipped: Counter = field(default_factory=Counter)  # bucket could not get its tile: reason -> count
    rejected: Counter = field(default_factory=Counter)  # the pipeline's refusals (duplicate, bucket_full, ...)
    texture_kept: list[float] = field(default_factory=list)  # per textured tile
    sources_used: int = 0
    max_uses_seen: int = 0  # highest number of synthetic tiles derived from one source, library-wide
    uses_limit: int = 0  # synthetic tiles one source could give in this run (see uses_limit())
    usable_sources: int = 0  # real tiles with texture (not flat, readable)
    workers: int = 1
    seconds: float = 0.0

    @property
    def ms_per_tile(self) -> float:
        return 1000.0 * self.seconds / self.made if self.made else 0.0

    @property
    def median_texture_kept(self) -> float | None:
        return float(np.median(self.texture_kept)) if self.texture_kept else None

    def summary(self) -> str:
        kept = self.median_texture_kept
        kept_text = f", median texture kept {kept:.3f}" if kept is not None else ""
        skipped = (f", {plural(sum(self.skipped.values()), 'bucket')} skipped ({format_counts(self.skipped)})"
                   if self.skipped else "")
        return (f"{plural(self.made, 'synthetic tile')} ({self.made - self.flat} textured, {self.flat} flat) for "
                f"{plural(self.buckets_targeted, 'bucket')}{kept_text}{skipped}; buckets covered "
                f"{self.buckets_covered_before} -> {self.buckets_covered_after}/{N_BUCKETS}; "
                f"{self.ms_per_tile:.1f} ms/tile")

    def as_dict(self) -> dict:
        return {
            "made": self.made,
            "textured": self.made - self.flat,
            "flat": self.flat,
            "buckets_targeted": self.buckets_targeted,
            "buckets_covered_before": self.buckets_covered_before,
            "buckets_covered_after": self.buckets_covered_after,
            "buckets_total": N_BUCKETS,
            "retried": self.retried,
            "skipped": dict(self.skipped),
            "rejected": dict(self.rejected),
            "median_texture_kept": None if self.median_texture_kept is None else round(self.median_texture_kept, 4),
            "texture_kept_p10": (round(float(np.percentile(self.texture_kept, 10)), 4) if self.texture_kept else None),
            "sources_used": self.sources_used,
            "max_uses_seen": self.max_uses_seen,
            "uses_limit": self.uses_limit,
            "usable_sources": self.usable_sources,
            "workers": self.workers,
            "ms_per_tile": round(self.ms_per_tile, 2),
            "seconds": round(self.seconds, 3),
        }


def validate_options(*, per_bucket: int, max_uses: int | None, near_duplicate_radius: int, cap: int,
                     workers: int | None = None) -> None:
    """One-line :class:`UsageError` for a bad value (the CLI and a notebook get the same words)."""
    check_radius(near_duplicate_radius)
    for name, value, low, high in (("--per-bucket", per_bucket, 1, cap), ("--max-uses", max_uses, 1, None),
                                   ("--workers", workers, 1, None)):
        if value is None and name != "--per-bucket":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            bound = f"within {low}..{high}" if high is not None else f"at least {low}"
            raise UsageError(f"{name} must be an integer {bound}, got {value!r}")


# --------------------------------------------------------------------------- colour maths


# Per-pixel conversions for the transfer itself, in float32 with lookup tables (skimage's
# rgb2lab and lab2rgb take 20 and 16 ms a tile; these about 2 and 3).  They need not be exact:
# the result is judged by the exact recipe (``recipe_lab``) on the uint8 pixels.
_SRGB_TO_LINEAR = np.where((v := np.arange(256) / 255.0) > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)
_LINEAR_STEPS = 1 << 16
_LINEAR_TO_SRGB = np.clip(np.rint(255.0 * np.where(
    (w := np.arange(_LINEAR_STEPS + 1) / _LINEAR_STEPS) > 0.0031308, 1.055 * w ** (1 / 2.4) - 0.055, 12.92 * w)),
    0, 255).astype(np.uint8)
_M = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = np.array([0.95047, 1.0, 1.08883])
_XYZ_FROM_RGB_W = (_M / _WHITE[:, None]).T.astype(np.float32)  # rgb @ this = xyz / white
_RGB_FROM_XYZ_W = (np.linalg.inv(_M) * _WHITE[None, :]).T.astype(np.float32)  # (xyz / white) @ this = rgb


def _rgb2lab(rgb_u8: np.ndarray) -> np.ndarray:
    """Per-pixel CIE LAB (D65) of uint8 sRGB, float32."""
    xyz = _SRGB_TO_LINEAR.astype(np.float32)[rgb_u8] @ _XYZ_FROM_RGB_W
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])],
                    axis=-1).astype(np.float32)


def _lab2rgb_u8(lab: np.ndarray) -> np.ndarray:
    """uint8 sRGB of per-pixel LAB, out-of-gamut values clipped (on purpose: the corrections allow for it)."""
    lab = np.asarray(lab, dtype=np.float32)
    fy = (lab[..., 0] + np.float32(16.0)) / np.float32(116.0)
    f = np.stack([fy + lab[..., 1] / np.float32(500.0), fy, fy - lab[..., 2] / np.float32(200.0)], axis=-1)
    xyz = np.where(f > 0.2068966, f * f * f, (f - np.float32(16.0 / 116.0)) / np.float32(7.787))
    linear = np.clip(xyz @ _RGB_FROM_XYZ_W, 0.0, 1.0)
    return _LINEAR_TO_SRGB[np.rint(linear * _LINEAR_STEPS).astype(np.int32)]


def recipe_lab(rgb_u8: np.ndarray) -> np.ndarray:
    """The card's LAB of a tile's pixels: 64x64 resize, mean RGB, LAB (as :mod:`builder.assign.pipeline`)."""
    return rgb_to_lab(mean_rgb_64(Image.fromarray(rgb_u8)))


class SourceStats(NamedTuple):
    """What every transfer from one source starts from (made once per source, reused for each
    of its uses): its per-pixel LAB deviations from its mean, their 64x64 box reduction (the
    preview), the 1st and 99th percentiles of the L deviations, and its per-pixel L*."""

    dev: np.ndarray
    small: np.ndarray
    spread: tuple[float, float]
    lightness: np.ndarray


def source_stats(source_rgb: np.ndarray, source_lab: np.ndarray | None = None) -> SourceStats:
    """:class:`SourceStats` of a source tile (``source_lab``: its per-pixel LAB, when known)."""
    lab = _rgb2lab(source_rgb) if source_lab is None else source_lab
    dev = (lab - lab.reshape(-1, 3).mean(axis=0, dtype=np.float64)).astype(np.float32)
    small = dev.reshape(64, TILE_SIZE // 64, 64, TILE_SIZE // 64, 3).mean(axis=(1, 3))
    lo, hi = np.percentile(dev[..., 0], (1, 99))  # float32 scalars, kept so: s (and each synthetic tile) stays bit-identical
    return SourceStats(dev, small, (lo, hi), lightness(source_rgb))


def _spread_scale(spread: tuple[float, float], target_l: float) -> float:
    """Largest ``s <= 1`` that keeps ``target_l + s * dev_l`` (``spread``: its 1st..99th
    percentiles) within 0..100."""
    lo, hi = spread
    s = 1.0
    if hi > 0:
        s = min(s, (100.0 - target_l) / hi)
    if lo < 0:
        s = min(s, target_l / -lo)
    return max(0.0, s)


def grey_std(rgb_u8: np.ndarray) -> float:
    """Standard deviation of the tile's luma (Pillow's ``L``): its light-dark texture."""
    return float(np.asarray(Image.fromarray(rgb_u8).convert("L"), dtype=np.float64).std())


def lightness(rgb_u8: np.ndarray) -> np.ndarray:
    """Per-pixel CIE L* of uint8 sRGB pixels, flattened (float64)."""
    y = _SRGB_TO_LINEAR.astype(np.float32)[rgb_u8] @ _XYZ_FROM_RGB_W[:, 1]
    return (116.0 * np.where(y > 0.008856, np.cbrt(y), 7.787 * y + 16.0 / 116.0) - 16.0).ravel().astype(np.float64)


def texture_kept(source_rgb: np.ndarray, out_rgb: np.ndarray, source_lightness: np.ndarray | None = None) -> float:
    """How much of the source's light-dark texture a result keeps: the slope of the result's
    per-pixel L* regressed on the source's (``cov / var``), within 0..1.  A copy shifted in
    colour keeps 1, a spread scaled by ``s`` keeps ``s``, pixels clipped at the gamut's edge
    lower it, a flat tile keeps 0."""
    src = lightness(source_rgb) if source_lightness is None else source_lightness
    out = lightness(out_rgb)
    var = float(src.var())
    if var <= 1e-9:
        return 0.0
    return float(np.clip(((src - src.mean()) * (out - out.mean())).mean() / var, 0.0, 1.0))


def transfer(source_rgb: np.ndarray, target_lab: np.ndarray, source_lab: np.ndarray | None = None,
             stats: SourceStats | None = None) -> np.ndarray:
    """``source_rgb`` (uint8, HxWx3) recoloured so its recipe LAB approaches ``target_lab`` (see the
    module doc); ``stats``: the source's :func:`source_stats`, when it serves several tiles."""
    target = np.asarray(target_lab, dtype=np.float64)
    if stats is None:
        stats = source_stats(source_rgb, source_lab)
    dev, small = stats.dev, stats.small  # corrections run on the 64x64 preview: 16 times fewer pixels
    s = _spread_scale(stats.spread, float(target[0]))
    for _shrink in range(SPREAD_SHRINKS):
        offset = target.copy()
        for _ in range(PREVIEW_ITERATIONS):
            got = rgb_to_lab(_lab2rgb_u8(offset + s * small).reshape(-1, 3).astype(np.float64).mean(axis=0))
            error = target - got
            if np.abs(error).max() < LAB_TOLERANCE:
                break
            offset = offset + error
        if np.abs(error).max() < PREVIEW_MISS:
            break
        s *= SPREAD_SHRINK  # clipped at the gamut's edge: less spread leaves the mean room to move
    scaled = np.float32(s) * dev
    out = _lab2rgb_u8(scaled + offset.astype(np.float32))
    for _ in range(FULL_ITERATIONS):
        error = target - recipe_lab(out)
        if np.abs(error).max() < LAB_TOLERANCE:
            break
        offset = offset + error
        out = _lab2rgb_u8(scaled + offset.astype(np.float32))
    return out


def flat_colour(index, bucket_id: int, centroid: np.ndarray) -> np.ndarray | None:
    """An sRGB colour (uint8) whose LAB lands in ``bucket_id``: the centroid's, or the nearest that does."""
    base = _lab2rgb_u8(np.asarray(centroid, dtype=np.float64).reshape(1, 1, 3)).reshape(3).astype(np.int64)
    steps = np.arange(-4, 5)
    grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[np.argsort(np.abs(grid).sum(axis=1), kind="stable")]
    colours = np.clip(base + grid, 0, 255)
    labs = rgb_to_lab(colours.astype(np.float64))
    buckets, _ = index.assign_lab(labs)
    hits = np.flatnonzero(buckets == bucket_id)
    if not len(hits):
        return None
    best = hits[np.argmin(np.linalg.norm(labs[hits] - centroid, axis=1))]
    return colours[best].astype(np.uint8)


# --------------------------------------------------------------------------- sources


def uses_limit(wanted: int, usable: int, used_before: int = 0, max_uses: int | None = None) -> int:
    """Synthetic tiles one source may give: enough for every wanted tile, spread evenly.

    ``wanted`` tiles this run, ``usable`` textured sources that already gave ``used_before``
    tiles in all: ``ceil((wanted + used_before) / usable)`` (at least 1), capped by ``max_uses``.

    >>> uses_limit(4881, 1000), uses_limit(4881, 1000, max_uses=2), uses_limit(10, 0)
    (5, 2, 1)
    """
    limit = max(1, math.ceil((wanted + used_before) / usable)) if usable else 1
    return min(limit, max_uses) if max_uses is not None else limit


class _Sources:
    """The library's real tiles as transfer sources: nearest usable first, at most ``max_uses`` each."""

    def __init__(self, lib: Library, rng: np.random.Generator) -> None:
        self.rng = rng
        self.max_uses = 1
        rows = lib.conn.execute(
            "SELECT id, bucket_id, mean_l, mean_a, mean_b FROM tiles WHERE synthetic = 0 ORDER BY rowid").fetchall()
        self.ids = [r[0] for r in rows]
        self.buckets = [r[1] for r in rows]
        self.labs = np.array([r[2:] for r in rows], dtype=np.float64).reshape(-1, 3)
        used = dict(lib.conn.execute(
            "SELECT derived_from, COUNT(*) FROM tiles WHERE synthetic = 1 AND derived_from IS NOT NULL "
            "GROUP BY derived_from"))
        self.uses = np.array([used.get(i, 0) for i in self.ids], dtype=np.int64)
        self.position = {tile_id: i for i, tile_id in enumerate(self.ids)}
        self.flat = np.zeros(len(rows), dtype=bool)  # flat or unreadable: never a source
        self.tree = None
        if rows:
            from scipy.spatial import cKDTree

            self.tree = cKDTree(self.labs)

    def refs(self) -> list[tuple[int, str]]:
        return list(zip(self.buckets, self.ids))

    def available(self) -> np.ndarray:
        return (self.uses < self.max_uses) & ~self.flat

    def nearest(self, lab: np.ndarray, exclude: set[int]) -> int | None:
        """A usable source among the nearest :data:`SOURCE_CHOICES` to ``lab`` (seeded pick), or None."""
        if self.tree is None:
            return None
        n = len(self.ids)
        k = min(n, 16)
        ok = self.available()
        while True:
            _dist, idx = self.tree.query(lab, k=k)
            idx = np.atleast_1d(idx)
            picks = [int(i) for i in idx if i < n and ok[i] and int(i) not in exclude][:SOURCE_CHOICES]
            if picks:
                return picks[int(self.rng.integers(len(picks)))]
            if k >= n:
                return None
            k = min(n, k * 4)


# --------------------------------------------------------------------------- the workers' part


class _Job(NamedTuple):
    """One tile to make: for ``bucket_id`` (LAB ``centroid``) from source ``source`` (index,
    bucket, id), or a flat one when ``source`` is None."""

    bucket_id: int
    centroid: tuple[float, float, float]
    source: tuple[int, int, str] | None


class _Made(NamedTuple):
    """What a worker made of a job: the tile's analysis (its file staged in ``temp/`` by the
    pipeline's :class:`~builder.assign.pipeline.Worker`), or why not (``landed`` elsewhere, ``unusable``
    source, ``unreachable`` colour)."""

    job: _Job
    kept: float | None = None
    analysis: Analysis | None = None
    landed_elsewhere: bool = False
    unusable: bool = False
    unreachable: bool = False


def _candidate(job: _Job, derived_from: str | None, png: bytes | None = None) -> Candidate:
    """The pipeline's candidate for a made tile (its provenance: synthetic, and its source)."""
    return Candidate(f"synthetic:bucket {job.bucket_id}", data=png,
                     provenance={"synthetic": 1, "derived_from": derived_from})


class _Maker:
    """Per-process state: the tiles' files, the centroids, a few decoded sources, and the
    pipeline's analysis (decode, recipe, pHash, staging) for the tiles made here."""

    def __init__(self, files: TileFiles, centroids: np.ndarray, cap: int) -> None:
        self.files = files
        self.index = CentroidIndex(centroids, validate=False)
        self.analyser = Worker(str(files.root), centroids, cap, None)
        self.cache: OrderedDict[str, tuple[np.ndarray, SourceStats] | None] = OrderedDict()

    def source(self, bucket_id: int, tile_id: str) -> tuple[np.ndarray, SourceStats] | None:
        """A source's RGB and :func:`source_stats`; None when it is flat or unreadable."""
        if tile_id in self.cache:
            self.cache.move_to_end(tile_id)
            return self.cache[tile_id]
        try:
            image = decode_tile(self.files.read(bucket_id, tile_id)).image
        except (BadTile, ImageRejected):
            found = None
        else:
            rgb = np.asarray(image)
            found = (rgb, source_stats(rgb)) if contrast(image) >= MIN_HASH_CONTRAST else None
        self.cache[tile_id] = found
        if len(self.cache) > SOURCE_CACHE:  # least recently used out
            self.cache.popitem(last=False)
        return found

    def is_flat(self, bucket_id: int, tile_id: str) -> bool:
        """True for a source that can give no texture (flat or unreadable)."""
        try:
            return contrast(decode_tile(self.files.read(bucket_id, tile_id)).image) < MIN_HASH_CONTRAST
        except (BadTile, ImageRejected):
            return True

    def make(self, job: _Job) -> tuple[_Made, np.ndarray | None]:
        """The tile's pixels (None and why not in the :class:`_Made`); landing is checked by the analysis."""
        centroid = np.asarray(job.centroid, dtype=np.float64)
        if job.source is None:
            colour = flat_colour(self.index, job.bucket_id, centroid)
            if colour is None:
                return _Made(job, unreachable=True), None
            return _Made(job), np.broadcast_to(colour, (TILE_SIZE, TILE_SIZE, 3)).copy()
        _i, bucket_id, tile_id = job.source
        pix = self.source(bucket_id, tile_id)
        if pix is None:
            return _Made(job, unusable=True), None
        rgb, stats = pix
        out = transfer(rgb, centroid, stats=stats)
        return _Made(job, texture_kept(rgb, out, stats.lightness)), out


_MAKER: _Maker | None = None


def _init_maker(files: TileFiles, centroids: np.ndarray, cap: int) -> None:
    global _MAKER
    exit_with_parent()
    _MAKER = _Maker(files, centroids, cap)


def _make_many(jobs: list[_Job]) -> list[_Made]:
    """Make a chunk's tiles and analyse them here, the card's recipe on the stored PNG's pixels
    (staged in ``temp/``): the parent only stores.  A tile the recipe puts in another bucket is
    a miss (``landed_elsewhere``), its staged file removed."""
    assert _MAKER is not None
    made, pixels, cands = [], [], []
    for job in jobs:
        one, out = _MAKER.make(job)
        made.append(one)
        if out is not None:
            image = Image.fromarray(out)
            pixels.append(len(made) - 1)
            cands.append(replace(_candidate(job, None if job.source is None else job.source[2], encode_png(image)),
                                 decoded=DecodedTile(image, True, False)))
    for i, analysis in zip(pixels, _MAKER.analyser.analyse_many(cands)):
        if analysis.bucket_id is not None and analysis.bucket_id != made[i].job.bucket_id:
            unstage(_MAKER.analyser.temp, [analysis.tile_id])
            made[i] = made[i]._replace(landed_elsewhere=True)
        else:
            made[i] = made[i]._replace(analysis=analysis)
    return made


def _flat_many(refs: list[tuple[int, str]]) -> list[bool]:
    assert _MAKER is not None
    return [_MAKER.is_flat(b, t) for b, t in refs]


class _Crew:
    """The processes that make tiles: a fork pool of ``workers``, or this process alone."""

    def __init__(self, lib: Library, workers: int, jobs_hint: int) -> None:
        self.workers = workers if jobs_hint >= POOL_MIN_JOBS else 1
        self.pool: ProcessPoolExecutor | None = None
        files = TileFiles(lib.root)
        if self.workers > 1:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=pool_context(), initializer=_init_maker,
                                            initargs=(files, lib.centroids, lib.cap))
        else:
            _init_inline(files, lib.centroids, lib.cap)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def run(self, fn, items: Sequence, chunk: int) -> Iterator:
        """``fn`` over ``items`` in chunks, results in order; a bounded number of chunks in flight."""
        parts = iter([list(items[i:i + chunk]) for i in range(0, len(items), chunk)])
        if self.pool is None:
            for part in parts:
                yield from fn(part)
            return
        pending: deque = deque()
        for part in parts:
            pending.append(self.pool.submit(fn, part))
            if len(pending) >= self.workers * IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _init_inline(files: TileFiles, centroids: np.ndarray, cap: int) -> None:
    global _MAKER
    _MAKER = _Maker(files, centroids, cap)


# --------------------------------------------------------------------------- the run


def targets(lib: Library, per_bucket: int) -> dict[int, int]:
    """Buckets with no real tile, and how many synthetic tiles each still needs (``per_bucket`` at most)."""
    real = dict(lib.conn.execute("SELECT bucket_id, COUNT(*) FROM tiles WHERE synthetic = 0 GROUP BY bucket_id"))
    synthetic = dict(lib.conn.execute("SELECT bucket_id, COUNT(*) FROM tiles WHERE synthetic = 1 GROUP BY bucket_id"))
    room = lib.cap
    need = {}
    for b in range(N_BUCKETS):
        if real.get(b, 0):
            continue
        n = min(per_bucket, room) - synthetic.get(b, 0)
        if n > 0:
            need[b] = n
    return need


@dataclass
class _Wanted:
    """A bucket's state across rounds: tiles still wanted, sources already tried, flat allowed."""

    need: int
    tried: set[int]
    flat_allowed: bool
    failures: int = 0


def _plan_round(lib: Library, sources: _Sources, order: list[int], wanted: dict[int, _Wanted],
                report: SynthesizeReport) -> list[_Job]:
    """Which source makes each wanted tile this round (a source's use is counted when planned)."""
    jobs = []
    for bucket_id in order:
        state = wanted[bucket_id]
        centroid = lib.centroids[bucket_id]
        planned_flat = False
        for _n in range(state.need):
            i = None if state.failures >= SOURCE_TRIES else sources.nearest(centroid, state.tried)
            if i is not None:
                state.tried.add(i)
                sources.uses[i] += 1
                jobs.append(_Job(bucket_id, tuple(map(float, centroid)), (i, sources.buckets[i], sources.ids[i])))
            elif state.flat_allowed and not planned_flat:  # every flat tile hashes alike: one per bucket
                planned_flat = True
                jobs.append(_Job(bucket_id, tuple(map(float, centroid)), None))
            else:
                report.skipped["no_source_left"] += 1
                state.need -= 1
    return jobs


def _prepare(lib: Library, need: dict[int, int], seed: int, max_uses: int | None, crew: _Crew,
             report: SynthesizeReport) -> tuple[_Sources, list[int], dict[int, _Wanted]]:
    """The sources (flat ones found by the crew), the order buckets are served in (nearest colours
    first: they get the closest sources) and each bucket's state; sets the uses limit."""
    sources = _Sources(lib, np.random.default_rng(seed))
    order = sorted(need)
    if len(sources.ids) and order:
        dist, _ = sources.tree.query(lib.centroids[order], k=1)
        order = [order[i] for i in np.argsort(dist, kind="stable")]
    wanted: dict[int, _Wanted] = {}
    for bucket_id in order:
        behind = [d for (d,) in lib.conn.execute(
            "SELECT derived_from FROM tiles WHERE bucket_id = ? AND synthetic = 1", (bucket_id,))]
        # A source already behind a tile of this bucket would give it the same hash again.
        wanted[bucket_id] = _Wanted(need[bucket_id], {sources.position[d] for d in behind if d in sources.position},
                                    None not in behind)
    if need and len(sources.ids):
        sources.flat = np.array(list(crew.run(_flat_many, sources.refs(), 16)), dtype=bool)
    usable = ~sources.flat
    report.usable_sources = int(usable.sum())
    sources.max_uses = report.uses_limit = uses_limit(sum(need.values()), report.usable_sources,
                                                      int(sources.uses[usable].sum()), max_uses)
    return sources, order, wanted


def first_round(lib: Library, per_bucket: int = DEFAULT_PER_BUCKET, max_uses: int | None = DEFAULT_MAX_USES,
                seed: int = DEFAULT_SYNTH_SEED, workers: int | None = None) -> list[tuple[int, str | None]]:
    """The first round's plan, nothing made: ``(bucket, source tile id or None for a flat tile)``
    for every tile wanted (what :func:`synthesize` would start from: misses are planned again)."""
    need = targets(lib, per_bucket)
    crew = _Crew(lib, workers or os.cpu_count() or 1, sum(need.values()))
    try:
        sources, order, wanted = _prepare(lib, need, seed, max_uses, crew, SynthesizeReport())
    finally:
        crew.close()
    jobs = _plan_round(lib, sources, order, wanted, SynthesizeReport())
    return [(job.bucket_id, None if job.source is None else job.source[2]) for job in jobs]


def synthesize(lib: Library, per_bucket: int = DEFAULT_PER_BUCKET, max_uses: int | None = DEFAULT_MAX_USES,
               near_duplicate_radius: int = DEFAULT_NEAR_DUPLICATE_RADIUS, seed: int = DEFAULT_SYNTH_SEED,
               progress: bool | None = None, buckets: list[int] | None = None,
               workers: int | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> SynthesizeReport:
    """Make and store synthetic tiles (see the module doc) in ``lib``, opened for writing.

    ``max_uses``: cap on the synthetic tiles one source may give (default: as many as the need
    calls for, :func:`uses_limit`); ``workers``: processes that make tiles (default one per
    CPU); ``buckets`` limits the run to some buckets (tests, a notebook); default all that need one.
    ``on_progress(done, total)`` is called before the first tile and after each stored batch
    (tiles tried so far of the tiles wanted): the demo's progress lines where no bar is shown.
    """
    lib.require_writer("synthesize")
    validate_options(per_bucket=per_bucket, max_uses=max_uses, near_duplicate_radius=near_duplicate_radius,
                     cap=lib.cap, workers=workers)
    started = time.perf_counter()
    report = SynthesizeReport()
    counts = lib.bucket_counts()
    report.buckets_covered_before = int((counts > 0).sum())
    need = targets(lib, per_bucket)
    if buckets is not None:
        wanted_buckets = set(buckets)
        need = {b: n for b, n in need.items() if b in wanted_buckets}
    report.buckets_targeted = len(need)
    total = sum(need.values())
    crew = _Crew(lib, workers or os.cpu_count() or 1, total)
    report.workers = crew.workers
    try:
        sources, order, wanted = _prepare(lib, need, seed, max_uses, crew, report)
        used_before = sources.uses.copy()
        show = sys.stderr.isatty() if progress is None else progress
        provenance = {"source": SOURCE_NAME, "synthetic": 1}
        with Pipeline(lib, workers=1, default_provenance=provenance,
                      near_duplicate_radius=near_duplicate_radius) as pipe, \
                tqdm(total=total, unit="tile", desc="synthesize", disable=not show) as tqdm_bar:
            bar = _Progress(tqdm_bar, total, on_progress)
            for _round in range(SOURCE_TRIES + 1):
                jobs = _plan_round(lib, sources, order, wanted, report)
                if not jobs:
                    break
                batch: list[_Made] = []
                for made in crew.run(_make_many, jobs, JOB_CHUNK):
                    if _settle(made, sources, wanted, report):
                        batch.append(made)
                    if len(batch) >= BATCH:
                        _store(pipe, batch, sources, wanted, report, bar)
                _store(pipe, batch, sources, wanted, report, bar)
    finally:
        crew.close()
    report.sources_used = int(((sources.uses - used_before) > 0).sum())
    report.max_uses_seen = int(sources.uses.max()) if len(sources.uses) else 0
    report.buckets_covered_after = int((lib.bucket_counts() > 0).sum())
    report.seconds = time.perf_counter() - started
    return report


def _settle(made: _Made, sources: _Sources, wanted: dict[int, _Wanted], report: SynthesizeReport) -> bool:
    """Book a worker's result; True when it is a tile to store.  A miss gives its source's use
    back and leaves the tile wanted for the next round (from the next source, or flat)."""
    job, state = made.job, wanted[made.job.bucket_id]
    if made.analysis is not None:
        return True
    if made.unreachable:
        report.skipped["unreachable_colour"] += 1
        state.need -= 1
        return False
    index = job.source[0]
    sources.uses[index] -= 1
    state.failures += 1
    if made.unusable:
        sources.flat[index] = True
    else:
        report.retried += 1
    return False


class _Progress:
    """The run's progress: the bar, and ``on_progress(done, total)`` (the demo's lines where no bar
    is shown; a disabled tqdm counts nothing), called at the start and after each stored batch."""

    def __init__(self, bar, total: int, on_progress: Callable[[int, int], None] | None) -> None:
        self.bar, self.total, self.on_progress, self.done = bar, total, on_progress, 0
        if on_progress is not None:
            on_progress(0, total)

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)

    def set_postfix(self, **facts) -> None:
        self.bar.set_postfix(**facts)


def _store(pipe: Pipeline, batch: list[_Made], sources: _Sources, wanted: dict[int, _Wanted],
           report: SynthesizeReport, bar) -> None:
    """Store made tiles through the pipeline (its checks, the commit protocol), in plan order."""
    if not batch:
        return
    cands = [_candidate(m.job, None if m.job.source is None else m.job.source[2]) for m in batch]
    for made, out in zip(batch, pipe.store_analysed(cands, [m.analysis for m in batch])):
        state = wanted[made.job.bucket_id]
        state.need -= 1
        if made.job.source is None:
            state.flat_allowed = False
        if out.accepted and out.bucket_id == made.job.bucket_id:
            report.made += 1
            if made.job.source is None:
                report.flat += 1
            else:
                report.texture_kept.append(made.kept)
        else:
            # a refusal gives the source back; a tile stored elsewhere cannot happen (same recipe)
            report.rejected[out.reason or f"landed_in_{out.bucket_id}"] += 1
            if made.job.source is not None and not out.accepted:
                sources.uses[made.job.source[0]] -= 1
    bar.update(len(batch))
    bar.set_postfix(made=report.made, flat=report.flat)
    batch.clear()
