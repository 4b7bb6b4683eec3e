"""Sampling plans (the card's phases, validation of hand-written plans) and the tile sampler."""

from __future__ import annotations

import json
from collections import Counter

import mercantile
import pytest

from builder.acquire.tiles import Sampler, TileRef, tile_range
from builder.core.errors import UsageError
from builder.core.plans import Plan, PlanError, Region, load_plan, validate_plan

CARD_PHASE1 = {
    "Desert (Sahara)": ((-10, 15, 30, 30), 15),
    "Forest (Amazon/Congo)": ((-70, -15, -50, 5), 15),
    "Urban (Europe/US)": ((-5, 40, 20, 55), 20),
    "Arctic (Greenland)": ((-50, 65, -30, 80), 10),
    "Grassland (US Midwest)": ((-105, 35, -90, 45), 15),
    "Shallow Water (Caribbean)": ((-80, 15, -65, 25), 10),
    "Deep Ocean (Pacific)": ((-150, -20, -110, 20), 5),
    "Agriculture (India)": ((73, 20, 80, 30), 10),
}
CARD_PHASE2_WEIGHTS = {
    "Australian Outback": 20, "Salar de Uyuni, Bolivia": 20, "Lake Natron, Tanzania": 15, "Dallol, Ethiopia": 15,
    "Yellowstone Hot Springs": 15, "Bahamas Shallows": 15, "Lava Fields, Hawaii": 10, "Atacama Desert, Chile": 10,
    "Dense Urban Tokyo": 10, "Greenland Glaciers": 10,
}
# A point known to lie on each phase-2 feature: its box must contain it.
LANDMARKS = {
    "Australian Outback": (137.0, -25.5),  # Simpson Desert
    "Salar de Uyuni, Bolivia": (-67.5, -20.2),
    "Lake Natron, Tanzania": (36.0, -2.4),
    "Dallol, Ethiopia": (40.2997, 14.2417),
    "Yellowstone Hot Springs": (-110.8382, 44.5251),  # Grand Prismatic Spring
    "Bahamas Shallows": (-78.8, 24.3),  # Great Bahama Bank
    "Lava Fields, Hawaii": (-154.87, 19.48),  # 2018 lower East Rift Zone flows
    "Atacama Desert, Chile": (-69.93, -24.08),  # Yungay
    "Dense Urban Tokyo": (139.767, 35.681),  # Tokyo Station
    "Greenland Glaciers": (-49.8, 69.17),  # Sermeq Kujalleq
}


def inside(bbox, lon, lat) -> bool:
    return bbox[0] <= lon <= bbox[2] and bbox[1] <= lat <= bbox[3]


def overlaps(bbox, tile_bounds) -> bool:
    return (tile_bounds.west < bbox[2] and tile_bounds.east > bbox[0]
            and tile_bounds.south < bbox[3] and tile_bounds.north > bbox[1])


def plan_of(*regions: tuple[str, tuple, float]) -> Plan:
    return validate_plan("test", [{"name": n, "bbox": list(b), "weight": w} for n, b, w in regions])


# --- plans ---------------------------------------------------------------------------------


def test_phase1_is_the_cards_biome_table():
    plan = load_plan("1")
    assert plan.name == "phase1"
    assert {r.name: (r.bbox, r.weight) for r in plan.regions} == CARD_PHASE1
    assert plan.total_weight == 100


def test_phase2_covers_the_cards_ten_locations_with_small_accurate_boxes():
    plan = load_plan(2)
    assert {r.name: r.weight for r in plan.regions} == CARD_PHASE2_WEIGHTS
    for region in plan.regions:
        lon, lat = LANDMARKS[region.name]
        assert inside(region.bbox, lon, lat), region.name
        width, height = region.bbox[2] - region.bbox[0], region.bbox[3] - region.bbox[1]
        assert width <= 3.5 and height <= 3.0, region.name  # a location, not a biome
        assert region.note


def test_all_is_the_union_with_weights_as_written():
    plan = load_plan("all")
    assert len(plan.regions) == 18 and plan.total_weight == 240
    assert [r.name for r in plan.regions] == [*CARD_PHASE1, *[r.name for r in load_plan("2").regions]]


def test_plan_from_a_file_path(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "regions": [{"name": "box", "bbox": [1, 2, 3, 4], "weight": 2}]}))
    assert load_plan(path) == Plan("mine", (Region("box", (1.0, 2.0, 3.0, 4.0), 2.0),))
    assert load_plan(str(path)).name == "mine"


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ({"name": "R1", "bbox": [10, 0, 5, 1], "weight": 1}, "'R1': lon_min 10.0 must be less than lon_max 5.0"),
        ({"name": "R2", "bbox": [0, 5, 1, 5], "weight": 1}, "'R2': lat_min 5.0 must be less than lat_max 5.0"),
        ({"name": "R3", "bbox": [0, 0, 1, 86], "weight": 1}, "'R3': lat_max 86.0 is outside -85.05..85.05"),
        ({"name": "R4", "bbox": [-181, 0, 1, 1], "weight": 1}, "'R4': lon_min -181.0 is outside -180.0..180.0"),
        ({"name": "R5", "bbox": [0, 0, 1, 1], "weight": 0}, "'R5': weight 0 must be a number > 0"),
        ({"name": "R6", "bbox": [0, 0, 1, 1], "weight": -2}, "'R6': weight -2 must be a number > 0"),
        ({"name": "R7", "bbox": [0, 0, 1], "weight": 1}, "'R7': 'bbox' must be [lon_min, lat_min, lon_max, lat_max]"),
        ({"name": "R8", "bbox": [0, 0, "1", 1], "weight": 1}, "'R8': 'bbox' must be"),
        ({"name": "R9", "bbox": [0, 0, 1, 1], "wieght": 1}, "'R9': unknown key(s) ['wieght']"),
        ({"name": "", "bbox": [0, 0, 1, 1], "weight": 1}, "region #0 needs a non-empty 'name'"),
        ({"name": "R10", "bbox": [0, 0, 1, 1], "weight": True}, "'R10': weight True must be a number > 0"),
    ],
)
def test_invalid_regions_are_named_with_their_value(tmp_path, region, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "bad", "regions": [region]}))
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert message in str(info.value) and "bad.json" in str(info.value)
    assert isinstance(info.value, UsageError)


def test_duplicate_names_and_broken_files_are_refused(tmp_path):
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"name": "d", "regions": [
        {"name": "same", "bbox": [0, 0, 1, 1], "weight": 1}, {"name": "same", "bbox": [2, 2, 3, 3], "weight": 1}]}))
    with pytest.raises(PlanError, match="'same' appears twice"):
        load_plan(dup)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_plan(broken)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"name": "e", "regions": []}))
    with pytest.raises(PlanError, match="no regions"):
        load_plan(empty)
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "absent.json")
    with pytest.raises(PlanError, match="'3'"):
        load_plan("3")


# --- tile ranges ---------------------------------------------------------------------------


def test_tile_range_excludes_tiles_that_only_touch_the_box():
    # [0, 0, 180, 85] at zoom 1 is exactly tile (1, 0): the three neighbours only touch it
    assert tile_range((0.0, 0.0, 180.0, 85.0), 1).count == 1
    # a box exactly matching a zoom-10 tile's bounds holds that one tile
    b = mercantile.bounds(500, 300, 10)
    r = tile_range((b.west, b.south, b.east, b.north), 10)
    assert (r.xmin, r.ymin, r.xmax, r.ymax) == (500, 300, 500, 300)
    # a box smaller than a tile still has the tile that holds it
    assert tile_range((40.29, 14.23, 40.30, 14.24), 4).count == 1


# --- sampler -------------------------------------------------------------------------------


def test_sampler_is_deterministic_for_a_seed():
    plan = load_plan("all")
    first = Sampler(plan, 15, seed=42).sample(300)
    assert Sampler(plan, 15, seed=42).sample(300) == first
    assert Sampler(plan, 15, seed=43).sample(300) != first
    again = Sampler(plan, 15, seed=42)
    assert again.sample(100) + again.sample(200) == first  # batches continue the same sequence


def test_samples_lie_in_their_region_and_carry_the_tile_centre():
    plan = load_plan("all")
    boxes = {r.name: r.bbox for r in plan.regions}
    refs = Sampler(plan, 15, seed=7).sample(1500)
    assert len(refs) == 1500 and len({(r.z, r.x, r.y) for r in refs}) == 1500
    for ref in refs:
        assert isinstance(ref, TileRef) and ref.z == 15
        bounds = mercantile.bounds(ref.x, ref.y, ref.z)
        assert overlaps(boxes[ref.region], bounds), ref
        assert ref.lon == pytest.approx((bounds.west + bounds.east) / 2)
        assert ref.lat == pytest.approx((bounds.south + bounds.north) / 2)
        assert mercantile.tile(ref.lon, ref.lat, 15) == mercantile.Tile(ref.x, ref.y, 15)


def test_region_choice_follows_the_weights():
    plan = plan_of(("heavy", (0, 0, 10, 10), 3), ("light", (20, 0, 30, 10), 1))
    counts = Counter(r.region for r in Sampler(plan, 12, seed=1).sample(4000))
    assert counts["heavy"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_uniform_over_the_tile_range():
    """Quadrant counts of one region are even: the permutation is not biased to a corner."""
    plan = plan_of(("box", (0, 0, 20, 20), 1))
    rng = tile_range((0, 0, 20, 20), 10)
    refs = Sampler(plan, 10, seed=5).sample(2000)
    midx, midy = (rng.xmin + rng.xmax) / 2, (rng.ymin + rng.ymax) / 2
    quadrants = Counter((r.x < midx, r.y < midy) for r in refs)
    assert all(abs(n - 500) < 80 for n in quadrants.values()), quadrants


def test_small_regions_exhaust_exactly_and_the_rest_carry_on():
    plan = plan_of(("tiny", (40.27, 14.22, 40.33, 14.26), 10), ("big", (0, 0, 20, 20), 1))
    sampler = Sampler(plan, 15, seed=0)
    tiny_count = sampler.capacity()["tiny"]
    assert 0 < tiny_count < 40
    refs = sampler.sample(200)
    tiny = [r for r in refs if r.region == "tiny"]
    assert len(refs) == 200 and len(tiny) == tiny_count  # every tiny tile once, then only "big"
    rng = tile_range((40.27, 14.22, 40.33, 14.26), 15)
    assert {(r.x, r.y) for r in tiny} == {rng.tile_at(i) for i in range(rng.count)}
    assert sampler.exhausted == {"tiny"} and not sampler.all_exhausted


def test_sampling_stops_when_every_region_is_exhausted():
    plan = load_plan("2")
    sampler = Sampler(plan, 5, seed=3)
    total = sum(sampler.capacity().values())
    refs = sampler.sample(10_000)
    assert len(refs) <= total and len({(r.x, r.y) for r in refs}) == len(refs)
    assert sampler.all_exhausted and sampler.sample(10) == []


def test_overlapping_regions_never_repeat_a_tile():
    plan = plan_of(("outer", (0, 0, 10, 10), 1), ("inner", (2, 2, 4, 4), 1))
    refs = Sampler(plan, 7, seed=9).sample(10_000)
    keys = [(r.x, r.y) for r in refs]
    assert len(keys) == len(set(keys)) == tile_range((0, 0, 10, 10), 7).count


def test_exclude_by_set_or_callable():
    plan = load_plan("1")
    baseline = Sampler(plan, 8, seed=11).sample(50)
    done = {(r.z, r.x, r.y) for r in baseline[:25]}
    resumed = Sampler(plan, 8, seed=11).sample(50, exclude=done)
    assert not done & {(r.z, r.x, r.y) for r in resumed}
    # a harvest resumed with the tiles it already tried walks each region in the same order
    longer = Sampler(plan, 8, seed=11).sample(400)
    for region in {r.region for r in resumed}:
        expected = [r for r in longer if r.region == region and (r.z, r.x, r.y) not in done]
        got = [r for r in resumed if r.region == region]
        assert got == expected[: len(got)], region
    no_sahara = Sampler(plan, 8, seed=11).sample(100, exclude=lambda ref: ref.region == "Desert (Sahara)")
    assert len(no_sahara) == 100 and all(r.region != "Desert (Sahara)" for r in no_sahara)


def test_excluding_everything_terminates():
    plan = plan_of(("a", (0, 0, 5, 5), 1), ("b", (10, 10, 15, 15), 1))
    sampler = Sampler(plan, 9, seed=2)
    assert sampler.sample(10, exclude=lambda ref: True) == []
    assert sampler.all_exhausted
    huge = Sampler(load_plan("1"), 15, seed=2, max_skips=500)
    assert huge.sample(10, exclude=lambda ref: True) == [] and huge.all_exhausted


def test_bad_zoom_is_a_usage_error():
    plan = load_plan("1")
    for zoom in (-1, 25, 2.5, "15"):
        with pytest.raises(UsageError, match="zoom"):
            Sampler(plan, zoom, seed=0)


def test_random_seed_is_recorded():
    sampler = Sampler(load_plan("1"), 10)
    assert isinstance(sampler.seed, int)
    assert Sampler(load_plan("1"), 10, seed=sampler.seed).sample(20) == sampler.sample(20)
