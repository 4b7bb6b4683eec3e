"""Fair assignment: every tile at most ``max_uses`` times, the total cost as low as possible.

The greedy placement lets the best tile of a region win every cell it can (outside the
repetition radius), so a sky may be drawn with the same dozen tiles.  Capping the uses turns
the choice into an assignment problem: cells on one side, ``max_uses`` copies of each tile on
the other, an edge for every shortlisted (cell, tile) pair weighted by its cost.  Only the
shortlists are edges - a sparse matrix of ``cells x k`` entries, never the dense ``cells x
tiles`` one - solved exactly by ``scipy.sparse.csgraph.min_weight_full_bipartite_matching``
(LAPJVsp).  Every cell also has a private "not here" column of prohibitive cost, so the
solver always finds a full matching: it gives as many cells as the shortlists can a tile, at
the lowest cost among such matchings, and names the rest.

When the shortlists are too narrow for every cell (a large flat area wants more distinct
tiles than its cells' shortlists hold together), only the cells left over go round again,
drawing candidates from the tiles with uses left (a KD-tree over their sub-cell colours,
:func:`~builder.mosaic.match.shortlists`), twice as many nearest ones whenever a round
placed fewer than half of them (their lists keep their best entries plus as many spread over
the wider ranking, so a flat region of N cells costs about N lists of a fixed length, not N
lists of N).  Each round is exact over its lists; the rounds together are not the global
optimum of the widest lists, which would cost several times as much: a cell of round two
takes the best tile round one left, as a painter would.

The repetition radius is a constraint between neighbouring cells that an assignment cannot
express.  With ``max_uses == 1`` it holds by construction; otherwise one raster pass moves a
cell whose tile repeats within the radius of an earlier cell to its best shortlisted tile
that is neither nearby nor used up (or, failing that, the best such tile of the library).

>>> import numpy as np
>>> ranked = np.array([[0, 1], [0, 1]]); costs = np.array([[1.0, 2.0], [1.0, 5.0]])
>>> match_with_uses(ranked, costs, 1).tolist()  # the second cell needs tile 0 more
[1, 0]
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ..core.errors import LibraryError

logger = logging.getLogger(__name__)

WIDEN = 2  # a round that places fewer than half its cells draws from this many times as many tiles next


class NoFullMatching(Exception):
    """The shortlists cannot give every cell its own tile copy."""


def match_some(ranked: np.ndarray, costs: np.ndarray, capacity: np.ndarray | int) -> np.ndarray:
    """The cheapest matching of as many cells as possible to shortlisted tiles, each tile ``t``
    at most ``capacity[t]`` times (``ranked`` -1 or ``costs`` inf: no edge).  Returns ``(cells,)``
    table rows, -1 for a cell left without a tile.

    One LAPJVsp call: besides the tile copies, every cell has its own "none" column costing more
    than any matching of real edges could save, so a full matching always exists and the
    optimum leaves the fewest cells out, then costs the least.
    """
    from scipy.sparse import csr_array  # imported on use: only a fair assignment pays for scipy.sparse
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    n_cells, k = ranked.shape
    out = np.full(n_cells, -1, dtype=np.int64)
    valid = (ranked >= 0) & np.isfinite(costs)
    if np.ndim(capacity):
        valid &= np.asarray(capacity)[np.maximum(ranked, 0)] > 0
    valid = valid.ravel()
    if not valid.any():
        return out
    cell_of = np.repeat(np.arange(n_cells), k)[valid]
    tile_of = ranked.ravel()[valid]
    cost_of = costs.ravel()[valid]
    tiles, local = np.unique(tile_of, return_inverse=True)
    cap = np.asarray(capacity)[tiles] if np.ndim(capacity) else np.full(len(tiles), int(capacity))
    # A tile needs no more copies than the cells that shortlist it.
    copies = np.minimum(cap, np.bincount(local, minlength=len(tiles)))
    first = np.concatenate([[0], np.cumsum(copies)[:-1]]).astype(np.int64)
    reps = copies[local]
    edge = np.repeat(np.arange(len(local)), reps)
    copy_no = np.arange(len(edge)) - np.repeat(np.cumsum(reps) - reps, reps)
    columns = first[local[edge]] + copy_no
    # Weights must be non-zero: costs shifted into 1 .. span + 1 (the optimum does not move).
    weights = cost_of[edge] - cost_of.min() + 1.0
    none = (float(weights.max()) + 1.0) * (n_cells + 1)  # more than any real matching costs
    n_copies = int(copies.sum())
    graph = csr_array((np.concatenate([weights, np.full(n_cells, none)]),
                       (np.concatenate([cell_of[edge], np.arange(n_cells)]),
                        np.concatenate([columns, n_copies + np.arange(n_cells)]))),
                      shape=(n_cells, n_copies + n_cells))
    rows, cols = min_weight_full_bipartite_matching(graph)
    owner = np.repeat(tiles, copies)
    real = cols < n_copies
    out[rows[real]] = owner[cols[real]]
    return out


def match_with_uses(ranked: np.ndarray, costs: np.ndarray, max_uses: int) -> np.ndarray:
    """The cheapest tile for each cell (``(cells,)`` table rows) with no tile used more than
    ``max_uses`` times, over the shortlisted pairs only (``ranked`` -1 or ``costs`` inf: no edge).

    Raises :class:`NoFullMatching` when the shortlists cannot cover every cell.
    """
    out = match_some(ranked, costs, max_uses)
    if (out < 0).any():
        raise NoFullMatching
    return out


def repair_radius(grid: np.ndarray, ranked: np.ndarray, max_uses: int, radius: int,
                  library_order: Callable[[int], np.ndarray]) -> int:
    """Move cells whose tile repeats within ``radius`` of an earlier cell (raster order), in place,
    keeping every tile within ``max_uses``; returns how many cells moved.

    ``library_order(cell)`` ranks every tile of the library for a cell, for the rare cell whose
    shortlist has nothing left.
    """
    rows, cols = grid.shape
    uses = np.bincount(grid.ravel(), minlength=int(grid.max()) + 1).tolist()
    moved = 0
    for r in range(rows):
        top = max(0, r - radius)
        for c in range(cols):
            lo, hi = max(0, c - radius), c + radius + 1
            near = set(grid[top:r, lo:hi].ravel().tolist()) | set(grid[r, lo:c].tolist())
            tile = int(grid[r, c])
            if tile not in near:
                continue
            cell = r * cols + c
            for options in (ranked[cell], library_order(cell)):
                free = [t for t in options.tolist() if t >= 0 and t not in near and (t >= len(uses) or uses[t] < max_uses)]
                if free:
                    break
            else:  # cannot happen: the library holds more copies than the cells and their windows need
                raise LibraryError(f"no tile left for cell ({r}, {c}) within radius {radius} and {max_uses} uses")
            new = free[0]
            if new >= len(uses):
                uses.extend([0] * (new + 1 - len(uses)))
            uses[tile] -= 1
            uses[new] += 1
            grid[r, c] = new
            moved += 1
    return moved


Shortlist = Callable[[int, "np.ndarray | None", "np.ndarray | None"], tuple[np.ndarray, np.ndarray]]


def fair_grid(shortlist: Shortlist, k: int, n_tiles: int, rows: int, cols: int, max_uses: int, radius: int,
              library_order: Callable[[int], np.ndarray]) -> np.ndarray:
    """``(rows, cols)`` table rows: the cheapest assignment with at most ``max_uses`` uses per tile.

    ``shortlist(k, cells, free)`` gives the ranked tiles and costs of candidates for the given
    cells (None: all) drawn from their ``k`` nearest, among the tiles where ``free`` is True
    (None: the cells' buckets).  Every cell starts with its ``k``; the cells a round leaves
    without a tile go again on the tiles with uses left, from twice as many nearest ones when
    fewer than half of them were placed.  The repetition radius is restored afterwards.
    """
    n_cells = rows * cols
    ranked, costs = shortlist(k, None, np.ones(n_tiles, dtype=bool))
    lists = ranked  # what each cell was matched from: the radius repair's first choices
    assigned = np.full(n_cells, -1, dtype=np.int64)
    uses = np.zeros(n_tiles, dtype=np.int64)
    todo = np.arange(n_cells)
    width = k
    while True:
        got = match_some(ranked, costs, max_uses - uses)
        placed = got >= 0
        assigned[todo[placed]] = got[placed]
        uses += np.bincount(got[placed], minlength=n_tiles)
        left = todo[~placed]
        if not len(left):
            break
        free = uses < max_uses
        if not free.any():  # only a too small library fails here (plan_mosaic checks the count first)
            raise LibraryError(f"no assignment gives {n_cells} cells a tile with --max-uses {max_uses}")
        if placed.sum() * 2 < len(todo):
            width = min(int(free.sum()), width * WIDEN)
        logger.info("fair assignment: %d cells go again on %d tiles with uses left (%d nearest)",
                    len(left), int(free.sum()), width)
        ranked, costs = shortlist(width, left, free)
        if radius and max_uses > 1:
            lists = _merge(lists, left, ranked)
        todo = left
    grid = assigned.reshape(rows, cols)
    if radius and max_uses > 1:
        moved = repair_radius(grid, lists, max_uses, radius, library_order)
        logger.info("fair assignment: %d cells moved to honour the repetition radius", moved)
    return grid


def _merge(lists: np.ndarray, cells: np.ndarray, wider: np.ndarray) -> np.ndarray:
    """``lists`` with the rows of ``cells`` replaced by ``wider`` (padded with -1)."""
    width = max(lists.shape[1], wider.shape[1])
    out = np.full((len(lists), width), -1, dtype=np.int64)
    out[:, :lists.shape[1]] = lists
    out[cells] = -1
    out[cells, :wider.shape[1]] = wider
    return out
