"""Colour correction that keeps a tile's texture: a bounded LAB shift per sub-cell, and an
optional contrast match.

A tile rarely has exactly its cell's colours.  Shifting every pixel of a sub-cell by the same
amount moves its mean toward the input's and leaves the texture (every difference between
pixels) untouched.  The shift is chosen in CIE LAB - ``blend`` of the way from the tile's
sub-cell colour to the input's - and cut back along the same line until it moves the colour by
at most ``max_correction`` CIEDE2000 (``skimage.color.deltaE_ciede2000``), so a green field
may become a greener field but never a red one; it is applied as the RGB offset between the two
colours, bilinearly interpolated across sub-cells so no seams appear inside a tile.

Contrast (on by default) scales a tile's deviations from its mean by the least-squares gain that
makes its luma texture (4x4 samples a cell, the SSIM's own scale, sub-cell means removed) best
draw the cell's, within ``MIN_GAIN .. MAX_GAIN``: a tile whose pattern follows the cell's gets
the cell's contrast, one whose pattern does not is calmed (texture that disagrees with the cell
only adds error).  The gain is decided first and the shift measured from the gained colours.
:func:`preview_samples` computes what the fidelity figures will sample of a plan without
rendering it.

>>> import numpy as np
>>> tile, want = np.full((1, 1, 3), 100.0), np.full((1, 1, 3), 200.0)
>>> shift = correction_shift(tile, want, blend=1.0, max_correction=5.0)
>>> from skimage.color import deltaE_ciede2000; from builder.core.color import rgb_to_lab
>>> round(float(deltaE_ciede2000(rgb_to_lab(tile), rgb_to_lab(tile + shift))[0, 0]), 2)
5.0
"""

from __future__ import annotations

import numpy as np

from ..core.color import lab_to_rgb, rgb_to_lab
from .fidelity import LUMA, STRUCTURE_SAMPLES

BISECTIONS = 24  # halvings of the step along the shift: far below 0.01 CIEDE2000
MAX_GAIN = 2.0  # contrast is scaled up by at most this factor
MIN_GAIN = 0.5  # a tile keeps at least half its contrast, however little its pattern fits
GAIN_REG = 1.0  # added to a tile's mean squared texture: flat tiles are not blown up


def correction_shift(tile_rgb: np.ndarray, target_rgb: np.ndarray, blend: float, max_correction: float) -> np.ndarray:
    """RGB offsets ``(..., 3)`` float32 moving each tile sub-cell colour ``blend`` of the way to the
    target's in LAB, by at most ``max_correction`` CIEDE2000 (colours stay inside sRGB)."""
    from skimage.color import deltaE_ciede2000  # imported on use: the store imports this package

    lab_tile = rgb_to_lab(np.clip(tile_rgb, 0, 255))
    step = (rgb_to_lab(np.clip(target_rgb, 0, 255)) - lab_tile) * float(blend)
    if np.isfinite(max_correction):
        lo, hi = np.zeros(step.shape[:-1]), np.ones(step.shape[:-1])
        fits = deltaE_ciede2000(lab_tile, lab_tile + step) <= max_correction
        lo[fits] = 1.0
        todo = ~fits
        for _ in range(BISECTIONS):
            if not todo.any():
                break
            mid = (lo[todo] + hi[todo]) / 2
            ok = deltaE_ciede2000(lab_tile[todo], lab_tile[todo] + step[todo] * mid[:, None]) <= max_correction
            lo[todo] = np.where(ok, mid, lo[todo])
            hi[todo] = np.where(ok, hi[todo], mid)
        step = step * lo[..., None]
    return (lab_to_rgb(lab_tile + step) - tile_rgb).astype(np.float32)


def luma_texture(samples: np.ndarray, subcells: int) -> np.ndarray:
    """``(n, k*k)`` luma of ``(n, k, k, 3)`` RGB samples minus the mean of their sub-cell (the
    whole cell when ``k`` is not a multiple of ``subcells``): the part of a tile the colour shift
    leaves alone, the part of a cell only texture can draw."""
    n, k = len(samples), samples.shape[1]
    q = subcells if k % subcells == 0 else 1
    luma = (np.asarray(samples, dtype=np.float64) @ LUMA).reshape(n, q, k // q, q, k // q)
    return (luma - luma.mean(axis=(2, 4), keepdims=True)).reshape(n, -1)


def texture_gain(dots: np.ndarray, tile_sq: np.ndarray, n: int) -> np.ndarray:
    """Contrast gain per (cell, tile) pair from the dot product of their :func:`luma_texture` and
    the tile's squared norm (broadcastable shapes; ``n`` samples each): the least-squares scale
    ``c.t / |t|^2`` that makes the tile's texture best draw the cell's, within ``MIN_GAIN ..
    MAX_GAIN``.  A tile whose pattern follows the cell's is scaled up to the cell's contrast; one
    whose pattern does not is calmed to ``MIN_GAIN``, since texture that disagrees with the cell
    only adds error (it still shows at half its contrast)."""
    return np.clip(dots / (tile_sq + n * GAIN_REG), MIN_GAIN, MAX_GAIN)


def interp_axis(n_out: int, n_in: int, band_start: int, band_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation indices/weights for output samples ``band_start .. +band_len`` of an
    ``n_in`` -> ``n_out`` upsampling (pixel centres aligned, edges clamped)."""
    pos = (np.arange(band_start, band_start + band_len) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def preview_samples(plan) -> np.ndarray:
    """``(rows * 4, cols * 4, 3)`` float RGB: the plan's mosaic as the fidelity figures will sample it,
    without rendering it: each tile's 4x4 block means, with the contrast gain and the bilinear
    colour shift the render applies per pixel (both affine, so they commute with the block
    means; only the render's per-pixel clipping is approximated, per sample)."""
    n = STRUCTURE_SAMPLES
    grid, table = plan.grid, plan.table
    rows, cols = grid.shape
    shift, gain, means = plan_correction(plan)
    used, local = np.unique(grid.ravel(), return_inverse=True)
    tiles = table.detail_rgb(n, used)[local].reshape(rows, cols, n, n, 3)
    if gain is not None:
        tiles = means[:, :, None, None] + gain[:, :, None, None, None] * (tiles - means[:, :, None, None])
    out = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * n, cols * n, 3)
    if shift is not None:
        y0, y1, wy = interp_axis(rows * n, shift.shape[0], 0, rows * n)
        x0, x1, wx = interp_axis(cols * n, shift.shape[1], 0, cols * n)
        across = shift[:, x0] * (1 - wx)[None, :, None] + shift[:, x1] * wx[None, :, None]
        out = out + across[y0] * (1 - wy)[:, None, None] + across[y1] * wy[:, None, None]
    return np.clip(out, 0, 255)


def cell_samples(samples: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``(rows * n, cols * n, 3)`` -> ``(rows * cols, n, n, 3)``."""
    n = samples.shape[0] // rows
    return samples.reshape(rows, n, cols, n, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, n, n, 3)


def plan_correction(plan) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """What the render applies for a :class:`~builder.mosaic.match.MosaicPlan`: the sub-cell RGB
    shift field ``(rows*s, cols*s, 3)`` (or None), and for contrast the per-cell gain
    ``(rows, cols)`` and tile mean RGB ``(rows, cols, 3)`` (or None, None).

    The gain is decided first and the shift measured from the tile's sub-cell colours *after*
    it (``m + g (t - m)``): the render applies both, so a shift taken from the ungained colours
    would leave every sub-cell off by ``(g - 1)(t - m)``."""
    options, grid, table = plan.options, plan.grid, plan.table
    rows, cols = grid.shape
    s = table.subcells
    sub = table.rgb[grid]  # (rows, cols, s, s, 3)
    gain = means = None
    if options.contrast and plan.reference is not None:
        used, local = np.unique(grid.ravel(), return_inverse=True)
        tile_tex = luma_texture(table.detail_rgb(STRUCTURE_SAMPLES, used), s)[local]
        cell_tex = luma_texture(cell_samples(plan.reference, rows, cols), s)
        gain = texture_gain((tile_tex * cell_tex).sum(axis=1), (tile_tex * tile_tex).sum(axis=1),
                            tile_tex.shape[1]).reshape(rows, cols).astype(np.float32)
        means = sub.mean(axis=(2, 3)).astype(np.float32)
        sub = means[:, :, None, None] + gain[:, :, None, None, None] * (sub - means[:, :, None, None])
    tiles_rgb = sub.transpose(0, 2, 1, 3, 4).reshape(rows * s, cols * s, 3)
    shift = None
    if options.blend > 0 and options.max_correction > 0:
        shift = correction_shift(tiles_rgb, plan.target_rgb, options.blend, options.max_correction)
    return shift, gain, means
