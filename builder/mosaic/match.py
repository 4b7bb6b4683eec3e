"""Choosing a tile for every cell: candidate buckets, ranking by sub-cell LAB distance,
placement under the repetition radius, and the resulting :class:`MosaicPlan`."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..core.color import rgb_to_lab
from ..core.db import has_synthetic_flag
from ..core.errors import LibraryError, UsageError
from ..core.layout import is_tile_id
from ..core.library import Library
from ..core.query import PopulatedIndex
from .correct import luma_texture, preview_samples, texture_gain
from .fair import fair_grid
from .fidelity import COLOUR_SAMPLES, LUMA, STRUCTURE_SAMPLES, compare_samples
from .target import MAX_DZI_PIXELS, Layout, MosaicOptions, displayed_size, open_target, target_samples
from .tiletable import TileTable, load_tile_table

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 32 * 1024 * 1024  # temporaries per vectorised step over cells
KD_TREE_K = 64  # nearest_tiles: a KD-tree up to this many neighbours, brute force beyond
# A sub-cell colour error the shift removes still costs this share of its square: with 0 every tile
# within the budget looks alike in colour and the render's interpolated shifts pay for it (bench/README.md).
COLOUR_WEIGHT = 0.1
SYNTHETIC_MARGIN = 1.25  # a synthetic tile's cost is multiplied by this ...
SYNTHETIC_FLOOR = 1.0  # ... and raised by this (squared LAB a sample): at equal cost the real tile wins
# Synthetic tiles must improve both figures by this: the preview is within 0.02 of the render, but
# two previews share most of that error, so their difference is far more exact.
GUARD_MARGIN = 0.005
PLACE_KEEP = 32  # cheapest candidates a cell keeps for the greedy placement (at least twice the radius's window)
REAL_SHARE = 4  # its lists add the k / REAL_SHARE nearest real tiles when the pool holds synthetic ones
CANDIDATE_BLOCK = 2048  # cells whose candidate buckets are listed at once (2048 x 1,200 tiles: 20 MB)


# ============================================================================ matching
def required_tiles(radius: int) -> int:
    """Distinct tiles needed so a cell always has a free one: the already placed cells of its
    window (rows above and the cells to its left) plus one."""
    return 2 * radius * (radius + 1) + 1


def _chunk(bytes_per_cell: int) -> int:
    """Cells per vectorised step so that one step's temporaries stay near :data:`_CHUNK_BYTES`."""
    return max(16, _CHUNK_BYTES // max(1, bytes_per_cell))


def candidate_tiles(table: TileTable, index: PopulatedIndex, cell_lab: np.ndarray, minimum: int,
                    buckets: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Tiles of each cell's nearest populated buckets, whole buckets until ``minimum`` tiles.

    ``buckets`` is ``(counts, order, starts)`` as :attr:`TileTable.by_bucket` gives it (default:
    every tile of the table; :class:`TilePool` passes the real tiles' own).  Returns ``(cells,
    width)`` table row indices padded with -1.  Vectorised: bucket slots are mapped to positions
    with cumulative counts, never a loop over cells.
    """
    counts, order, starts = table.by_bucket if buckets is None else buckets
    minimum = min(minimum, len(order))
    # Enough buckets for any cell: the smallest populated buckets together reach ``minimum``.
    smallest = np.cumsum(np.sort(counts[counts > 0]))
    k = int(min(len(smallest), np.searchsorted(smallest, minimum) + 1))
    near = index.query(cell_lab, k)
    bucket_ids, bucket_counts = near.bucket_ids, near.counts
    cum = np.cumsum(bucket_counts, axis=1)
    before = cum - bucket_counts
    included = before < minimum
    n_cand = np.where(included, cum, 0).max(axis=1)
    width = int(n_cand.max())
    out = np.full((len(cell_lab), width), -1, dtype=np.int64)
    pos = np.arange(width)
    chunk = _chunk(width * 8 * 6)
    for lo in range(0, len(cell_lab), chunk):
        sl = slice(lo, lo + chunk)
        # Which bucket each position falls in: how many of the row's (increasing) cumulative
        # counts it reaches, one searchsorted over all rows at once (rows offset apart).
        rows = np.arange(len(cum[sl]))[:, None]
        gap = int(cum[sl].max(initial=0)) + width + 1
        flat = (cum[sl] + rows * gap).ravel()
        slot = np.searchsorted(flat, (pos[None, :] + rows * gap).ravel(), side="right").reshape(-1, width)
        slot = np.minimum(slot - rows * k, k - 1)
        bucket = bucket_ids[sl][rows, slot]
        offset = pos[None, :] - before[sl][rows, slot]
        valid = pos[None, :] < n_cand[sl][:, None]
        tiles = order[np.clip(starts[bucket] + offset, 0, len(order) - 1)]
        out[sl] = np.where(valid, tiles, -1)
    return out


def rank_candidates(features: np.ndarray, cell_features: np.ndarray, candidates: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` best candidates per cell by sub-cell LAB distance, best first (-1 = none)."""
    keep = min(keep, candidates.shape[1])
    ranked = np.full((len(candidates), keep), -1, dtype=np.int64)
    chunk = _chunk(candidates.shape[1] * features.shape[1] * 8)
    for lo in range(0, len(candidates), chunk):
        sl = slice(lo, lo + chunk)
        cand = candidates[sl]
        diff = features[np.maximum(cand, 0)] - cell_features[sl][:, None, :]
        dist = np.einsum("ijk,ijk->ij", diff, diff)
        dist[cand < 0] = np.inf
        if keep < cand.shape[1]:
            part = np.argpartition(dist, keep - 1, axis=1)[:, :keep]
        else:
            part = np.broadcast_to(np.arange(cand.shape[1]), cand.shape)
        best = np.take_along_axis(part, np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable"), axis=1)
        chosen = np.take_along_axis(cand, best, axis=1)
        ranked[sl] = np.where(np.isfinite(np.take_along_axis(dist, best, axis=1)), chosen, -1)
    return ranked


def _blocks(table: TileTable, ranked: np.ndarray):
    """``(cells, union of their shortlisted rows, each entry's index in that union)`` for blocks
    of cells whose ``(block, union)`` products stay within :data:`_CHUNK_BYTES`."""
    budget = _CHUNK_BYTES // 8
    block = max(16, int(min(math.sqrt(budget / max(1, ranked.shape[1])), budget / max(1, len(table)))))
    for lo in range(0, len(ranked), block):
        sl = slice(lo, lo + block)
        used, local = np.unique(np.maximum(ranked[sl], 0), return_inverse=True)
        yield sl, used, local.reshape(-1, ranked.shape[1])


def _split(samples: np.ndarray, detail: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n, d*d*3)`` samples -> their ``q x q`` sub-cell means ``(n, q*q, 3)`` and the samples
    minus the mean of their sub-cell, flattened ``(n, d*d*3)``."""
    n, f = len(samples), detail // q
    blocks = samples.reshape(n, q, f, q, f, 3)
    means = blocks.mean(axis=(2, 4), keepdims=True)
    return means.reshape(n, q * q, 3), (blocks - means).reshape(n, -1)


def corrected_costs(table: TileTable, cells: _Cells, pick, ranked: np.ndarray, options: MosaicOptions) -> np.ndarray:
    """What is left of each cell's difference from each shortlisted tile once the render has
    matched the tile's contrast and shifted its sub-cell colours (``inf`` where ``ranked`` is -1):
    mean squared LAB distance per ``d x d`` sample, the cost of a tile as it will be seen.

    The render scales the tile's deviations from its mean by the gain :func:`.correct.texture_gain`
    gives the pair (computed here the same way, on 4x4 luma samples: the SSIM's own scale), then
    moves each sub-cell's colour ``blend`` of the way to the cell's, at most ``max_correction``.
    So the difference splits exactly into the texture inside the sub-cells, ``|C - g T|^2`` with
    both centred on their sub-cell means (``|C|^2 + g^2 |T|^2 - 2 g C.T``, the dot products of a
    block of cells against the union of their shortlisted tiles as one matrix product), plus each
    sub-cell's colour error the correction cannot remove, ``max(|D| (1 - blend), |D| - budget)^2``
    with ``D`` the LAB distance between the cell's sub-cell colour and the tile's after the gain
    (CIEDE2000 is rarely larger), plus :data:`COLOUR_WEIGHT` ``|D|^2``.  A tile whose colours are
    a few units off but whose pattern is the cell's costs less than a flat tile of the exact
    colour.  Only the tiles on some shortlist have their ``d x d`` LAB computed (once per table),
    so the cost follows the shortlists, not the library's size.
    """
    d, s = options.detail, table.subcells
    q = s if d % s == 0 else 1
    per_sub = (d // q) ** 2
    shifting = options.blend > 0 and options.max_correction > 0
    keep = (1.0 - options.blend) if shifting else 1.0
    budget = options.max_correction if shifting else 0.0
    cell_means, cell_tex = _split(cells.detail[pick].astype(np.float32), d, q)
    if options.contrast:
        cell_luma = luma_texture(cells.structure[pick], s).astype(np.float32)
    costs = np.empty(ranked.shape, dtype=np.float32)
    for sl, used, local in _blocks(table, ranked):
        means, tex = _split(table.detail_lab(d, used), d, q)
        c_tex = cell_tex[sl]
        rows = np.arange(len(c_tex))[:, None]
        dots = (c_tex @ tex.T)[rows, local]  # (block, k)
        if options.contrast:
            luma = table.memo(("luma", s), STRUCTURE_SAMPLES ** 2, used, lambda todo: luma_texture(
                table.detail_rgb(STRUCTURE_SAMPLES, todo), s))
            gain = texture_gain((cell_luma[sl] @ luma.T)[rows, local], (luma * luma).sum(axis=1)[local], luma.shape[1])
        else:
            gain = np.ones(local.shape, dtype=np.float32)
        texture = (c_tex * c_tex).sum(axis=1)[:, None] + gain ** 2 * (tex * tex).sum(axis=1)[local] - 2 * gain * dots
        mean = means.mean(axis=1)[local][:, :, None, :]  # (block, k, 1, 3)
        gained = mean + gain[:, :, None, None] * (means[local] - mean)  # (block, k, q*q, 3)
        dist = np.sqrt(((cell_means[sl][:, None] - gained) ** 2).sum(axis=-1))
        left = np.maximum(dist * keep, dist - budget)
        costs[sl] = (np.maximum(texture, 0) + per_sub * (left * left + COLOUR_WEIGHT * dist * dist).sum(axis=-1)) / (d * d)
    costs[ranked < 0] = np.inf
    return costs


def sort_by_cost(ranked: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's shortlist reordered cheapest first (stable, so ties keep the colour order)."""
    order = np.argsort(costs, axis=1, kind="stable")
    return np.take_along_axis(ranked, order, axis=1), np.take_along_axis(costs, order, axis=1)


def place_tiles(ranked: np.ndarray, rows: int, cols: int, radius: int) -> np.ndarray:
    """The repetition constraint, the one per-cell loop: no tile twice within ``radius`` cells."""
    if radius == 0:
        return ranked[:, 0].reshape(rows, cols).copy()
    grid = np.full((rows, cols), -1, dtype=np.int64)
    for r in range(rows):
        top = max(0, r - radius)
        choices = ranked[r * cols:(r + 1) * cols].tolist()  # one row of cells as Python ints at a time
        for c in range(cols):
            used = set(grid[top:r + 1, max(0, c - radius):c + radius + 1].ravel().tolist())
            for tile in choices[c]:
                if tile not in used and tile >= 0:
                    grid[r, c] = tile
                    break
            else:  # cannot happen when the candidate lists are long enough; kept as a guard
                raise LibraryError(f"no tile left for cell ({r}, {c}) within radius {radius}")
    return grid


# ============================================================================ plan
@dataclass
class MosaicPlan:
    """Which tile goes where, and what the render needs."""

    layout: Layout
    table: TileTable
    grid: np.ndarray  # (rows, cols) indices into ``table``
    target_rgb: np.ndarray  # (rows*s, cols*s, 3) float32 sub-cell colours of the target
    options: MosaicOptions
    fallback_cells: int  # cells whose own bucket is empty
    reference: np.ndarray | None = None  # (rows*4, cols*4, 3) float32 target samples for the fidelity figures
    seconds: dict = field(default_factory=dict)
    overlay_source: Image.Image | None = None  # the cropped input `--overlay` blends over the render

    @property
    def tile_ids(self) -> np.ndarray:
        """``(rows, cols)`` tile ids: what tests and callers inspect."""
        return self.table.id_bytes[self.grid].astype(str)

    @property
    def bucket_grid(self) -> np.ndarray:
        return self.table.bucket_ids[self.grid]

    @property
    def output_size(self) -> tuple[int, int]:
        return self.layout.output_size

    @property
    def most_uses(self) -> int:
        """How often the most used tile appears."""
        return int(np.bincount(self.grid.ravel()).max())


class _Cells:
    """What matching needs of the target, per cell, flattened in raster order."""

    def __init__(self, samples: dict[int, np.ndarray], layout: Layout, s: int, detail: int) -> None:
        rows, cols = layout.rows, layout.cols
        sub = samples[s].astype(np.float64).reshape(rows, s, cols, s, 3)
        self.lab = rgb_to_lab(sub.mean(axis=(1, 3)).reshape(-1, 3))
        self.features = rgb_to_lab(sub.transpose(0, 2, 1, 3, 4)).reshape(rows * cols, -1)
        n = STRUCTURE_SAMPLES
        self.structure = samples[n].reshape(rows, n, cols, n, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, n, n, 3)
        self.detail = None
        if detail:  # LAB of d x d samples a cell, a band of rows at a time (float64 temporaries stay small)
            fine = samples[detail].reshape(rows, detail, cols, detail, 3).transpose(0, 2, 1, 3, 4)
            self.detail = np.empty((rows * cols, detail * detail * 3), dtype=np.float32)
            step = max(1, _chunk(cols * detail * detail * 3 * 8 * 8) // max(1, cols))
            for r in range(0, rows, step):
                part = rgb_to_lab(fine[r:r + step].astype(np.float64))
                self.detail[r * cols:(r + step) * cols] = part.reshape(-1, detail * detail * 3)


def spread_pick(ranked: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Each row's ``n`` best entries plus ``n`` more spread evenly over the rest of its ranking,
    from a different random offset per row.

    Cells of a flat region rank the same tiles in nearly the same order; a fair assignment
    needs their lists together to hold as many tiles as they are cells, not each list to hold
    them all.  Evenly spread picks from shifted offsets do that with ``2n`` entries a cell
    instead of the whole ranking.
    """
    rest = ranked.shape[1] - n
    stride = rest / n
    offsets = np.random.default_rng(seed).uniform(0, stride, len(ranked))
    picks = n + np.minimum(rest - 1, (offsets[:, None] + stride * np.arange(n)[None]).astype(np.int64))
    return np.concatenate([ranked[:, :n], np.take_along_axis(ranked, picks, axis=1)], axis=1)


def nearest_tiles(table: TileTable, features: np.ndarray, k: int, free: np.ndarray) -> np.ndarray:
    """``(cells, k)`` table rows: each cell's ``k`` nearest tiles by sub-cell LAB among those where
    ``free`` is True, nearest first (exact either way).

    A KD-tree over those tiles for short rankings (it wins by far on 100,000 tiles); brute force
    as matrix products (``|t|^2 - 2 c.t`` per block of cells, BLAS) and a partial sort for the
    wide rankings the fair assignment's later rounds ask for (hundreds of tiles a cell), where
    a KD-tree in these 12+ dimensions visits nearly every tile anyway and is several times slower.
    """
    rows = np.flatnonzero(free)
    k = min(k, len(rows))
    tiles = table.features[rows]
    if k <= KD_TREE_K:
        from scipy.spatial import cKDTree  # imported on use: the store imports this package

        _dist, idx = cKDTree(tiles).query(features, k)
        return rows[np.asarray(idx).reshape(len(features), k)]
    norms = (tiles * tiles).sum(axis=1)
    out = np.empty((len(features), k), dtype=np.int64)
    chunk = _chunk(len(rows) * 8 * 2)
    for lo in range(0, len(features), chunk):
        dist = norms[None, :] - 2.0 * (features[lo:lo + chunk] @ tiles.T)  # |c|^2 left out: same per row
        part = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < len(rows) else \
            np.broadcast_to(np.arange(len(rows)), dist.shape)
        order = np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable")
        out[lo:lo + chunk] = rows[np.take_along_axis(part, order, axis=1)]
    return out


class TilePool:
    """The tiles a plan draws from, and how a synthetic tile is kept from beating a real one.

    A synthetic tile (``synthesize``: a real tile's texture recoloured) fills a colour no real tile
    has, but it borrows its texture, so it must earn its place: every cell's candidates are
    drawn from the real tiles as well as from all of them (so the best real tiles are always
    compared, even where synthetic buckets lie nearer), and a synthetic tile's cost is
    ``cost * SYNTHETIC_MARGIN + SYNTHETIC_FLOOR``: it is chosen only where it fits the cell
    better than the real tiles by that margin, and at equal cost the real tile wins.
    """

    def __init__(self, table: TileTable, centroids: np.ndarray, synthetic: np.ndarray | None = None) -> None:
        self.table = table
        counts, order, _starts = table.by_bucket
        self.index = PopulatedIndex(centroids, counts)
        self.synthetic = synthetic if synthetic is not None and synthetic.any() and (~synthetic).any() else None
        if self.synthetic is not None:
            real = ~self.synthetic
            real_counts = np.bincount(table.bucket_ids[real], minlength=len(counts))
            self.real_buckets = (real_counts, order[real[order]], np.concatenate([[0], np.cumsum(real_counts)[:-1]]))
            self.real_index = PopulatedIndex(centroids, real_counts)
        self.only_real = False  # draw from the real tiles alone (the comparison plan)
        self.forbid: np.ndarray | None = None  # (cells,) True: no synthetic tile for that cell

    def restricted(self, only_real: bool = False, forbid: np.ndarray | None = None) -> TilePool:
        """The same pool drawing from real tiles only, or refusing synthetic tiles to the cells of
        ``forbid``."""
        pool = copy.copy(self)
        pool.only_real, pool.forbid = only_real, forbid
        return pool

    @property
    def real_count(self) -> int:
        return len(self.table) if self.synthetic is None else int((~self.synthetic).sum())

    def candidates(self, cell_lab: np.ndarray, features: np.ndarray, minimum: int, keep: int) -> np.ndarray:
        """Each cell's best ``keep`` by sub-cell colour among its nearest buckets' tiles (and as
        many among the nearest real buckets' when the pool holds synthetic tiles)."""
        table = self.table
        if self.synthetic is None:
            return rank_candidates(table.features, features, candidate_tiles(table, self.index, cell_lab, minimum), keep)
        real = rank_candidates(table.features, features, candidate_tiles(
            table, self.real_index, cell_lab, minimum, self.real_buckets), keep)
        if self.only_real:
            return real
        ranked = rank_candidates(table.features, features, candidate_tiles(table, self.index, cell_lab, minimum), keep)
        return unique_rows(np.concatenate([ranked, real], axis=1))

    def nearest(self, features: np.ndarray, k: int, free: np.ndarray) -> np.ndarray:
        """Each cell's ``k`` nearest tiles by sub-cell colour among the ``free`` ones (and the
        ``k / REAL_SHARE`` nearest real ones among them when the pool holds synthetic tiles)."""
        if self.synthetic is not None and self.only_real:
            return nearest_tiles(self.table, features, k, free & ~self.synthetic)
        ranked = nearest_tiles(self.table, features, k, free)
        if self.synthetic is None or not (free & ~self.synthetic).any():
            return ranked
        real = nearest_tiles(self.table, features, max(1, k // REAL_SHARE), free & ~self.synthetic)
        return unique_rows(np.concatenate([ranked, real], axis=1))

    def handicap(self, ranked: np.ndarray, costs: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """``costs`` of cells ``cells`` with every synthetic candidate's raised by the margin, and
        made infinite in the forbidden cells (in place)."""
        if self.synthetic is not None:
            fake = self.synthetic[np.maximum(ranked, 0)] & (ranked >= 0)
            costs[fake] = costs[fake] * SYNTHETIC_MARGIN + SYNTHETIC_FLOOR
            if self.forbid is not None:
                costs[fake & self.forbid[cells][:, None]] = np.inf
        return costs

    def best(self, ranked: np.ndarray, costs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted lists cut to each cell's ``n`` cheapest entries, plus its ``n`` cheapest real ones
        when the pool holds synthetic tiles (so a plan without them is still possible), in order."""
        kept = np.zeros(ranked.shape, dtype=bool)
        kept[:, :n] = True
        if self.synthetic is not None:
            real = ~self.synthetic[np.maximum(ranked, 0)] & (ranked >= 0)
            kept |= real & (np.cumsum(real, axis=1) <= n)
        kept &= ranked >= 0
        order = np.argsort(~kept, axis=1, kind="stable")[:, :max(1, int(kept.sum(axis=1).max()))]
        cut = np.take_along_axis(kept, order, axis=1)
        return (np.where(cut, np.take_along_axis(ranked, order, axis=1), -1),
                np.where(cut, np.take_along_axis(costs, order, axis=1), np.inf))

    def library_order(self, features: np.ndarray, cell_features: np.ndarray) -> np.ndarray:
        """Every tile the pool may give, nearest to ``cell_features`` first (the fair assignment's
        last resort)."""
        dist = ((features - cell_features) ** 2).sum(axis=1)
        if self.synthetic is not None and self.only_real:
            return np.flatnonzero(~self.synthetic)[np.argsort(dist[~self.synthetic], kind="stable")]
        return np.argsort(dist, kind="stable")


def unique_rows(ranked: np.ndarray) -> np.ndarray:
    """Each row's entries once (-1 for the repeats and the padding, which sort last): two lists
    of one cell merged must not hold a tile twice (the assignment would count that edge twice)."""
    out = np.sort(ranked, axis=1)
    repeat = np.zeros(out.shape, dtype=bool)
    repeat[:, 1:] = out[:, 1:] == out[:, :-1]
    out[repeat] = -1
    return -np.sort(-out, axis=1)  # valid rows first (descending), -1 padding last


def synthetic_rows(lib: Library, table: TileTable) -> np.ndarray | None:
    """``(n,)`` True for the table's synthetic tiles (None when the library has none)."""
    if not has_synthetic_flag(lib.conn):
        return None
    ids = [row[0].encode("ascii") for row in lib.conn.execute("SELECT id FROM tiles WHERE synthetic = 1")
           if is_tile_id(row[0])]
    if not ids:
        return None
    return np.isin(table.id_bytes, np.array(ids, dtype=table.id_bytes.dtype))


def shortlists(pool: TilePool, cells: _Cells, options: MosaicOptions,
               minimum: int, subset: np.ndarray | None = None, spread: int | None = None,
               free: np.ndarray | None = None, best: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's candidates (of ``subset``, or all cells), best first, and their costs: the one
    place candidates are chosen, for the greedy placement and the fair assignment alike.

    Candidates are the tiles of the cells' nearest populated buckets (whole buckets until
    ``minimum`` tiles, the best ``options.shortlist`` by sub-cell colour kept), or with ``free``
    (a mask over the table) the ``minimum`` nearest of those tiles by sub-cell colour; with
    ``spread``, a :func:`spread_pick` of them.  They are then ordered by what the cell will look
    like once the tile is corrected (:func:`corrected_costs`) when ``options.detail`` is set,
    else by the sub-cell distance itself; synthetic tiles carry the pool's handicap.  With
    ``best``, only each cell's ``best`` cheapest are returned (and as many real ones), computed a
    block of cells at a time: what a greedy placement can use, in memory that does not grow with
    the candidates."""
    index = np.arange(len(cells.lab))[slice(None) if subset is None else subset]
    if free is None and best is not None and len(index) > CANDIDATE_BLOCK:
        parts = [shortlists(pool, cells, options, minimum, index[lo:lo + CANDIDATE_BLOCK], spread, None, best)
                 for lo in range(0, len(index), CANDIDATE_BLOCK)]
        return _stack([p[0] for p in parts], -1), _stack([p[1] for p in parts], np.inf)
    table = pool.table
    lab, features = cells.lab[index], cells.features[index]
    if free is None:  # a block of cells at a time: a full bucket can give every cell 1,000+ candidates
        keep = max(options.shortlist, minimum)
        ranked = _stack([pool.candidates(lab[lo:lo + CANDIDATE_BLOCK], features[lo:lo + CANDIDATE_BLOCK], minimum, keep)
                         for lo in range(0, len(lab), CANDIDATE_BLOCK)], -1)
    else:
        ranked = pool.nearest(features, minimum, free)
    if spread is not None and ranked.shape[1] > 2 * spread:
        ranked = spread_pick(ranked, spread)
    if options.detail:
        costs = corrected_costs(table, cells, index, ranked, options)
    else:
        diff = table.features[np.maximum(ranked, 0)] - features[:, None, :]
        costs = np.einsum("ijk,ijk->ij", diff, diff) / table.subcells ** 2
        costs[ranked < 0] = np.inf
    ranked, costs = sort_by_cost(ranked, pool.handicap(ranked, costs, index))
    return (ranked, costs) if best is None else pool.best(ranked, costs, best)


def _stack(parts: list[np.ndarray], fill) -> np.ndarray:
    """Row blocks of different widths as one array, padded with ``fill``."""
    width = max(part.shape[1] for part in parts)
    return np.concatenate([np.pad(part, ((0, 0), (0, width - part.shape[1])), constant_values=fill)
                           for part in parts])


class Chooser:
    """Chooses a tile for every cell from a pool: the greedy placement over each cell's shortlist,
    or the fair assignment.  The greedy shortlists are computed once and kept, so the plans the
    synthetic-tile guard compares (real tiles only, synthetic tiles refused to some cells) are the
    same lists with entries struck out, not new searches."""

    def __init__(self, pool: TilePool, cells: _Cells, options: MosaicOptions, layout: Layout, minimum: int,
                 need: int) -> None:
        self.pool, self.cells, self.options, self.layout, self.minimum = pool, cells, options, layout, minimum
        self.need = need  # distinct tiles a cell may need to skip (the repetition radius's window)
        self.lists: tuple[np.ndarray, np.ndarray] | None = None

    def grid(self, only_real: bool = False, forbid: np.ndarray | None = None) -> np.ndarray:
        """``(rows, cols)`` table rows; ``only_real``: no synthetic tile anywhere; ``forbid``: none
        in those cells."""
        pool, options, rows, cols = self.pool, self.options, self.layout.rows, self.layout.cols
        if options.max_uses is None:
            if self.lists is None:
                self.lists = shortlists(pool, self.cells, options, self.minimum, best=max(PLACE_KEEP, 2 * self.need))
            ranked, costs = self.lists
            if pool.synthetic is not None and (only_real or forbid is not None):
                struck = pool.synthetic[np.maximum(ranked, 0)] & (ranked >= 0)
                if not only_real:
                    struck &= forbid[:, None]
                ranked, costs = sort_by_cost(np.where(struck, -1, ranked), np.where(struck, np.inf, costs))
            return place_tiles(ranked, rows, cols, options.no_repeat_radius)
        pool = pool.restricted(only_real, forbid) if only_real or forbid is not None else pool
        cells = self.cells

        def library_order(cell: int) -> np.ndarray:
            return pool.library_order(pool.table.features, cells.features[cell])

        def fair_shortlist(k: int, subset: np.ndarray | None, free: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            return shortlists(pool, cells, options, k, subset, None if subset is None else self.minimum, free)

        return fair_grid(fair_shortlist, self.minimum, len(pool.table),
                         rows, cols, options.max_uses, options.no_repeat_radius, library_order)


def cell_errors(reference: np.ndarray, preview: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell ``(rows * cols,)``: mean CIEDE2000 of its 2x2 colour samples and squared luma error
    of its 4x4 structure samples, between the target's samples and a plan's preview."""
    from skimage.color import deltaE_ciede2000  # imported on use: the store imports this package

    n, c = STRUCTURE_SAMPLES, COLOUR_SAMPLES
    f = n // c

    def colour(x: np.ndarray) -> np.ndarray:
        return rgb_to_lab(x.reshape(rows * c, f, cols * c, f, 3).mean(axis=(1, 3)))

    delta = deltaE_ciede2000(colour(reference), colour(preview)).reshape(rows, c, cols, c).mean(axis=(1, 3))
    luma = (((reference - preview) @ LUMA) ** 2).reshape(rows, n, cols, n).sum(axis=(1, 3))
    return delta.ravel(), luma.ravel()


def guard_synthetic(chooser: Chooser, grid: np.ndarray, samples: dict) -> np.ndarray:
    """``grid`` with synthetic tiles kept only where they make the mosaic better than real tiles.

    The cost model predicts, the figures decide: the plan from real tiles alone is made too, and
    both are previewed (:func:`.correct.preview_samples`: the fidelity samples of the render,
    within 0.02 of the rendered figures).  A cell keeps its synthetic tile only where its
    colour and its structure both come out at least as close as the real plan's there; the
    others are planned again with synthetic tiles refused.  Unless the result then beats the real
    plan on both figures by :data:`GUARD_MARGIN`, the real plan is used (exactly ``--real-only``'s):
    the default is never worse than ``--real-only``.
    """
    pool, options, layout = chooser.pool, chooser.options, chooser.layout
    reference = samples[STRUCTURE_SAMPLES].astype(np.float64)
    rows, cols = layout.rows, layout.cols

    def preview(g: np.ndarray) -> np.ndarray:
        return preview_samples(MosaicPlan(layout, pool.table, g, samples[pool.table.subcells], options, 0, reference))

    real_grid = chooser.grid(only_real=True)
    real_preview = preview(real_grid)
    real_colour, real_luma = cell_errors(reference, real_preview, rows, cols)
    colour, luma = cell_errors(reference, preview(grid), rows, cols)
    worse = pool.synthetic[grid.ravel()] & ((colour > real_colour) | (luma > real_luma))
    if worse.any():
        logger.info("mosaic: %d cells refuse the synthetic tile that fitted them worse than real ones", int(worse.sum()))
        grid = chooser.grid(forbid=worse)
    mixed, real = compare_samples(reference, preview(grid)), compare_samples(reference, real_preview)
    if mixed.delta_e > real.delta_e - GUARD_MARGIN or mixed.ssim < real.ssim + GUARD_MARGIN:
        logger.info("mosaic: synthetic tiles left out (with them %s; real tiles alone %s)", mixed, real)
        return real_grid
    return grid


def plan_mosaic(lib: Library, target: str | os.PathLike | Image.Image, options: MosaicOptions | None = None,
                progress: bool | None = None, table: TileTable | None = None) -> MosaicPlan:
    """Lay out the cells of ``target`` and choose a tile for each.

    Tile files are read only to build, extend or spot-check the thumbnail cache.
    """
    options = (options or MosaicOptions()).validate()
    started = time.perf_counter()
    img = open_target(target)
    s, detail = options.subcells, options.detail
    try:
        layout = Layout(*displayed_size(img), options)
        if layout.output_size[0] * layout.output_size[1] > MAX_DZI_PIXELS:
            raise UsageError(f"output would be {layout.output_size[0]}x{layout.output_size[1]} pixels: use a smaller "
                             "--tile-size or larger cells")
        samples = target_samples(img, layout, tuple(n for n in (s, detail, STRUCTURE_SAMPLES) if n),
                                 overlay=options.overlay > 0)
    finally:
        if img is not target:  # opened here from a path: release the file
            img.close()
    t_target = time.perf_counter()
    # --real-only reads the synthetic tiles too and strikes them from the same candidate lists, so
    # its plan is exactly the one the default falls back to when synthetic tiles do not help.
    table = table if table is not None and table.subcells == s else load_tile_table(lib, s, options.threads, progress)
    t_table = time.perf_counter()
    synthetic = synthetic_rows(lib, table)
    if options.real_only and synthetic is not None and synthetic.all():
        raise LibraryError(f"{lib.root} holds no real tiles (only synthetic ones): harvest or ingest some, "
                           "or leave out --real-only")
    pool = TilePool(table, lib.centroids, synthetic)
    usable = pool.real_count if options.real_only else len(table)
    need = required_tiles(options.no_repeat_radius)
    if need > usable:
        raise UsageError(f"--no-repeat-radius {options.no_repeat_radius} needs at least {need} tiles, the library "
                         f"has {usable}: use a smaller radius")
    rows, cols = layout.rows, layout.cols
    if options.max_uses is not None and options.max_uses * usable < rows * cols:
        raise UsageError(f"--max-uses {options.max_uses} with {usable} tiles fills at most "
                         f"{options.max_uses * usable} cells, the mosaic has {rows * cols}: allow more uses or "
                         "use fewer cells")
    cells = _Cells(samples, layout, s, detail)
    counts = pool.real_buckets[0] if options.real_only and pool.synthetic is not None else table.by_bucket[0]
    own_bucket = lib.index.assign_lab(cells.lab)[0]
    fallback = int((counts[own_bucket] == 0).sum())
    chooser = Chooser(pool, cells, options, layout, max(options.min_candidates, need), need)
    if options.real_only:
        grid = chooser.grid(only_real=True)
    else:
        grid = chooser.grid()
        if pool.synthetic is not None and pool.synthetic[grid].any() and pool.real_count >= need and (
                options.max_uses is None or options.max_uses * pool.real_count >= rows * cols):
            grid = guard_synthetic(chooser, grid, samples)
    done = time.perf_counter()
    seconds = {"target": t_target - started, "tiles": t_table - t_target, "match": done - t_table}
    return MosaicPlan(layout, table, grid, samples[s], options, fallback, samples[STRUCTURE_SAMPLES], seconds,
                      samples.get(0))
