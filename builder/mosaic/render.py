"""Rendering a plan into pixels, one band of cells at a time, with the optional blend of each
tile's colours toward the target's."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..decode import TILE_SIZE
from ..errors import UsageError
from ..library import Library
from .match import MosaicPlan, plan_mosaic
from .target import MosaicOptions
from .thumbs import THUMB_SIZE, _pool, _read_tile

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 150_000_000  # a returned PIL image lives in memory: 450 MB


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


def _interp_axis(n_out: int, n_in: int, band_start: int, band_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation indices/weights for output samples ``band_start .. +band_len`` of an
    ``n_in`` -> ``n_out`` upsampling (pixel centres aligned, edges clamped)."""
    pos = (np.arange(band_start, band_start + band_len) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def _blend_shift(plan: MosaicPlan, diff: np.ndarray, row: int) -> np.ndarray:
    """The colour shift for band ``row`` at output resolution ``(T, cols*T, 3)``."""
    tile = plan.layout.tile
    h_in, w_in = diff.shape[:2]
    y0, y1, wy = _interp_axis(plan.layout.rows * tile, h_in, row * tile, tile)
    x0, x1, wx = _interp_axis(plan.layout.cols * tile, w_in, 0, plan.layout.cols * tile)
    vert = diff[y0] * (1 - wy)[:, None, None] + diff[y1] * wy[:, None, None]
    return vert[:, x0] * (1 - wx)[None, :, None] + vert[:, x1] * wx[None, :, None]


def iter_bands(lib: Library, plan: MosaicPlan, progress: bool | None = None) -> Iterator[np.ndarray]:
    """Yield the output one band of cells at a time, ``(T, cols*T, 3)`` uint8.

    Each used tile is fetched once, when the first band needs it (from the thumbnail cache
    for tiles up to 64 px, else decoded from its PNG), and its slot is reused after the last
    band that uses it, so memory is bounded by the tiles alive at once.
    """
    layout, grid = plan.layout, plan.grid
    tile, rows, cols = layout.tile, layout.rows, layout.cols
    used, inverse = np.unique(grid, return_inverse=True)
    local = inverse.reshape(rows, cols)
    row_of = np.repeat(np.arange(rows), cols)
    first = np.full(len(used), rows, dtype=np.int64)
    last = np.full(len(used), -1, dtype=np.int64)
    np.minimum.at(first, local.ravel(), row_of)
    np.maximum.at(last, local.ravel(), row_of)
    alive = np.zeros(rows + 1, dtype=np.int64)
    np.add.at(alive, first, 1)
    np.add.at(alive, last + 1, -1)
    slots = np.empty((int(np.cumsum(alive).max()), tile, tile, 3), dtype=np.uint8)
    slot_of = np.full(len(used), -1, dtype=np.int64)
    free = list(range(len(slots)))[::-1]
    blend = float(plan.options.blend)
    diff = None
    if blend > 0:
        s = plan.table.subcells
        tiles_rgb = plan.table.rgb[grid].transpose(0, 2, 1, 3, 4).reshape(rows * s, cols * s, 3)
        diff = (plan.target_rgb - tiles_rgb).astype(np.float32) * blend
    starts_by_row = [np.flatnonzero(first == r) for r in range(rows)]
    ends_by_row = [np.flatnonzero(last == r) for r in range(rows)]
    show = sys.stderr.isatty() if progress is None else progress
    table = plan.table
    with _pool(plan.options.workers) as pool, tqdm(total=rows, unit="row", desc="mosaic", disable=not show) as bar:
        for r in range(rows):
            new = starts_by_row[r]
            if len(new):
                targets = np.array([free.pop() for _ in new], dtype=np.int64)
                slot_of[new] = targets
                if tile <= THUMB_SIZE:  # from the thumbnail cache: no PNG decoded at all
                    slots[targets] = table.thumbnails(used[new], tile)
                else:
                    jobs = [(int(table.bucket_ids[used[i]]), str(table.ids[used[i]])) for i in new]
                    for slot, pixels in zip(targets, pool.map(lambda job: load_thumbnail(lib, *job, tile), jobs)):
                        slots[slot] = pixels
            band = slots[slot_of[local[r]]]  # (cols, T, T, 3)
            band = band.transpose(1, 0, 2, 3).reshape(tile, cols * tile, 3)
            if diff is not None:
                band = np.clip(band + _blend_shift(plan, diff, r), 0, 255).round().astype(np.uint8)
            yield band
            for i in ends_by_row[r]:
                free.append(int(slot_of[i]))
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
