"""``synthesize``: flagged synthetic tiles for the buckets the source cannot fill.

For every bucket that holds no real tile (and fewer than ``per_bucket`` synthetic ones: a rerun
tops up), a tile is made by colour transfer from a real tile of the nearest populated colours,
keeping its texture, so that the card's recipe on the stored PNG (64x64 mean RGB -> LAB ->
nearest centroid, :func:`builder.assign.mean_rgb_64`, :class:`builder.color.CentroidIndex`)
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

A source tile is used at most ``max_uses`` times (counted over the library's existing
synthetic tiles too), so one texture does not repeat across many colours; flat sources
(contrast below :data:`builder.phash.MIN_HASH_CONTRAST`) are passed over.  When no usable
source is left, the bucket gets a *flat* tile (one colour, ``derived_from`` NULL) so every
bucket can hold a tile; the report counts them.

Rows: ``synthetic = 1``, ``derived_from`` = the source tile's id, ``source = 'synthetic'``;
``phash`` and LAB are those of the stored file, as for every tile.  Tiles are stored through
the same :class:`~builder.assign.Pipeline` and commit protocol as ingest and harvest (cap,
duplicate and near-duplicate checks, crash-safe journal).  Real tiles always win: a synthetic
tile gives way when a real one needs its place (see :mod:`builder.assign`).

From a notebook::

    from builder.library import Library
    from builder.synthesize import synthesize

    with Library.open("mosaic_library") as lib:
        report = synthesize(lib, per_bucket=1, max_uses=4)
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from .assign import Candidate, Pipeline, check_radius, mean_rgb_64
from .color import rgb_to_lab
from .decode import decode_tile, encode_png
from .defaults import DEFAULT_MAX_USES, DEFAULT_NEAR_DUPLICATE_RADIUS, DEFAULT_PER_BUCKET, DEFAULT_SYNTH_SEED
from .errors import BadTile, ImageRejected, UsageError
from .layout import N_BUCKETS, TILE_SIZE
from .library import Library
from .phash import MIN_HASH_CONTRAST, contrast

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
# Decoded sources kept (about 1 MB each: RGB and float32 LAB).  Buckets are visited nearest
# colour first, so a source's next use, if any, usually comes soon.
SOURCE_CACHE = 32


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
        skipped = f", {sum(self.skipped.values())} buckets skipped ({dict(self.skipped)})" if self.skipped else ""
        return (f"{self.made} synthetic tiles ({self.made - self.flat} textured, {self.flat} flat) for "
                f"{self.buckets_targeted} buckets{kept_text}{skipped}; buckets covered "
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
            "ms_per_tile": round(self.ms_per_tile, 2),
            "seconds": round(self.seconds, 3),
        }


def validate_options(*, per_bucket: int, max_uses: int, near_duplicate_radius: int, cap: int) -> None:
    """One-line :class:`UsageError` for a bad value (the CLI and a notebook get the same words)."""
    check_radius(near_duplicate_radius)
    for name, value, low, high in (("--per-bucket", per_bucket, 1, cap), ("--max-uses", max_uses, 1, None)):
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
    """The card's LAB of a tile's pixels: 64x64 resize, mean RGB, LAB (as :mod:`builder.assign`)."""
    return rgb_to_lab(mean_rgb_64(Image.fromarray(rgb_u8)))


def _spread_scale(dev_l: np.ndarray, target_l: float) -> float:
    """Largest ``s <= 1`` that keeps ``target_l + s * dev_l`` (1st..99th percentiles) within 0..100."""
    lo, hi = np.percentile(dev_l, (1, 99))
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


def texture_kept(source_rgb: np.ndarray, out_rgb: np.ndarray) -> float:
    """How much of the source's light-dark texture a result keeps: the slope of the result's
    per-pixel L* regressed on the source's (``cov / var``), within 0..1.  A copy shifted in
    colour keeps 1, a spread scaled by ``s`` keeps ``s``, pixels clipped at the gamut's edge
    lower it, a flat tile keeps 0."""
    src, out = lightness(source_rgb), lightness(out_rgb)
    var = float(src.var())
    if var <= 1e-9:
        return 0.0
    return float(np.clip(((src - src.mean()) * (out - out.mean())).mean() / var, 0.0, 1.0))


def transfer(source_rgb: np.ndarray, target_lab: np.ndarray, source_lab: np.ndarray | None = None) -> np.ndarray:
    """``source_rgb`` (uint8, HxWx3) recoloured so its recipe LAB approaches ``target_lab`` (see the module doc)."""
    target = np.asarray(target_lab, dtype=np.float64)
    lab = _rgb2lab(source_rgb) if source_lab is None else source_lab
    dev = (lab - lab.reshape(-1, 3).mean(axis=0, dtype=np.float64)).astype(np.float32)
    s = _spread_scale(dev[..., 0], float(target[0]))
    # Corrections on a 64x64 preview (a box reduction of the source: 16 times fewer pixels to convert).
    small = dev.reshape(64, TILE_SIZE // 64, 64, TILE_SIZE // 64, 3).mean(axis=(1, 3))
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


class _Sources:
    """The library's real tiles as transfer sources: nearest usable first, at most ``max_uses`` each."""

    def __init__(self, lib: Library, max_uses: int, rng: np.random.Generator) -> None:
        self.lib = lib
        self.max_uses = max_uses
        self.rng = rng
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
        self.flat = np.zeros(len(rows), dtype=bool)  # found flat (or unreadable) when first read
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.tree = None
        if rows:
            from scipy.spatial import cKDTree

            self.tree = cKDTree(self.labs)

    def available(self) -> np.ndarray:
        return (self.uses < self.max_uses) & ~self.flat

    def nearest(self, lab: np.ndarray, exclude: set[int]) -> int | None:
        """A usable source among the nearest :data:`SOURCE_CHOICES` to ``lab`` (seeded pick), or None."""
        if self.tree is None:
            return None
        n = len(self.ids)
        k = min(n, 16)
        while True:
            _dist, idx = self.tree.query(lab, k=k)
            idx = np.atleast_1d(idx)
            ok = self.available()
            picks = [int(i) for i in idx if i < n and ok[i] and int(i) not in exclude][:SOURCE_CHOICES]
            if picks:
                return picks[int(self.rng.integers(len(picks)))]
            if k >= n:
                return None
            k = min(n, k * 4)

    def pixels(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Source ``i``'s RGB and per-pixel LAB (None, and marked unusable, when flat or unreadable)."""
        if i in self.cache:
            return self.cache[i]
        try:
            image = decode_tile(self.lib.read_tile(self.buckets[i], self.ids[i])).image
        except (BadTile, ImageRejected):
            self.flat[i] = True
            return None
        if contrast(image) < MIN_HASH_CONTRAST:
            self.flat[i] = True
            return None
        rgb = np.asarray(image)
        found = (rgb, _rgb2lab(rgb))
        if len(self.cache) >= SOURCE_CACHE:  # oldest out: a source is reused soon or never
            self.cache.pop(next(iter(self.cache)))
        self.cache[i] = found
        return found


# --------------------------------------------------------------------------- the run


class _Made:
    """One synthetic tile ready for the pipeline."""

    __slots__ = ("bucket_id", "png", "derived_from", "source_index", "kept")

    def __init__(self, bucket_id: int, png: bytes, derived_from: str | None, source_index: int | None, kept: float | None):
        self.bucket_id = bucket_id
        self.png = png
        self.derived_from = derived_from
        self.source_index = source_index
        self.kept = kept


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


def _make_one(lib: Library, sources: _Sources, bucket_id: int, report: SynthesizeReport,
              tried: set[int], flat_allowed: bool = True) -> _Made | None:
    """A tile for ``bucket_id`` from the nearest usable source, or a flat one; None if none lands there."""
    index = lib.index
    centroid = lib.centroids[bucket_id]
    for _attempt in range(SOURCE_TRIES):
        i = sources.nearest(centroid, tried)
        if i is None:
            break
        tried.add(i)
        pix = sources.pixels(i)
        if pix is None:
            continue
        rgb, lab = pix
        out = transfer(rgb, centroid, lab)
        landed = int(index.assign_lab(recipe_lab(out))[0][0])
        if landed != bucket_id:
            report.retried += 1
            continue
        kept = texture_kept(rgb, out)
        return _Made(bucket_id, encode_png(Image.fromarray(out)), sources.ids[i], i, kept)
    if not flat_allowed:  # every flat tile hashes alike (8000000000000000): one per bucket
        report.skipped["no_source_left"] += 1
        return None
    colour = flat_colour(index, bucket_id, centroid)
    if colour is None:
        report.skipped["unreachable_colour"] += 1
        return None
    tile = np.broadcast_to(colour, (TILE_SIZE, TILE_SIZE, 3)).copy()
    return _Made(bucket_id, encode_png(Image.fromarray(tile)), None, None, None)


def synthesize(lib: Library, per_bucket: int = DEFAULT_PER_BUCKET, max_uses: int = DEFAULT_MAX_USES,
               near_duplicate_radius: int = DEFAULT_NEAR_DUPLICATE_RADIUS, seed: int = DEFAULT_SYNTH_SEED,
               progress: bool | None = None, buckets: list[int] | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> SynthesizeReport:
    """Make and store synthetic tiles (see the module doc) in ``lib``, opened for writing.

    ``buckets`` limits the run to some buckets (tests, a notebook); default all that need one.
    ``on_progress(done, total)`` is called before the first tile and after each stored batch
    (tiles tried so far of the tiles wanted): the demo's progress lines where no bar is shown.
    """
    lib._require_writer()
    validate_options(per_bucket=per_bucket, max_uses=max_uses, near_duplicate_radius=near_duplicate_radius,
                     cap=lib.cap)
    started = time.perf_counter()
    report = SynthesizeReport()
    counts = lib.bucket_counts()
    report.buckets_covered_before = int((counts > 0).sum())
    need = targets(lib, per_bucket)
    if buckets is not None:
        wanted = set(buckets)
        need = {b: n for b, n in need.items() if b in wanted}
    report.buckets_targeted = len(need)
    rng = np.random.default_rng(seed)
    sources = _Sources(lib, max_uses, rng)
    # Nearest colours first: they get the closest sources while sources last.
    order = sorted(need)
    if len(sources.ids):
        dist, _ = sources.tree.query(lib.centroids[order], k=1)
        order = [order[i] for i in np.argsort(dist, kind="stable")]
    show = sys.stderr.isatty() if progress is None else progress
    used_before = sources.uses.copy()
    provenance = {"source": SOURCE_NAME, "synthetic": 1}
    total = sum(need.values())
    with Pipeline(lib, workers=1, default_provenance=provenance,
                  near_duplicate_radius=near_duplicate_radius) as pipe, \
            tqdm(total=total, unit="tile", desc="synthesize", disable=not show) as bar:
        batch: list[_Made] = []
        done = [0]  # tiles tried so far (tqdm counts nothing when its bar is off)

        def flush() -> None:
            if not batch:
                return
            cands = [Candidate(f"synthetic:bucket {m.bucket_id}", data=m.png,
                               provenance={"synthetic": 1, "derived_from": m.derived_from}) for m in batch]
            for made, out in zip(batch, pipe.process(cands)):
                if out.accepted and out.bucket_id == made.bucket_id:
                    report.made += 1
                    if made.derived_from is None:
                        report.flat += 1
                    else:
                        report.texture_kept.append(made.kept)
                else:
                    # a refusal gives the source back; a tile stored elsewhere cannot happen (same recipe)
                    report.rejected[out.reason or f"landed_in_{out.bucket_id}"] += 1
                    if made.source_index is not None and not out.accepted:
                        sources.uses[made.source_index] -= 1
            bar.update(len(batch))
            bar.set_postfix(made=report.made, flat=report.flat)
            done[0] += len(batch)
            batch.clear()
            if on_progress is not None:
                on_progress(done[0], total)

        if on_progress is not None:
            on_progress(0, total)

        for bucket_id in order:
            # A source already behind a tile of this bucket would give it the same hash again.
            behind = [d for (d,) in lib.conn.execute(
                "SELECT derived_from FROM tiles WHERE bucket_id = ? AND synthetic = 1", (bucket_id,))]
            tried = {sources.position[d] for d in behind if d in sources.position}
            flat_allowed = None not in behind
            for _n in range(need[bucket_id]):
                made = _make_one(lib, sources, bucket_id, report, tried, flat_allowed)
                if made is None:
                    continue
                flat_allowed = flat_allowed and made.derived_from is not None
                if made.source_index is not None:
                    sources.uses[made.source_index] += 1
                batch.append(made)
                if len(batch) >= BATCH:
                    flush()
        flush()
    report.sources_used = int(((sources.uses - used_before) > 0).sum())
    report.max_uses_seen = int(sources.uses.max()) if len(sources.uses) else 0
    report.buckets_covered_after = int((lib.bucket_counts() > 0).sum())
    report.seconds = time.perf_counter() - started
    return report
