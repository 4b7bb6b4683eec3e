"""Sampling plans as data: weighted lon/lat boxes, kept in ``data/plans``, loaded and checked.

A plan is JSON::

    {"name": "phase1", "description": "...optional...",
     "regions": [{"name": "Desert (Sahara)", "bbox": [lon_min, lat_min, lon_max, lat_max],
                  "weight": 15, "note": "...optional..."}]}

Phase 1 is the dataset card's eight biome boxes, phase 2 its ten spectral-anomaly locations;
``"all"`` is both (the weights and how they are drawn: :mod:`builder.acquire.tiles`).  Besides the
files: a one-region plan for ``atlas --bbox`` (:func:`bbox_plan`) and the whole map
(:func:`world_plan`).  Standard library only, so the card and the CLI can read plans without
the fetching side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from .errors import UsageError
from .layout import PLAN_MAX_LAT, PLANS_DIR

PHASES = {"1": "phase1.json", "2": "phase2.json"}
WORLD = "world"
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
        ("lat_min", lat_min, PLAN_MAX_LAT), ("lat_max", lat_max, PLAN_MAX_LAT),
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


def resolve_plan(plan: Plan | str | int | Path | None) -> Plan:
    """A Plan from a Plan, a phase (``1``, ``2``, ``all``) or a JSON file; default phase 1."""
    if isinstance(plan, Plan):
        return plan
    return load_plan("1" if plan is None else plan)


def bbox_plan(bbox: Sequence[float]) -> Plan:
    """A one-region plan for ``--bbox W S E N`` (checked like a plan's region)."""
    return validate_plan("bbox", [{"name": "bbox", "bbox": list(bbox), "weight": 1}], where="--bbox")


def world_plan() -> Plan:
    """The whole map, as far north and south as the tiles go."""
    return Plan(WORLD, (Region(WORLD, (-180.0, -PLAN_MAX_LAT, 180.0, PLAN_MAX_LAT), 1.0),))
