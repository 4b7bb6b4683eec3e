"""Rendering a plan into pixels, one band of cells at a time, with each tile's colour
correction (:mod:`.correct`) applied."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core.errors import UsageError
from ..core.layout import THUMB_SIZE, TILE_SIZE
from ..core.library import Library
from ..core.thumbcache import _read_tile, release_pages
from .correct import interp_axis, plan_correction
from .match import MosaicPlan, plan_mosaic
from .target import MosaicOptions
from .tiletable import _pool

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 150_000_000  # a returned PIL image lives in memory: 450 MB
# Decoded tiles kept at output size (at least one row's worth).  A 200x200-cell mosaic of 256-px
# tiles of data/sample_target.jpg uses 1,710 distinct tiles: 128 MB (682 tiles) decodes 1,725
# times, 256 MB 1,710, 64 MB 2,381 (Belady's rule keeps what is needed soonest).
RENDER_CACHE_BYTES = 128 * 2**20
CORRECTION_CHUNK_PIXELS = 2**20  # pixels of a band corrected at once (two 12 MB float32 temporaries)


# ============================================================================ rendering
def load_thumbnail(lib: Library, bucket_id: int, tile_id: str, size: int) -> np.ndarray:
    """A tile at ``size`` pixels: integer box reduction first (cheap), Lanczos for the rest."""
    img = _read_tile(lib, bucket_id, tile_id)
    factor = TILE_SIZE // size
    if factor > 1:
        img = img.reduce(factor)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def _vertical_weights(plan: MosaicPlan, shift: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray]:
    """The shift field's rows that band ``row`` interpolates between, and the ``(T, k)`` weights
    that take those ``k`` rows to the band's ``T`` output rows (each row's weights sum to 1)."""
    tile = plan.layout.tile
    y0, y1, wy = interp_axis(plan.layout.rows * tile, shift.shape[0], row * tile, tile)
    used = np.unique(np.concatenate([y0, y1]))
    weights = np.zeros((tile, len(used)), dtype=np.float32)
    out_rows = np.arange(tile)
    np.add.at(weights, (out_rows, np.searchsorted(used, y0)), 1 - wy)
    np.add.at(weights, (out_rows, np.searchsorted(used, y1)), wy)
    return used, weights


def _correct_band(plan: MosaicPlan, band: np.ndarray, row: int, shift: np.ndarray | None,
                  gain: np.ndarray | None, means: np.ndarray | None) -> np.ndarray:
    """Apply the contrast gain and the bilinearly interpolated colour shift to one band, a few
    cells' width at a time so the float temporaries stay small on very wide mosaics.

    Per pixel this is ``p * gain + offset``: the contrast match ``m + (p - m) * g`` and the
    shift are one multiply and one add, with ``offset = m (1 - g) + shift(x, y)``.  The offset is
    interpolated horizontally on the few shift rows the band needs, then vertically for all its
    rows at once as a small matrix product, so no per-pixel gather is made.
    """
    tile, cols = plan.layout.tile, plan.layout.cols
    out = np.empty_like(band)
    if shift is not None:
        used, weights = _vertical_weights(plan, shift, row)
        shift_rows = shift[used]  # (k, cols * s, 3)
    step = max(1, CORRECTION_CHUNK_PIXELS // (tile * tile))
    for c0 in range(0, cols, step):
        c1 = min(cols, c0 + step)
        px = slice(c0 * tile, c1 * tile)
        width = (c1 - c0) * tile
        if shift is not None:
            x0, x1, wx = interp_axis(cols * tile, shift.shape[1], c0 * tile, width)
            rows_h = shift_rows[:, x0] * (1 - wx)[None, :, None] + shift_rows[:, x1] * wx[None, :, None]
        else:
            rows_h = np.zeros((1, width, 3), dtype=np.float32)
        if gain is not None:
            g = np.repeat(gain[row, c0:c1], tile)
            rows_h += (np.repeat(means[row, c0:c1], tile, axis=0) * (1 - g)[:, None])[None]
        if shift is not None:
            offset = (weights @ rows_h.reshape(len(used), -1)).reshape(tile, width, 3)
        else:
            offset = rows_h
        part = band[:, px].astype(np.float32)
        if gain is not None:
            part *= g[None, :, None]
        part += offset
        np.clip(part, 0, 255, out=part)
        np.rint(part, out=part)
        out[:, px] = part
    return out


def overlay_band(plan: MosaicPlan, band: np.ndarray, row: int) -> np.ndarray:
    """``band`` with ``--overlay`` percent of the input blended over it: the input's rows under
    band ``row``, resized to the band (bilinear), mixed pixel by pixel."""
    source, rows = plan.overlay_source, plan.layout.rows
    height = source.height / rows
    under = np.asarray(source.resize((band.shape[1], band.shape[0]), Image.Resampling.BILINEAR,
                                     box=(0, row * height, source.width, (row + 1) * height)), dtype=np.float32)
    alpha = plan.options.overlay / 100.0
    mixed = band.astype(np.float32) * (1.0 - alpha) + under * alpha
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


class _TileCache:
    """Tiles decoded at output size, at most ``capacity`` at once: when full, the tile whose next
    use lies farthest ahead is dropped (Belady's rule: every row's tiles are known in advance),
    so memory stays flat however many distinct tiles a huge mosaic uses."""

    def __init__(self, local: np.ndarray, tile: int, capacity: int) -> None:
        rows = local.shape[0]
        n = int(local.max()) + 1
        self.needed = [np.unique(local[r]) for r in range(rows)]
        self.uses_by_tile: list[list[int]] = [[] for _ in range(n)]
        for r, tiles in enumerate(self.needed):
            for t in tiles.tolist():
                self.uses_by_tile[t].append(r)
        self.pointer = np.zeros(n, dtype=np.int64)
        widest = max(len(t) for t in self.needed)
        self.capacity = int(min(n, max(widest, capacity)))
        self.slots = np.empty((self.capacity, tile, tile, 3), dtype=np.uint8)
        self.slot_of = np.full(n, -1, dtype=np.int64)
        self.free = list(range(self.capacity))[::-1]

    def _next_use(self, tiles: np.ndarray) -> np.ndarray:
        out = np.empty(len(tiles), dtype=np.float64)
        for i, t in enumerate(tiles.tolist()):
            uses, p = self.uses_by_tile[t], int(self.pointer[t])
            out[i] = uses[p] if p < len(uses) else np.inf
        return out

    def missing(self, r: int) -> np.ndarray:
        """Row ``r``'s tiles not held; makes room for them."""
        need = self.needed[r]
        missing = need[self.slot_of[need] < 0]
        short = len(missing) - len(self.free)
        if short > 0:
            held = np.flatnonzero(self.slot_of >= 0)
            held = held[~np.isin(held, need)]
            victims = held[np.argsort(-self._next_use(held), kind="stable")[:short]]
            self.free.extend(self.slot_of[victims].tolist())
            self.slot_of[victims] = -1
        return missing

    def store(self, tiles: np.ndarray, pixels: np.ndarray) -> None:
        slots = np.array([self.free.pop() for _ in range(len(tiles))], dtype=np.int64)
        self.slot_of[tiles] = slots
        self.slots[slots] = pixels

    def done(self, r: int) -> None:
        """Row ``r`` rendered: its tiles' next uses move on."""
        self.pointer[self.needed[r]] += 1


def iter_bands(lib: Library, plan: MosaicPlan, progress: bool | None = None,
               seconds: dict | None = None) -> Iterator[np.ndarray]:
    """Yield the output one band of cells at a time, ``(T, cols*T, 3)`` uint8.

    Each used tile is fetched when a band needs it (from the thumbnail cache for tiles up to
    64 px, else decoded from its PNG, on threads) and kept while memory allows
    (:data:`RENDER_CACHE_BYTES`), so memory is bounded whatever the mosaic's size.  The colour
    correction of :mod:`.correct` is applied per band.  ``seconds`` (if given) accumulates the
    time spent fetching and placing tiles (``"render"``) and correcting them (``"correct"``).
    """
    seconds = {} if seconds is None else seconds
    seconds.setdefault("render", 0.0)
    seconds.setdefault("correct", 0.0)
    clock = time.perf_counter()
    layout, grid = plan.layout, plan.grid
    tile, rows, cols = layout.tile, layout.rows, layout.cols
    used, inverse = np.unique(grid, return_inverse=True)
    local = inverse.reshape(rows, cols)
    cache = _TileCache(local, tile, RENDER_CACHE_BYTES // (tile * tile * 3))
    shift, gain, means = plan_correction(plan)
    if tile > THUMB_SIZE:  # the thumbnails are not read again: their pages need not stay ours
        release_pages(plan.table.thumbs)
    seconds["correct"] += time.perf_counter() - clock
    show = sys.stderr.isatty() if progress is None else progress
    table = plan.table
    with _pool(plan.options.threads) as pool, tqdm(total=rows, unit="row", desc="mosaic", disable=not show) as bar:
        for r in range(rows):
            clock = time.perf_counter()
            new = cache.missing(r)
            if len(new):
                if tile <= THUMB_SIZE:  # from the thumbnail cache: no PNG decoded at all
                    cache.store(new, table.thumbnails(used[new], tile))
                else:
                    jobs = [(int(table.bucket_ids[used[i]]), table.tile_id(used[i])) for i in new]
                    cache.store(new, np.stack(list(pool.map(lambda job: load_thumbnail(lib, *job, tile), jobs))))
            band = cache.slots[cache.slot_of[local[r]]]  # (cols, T, T, 3)
            band = band.transpose(1, 0, 2, 3).reshape(tile, cols * tile, 3)
            placed = time.perf_counter()
            seconds["render"] += placed - clock
            if shift is not None or gain is not None:
                band = _correct_band(plan, band, r, shift, gain, means)
            if plan.overlay_source is not None and plan.options.overlay > 0:
                band = overlay_band(plan, band, r)
            seconds["correct"] += time.perf_counter() - placed
            yield band
            cache.done(r)
            bar.update()


def render_mosaic(lib: Library, plan: MosaicPlan, progress: bool | None = None) -> Image.Image:
    """The whole mosaic as a PIL image (bounded by :data:`MAX_IMAGE_PIXELS`)."""
    width, height = plan.output_size
    if width * height > MAX_IMAGE_PIXELS:
        raise UsageError(f"a {width}x{height} mosaic is too large to hold in memory: write it with write_mosaic")
    out = np.empty((height, width, 3), dtype=np.uint8)
    tile = plan.layout.tile
    for r, band in enumerate(iter_bands(lib, plan, progress)):
        out[r * tile:(r + 1) * tile] = band
    return Image.fromarray(out, "RGB")


def make_mosaic(lib: Library, target: str | os.PathLike | Image.Image, options: MosaicOptions | None = None,
                progress: bool | None = None) -> Image.Image:
    """Photomosaic of ``target`` from ``lib``'s tiles, as a PIL image."""
    return render_mosaic(lib, plan_mosaic(lib, target, options, progress), progress)
