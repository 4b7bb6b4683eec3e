"""Fair assignment: every tile at most ``max_uses`` times, the total cost as low as possible.

The greedy placement lets the best tile of a region win every cell it can (outside the
repetition radius), so a sky may be drawn with the same dozen tiles.  Capping the uses turns
the choice into an assignment problem: cells on one side, ``max_uses`` copies of each tile on
the other, an edge for every shortlisted (cell, tile) pair weighted by its cost.  Only the
shortlists are edges - a sparse matrix of ``cells x k`` entries, never the dense ``cells x
tiles`` one - solved exactly by ``scipy.sparse.csgraph.min_weight_full_bipartite_matching``
(LAPJVsp).  When the shortlists are too narrow for every cell to get a tile (a large flat
area wants more distinct tiles than its cells' shortlists hold together), a maximum matching
(Hopcroft-Karp) names the cells left over, and only they draw candidates from four times as many
nearest tiles, until every cell can have a tile (their lists keep their best entries plus as
many spread over the wider ranking, so a flat region of N cells costs about N lists of a
fixed length, not N lists of N).

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

from ..errors import LibraryError

logger = logging.getLogger(__name__)

WIDEN = 4  # the cells left over draw from this many times as many nearest tiles per round


class NoFullMatching(Exception):
    """The shortlists cannot give every cell its own tile copy."""


def _graph(ranked: np.ndarray, costs: np.ndarray, max_uses: int):
    """The sparse ``cells x tile copies`` cost matrix of the shortlisted pairs, and each column's tile."""
    from scipy.sparse import csr_array  # imported on use: the store imports this package

    n_cells, k = ranked.shape
    valid = ((ranked >= 0) & np.isfinite(costs)).ravel()
    cell_of = np.repeat(np.arange(n_cells), k)[valid]
    tile_of = ranked.ravel()[valid]
    cost_of = costs.ravel()[valid]
    tiles, local = np.unique(tile_of, return_inverse=True)
    # A tile needs no more copies than the cells that shortlist it.
    copies = np.minimum(max_uses, np.bincount(local, minlength=len(tiles)))
    first = np.concatenate([[0], np.cumsum(copies)[:-1]]).astype(np.int64)
    reps = copies[local]
    edge = np.repeat(np.arange(len(local)), reps)
    copy_no = np.arange(len(edge)) - np.repeat(np.cumsum(reps) - reps, reps)
    columns = first[local[edge]] + copy_no
    # Weights must be non-zero: shift every cost by one (the optimum does not move).
    weights = cost_of[edge] - (cost_of.min() if len(cost_of) else 0.0) + 1.0
    graph = csr_array((weights, (cell_of[edge], columns)), shape=(n_cells, int(copies.sum())))
    return graph, np.repeat(tiles, copies)


def unmatched_cells(ranked: np.ndarray, costs: np.ndarray, max_uses: int) -> np.ndarray:
    """Cells a maximum matching of the shortlists leaves without a tile (Hopcroft-Karp: fast)."""
    from scipy.sparse.csgraph import maximum_bipartite_matching

    graph, _owner = _graph(ranked, costs, max_uses)
    if graph.shape[1] == 0:
        return np.arange(len(ranked))
    return np.flatnonzero(maximum_bipartite_matching(graph, perm_type="column") < 0)


def match_with_uses(ranked: np.ndarray, costs: np.ndarray, max_uses: int) -> np.ndarray:
    """The cheapest tile for each cell (``(cells,)`` table rows) with no tile used more than
    ``max_uses`` times, over the shortlisted pairs only (``ranked`` -1 or ``costs`` inf: no edge).

    Raises :class:`NoFullMatching` when the shortlists cannot cover every cell.
    """
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    graph, owner = _graph(ranked, costs, max_uses)
    if graph.shape[1] < len(ranked):
        raise NoFullMatching
    try:
        rows, cols = min_weight_full_bipartite_matching(graph)
    except ValueError:
        raise NoFullMatching from None
    if len(rows) != len(ranked):
        raise NoFullMatching
    out = np.empty(len(ranked), dtype=np.int64)
    out[rows] = owner[cols]
    return out


def _merge(ranked: np.ndarray, costs: np.ndarray, cells: np.ndarray, wider: np.ndarray,
           wider_costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace the shortlists of ``cells`` by wider ones (the others padded with no-edge slots)."""
    width = max(ranked.shape[1], wider.shape[1])
    out = np.full((len(ranked), width), -1, dtype=np.int64)
    out_costs = np.full((len(ranked), width), np.inf)
    out[:, :ranked.shape[1]], out_costs[:, :ranked.shape[1]] = ranked, costs
    out[cells], out_costs[cells] = -1, np.inf
    out[cells, :wider.shape[1]], out_costs[cells, :wider.shape[1]] = wider, wider_costs
    return out, out_costs


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


def fair_grid(shortlist: Callable[[int, np.ndarray | None], tuple[np.ndarray, np.ndarray]], k: int, n_tiles: int,
              rows: int, cols: int, max_uses: int, radius: int,
              library_order: Callable[[int], np.ndarray]) -> np.ndarray:
    """``(rows, cols)`` table rows: the cheapest assignment with at most ``max_uses`` uses per tile.

    ``shortlist(k, cells)`` gives the ranked tiles and costs of candidates for the given cells
    (None: all) drawn from their ``k`` nearest.  Every cell starts with ``k``; the cells a
    maximum matching leaves without a tile get candidates from :data:`WIDEN` times as many,
    until every cell can have one, so only the crowded parts of the picture (a large flat sky)
    pay for it.  The repetition radius is restored afterwards.
    """
    ranked, costs = shortlist(k, None)
    while len(short := unmatched_cells(ranked, costs, max_uses)):
        if k >= n_tiles:  # every tile on every shortlist: only a too small library fails here
            raise LibraryError(f"no assignment gives {rows * cols} cells a tile with --max-uses {max_uses}")
        k = min(n_tiles, k * WIDEN)
        logger.info("fair assignment: %d cells get shortlists of %d tiles", len(short), k)
        ranked, costs = _merge(ranked, costs, short, *shortlist(k, short))
    grid = match_with_uses(ranked, costs, max_uses).reshape(rows, cols)
    if radius and max_uses > 1:
        moved = repair_radius(grid, ranked, max_uses, radius, library_order)
        logger.info("fair assignment: %d cells moved to honour the repetition radius", moved)
    return grid
