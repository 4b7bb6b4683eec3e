"""Fair assignment (``--max-uses``): exact on small problems against the dense reference
(``scipy.optimize.linear_sum_assignment``), never over the limit on real mosaics, with the
repetition radius still holding, and one-line errors for impossible or bad values."""

import logging

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from builder.cli import main
from builder.core.errors import UsageError
from builder.core.library import Library
from builder.mosaic import MosaicOptions, match_with_uses, plan_mosaic
from builder.mosaic.fair import NoFullMatching, match_some

SAMPLE = "data/sample_target.jpg"


@pytest.fixture(scope="module")
def library_root(earth_library):
    return earth_library


def clashes(ids: np.ndarray, radius: int) -> list:
    rows, cols = ids.shape
    return [(r, c) for r in range(rows) for c in range(cols)
            for rr in range(max(0, r - radius), min(rows, r + radius + 1))
            for cc in range(max(0, c - radius), min(cols, c + radius + 1))
            if (rr, cc) != (r, c) and ids[r, c] == ids[rr, cc]]


@pytest.mark.parametrize("uses", [1, 2, 3])
def test_matching_is_optimal_against_the_dense_reference(uses):
    rng = np.random.default_rng(uses)
    tiles = 14
    cells = tiles * uses - 3  # nearly every copy is needed
    dense = rng.uniform(0, 50, (cells, tiles))
    ranked = np.tile(np.arange(tiles), (cells, 1))  # every tile on every shortlist: the dense problem
    ours = match_with_uses(ranked, dense, uses)
    assert np.bincount(ours, minlength=tiles).max() <= uses
    rows, cols = linear_sum_assignment(np.tile(dense, uses))  # phomo's recipe: tiles replicated
    assert dense[np.arange(cells), ours].sum() == pytest.approx(dense[rows, cols % tiles].sum())


def test_sparse_shortlists_that_cannot_cover_every_cell_say_so():
    ranked = np.array([[0, -1], [0, -1], [1, 0]])  # two cells can only take tile 0
    with pytest.raises(NoFullMatching):
        match_with_uses(ranked, np.ones((3, 2)), 1)
    assert sorted(match_with_uses(ranked, np.ones((3, 2)), 2).tolist()) == [0, 0, 1]


@pytest.mark.parametrize("uses, radius", [(1, 2), (2, 1), (3, 2)])
def test_max_uses_is_never_exceeded_and_the_radius_holds(library_root, uses, radius):
    with Library.open(library_root, readonly=True) as lib:
        n_tiles = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        side = int(np.sqrt(min(n_tiles * uses, 900) * 0.9))
        plan = plan_mosaic(lib, SAMPLE, MosaicOptions(grid=(side, side), max_uses=uses, no_repeat_radius=radius))
        greedy = plan_mosaic(lib, SAMPLE, MosaicOptions(grid=(side, side), no_repeat_radius=radius))
    ids = plan.tile_ids
    _, counts = np.unique(ids, return_counts=True)
    assert counts.max() <= uses and plan.most_uses <= uses
    assert clashes(ids, radius) == []
    assert greedy.most_uses > uses  # without the cap this picture does reuse tiles more


def test_too_few_tiles_for_the_cells_is_a_one_line_error(library_root, tmp_path, capsys):
    with Library.open(library_root, readonly=True) as lib:
        n_tiles = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        side = int(np.ceil(np.sqrt(n_tiles + 1)))
        with pytest.raises(UsageError, match=f"--max-uses 1 with {n_tiles} tiles fills at most {n_tiles} cells"):
            plan_mosaic(lib, SAMPLE, MosaicOptions(grid=(side, side), max_uses=1))
    code = main(["mosaic", "--library", str(library_root), SAMPLE, "--output", str(tmp_path / "o.png"),
                 "--grid", f"{side}x{side}", "--max-uses", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --max-uses 1 with ") and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()


def test_max_uses_zero_is_a_one_line_error(library_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["mosaic", "--library", str(library_root), SAMPLE, "--output", str(tmp_path / "o.png"), "--max-uses", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: python -m builder mosaic: argument --max-uses: must be at least 1, got 0\n"
    with pytest.raises(UsageError, match="--max-uses must be at least 1, got 0"):
        MosaicOptions(max_uses=0).validate()


def test_a_round_places_as_many_cells_as_the_lists_allow_and_names_the_rest():
    ranked = np.array([[0, -1], [0, -1], [1, 0]])
    got = match_some(ranked, np.array([[1.0, np.inf], [2.0, np.inf], [5.0, 1.0]]), 1)
    assert got[2] == 1 and sorted(got[:2].tolist()) == [-1, 0]  # one of the first two is left out, named -1
    got = match_some(ranked, np.ones((3, 2)), np.array([0, 1]))  # tile 0 used up: only cell 2 has a tile left
    assert got.tolist() == [-1, -1, 1]


def test_a_flat_picture_needs_several_rounds_and_still_gets_distinct_tiles(library_root, caplog):
    flat = Image.new("RGB", (300, 300), (40, 90, 160))
    with Library.open(library_root, readonly=True) as lib:
        n_tiles = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        side = int(np.sqrt(n_tiles * 0.8))
        with caplog.at_level(logging.INFO, logger="builder.mosaic.fair"):
            # lists of 32 (not the default 256, which covers this whole library in one round)
            plan = plan_mosaic(lib, flat, MosaicOptions(grid=(side, side), max_uses=1, min_candidates=32, shortlist=32))
    assert "go again" in caplog.text  # identical cells' shortlists overlap: later rounds were needed
    assert len(np.unique(plan.tile_ids)) == side * side
