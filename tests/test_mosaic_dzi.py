"""Deep Zoom output: every level and tile of the pyramid exists at the right size, the full
level is the mosaic itself, a failed run leaves nothing, and the viewer page shows the mosaic in
headless Chromium from disk (no server, no network)."""

import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from builder.cli import main
from builder.core.library import Library
from builder.mosaic import DZI_TILE, DziWriter, MosaicOptions, mosaic_file, plan_mosaic, render_mosaic
from builder.mosaic.dzi import levels

SAMPLE = "data/sample_target.jpg"


def expected_tiles(width, height):
    """``{(level, col, row): (w, h)}`` of a DZI pyramid, from the format's definition."""
    out = {}
    for level, (w, h) in enumerate(levels(width, height)):
        for col in range(-(-w // DZI_TILE)):
            for row in range(-(-h // DZI_TILE)):
                out[(level, col, row)] = (min(DZI_TILE, w - col * DZI_TILE), min(DZI_TILE, h - row * DZI_TILE))
    return out


def check_pyramid(dzi, width, height, fmt):
    root = ET.parse(dzi).getroot()
    ns = "{http://schemas.microsoft.com/deepzoom/2008}"
    assert root.tag == f"{ns}Image" and root.get("Format") == fmt and root.get("TileSize") == str(DZI_TILE)
    size = root.find(f"{ns}Size")
    assert (int(size.get("Width")), int(size.get("Height"))) == (width, height)
    files = dzi.with_name(f"{dzi.stem}_files")
    want = expected_tiles(width, height)
    found = {}
    for path in files.rglob(f"*.{fmt}"):
        col, row = path.stem.split("_")
        with Image.open(path) as img:
            found[(int(path.parent.name), int(col), int(row))] = img.size
    assert found == want
    return files


def test_pyramid_is_complete_and_its_full_level_is_the_mosaic(earth_library, tmp_path):
    options = MosaicOptions(grid=(13, 9), tile_size=40)
    with Library.open(earth_library, readonly=True) as lib:
        result = mosaic_file(lib, SAMPLE, tmp_path / "out" / "m.dzi", options, dzi_image="png")
        memory = np.asarray(render_mosaic(lib, plan_mosaic(lib, SAMPLE, options)))
    assert result.format == "dzi" and result.output == tmp_path / "out" / "m.dzi"
    assert result.viewer == tmp_path / "out" / "m.html" and result.viewer.is_file()
    files = check_pyramid(result.output, 520, 360, "png")
    top = len(levels(520, 360)) - 1
    full = np.zeros((360, 520, 3), dtype=np.uint8)
    for path in (files / str(top)).iterdir():
        col, row = map(int, path.stem.split("_"))
        with Image.open(path) as img:
            full[row * DZI_TILE:row * DZI_TILE + img.height, col * DZI_TILE:col * DZI_TILE + img.width] = img
    assert np.array_equal(full, memory)  # lossless PNG tiles: exactly the in-memory render
    with Image.open(files / str(top - 1) / "0_0.png") as half:  # the level below is its 2x2 box average
        expect = memory[:2 * half.height, :2 * half.width].reshape(half.height, 2, half.width, 2, 3).mean(axis=(1, 3))
        assert np.abs(np.asarray(half, dtype=float) - expect).max() <= 1
    assert result.fidelity is not None and "viewer" in result.summary()
    assert not list((tmp_path / "out").glob(".*"))  # no scratch left


@pytest.mark.parametrize("width, height, band", [(1, 1, 1), (257, 3, 2), (300, 515, 7), (512, 512, 256)])
def test_odd_sizes_and_bands_give_complete_pyramids(tmp_path, width, height, band):
    rng = np.random.default_rng(width)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    writer = DziWriter(tmp_path / "x.dzi", width, height, "jpg")
    for y in range(0, height, band):
        writer.write(pixels[y:y + band])
    writer.close()
    check_pyramid(tmp_path / "x.dzi", width, height, "jpg")


def test_an_interrupted_pyramid_leaves_nothing(tmp_path):
    writer = DziWriter(tmp_path / "x.dzi", 600, 600, "jpg")
    writer.write(np.zeros((300, 600, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="300 rows written, 600 declared"):
        writer.close()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_viewer_shows_the_mosaic_in_headless_chromium(earth_library, tmp_path, capsys):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: `apt-get install -y chromium` (scripts/test.sh installs it)"
    out = tmp_path / "view" / "mosaic.dzi"
    argv = ["mosaic", "--library", str(earth_library), SAMPLE, "--output", str(out), "--grid", "24x24",
            "--tile-size", "48"]
    assert main(argv) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"mosaic {out} (viewer {out.with_suffix('.html')}): 1152x1152 px")
    check_pyramid(out, 1152, 1152, "jpg")
    shot = tmp_path / "shot.png"
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=900,700",
        "--virtual-time-budget=8000", out.with_suffix(".html").resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape == (700, 900, 3)
    centre = pixels[200:500, 300:600].reshape(-1, 3)
    background = (np.abs(centre.astype(int) - (17, 17, 17)).max(axis=1) <= 2).mean()
    assert background < 0.2  # the middle of the page is the picture, not the page's dark background
    assert pixels.std() > 20 and len(np.unique(centre, axis=0)) > 1000  # tiles' texture, not a flat fill
