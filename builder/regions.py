"""Sampling plans (weighted lon/lat boxes, kept as data in ``data/plans``) and a tile sampler.

A plan is JSON::

    {"name": "phase1", "description": "...optional...",
     "regions": [{"name": "Desert (Sahara)", "bbox": [lon_min, lat_min, lon_max, lat_max],
                  "weight": 15, "note": "...optional..."}]}

Phase 1 is the dataset card's eight biome boxes, phase 2 its ten spectral-anomaly locations.
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
import json
import logging
import math
import operator
import random
import secrets
from collections.abc import Callable, Container, Iterable
from pathlib import Path
from typing import NamedTuple

import mercantile

from .errors import UsageError
from .layout import PLANS_DIR

logger = logging.getLogger(__name__)

PHASES = {"1": "phase1.json", "2": "phase2.json"}
MAX_LAT = 85.05  # Web-Mercator reaches +-85.0511; the plan limit is rounded inwards
MAX_ZOOM = 24
# Bbox edges are nudged inwards by this many degrees before finding edge tiles, so a
# region ending exactly on a tile boundary does not pull in the whole next row or column.
_EDGE_EPS = 1e-9
_REGION_KEYS = {"name", "bbox", "weight", "note"}
_PLAN_KEYS = {"name", "description", "regions"}


class PlanError(UsageError):
    """A sampling plan file is missing, not JSON, or has an invalid region."""


class Region(NamedTuple):
    name: str
    bbox: tuple[float, float, float, float]  # lon_min, lat_min, lon_max, lat_max
    weight: float
    note: str = ""


class Plan(NamedTuple):
    name: str
    regions: tuple[Region, ...]

    @property
    def total_weight(self) -> float:
        return sum(r.weight for r in self.regions)


class TileRef(NamedTuple):
    """A tile to fetch: XYZ address, the region it was drawn for, and its centre lon/lat."""

    z: int
    x: int
    y: int
    region: str
    lon: float
    lat: float


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


# --- plans ---------------------------------------------------------------------------------


def load_plan(path_or_phase: str | int | Path) -> Plan:
    """A validated plan: ``"1"``, ``"2"``, ``"all"`` (both phases, weights as written), or a JSON path."""
    key = str(path_or_phase).strip()
    if key.lower() == "all":
        plans = [load_plan(phase) for phase in PHASES]
        return validate_plan("all", [r._asdict() for p in plans for r in p.regions], where="phases 1+2")
    if not isinstance(path_or_phase, Path) and key in PHASES:
        return _load_file(PLANS_DIR / PHASES[key])
    path = Path(path_or_phase)
    if path.suffix.lower() != ".json" and not path.exists():
        raise PlanError(f"plan {key!r} is not a phase (1, 2, all) nor an existing .json file")
    return _load_file(path)


def _load_file(path: Path) -> Plan:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PlanError(f"plan file {str(path)!r} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read plan file {str(path)!r}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise PlanError(f"plan file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PlanError(f"plan {str(path)!r}: expected a JSON object, got {type(data).__name__}")
    extra = sorted(set(data) - _PLAN_KEYS)
    if extra:
        raise PlanError(f"plan {str(path)!r}: unknown key(s) {extra}; allowed: {sorted(_PLAN_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PlanError(f"plan {str(path)!r}: 'name' must be a non-empty string, got {name!r}")
    regions = data.get("regions")
    if not isinstance(regions, list):
        raise PlanError(f"plan {str(path)!r}: 'regions' must be a list, got {type(regions).__name__}")
    return validate_plan(name, regions, where=str(path))


def validate_plan(name: str, regions: Iterable[object], *, where: str = "plan") -> Plan:
    """Build a :class:`Plan` from raw region dicts, naming the region and value at fault."""
    out: list[Region] = []
    seen: set[str] = set()
    for i, raw in enumerate(regions):
        region = _validate_region(raw, i, where)
        if region.name in seen:
            raise PlanError(f"{where}: region name {region.name!r} appears twice; names must be unique")
        seen.add(region.name)
        out.append(region)
    if not out:
        raise PlanError(f"{where}: plan {name!r} has no regions")
    return Plan(name, tuple(out))


def _validate_region(raw: object, index: int, where: str) -> Region:
    if not isinstance(raw, dict):
        raise PlanError(f"{where}: region #{index} must be an object, got {raw!r}")
    label = raw.get("name")
    if not isinstance(label, str) or not label.strip():
        raise PlanError(f"{where}: region #{index} needs a non-empty 'name', got {label!r}")
    prefix = f"{where}: region {label!r}"
    extra = sorted(set(raw) - _REGION_KEYS)
    if extra:
        raise PlanError(f"{prefix}: unknown key(s) {extra}; allowed: {sorted(_REGION_KEYS)}")
    bbox = raw.get("bbox")
    if (
        not isinstance(bbox, list | tuple)
        or len(bbox) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    ):
        raise PlanError(f"{prefix}: 'bbox' must be [lon_min, lat_min, lon_max, lat_max] numbers, got {bbox!r}")
    lon_min, lat_min, lon_max, lat_max = (float(v) for v in bbox)
    for field, value, limit in (
        ("lon_min", lon_min, 180.0), ("lon_max", lon_max, 180.0),
        ("lat_min", lat_min, MAX_LAT), ("lat_max", lat_max, MAX_LAT),
    ):
        if not math.isfinite(value) or abs(value) > limit:
            raise PlanError(f"{prefix}: {field} {value} is outside -{limit}..{limit}")
    if not lon_min < lon_max:
        raise PlanError(f"{prefix}: lon_min {lon_min} must be less than lon_max {lon_max}")
    if not lat_min < lat_max:
        raise PlanError(f"{prefix}: lat_min {lat_min} must be less than lat_max {lat_max}")
    weight = raw.get("weight")
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not math.isfinite(weight) or weight <= 0:
        raise PlanError(f"{prefix}: weight {weight!r} must be a number > 0")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise PlanError(f"{prefix}: 'note' must be a string, got {note!r}")
    return Region(label, (lon_min, lat_min, lon_max, lat_max), float(weight), note)


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
            raise UsageError(f"zoom {zoom!r} must be an integer from 0 to {MAX_ZOOM}") from None
        if not 0 <= zoom <= MAX_ZOOM:
            raise UsageError(f"zoom {zoom!r} must be an integer from 0 to {MAX_ZOOM}")
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
    def done(self) -> bool:
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
