"""``synthesize``: flagged synthetic tiles that land in their bucket by the card's recipe, from
real tiles of a small real library, stored through the commit protocol and checked by verify."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from builder.assign.phash import MIN_HASH_CONTRAST
from builder.core.errors import UsageError
from builder.core.library import Library
from builder.ops.ingest import ingest
from builder.ops.synthesize import first_round, grey_std, recipe_lab, synthesize, targets, transfer, uses_limit
from builder.ops.verify import verify_library
from tests.support.images import one_bucket_pngs, real_crops
from tests.support.paths import REPO
from tests.support.recipe import card_recipe


@pytest.fixture(scope="module")
def real_library(tmp_path_factory, bluemarble):
    """A real library: 60 Blue Marble crops ingested (a few dozen buckets)."""
    folder = tmp_path_factory.mktemp("synth_src")
    for i, crop in enumerate(real_crops(bluemarble, 60, seed=11)):
        crop.save(folder / f"t{i:03d}.png")
    root = tmp_path_factory.mktemp("synth_lib") / "mosaic_library"
    with Library.create(root) as lib:
        ingest(lib, [folder], workers=1)
    return root


@pytest.fixture
def library(real_library, tmp_path):
    """A private copy of :func:`real_library`, opened for writing."""
    root = tmp_path / "mosaic_library"
    shutil.copytree(real_library, root)
    lib = Library.open(root)
    yield lib
    lib.close()


def _far_and_near_buckets(lib, n=24):
    """Empty buckets spread over the colour space: some near the library's colours, most far."""
    counts = lib.bucket_counts()
    empty = np.flatnonzero(counts == 0)
    rng = np.random.default_rng(5)
    return sorted(int(b) for b in rng.choice(empty, n, replace=False))


def _synthetic_rows(lib):
    return lib.conn.execute(
        "SELECT id, bucket_id, phash, mean_l, mean_a, mean_b, derived_from, source FROM tiles WHERE synthetic = 1"
    ).fetchall()


def test_synthetic_tiles_land_in_their_bucket_by_the_cards_recipe(library):
    lib = library
    real_before = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    wanted = _far_and_near_buckets(lib)
    report = synthesize(lib, max_uses=4, buckets=wanted, progress=False)
    rows = _synthetic_rows(lib)
    assert report.made == len(rows) == len(wanted) and report.buckets_targeted == len(wanted)
    assert sorted(r[1] for r in rows) == wanted
    real_ids = {r[0] for r in lib.conn.execute("SELECT id FROM tiles WHERE synthetic = 0")}
    assert len(real_ids) == real_before
    for tile_id, bucket_id, phash, l_, a_, b_, derived_from, source in rows:
        ref_bucket, ref_lab, ref_hash = card_recipe(lib.tile_path(bucket_id, tile_id), lib.centroids)
        assert (ref_bucket, ref_hash) == (bucket_id, phash)
        assert np.allclose((l_, a_, b_), ref_lab, atol=1e-9)
        assert source == "synthetic"
        assert derived_from is None or derived_from in real_ids
    textured = [r for r in rows if r[6] is not None]
    assert len(textured) >= len(wanted) // 2  # 60 sources, 4 uses each: most buckets get a texture
    assert report.median_texture_kept is not None and report.median_texture_kept > 0.3
    assert verify_library(lib, deep=True, workers=1, progress=False).ok
    assert list(lib.temp_dir.iterdir()) == []


def test_transfer_keeps_texture_and_hits_a_far_colour(bluemarble):
    from builder.core.color import load_centroids
    from builder.core.layout import SHIPPED_CENTROIDS

    centroids = load_centroids(SHIPPED_CENTROIDS)
    src = np.asarray(real_crops(bluemarble, 1, seed=3)[0])
    # centroids far from Earth's colours: a magenta, a deep cyan, a near white
    for wanted in ([60.0, 80.0, -50.0], [40.0, -30.0, -30.0], [95.0, -5.0, 20.0]):
        target = centroids[np.argmin(np.linalg.norm(centroids - wanted, axis=1))]
        out = transfer(src, target)
        assert np.abs(recipe_lab(out) - target).max() < 1.0, target
        assert grey_std(out) > MIN_HASH_CONTRAST  # texture scaled (to fit near white), not flattened
        # the light-dark pattern is the source's: pixel luma strongly correlated
        corr = np.corrcoef(np.asarray(Image.fromarray(out).convert("L"), float).ravel(),
                           np.asarray(Image.fromarray(src).convert("L"), float).ravel())[0, 1]
        assert corr > 0.8, (target, corr)


def test_the_same_seed_makes_the_same_tiles_whatever_the_number_of_processes(real_library, tmp_path):
    """The plan is made in one process and the tiles are stored in plan order, so one process
    and two make the same tiles (same buckets, pixels' hashes, LAB and sources)."""
    made = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}" / "mosaic_library"
        shutil.copytree(real_library, root)
        with Library.open(root) as lib:
            report = synthesize(lib, buckets=_far_and_near_buckets(lib, 40), seed=7, workers=workers,
                                progress=False)
            assert report.workers == workers and report.made == 40
            made[workers] = sorted(r[1:] for r in _synthetic_rows(lib))
    assert made[1] == made[2]


def test_default_uses_give_every_empty_bucket_a_textured_tile(library):
    """Without --max-uses a source gives as many tiles as the need asks (spread evenly), so no
    bucket gets a flat tile while a textured source exists; --max-uses 1 runs out of sources."""
    lib = library
    n_real = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    wanted = sorted(int(b) for b in np.flatnonzero(lib.bucket_counts() == 0)[: 2 * n_real])
    report = synthesize(lib, buckets=wanted, progress=False)
    assert report.made == len(wanted) and report.flat == 0
    assert report.uses_limit == uses_limit(len(wanted), report.usable_sources) >= 2
    uses = Counter(r[6] for r in _synthetic_rows(lib))
    assert max(uses.values()) <= report.uses_limit
    assert uses_limit(100, 10, max_uses=3) == 3 and uses_limit(100, 0) == 1 and uses_limit(5, 10, 20) == 3


@pytest.mark.slow
def test_defaults_on_a_600_tile_library_plan_a_textured_tile_for_95_percent(bluemarble, tmp_path):
    """Issue 20: with its defaults on a 600-tile library, synthesize starts from a source for at
    least 95% of the ~4,500 empty buckets (the plan: what is then made, and what a miss gets
    again from the next source); with --max-uses 1 most would be flat."""
    folder = tmp_path / "src"
    folder.mkdir()
    for i, crop in enumerate(real_crops(bluemarble, 660, seed=2)):
        crop.save(folder / f"t{i:03d}.png", compress_level=1)
    with Library.create(tmp_path / "mosaic_library") as lib:
        ingest(lib, [folder], workers=2)
        held = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        assert held >= 600
        plan = first_round(lib, workers=2)
        capped = first_round(lib, max_uses=1, workers=2)
    assert len(plan) == 5000 - len({b for b in lib_buckets(tmp_path / "mosaic_library")})
    assert sum(source is not None for _b, source in plan) >= 0.95 * len(plan)
    assert sum(source is None for _b, source in capped) > 0.5 * len(capped)


def lib_buckets(root):
    with Library.open(root, readonly=True) as lib:
        return [b for (b,) in lib.conn.execute("SELECT DISTINCT bucket_id FROM tiles")]


def test_max_uses_is_never_exceeded_and_flat_tiles_fill_the_rest(library):
    lib = library
    n_sources = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    wanted = sorted(int(b) for b in np.flatnonzero(lib.bucket_counts() == 0)[: n_sources + 20])
    report = synthesize(lib, max_uses=1, buckets=wanted, progress=False)
    uses = Counter(r[6] for r in _synthetic_rows(lib) if r[6] is not None)
    assert uses and max(uses.values()) == 1 == report.max_uses_seen
    assert report.flat >= 20 and report.made == len(wanted)
    flat = [r for r in _synthetic_rows(lib) if r[6] is None]
    for tile_id, bucket_id, *_ in flat[:5]:
        with Image.open(lib.tile_path(bucket_id, tile_id)) as img:
            assert len(img.getcolors()) == 1  # one colour
    # A second run with K=2 may reuse each source once more, never a third time.
    synthesize(lib, per_bucket=2, max_uses=2, buckets=wanted, progress=False)
    uses = Counter(r[6] for r in _synthetic_rows(lib) if r[6] is not None)
    assert max(uses.values()) == 2
    assert verify_library(lib, deep=True, workers=1, progress=False).ok


def test_a_rerun_tops_up_and_never_touches_buckets_with_a_real_tile(library):
    lib = library
    wanted = _far_and_near_buckets(lib, 6)
    real_bucket = int(np.flatnonzero(lib.bucket_counts() > 0)[0])
    first = synthesize(lib, max_uses=4, buckets=[*wanted, real_bucket], progress=False)
    assert first.made == 6 and first.buckets_targeted == 6
    again = synthesize(lib, max_uses=4, buckets=wanted, progress=False)
    assert again.made == 0 and again.buckets_targeted == 0
    more = synthesize(lib, per_bucket=3, max_uses=4, buckets=wanted, progress=False)
    per_bucket = Counter(r[1] for r in _synthetic_rows(lib))
    assert more.made + sum(more.rejected.values()) + sum(more.skipped.values()) == 12
    assert all(per_bucket[b] <= 3 for b in wanted) and real_bucket not in per_bucket
    assert targets(lib, 3).keys().isdisjoint({b for b in wanted if per_bucket[b] == 3})


def test_bad_values_are_one_line_errors(library, tmp_path, cli):
    for kwargs in ({"per_bucket": 0}, {"per_bucket": 101}, {"max_uses": 0}, {"near_duplicate_radius": -1},
                   {"near_duplicate_radius": 65}):
        with pytest.raises(UsageError):
            synthesize(library, progress=False, **kwargs)
    library.close()
    for args, words in ((["--max-uses", "0"], "--max-uses must be an integer at least 1"),
                        (["--per-bucket", "x"], "argument --per-bucket: not an integer"),
                        (["--near-duplicate-radius", "99"], "--near-duplicate-radius must be an integer within 0..64")):
        res = cli("synthesize", "--library", library.root, *args)
        assert res.returncode == 2 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


# Every bucket filled and a deep verify clean after synthesize: the demo's test runs that whole
# (tests/test_demo.py::test_demo_synthesizes_every_empty_bucket_and_compares_the_mosaics).


# ----------------------------------------------------------------- real tiles always win


def _one_bucket_tiles(bluemarble, n):
    """``n`` real tiles of one bucket with distinct hashes (a crop turned and mirrored)."""
    return one_bucket_pngs(bluemarble, n)


def test_real_tiles_evict_synthetic_ones_at_the_cap_and_are_never_refused_for_them(make_library, bluemarble):
    from builder.assign.pipeline import Candidate, Pipeline

    lib = make_library(cap=3)
    tiles = _one_bucket_tiles(bluemarble, 8)
    synthetic = {"source": "synthetic", "synthetic": 1}
    with Pipeline(lib, workers=1, default_provenance=synthetic) as pipe:
        made = pipe.process([Candidate(f"s{i}", data=p) for i, p in enumerate(tiles[:4])])
    assert [o.accepted for o in made] == [True, True, True, False] and made[3].reason == "bucket_full"
    bucket = made[0].bucket_id
    synthetic_ids = [o.tile_id for o in made[:3]]
    with Pipeline(lib, workers=1) as pipe:
        first = pipe.process([Candidate("r4", data=tiles[4])])
        assert first[0].accepted and len(first[0].evicted) == 1
        gone = first[0].evicted[0]
        assert gone == synthetic_ids[2]  # the newest synthetic tile gives way
        assert not lib.tile_path(bucket, gone).exists()
        rest = pipe.process([Candidate(f"r{i}", data=p) for i, p in enumerate(tiles[5:8], 5)])
    assert [o.accepted for o in rest] == [True, True, False] and rest[2].reason == "bucket_full"
    rows = lib.conn.execute("SELECT synthetic, COUNT(*) FROM tiles WHERE bucket_id = ? GROUP BY 1", (bucket,)).fetchall()
    assert rows == [(0, 3)]  # three real tiles, every synthetic one gone
    # A synthetic tile never takes a real one's place.
    with Pipeline(lib, workers=1, default_provenance=synthetic) as pipe:
        late = pipe.process([Candidate("s_late", data=tiles[0])])
    assert late[0].reason in ("bucket_full", "duplicate") and not late[0].accepted
    assert verify_library(lib, deep=True, workers=1, progress=False).ok


def test_a_real_tile_with_a_synthetic_twin_replaces_it_below_the_cap(make_library, bluemarble):
    from builder.assign.pipeline import Candidate, Pipeline

    lib = make_library()
    tile = _one_bucket_tiles(bluemarble, 1)[0]
    with Pipeline(lib, workers=1, default_provenance={"synthetic": 1}) as pipe:
        twin = pipe.process([Candidate("s", data=tile)])[0]
    with Pipeline(lib, workers=1) as pipe:
        real = pipe.process([Candidate("r", data=tile)])[0]
    assert real.accepted and real.evicted == (twin.tile_id,)
    assert lib.conn.execute("SELECT id, synthetic FROM tiles").fetchall() == [(real.tile_id, 0)]
    assert verify_library(lib, deep=True, workers=1, progress=False).ok


# ----------------------------------------------------------------- flagged everywhere


def test_verify_checks_synthetic_tiles_like_any_other_and_their_source(library):
    lib = library
    synthesize(lib, max_uses=4, buckets=_far_and_near_buckets(lib, 6), progress=False)
    rows = [r for r in _synthetic_rows(lib) if r[6] is not None]
    assert len(rows) >= 3
    with lib.conn:
        lib.conn.execute("UPDATE tiles SET mean_l = mean_l + 1 WHERE id = ?", (rows[0][0],))
        lib.conn.execute("UPDATE tiles SET derived_from = ? WHERE id = ?", ("0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a", rows[1][0]))
        lib.conn.execute("UPDATE tiles SET synthetic = 2 WHERE id = ?", (rows[2][0],))
        real = lib.conn.execute("SELECT id FROM tiles WHERE synthetic = 0 LIMIT 1").fetchone()[0]
        lib.conn.execute("UPDATE tiles SET derived_from = ? WHERE id = ?", (real, real))
    found = verify_library(lib, deep=True, workers=1, progress=False)
    assert {(p.kind, p.tile_id) for p in found.problems} == {
        ("lab_mismatch", rows[0][0]), ("unknown_source", rows[1][0]), ("bad_synthetic", rows[2][0]), ("bad_synthetic", real)}
    verify_library(lib, deep=True, repair=True, workers=1, progress=False)
    assert verify_library(lib, deep=True, workers=1, progress=False).ok
    assert lib.conn.execute("SELECT COUNT(*) FROM tiles WHERE id = ?", (rows[1][0],)).fetchone()[0] == 0  # dropped
    assert lib.conn.execute("SELECT synthetic, derived_from FROM tiles WHERE id = ?", (real,)).fetchone() == (0, None)


def test_stats_report_and_mosaic_know_synthetic_tiles(library, tmp_path):
    from builder.cli.stats import StatsReport
    from builder.mosaic import MosaicOptions, mosaic_file
    from builder.ops.report import render_report
    from builder.ops.report.sheets import BADGE_COLOUR, SHEET_GAP

    lib = library
    real_buckets = int((lib.bucket_counts() > 0).sum())
    report = synthesize(lib, max_uses=4, buckets=_far_and_near_buckets(lib, 40), progress=False)
    stats = lib.stats()["synthetic"]
    assert stats["tiles"] == report.made == 40 and stats["buckets_only_synthetic"] == 40
    real_rows = lib.conn.execute("SELECT COUNT(*) FROM tiles WHERE synthetic = 0").fetchone()[0]
    assert stats["buckets_populated_real"] == real_buckets and stats["real_tiles"] == real_rows > 0
    lines = StatsReport(lib.stats()).region_lines()
    assert any("40 synthetic tiles" in line for line in lines)

    rep = render_report(lib, tmp_path / "report", progress=False)
    synthetic_entries = [e for e in rep.buckets if e.synthetic]
    assert len(synthetic_entries) == 40 and all(e.synthetic == e.count == 1 for e in synthetic_entries)
    with Image.open(rep.output / synthetic_entries[0].sheet) as sheet:
        assert sheet.getpixel((SHEET_GAP + 2, SHEET_GAP + 2)) == BADGE_COLOUR  # the badge's corner
    real_entry = next(e for e in rep.buckets if not e.synthetic)
    with Image.open(rep.output / real_entry.sheet) as sheet:
        assert sheet.getpixel((SHEET_GAP + 2, SHEET_GAP + 2)) != BADGE_COLOUR
    assert "add 40 tiles and 40 buckets that hold nothing else" in rep.index.read_text()

    target = Image.fromarray(np.asarray(real_crops(Image.open(REPO / "data" / "sample_target.jpg").convert("RGB"), 1, 0,
                                                   size=200)[0]))
    options = MosaicOptions(grid=(12, 12), tile_size=16, no_repeat_radius=0)
    with_synthetic = mosaic_file(lib, target, tmp_path / "m.png", options, progress=False)
    real_only = mosaic_file(lib, target, tmp_path / "r.png", MosaicOptions(grid=(12, 12), tile_size=16,
                                                                              no_repeat_radius=0, real_only=True),
                            progress=False)
    synthetic_ids = {r[0] for r in _synthetic_rows(lib)}
    used = [t for t in with_synthetic.plan.tile_ids.ravel() if t in synthetic_ids]
    assert with_synthetic.synthetic_cells == len(used)
    assert real_only.synthetic_cells == 0 and not synthetic_ids & set(real_only.plan.tile_ids.ravel())
    assert real_only.plan.fallback_cells >= with_synthetic.plan.fallback_cells
    assert "used a synthetic tile (--real-only)" in real_only.summary()
    assert real_only.as_dict()["synthetic_cells"] == 0 and real_only.as_dict()["options"]["real_only"] is True


@pytest.mark.slow
def test_sigkill_during_synthesize_leaves_a_consistent_library(library):
    from tests.support.campaigns.crash import deep_verify, synthesize_campaign

    root = library.root
    library.close()
    figures = synthesize_campaign(root, kills=6, max_uses=2, seed=3)
    print(figures.summary())
    assert figures.violations == [] and figures.tiles_lost == 0, figures.violations
    assert figures.kills >= 6 and figures.rows > 60  # synthetic tiles were made between the kills
    assert deep_verify(root) is None
    with Library.open(root, readonly=True) as lib:
        uses = lib.conn.execute("SELECT MAX(n) FROM (SELECT COUNT(*) n FROM tiles WHERE synthetic = 1 "
                                "AND derived_from IS NOT NULL GROUP BY derived_from)").fetchone()[0]
        assert uses <= 2
        flats = lib.conn.execute("SELECT MAX(n) FROM (SELECT COUNT(*) n FROM tiles WHERE synthetic = 1 "
                                 "AND derived_from IS NULL GROUP BY bucket_id)").fetchone()[0]
        assert flats is None or flats == 1


def test_ingest_reports_the_synthetic_tiles_its_real_ones_evicted(make_library, bluemarble, tmp_path):
    from builder.assign.pipeline import Candidate, Pipeline

    lib = make_library(cap=1)
    tiles = _one_bucket_tiles(bluemarble, 2)
    with Pipeline(lib, workers=1, default_provenance={"synthetic": 1}) as pipe:
        assert pipe.process([Candidate("s", data=tiles[0])])[0].accepted
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "r.png").write_bytes(tiles[1])
    report = ingest(lib, [folder], workers=1, progress=False)
    assert report.accepted == 1 and report.evicted == 1 and "1 synthetic tile gave way" in report.summary()
    assert lib.conn.execute("SELECT synthetic FROM tiles").fetchall() == [(0,)]


def test_verify_repair_keeps_real_tiles_before_synthetic_ones(make_library, bluemarble):
    from builder.assign.pipeline import Candidate, Pipeline
    from builder.core import db

    lib = make_library(cap=2)
    tiles = _one_bucket_tiles(bluemarble, 2)
    with Pipeline(lib, workers=1, default_provenance={"synthetic": 1}) as pipe:
        older = pipe.process([Candidate("s", data=tiles[0])])[0]  # the synthetic tile is the older row
    with Pipeline(lib, workers=1) as pipe:
        real = pipe.process([Candidate("r", data=tiles[1])])[0]
    assert older.accepted and real.accepted and not real.evicted
    root = lib.root
    with lib.conn:
        db.set_meta(lib.conn, "cap", "1")
    lib.close()
    with Library.open(root) as again:
        found = verify_library(again, deep=True, repair=True, workers=1, progress=False)
        assert found.counts["over_cap"] == 1 and found.repaired["over_cap"] == 1
        assert again.conn.execute("SELECT id FROM tiles").fetchall() == [(real.tile_id,)]
        assert verify_library(again, deep=True, workers=1, progress=False).ok
