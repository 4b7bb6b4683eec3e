"""Mosaic quality on real libraries: a synthetic tile never wins a tie with a real one, the default
is never worse than ``--real-only`` on a real+synthetic library, ``--overlay`` is validated and
brings the mosaic closer the more of it there is, and ``--max-uses 1`` stays within a stated margin
of the default.  Every figure asserted is one the code itself computes (the mosaic's fidelity);
nothing here is timed."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
import skimage.data
from PIL import Image

from builder.cli import main
from builder.core.color import rgb_to_lab
from builder.core.errors import UsageError
from builder.core.library import Library
from builder.mosaic import Layout, MosaicOptions, mosaic_file, plan_mosaic
from builder.mosaic.target import target_samples
from builder.ops.synthesize import synthesize

SAMPLE = "data/sample_target.jpg"
# The copy's id sorts before or after every uuid4 of the library: whichever way ties happen to be
# ordered, the real tile must win.
COPY_IDS = ("00000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff")
# The preview the synthetic-tile guard decides on agrees with the rendered figures within this
# (tests/test_mosaic_fidelity.py::test_the_preview_predicts_the_rendered_figures).
PREVIEW_TOLERANCE = 0.02
# --max-uses 1 against the default on the real+synthetic fixture (380 tiles, 54-64 cells; measured
# +0.09..+0.53 CIEDE2000, -0.004..+0.010 SSIM; bench/README.md has the photos' figures): at most this
# much more CIEDE2000 and this much less SSIM.
MAX_USES_DELTA_E = 1.0
MAX_USES_SSIM = 0.03


def targets() -> dict[str, Image.Image]:
    return {"sample_target": Image.open(SAMPLE).convert("RGB"), "coffee": Image.fromarray(skimage.data.coffee()),
            "chelsea": Image.fromarray(skimage.data.chelsea())}


GRIDS = {"sample_target": (16, 16), "coffee": (18, 12), "chelsea": (18, 12)}


@pytest.fixture(scope="module")
def mixed_root(earth_library, tmp_path_factory):
    """The 160-tile earth library plus synthetic tiles for every empty bucket the test pictures'
    cells fall in (through ``synthesize`` itself)."""
    root = tmp_path_factory.mktemp("mixed") / "mosaic_library"
    shutil.copytree(earth_library, root, ignore=shutil.ignore_patterns(".lock"))
    with Library.open(root) as lib:
        wanted = set()
        for name, img in targets().items():
            layout = Layout(img.width, img.height, MosaicOptions(grid=GRIDS[name]))
            sub = target_samples(img, layout, (1,))[1].reshape(-1, 3)
            wanted |= set(lib.index.assign_lab(rgb_to_lab(sub.astype(np.float64)))[0].tolist())
        counts = lib.bucket_counts()
        empty = sorted(b for b in wanted if counts[b] == 0)
        report = synthesize(lib, max_uses=4, buckets=empty, progress=False)
        assert report.made > 20
    return root


def add_synthetic_copy(root, tile_id: str, copy_id: str) -> None:
    """A synthetic tile ``copy_id`` that is a byte-for-byte copy of real tile ``tile_id``, in its
    bucket: every cell costs it exactly what it costs the original."""
    with sqlite3.connect(root / "tiles.db") as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(tiles)")]
        row = dict(zip(columns, conn.execute("SELECT * FROM tiles WHERE id = ?", (tile_id,)).fetchone()))
        bucket = row["bucket_id"]
        folder = root / f"bucket_{bucket:04d}"
        shutil.copyfile(folder / f"{tile_id}.png", folder / f"{copy_id}.png")
        row.update(id=copy_id, filepath=row["filepath"].replace(tile_id, copy_id), synthetic=1, derived_from=tile_id)
        conn.execute(f"INSERT INTO tiles ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


@pytest.mark.parametrize("copy_id", COPY_IDS)
@pytest.mark.parametrize("max_uses", [None, 9])
def test_a_synthetic_tile_never_wins_over_a_real_one_at_equal_cost(earth_library, tmp_path, max_uses, copy_id):
    root = tmp_path / "mosaic_library"
    shutil.copytree(earth_library, root, ignore=shutil.ignore_patterns(".lock"))
    with Library.open(root, readonly=True) as lib:
        original, bucket = lib.conn.execute("SELECT id, bucket_id FROM tiles ORDER BY id LIMIT 1").fetchone()
        picture = Image.open(lib.tile_path(bucket, original)).convert("RGB")
    add_synthetic_copy(root, original, copy_id)
    target = Image.new("RGB", (768, 768))
    for y in range(3):
        for x in range(3):
            target.paste(picture, (x * 256, y * 256))  # every cell is exactly the tile
    options = MosaicOptions(grid=(3, 3), tile_size=16, no_repeat_radius=0, max_uses=max_uses)
    with Library.open(root, readonly=True) as lib:
        result = mosaic_file(lib, target, tmp_path / "m.png", options, progress=False)
    ids = set(result.plan.tile_ids.ravel())
    assert ids == {original}  # the real tile everywhere: the copy fits as well, and loses
    assert result.synthetic_cells == 0


@pytest.mark.slow  # synthesizes ~220 buckets (half a minute)
def test_the_default_is_never_worse_than_real_only_on_a_real_and_synthetic_library(mixed_root, tmp_path):
    helped, used = 0, 0
    with Library.open(mixed_root, readonly=True) as lib:
        for name, img in targets().items():
            options = MosaicOptions(grid=GRIDS[name], tile_size=16)
            default = mosaic_file(lib, img, tmp_path / f"{name}.png", options, progress=False)
            real = mosaic_file(lib, img, tmp_path / f"{name}_real.png", MosaicOptions(
                grid=GRIDS[name], tile_size=16, real_only=True), progress=False)
            d, r = default.fidelity, real.fidelity
            assert d.delta_e <= r.delta_e + PREVIEW_TOLERANCE and d.ssim >= r.ssim - PREVIEW_TOLERANCE, (name, d, r)
            used += default.synthetic_cells
            helped += d.delta_e < r.delta_e and d.ssim > r.ssim
    assert used > 0 and helped > 0  # synthetic tiles were used where they help, not just refused


@pytest.mark.parametrize(("value", "shown"), [("-1", "-1"), ("100.5", "100.5"), ("lots", "'lots'")])
def test_overlay_outside_0_to_100_is_a_one_line_error(earth_library, tmp_path, capsys, value, shown):
    try:
        code = main(["mosaic", "--library", str(earth_library), SAMPLE, "--output", str(tmp_path / "o.png"),
                     "--overlay", value])
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("error: ") and "--overlay" in err and shown in err, err
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(UsageError, match=r"--overlay must be a percentage within 0\.\.100, got 150"):
        MosaicOptions(overlay=150).validate()


def test_more_overlay_brings_the_mosaic_closer_and_the_summary_says_so(earth_library, tmp_path, capsys):
    sample = Image.open(SAMPLE).convert("RGB")
    figures = []
    with Library.open(earth_library, readonly=True) as lib:
        for percent in (0, 20, 40, 60, 80, 100):
            result = mosaic_file(lib, sample, tmp_path / f"o{percent}.png",
                                 MosaicOptions(grid=(12, 12), tile_size=16, overlay=percent), progress=False)
            figures.append(result.fidelity)
            assert result.as_dict()["options"]["overlay"] == percent
            assert (f"with {percent}% of the input overlaid" in result.summary()) == (percent > 0)
    delta_e, ssim = [f.delta_e for f in figures], [f.ssim for f in figures]
    assert all(a > b for a, b in zip(delta_e, delta_e[1:])), delta_e
    assert all(a < b for a, b in zip(ssim, ssim[1:])), ssim
    assert delta_e[-1] < 0.5 and ssim[-1] > 0.98  # all input: the mosaic is the picture itself
    assert main(["mosaic", "--library", str(earth_library), SAMPLE, "--output", str(tmp_path / "cli.png"),
                 "--grid", "12x12", "--tile-size", "16", "--overlay", "30"]) == 0
    assert "with 30% of the input overlaid" in capsys.readouterr().out


@pytest.mark.slow  # the real+synthetic fixture
def test_max_uses_1_stays_within_its_margin_of_the_default(mixed_root):
    from builder.mosaic import make_mosaic, measure_fidelity

    with Library.open(mixed_root, readonly=True) as lib:
        for name, img in targets().items():
            grid = (8, 8) if name == "sample_target" else (9, 6)
            figures = {}
            for uses in (None, 1):
                options = MosaicOptions(grid=grid, tile_size=16, max_uses=uses)
                plan = plan_mosaic(lib, img, options)
                if uses == 1:
                    assert plan.most_uses == 1
                figures[uses] = measure_fidelity(img, make_mosaic(lib, img, options), *grid, plan.layout.box)
            default, fair = figures[None], figures[1]
            assert fair.delta_e <= default.delta_e + MAX_USES_DELTA_E, (name, default, fair)
            assert fair.ssim >= default.ssim - MAX_USES_SSIM, (name, default, fair)
