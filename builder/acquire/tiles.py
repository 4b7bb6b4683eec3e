"""Tiles of a sampling plan (:mod:`builder.core.plans`): tile maths and a tile sampler.

Weights are relative: a region is drawn with probability ``weight / sum(weights)`` among the
regions that still have tiles. ``"all"`` is the union of both phases with the weights as
written (phase 1 sums to 100, phase 2 to 140, so phase 2 gets 140/240 of the draws): the
card states each phase's weights, not how the phases relate, and keeping the numbers as
written keeps them the single source of truth.

:class:`Sampler` draws tiles without replacement: each region walks a seeded pseudo-random
permutation of its tile range (a Feistel network over the index space), so a tile is never
drawn twice, the draw costs O(1) memory even for the 58 million zoom-15 tiles of the Sahara
box, and a region's exhaustion is exact: a 20-tile region at zoom 15 (or a continent at
zoom 2) ends after its last tile instead of looping on rejections.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import random
import secrets
from collections.abc import Callable, Container
from typing import NamedTuple

import mercantile

from ..core.errors import UsageError
from ..core.layout import MAX_ZOOM, MIN_ZOOM
from ..core.plans import Plan, Region

logger = logging.getLogger(__name__)

# Bbox edges are nudged inwards by this many degrees before finding edge tiles, so a
# region ending exactly on a tile boundary does not pull in the whole next row or column.
_EDGE_EPS = 1e-9


# A tile's address, (z, x, y) in that order (``mercantile.Tile`` is (x, y, z)).
TileKey = tuple[int, int, int]


class TileRef(NamedTuple):
    """A tile to fetch: XYZ address, the region it was drawn for, and its centre lon/lat."""

    z: int
    x: int
    y: int
    region: str
    lon: float
    lat: float

    @property
    def key(self) -> TileKey:
        """``(z, x, y)``: what the ledger, the atlas's predictions and a run's sets are keyed by.

        >>> TileRef(15, 1, 2, "alps", 0.0, 0.0).key
        (15, 1, 2)
        """
        return self.z, self.x, self.y


class TileRange(NamedTuple):
    """Inclusive XYZ index range of the tiles that overlap a bbox at one zoom."""

    z: int
    xmin: int
    ymin: int
    xmax: int
    ymax: int

    @property
    def width(self) -> int:
        return self.xmax - self.xmin + 1

    @property
    def count(self) -> int:
        return self.width * (self.ymax - self.ymin + 1)

    def contains(self, x: int, y: int) -> bool:
        return self.xmin <= x <= self.xmax and self.ymin <= y <= self.ymax

    def tile_at(self, index: int) -> tuple[int, int]:
        """The ``index``-th tile (row-major), 0 <= index < count."""
        row, col = divmod(index, self.width)
        return self.xmin + col, self.ymin + row


# --- tile maths ----------------------------------------------------------------------------


def tile_range(bbox: tuple[float, float, float, float], zoom: int) -> TileRange:
    """The tiles at ``zoom`` whose area overlaps the bbox's interior.

    The upper-left tile holds (lon_min, lat_max) and the lower-right one holds
    (lon_max, lat_min), each corner moved a hair inwards: ``mercantile.tile`` puts a point on
    a tile boundary into the tile to its right/below, which for the east and south edges is
    a tile outside the box.
    """
    lon_min, lat_min, lon_max, lat_max = bbox
    ul = mercantile.tile(lon_min + _EDGE_EPS, lat_max - _EDGE_EPS, zoom)
    lr = mercantile.tile(lon_max - _EDGE_EPS, lat_min + _EDGE_EPS, zoom)
    return TileRange(zoom, ul.x, ul.y, lr.x, lr.y)


def tile_centre(z: int, x: int, y: int) -> tuple[float, float]:
    """(lon, lat) of the centre of a tile's lon/lat bounds."""
    b = mercantile.bounds(x, y, z)
    return (b.west + b.east) / 2.0, (b.south + b.north) / 2.0


class _Permutation:
    """A seeded pseudo-random bijection of ``range(n)``: a 4-round Feistel network on the
    smallest even number of bits covering ``n``, cycle-walking values that fall outside.

    Walking ``perm[0], perm[1], ...`` visits every index exactly once in a random-looking
    order with no state but a counter; the domain is < 4n, so a lookup walks < 4 times on
    average.
    """

    ROUNDS = 4

    def __init__(self, n: int, key: bytes) -> None:
        if n < 1:
            raise ValueError(f"permutation size must be >= 1, got {n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self._half = bits // 2
        self._mask = (1 << self._half) - 1
        self._key = key

    def _f(self, value: int, round_: int) -> int:
        digest = hashlib.blake2b(value.to_bytes(8, "little"), digest_size=8, key=self._key,
                                 salt=round_.to_bytes(16, "little")).digest()
        return int.from_bytes(digest, "little") & self._mask

    def _encrypt(self, value: int) -> int:
        left, right = value >> self._half, value & self._mask
        for r in range(self.ROUNDS):
            left, right = right, left ^ self._f(right, r)
        return (left << self._half) | right

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(index)
        value = self._encrypt(index)
        while value >= self.n:
            value = self._encrypt(value)
        return value


class _RegionState:
    def __init__(self, region: Region, zoom: int, seed: int) -> None:
        self.region = region
        self.range = tile_range(region.bbox, zoom)
        key = hashlib.blake2b(f"{seed}|{zoom}|{region.name}".encode(), digest_size=32).digest()
        self.perm = _Permutation(self.range.count, key)
        self.cursor = 0
        self.exhausted = False


Exclude = Container[tuple[int, int, int]] | Callable[[TileRef], bool] | None


class Sampler:
    """Weighted, seeded, without-replacement tile draws over a plan at one zoom.

    ``sample(n)`` picks a region by weight (among regions with tiles left), then that
    region's next tile in its seeded permutation; tiles overlapping the region's bbox are
    all eligible (edge tiles included, so a region smaller than a tile still has one).
    The same (plan, zoom, seed, exclude) gives the same tiles in the same order. Tiles are
    never repeated by one Sampler, even where two regions overlap (the tile goes to the
    region drawn first). ``seed=None`` picks a random seed, kept in ``self.seed``.
    """

    def __init__(self, plan: Plan, zoom: int, seed: int | None = None, *, max_skips: int = 100_000) -> None:
        try:
            zoom = operator.index(zoom)
        except TypeError:
            raise UsageError(f"zoom {zoom!r} must be an integer from {MIN_ZOOM} to {MAX_ZOOM}") from None
        if not MIN_ZOOM <= zoom <= MAX_ZOOM:
            raise UsageError(f"zoom {zoom!r} must be an integer from {MIN_ZOOM} to {MAX_ZOOM}")
        self.plan = plan
        self.zoom = zoom
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        self.max_skips = max_skips
        self._rng = random.Random(self.seed)
        self._states = [_RegionState(r, zoom, self.seed) for r in plan.regions]
        # Only tiles inside two or more regions' ranges need remembering to avoid repeats.
        self._shared_issued: set[tuple[int, int]] = set()

    def capacity(self) -> dict[str, int]:
        """Number of tiles each region can yield at this zoom (before exclusions)."""
        return {s.region.name: s.range.count for s in self._states}

    @property
    def exhausted(self) -> set[str]:
        """Names of the regions with no tiles left."""
        return {s.region.name for s in self._states if s.exhausted}

    @property
    def all_exhausted(self) -> bool:
        return all(s.exhausted for s in self._states)

    def sample(self, n: int, exclude: Exclude = None) -> list[TileRef]:
        """Up to ``n`` new tiles; fewer (possibly none) once every region is exhausted.

        ``exclude``: a container of ``(z, x, y)`` tuples, or a callable taking a
        :class:`TileRef` and returning True to skip it (e.g. tiles already in ``fetched``).
        Skipped tiles are consumed: the sampler will not offer them again.
        """
        out: list[TileRef] = []
        active = [s for s in self._states if not s.exhausted]
        while len(out) < n and active:
            state = self._rng.choices(active, weights=[s.region.weight for s in active])[0]
            ref = self._next_tile(state, exclude)
            if ref is None:
                state.exhausted = True
                active.remove(state)
                logger.info("region %r exhausted at zoom %d", state.region.name, self.zoom)
                continue
            out.append(ref)
        return out

    def _next_tile(self, state: _RegionState, exclude: Exclude) -> TileRef | None:
        skipped = 0
        while state.cursor < state.range.count:
            x, y = state.range.tile_at(state.perm[state.cursor])
            state.cursor += 1
            if self._taken_elsewhere(state, x, y):
                continue
            lon, lat = tile_centre(self.zoom, x, y)
            ref = TileRef(self.zoom, x, y, state.region.name, lon, lat)
            if exclude is not None and (exclude(ref) if callable(exclude) else (self.zoom, x, y) in exclude):
                skipped += 1
                if skipped >= self.max_skips:
                    logger.warning(
                        "region %r: %d tiles in a row excluded; treating it as exhausted", state.region.name, skipped
                    )
                    return None
                continue
            return ref
        return None

    def _taken_elsewhere(self, state: _RegionState, x: int, y: int) -> bool:
        """Claim (x, y) if other regions' ranges also hold it; True if already claimed."""
        if not any(other is not state and other.range.contains(x, y) for other in self._states):
            return False
        if (x, y) in self._shared_issued:
            return True
        self._shared_issued.add((x, y))
        return False
