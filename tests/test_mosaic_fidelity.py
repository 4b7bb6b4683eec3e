"""Fidelity figures and colour correction on real pictures: a mosaic made of its input's own
crops scores near perfect, a flat grey one badly; streamed and whole-image figures agree; the
correction stays within its CIEDE2000 budget and brings the mosaic closer to its input."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage.color import deltaE_ciede2000

from builder.cli import main
from builder.core.color import rgb_to_lab
from builder.core.errors import UsageError
from builder.core.library import Library
from builder.mosaic import (
    MosaicOptions,
    compare_samples,
    correction_shift,
    make_mosaic,
    measure_fidelity,
    mosaic_file,
    plan_mosaic,
)
from tests.support.libraries import build_grid_library

SAMPLE = "data/sample_target.jpg"
CROPS = 8  # the sample (512 px) cut into 8x8 crops of 64 px


@pytest.fixture(scope="module")
def sample():
    return Image.open(SAMPLE).convert("RGB")


@pytest.fixture(scope="module")
def crops_root(tmp_path_factory, sample):
    return build_grid_library(tmp_path_factory.mktemp("own") / "mosaic_library", sample, CROPS, CROPS)


@pytest.fixture(scope="module")
def earth_root(earth_library):
    return earth_library


def test_a_mosaic_of_its_own_crops_scores_near_perfect(crops_root, sample, tmp_path):
    with Library.open(crops_root, readonly=True) as lib:
        stored = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        assert stored >= CROPS * CROPS - 4  # a few plain-wall crops may be pHash duplicates of each other
        options = MosaicOptions(grid=(CROPS, CROPS), tile_size=64, no_repeat_radius=0)
        result = mosaic_file(lib, SAMPLE, tmp_path / "own.png", options)
    assert result.fidelity.delta_e < 1.5, result.fidelity
    assert result.fidelity.ssim > 0.95, result.fidelity
    with Image.open(result.output) as img:  # the figure of the written file, measured from scratch
        again = measure_fidelity(sample, img, CROPS, CROPS)
    # (the mosaic's own figure reads the JPEG at a reduced DCT scale: a hair apart)
    assert again.delta_e < 1.5 and again.delta_e == pytest.approx(result.fidelity.delta_e, abs=0.15)
    assert again.ssim == pytest.approx(result.fidelity.ssim, abs=0.005)


def test_a_flat_grey_mosaic_of_a_varied_picture_scores_badly(sample):
    grey = Image.new("RGB", sample.size, (128, 128, 128))
    bad = measure_fidelity(sample, grey, 16, 16)
    assert bad.delta_e > 15 and bad.ssim < 0.2, bad
    assert measure_fidelity(sample, sample, 16, 16) == (0.0, 1.0)
    # Closer to the input is better on both figures: a blurred copy sits in between.
    blurred = sample.resize((32, 32), Image.Resampling.BOX).resize(sample.size, Image.Resampling.BILINEAR)
    mid = measure_fidelity(sample, blurred, 16, 16)
    assert 0 < mid.delta_e < bad.delta_e and bad.ssim < mid.ssim < 1


def test_streamed_figures_match_the_written_file_and_ciede2000_is_skimages(earth_root, sample, tmp_path):
    with Library.open(earth_root, readonly=True) as lib:
        result = mosaic_file(lib, SAMPLE, tmp_path / "m.png", MosaicOptions(grid=(12, 10), tile_size=24))
    layout = result.plan.layout
    with Image.open(result.output) as img:
        again = measure_fidelity(sample, img, layout.cols, layout.rows, layout.box)
        mosaic_small = np.asarray(img.convert("RGB").resize((24, 20), Image.Resampling.BOX), dtype=float)
    assert again.delta_e == pytest.approx(result.fidelity.delta_e, abs=0.05)
    assert again.ssim == pytest.approx(result.fidelity.ssim, abs=0.01)
    # The colour figure is skimage's CIEDE2000 of the 2x2-per-cell box means, averaged.
    target_small = np.asarray(sample.resize((24, 20), Image.Resampling.BOX, box=layout.box), dtype=float)
    reference = deltaE_ciede2000(rgb_to_lab(target_small), rgb_to_lab(mosaic_small)).mean()
    assert result.fidelity.delta_e == pytest.approx(reference, abs=0.1)


def test_shape_errors_are_usage_errors(sample):
    with pytest.raises(UsageError, match="same shape"):
        compare_samples(np.zeros((8, 8, 3)), np.zeros((8, 12, 3)))
    with pytest.raises(UsageError, match="RGB samples"):
        compare_samples(np.zeros((6, 8, 3)), np.zeros((6, 8, 3)))
    with pytest.raises(UsageError, match="at least 1x1 cells"):
        measure_fidelity(sample, sample, 0, 4)


def test_contrast_match_scales_a_tiles_texture_by_how_well_it_draws_its_cell(sample):
    """The gain is the least-squares fit of the tile's luma texture (4x4 samples, sub-cell means
    removed) to the cell's: a tile with the cell's pattern at half its contrast is doubled, the
    same pattern is kept, a reversed or flat one is calmed to MIN_GAIN, never beyond the limits."""
    from builder.mosaic.correct import MAX_GAIN, MIN_GAIN, luma_texture, texture_gain
    from builder.mosaic.fidelity import image_samples

    cells = image_samples(sample, 8, 8).reshape(8, 4, 8, 4, 3).transpose(0, 2, 1, 3, 4).reshape(64, 4, 4, 3)
    busy = cells[np.argsort(luma_texture(cells, 2).std(axis=1))[-8:]]  # the 8 most textured cells
    mean = busy.mean(axis=(1, 2), keepdims=True)
    cell = luma_texture(busy, 2)

    def gain(tiles):
        tex = luma_texture(tiles, 2)
        return texture_gain((tex * cell).sum(axis=1), (tex * tex).sum(axis=1), tex.shape[1])

    assert np.allclose(gain(mean + (busy - mean) / 2), MAX_GAIN, atol=0.1)
    assert np.all((gain(busy) > 0.9) & (gain(busy) <= 1.0))
    assert np.allclose(gain(mean - (busy - mean) / 2), MIN_GAIN)
    assert np.allclose(gain(np.repeat(np.repeat(mean, 4, 1), 4, 2)), MIN_GAIN)
    assert gain(mean + (busy - mean) / 8).max() <= MAX_GAIN


def test_the_preview_predicts_the_rendered_figures(earth_root, sample):
    """What the synthetic-tile guard decides on: the plan's fidelity samples computed without a
    render agree with the rendered mosaic's figures within 0.02, at any tile size."""
    from builder.mosaic.correct import preview_samples

    with Library.open(earth_root, readonly=True) as lib:
        for tile in (8, 16, 40):
            plan = plan_mosaic(lib, sample, MosaicOptions(grid=(12, 12), tile_size=tile))
            rendered = measure_fidelity(sample, make_mosaic(lib, sample, MosaicOptions(grid=(12, 12), tile_size=tile)),
                                        12, 12, plan.layout.box)
            previewed = compare_samples(plan.reference, preview_samples(plan))
            assert abs(previewed.delta_e - rendered.delta_e) < 0.02 and abs(previewed.ssim - rendered.ssim) < 0.02


def test_correction_never_exceeds_its_budget():
    rng = np.random.default_rng(3)
    tile = rng.uniform(0, 255, (400, 3))
    want = rng.uniform(0, 255, (400, 3))
    for budget in (0.5, 4.0, 12.0):
        shift = correction_shift(tile, want, 1.0, budget)
        moved = deltaE_ciede2000(rgb_to_lab(tile), rgb_to_lab(np.clip(tile + shift, 0, 255)))
        assert moved.max() <= budget + 0.05, (budget, moved.max())
        assert (moved > budget - 0.05).mean() > 0.5  # most colours are far apart: they use the budget
    # Unbounded and fully blended, the tile takes the target's colour.
    assert np.allclose(tile + correction_shift(tile, want, 1.0, np.inf), want, atol=0.5)
    # Half the way, unbounded: the LAB midpoint.
    half = rgb_to_lab(tile + correction_shift(tile, want, 0.5, np.inf))
    assert np.allclose(half, (rgb_to_lab(tile) + rgb_to_lab(want)) / 2, atol=0.5)


def test_a_larger_budget_brings_the_mosaic_closer_but_keeps_the_texture(earth_root, sample):
    figures, textures = [], []
    with Library.open(earth_root, readonly=True) as lib:
        for budget in (0.0, 5.0, 20.0):
            options = MosaicOptions(grid=(16, 16), tile_size=32, max_correction=budget, contrast=False)
            img = make_mosaic(lib, sample, options)
            figures.append(measure_fidelity(sample, img, 16, 16).delta_e)
            cells = np.asarray(img, dtype=float).reshape(16, 32, 16, 32, 3)
            textures.append(cells.std(axis=(1, 3)).mean())  # spread of pixels inside each cell
    assert figures[0] > figures[1] > figures[2], figures
    assert textures[2] > 0.6 * textures[0], textures  # a shift per sub-cell keeps the tiles' texture


def test_budget_zero_without_contrast_renders_the_tiles_untouched(earth_root):
    with Library.open(earth_root, readonly=True) as lib:
        options = MosaicOptions(grid=(4, 3), tile_size=64, max_correction=0, contrast=False)
        plan = plan_mosaic(lib, SAMPLE, options)
        out = np.asarray(make_mosaic(lib, SAMPLE, options))
        for r in range(3):
            for c in range(4):
                with Image.open(lib.tile_path(int(plan.bucket_grid[r, c]), str(plan.tile_ids[r, c]))) as tile:
                    assert np.array_equal(out[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64],
                                          np.asarray(tile.convert("RGB").reduce(4)))


def test_cli_prints_fidelity_and_json(earth_root, tmp_path, capsys):
    base = ["mosaic", "--library", str(earth_root), SAMPLE, "--grid", "8x8", "--tile-size", "16"]
    assert main([*base, "--output", str(tmp_path / "a.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert "fidelity: CIEDE2000 " in line and ", SSIM 0." in line and line.count("\n") == 0
    assert main([*base, "--output", str(tmp_path / "b.png"), "--json", "--max-correction", "0", "--no-contrast"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == str(tmp_path / "b.png") and report["format"] == "png"
    assert set(report["fidelity"]) == {"delta_e2000", "ssim"} and 0 < report["fidelity"]["delta_e2000"] < 100
    assert report["options"]["max_correction"] == 0 and report["options"]["contrast"] is False
    stages = report["stages"]  # where the time went, every stage of a mosaic timed
    assert set(stages) == {"target", "tiles", "match", "render", "correct", "write", "fidelity"}
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= report["seconds"] + 0.01


@pytest.mark.parametrize("args, message", [
    (["--max-correction", "-1"], "argument --max-correction: must be at least 0, got -1"),
    (["--max-correction", "nan"], "argument --max-correction: must be at least 0, got nan"),
    (["--blend", "-0.1"], "argument --blend: must be within 0..1, got -0.1"),
])
def test_bad_correction_values_are_one_line_errors(earth_root, tmp_path, capsys, args, message):
    argv = ["mosaic", "--library", str(earth_root), SAMPLE, "--output", str(tmp_path / "o.png"), *args]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err == f"error: python -m builder mosaic: {message}\n"
    with pytest.raises(UsageError, match="--max-correction must be a CIEDE2000 budget of 0 or more"):
        MosaicOptions(max_correction=-0.5).validate()
