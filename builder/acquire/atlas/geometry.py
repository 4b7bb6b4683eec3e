"""Where an atlas reads: which overview tiles cover an area, how many overview pixels make one
harvest-zoom tile, and the name under which the atlas's fetch ledger keeps its books."""

from __future__ import annotations

import random

from ...core.layout import TILE_SIZE
from ...core.plans import Plan
from ..tiles import TileRef, tile_centre, tile_range


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
