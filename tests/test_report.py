"""The coverage report on a real library: figures, contact sheets, a gallery whose every link
resolves, and the page as headless Chromium renders it."""

import math
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from builder.cli import main
from builder.core.errors import UsageError
from builder.core.library import Library
from builder.ops.ingest import ingest
from builder.ops.report import render_report
from builder.ops.report.canvas import SYNTHETIC_COLOUR
from builder.ops.report.figures import AB_LIMIT, AB_PLOT, FIGURES, centroid_colours, region_rows, render_figures
from builder.ops.report.page import colour_order
from tests.support.html import Links
from tests.support.libraries import build_earth_library


@pytest.fixture(scope="module")
def library_root(tmp_path_factory, bluemarble):
    root = build_earth_library(tmp_path_factory.mktemp("report") / "lib&co", bluemarble, n=70, seed=21)
    with Library.open(root) as lib, lib.conn:
        # Give the tiles regions and a fetch history, as a harvest would have.
        ids = [r[0] for r in lib.conn.execute("SELECT id FROM tiles ORDER BY rowid")]
        for i, tile_id in enumerate(ids):
            lib.conn.execute("UPDATE tiles SET region = ? WHERE id = ?", ("Desert (Sahara)" if i % 3 else "<Arctic>", tile_id))
        rows = [("earth", 6, x, 0, "accepted" if x < 40 else "rejected:duplicate", "Desert (Sahara)", None) for x in range(60)]
        lib.conn.executemany("INSERT INTO fetched (source, z, x, y, status, region, tried_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return root


@pytest.fixture
def lib(library_root):
    with Library.open(library_root, readonly=True) as lib:
        yield lib


def valid_png(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.verify()
    img = Image.open(path)
    img.load()
    assert img.format == "PNG"
    return img


def test_figures_are_valid_pngs_with_every_centroid_in_its_own_colour(lib, tmp_path):
    figures = render_figures(lib, tmp_path / "figs")
    assert set(figures) == set(FIGURES)
    for path in figures.values():
        assert path.parent == tmp_path / "figs"
        img = valid_png(path)
        assert np.asarray(img).std() > 5
    # Populated buckets are solid discs in their own colour at their a*/b* position.
    ab = np.asarray(Image.open(figures["centroids_ab"]).convert("RGB")).astype(int)
    counts = lib.bucket_counts()
    colours = centroid_colours(lib.centroids)
    x0, y0, x1, y1 = AB_PLOT
    x = x0 + (lib.centroids[:, 1] + AB_LIMIT) * (x1 - x0) / (2 * AB_LIMIT)
    y = y1 - (lib.centroids[:, 2] + AB_LIMIT) * (y1 - y0) / (2 * AB_LIMIT)
    populated = np.flatnonzero(counts)
    hits = [np.abs(ab[int(round(y[i])), int(round(x[i]))] - colours[i]).max() <= 12 for i in populated]
    assert np.mean(hits) > 0.7, np.mean(hits)
    # Empty buckets are hollow: their centre is not painted in their colour as a disc would be.
    empty = np.flatnonzero(counts == 0)[::25]
    solid = [np.abs(ab[int(round(y[i])), int(round(x[i]))] - colours[i]).max() <= 12 for i in empty]
    assert np.mean(solid) < 0.3, np.mean(solid)


def test_region_rows_combine_kept_and_fetched(lib):
    rows = region_rows(lib.stats())
    kept = {r: k for r, k, _f in rows}
    fetched = {r: f for r, _k, f in rows}
    n = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    assert kept["<Arctic>"] + kept["Desert (Sahara)"] == n
    assert fetched["Desert (Sahara)"] == 60 and fetched["<Arctic>"] == 0


def test_report_gallery_links_only_to_files_that_exist(lib, tmp_path):
    out = tmp_path / "report"
    result = render_report(lib, out, progress=False)
    counts = lib.bucket_counts()
    populated = np.flatnonzero(counts)
    assert result.index == out / "index.html" and len(result.buckets) == len(populated)
    parser = Links()
    text = result.index.read_text(encoding="utf-8")
    parser.feed(text)
    assert parser.title == "Mosaic Library report: lib&co"  # escaped in the source, intact when parsed
    assert "lib&amp;co" in text
    assert len(parser.links) >= 2 * (len(populated) + len(FIGURES))
    for _tag, link in parser.links:
        url = urlparse(link)
        assert not url.scheme and not url.netloc and not link.startswith("/") and ".." not in link, link
        target = out / unquote(url.path)
        assert target.is_file(), link
        if target.suffix == ".png":
            valid_png(target)
    # One contact sheet per populated bucket, holding its tiles in a near-square grid.
    for entry in result.buckets:
        assert entry.count == counts[entry.bucket_id]
        cols = math.ceil(math.sqrt(entry.count))
        rows = math.ceil(entry.count / cols)
        assert valid_png(out / entry.sheet).size == (cols * 66 + 2, rows * 66 + 2)
    # Sorted by colour, and the page lists the buckets in that order.
    order = colour_order(lib.centroids, populated)
    assert [e.bucket_id for e in result.buckets] == order.tolist()
    positions = [text.index(f'id="bucket_{b:04d}"') for b in order]
    assert positions == sorted(positions)


def test_second_report_redraws_only_changed_buckets(library_root, tmp_path, bluemarble):
    root = tmp_path / "lib"
    shutil.copytree(library_root, root, ignore=shutil.ignore_patterns(".lock"))
    out = tmp_path / "report"
    with Library.open(root, readonly=True) as lib:
        first = render_report(lib, out, progress=False)
        again = render_report(lib, out, progress=False)
    assert again.sheets_drawn == 0 and again.sheets_reused == len(first.buckets)
    extra = tmp_path / "extra"
    extra.mkdir()
    bluemarble.crop((2000, 1500, 2256, 1756)).save(extra / "new.png")
    with Library.open(root) as writer:
        assert ingest(writer, [extra], workers=1, progress=False).accepted == 1
    with Library.open(root, readonly=True) as lib:
        third = render_report(lib, out, progress=False)
    assert third.sheets_drawn == 1
    sheets = sorted(p.name for p in (out / "sheets").glob("bucket_*.png"))
    assert sheets == sorted(Path(e.sheet).name for e in third.buckets)


def test_report_refuses_to_write_inside_the_library(lib):
    with pytest.raises(UsageError, match="inside the library"):
        render_report(lib, lib.root / "report")


def test_cli_prints_one_line(library_root, tmp_path, capsys):
    assert main(["report", "--library", str(library_root), "--output", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"report {tmp_path / 'r' / 'index.html'}: 4 figures, ")


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` with ``args`` (``--screenshot=...``, ``--dump-dom``)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed: `apt-get install -y chromium` (CI installs it in .ci/run)"
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def grey_span(row: np.ndarray) -> int:
    """How wide the figures' plot grey (128, 128, 128) spans along a screenshot's pixel row, first
    grey pixel to last (the plots' empty corners are grey whatever the points drawn on them)."""
    grey = np.flatnonzero(np.abs(row.astype(int) - 128).max(axis=1) <= 2)
    return int(grey[-1] - grey[0]) if len(grey) else 0


@pytest.mark.slow
def test_gallery_renders_in_headless_chromium_with_figures_at_a_readable_size(synthetic_root, tmp_path):
    """The first screen shows the real headline and the figures at about their drawn size (the
    a*/b* plot over 450 px wide, where its 13-px labels read), not 260-px thumbnails."""
    with Library.open(synthetic_root, readonly=True) as lib:
        result = render_report(lib, tmp_path / "report", progress=False)
    shot = tmp_path / "shot.png"
    chromium(tmp_path, result.index.resolve().as_uri(), f"--screenshot={shot}", "--window-size=1280,900")
    img = valid_png(shot).convert("RGB")
    assert img.size == (1280, 900)
    pixels = np.asarray(img)
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000  # figures and photos, not a blank page
    header = pixels[:60, :400].reshape(-1, 3)
    assert (np.abs(header.astype(int) - (31, 45, 61)).max(axis=1) <= 3).mean() > 0.5  # the styled header rendered
    widest = max(grey_span(pixels[y, :640]) for y in range(250, 900, 10))
    assert widest > 450, widest  # the a*/b* plot (left column), as shown on the first screen


@pytest.fixture(scope="module")
def synthetic_root(library_root, tmp_path_factory):
    """The report library with synthetic tiles in 40 of its empty buckets."""
    from builder.ops.synthesize import synthesize, targets

    root = tmp_path_factory.mktemp("synthetic") / "mosaic_library"
    shutil.copytree(library_root, root, ignore=shutil.ignore_patterns(".lock"))
    with Library.open(root) as writer:
        made = synthesize(writer, max_uses=2, buckets=sorted(targets(writer, 1))[::100][:40], progress=False)
    assert made.made == 40
    return root


def magenta(path: Path) -> int:
    """Pixels of a figure drawn in the synthetic tiles' colour."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(pixels - SYNTHETIC_COLOUR).max(axis=2) <= 30).sum())


def test_report_shows_real_coverage_first_and_synthetic_tiles_apart(synthetic_root, library_root, tmp_path):
    with Library.open(synthetic_root, readonly=True) as lib:
        result = render_report(lib, tmp_path / "report", progress=False)
        stats = lib.stats()
        real = lib.bucket_counts(real_only=True)
    text = result.index.read_text(encoding="utf-8")
    header = text[text.index("<header>"):text.index("</header>")]
    assert header.index(f"{stats['tiles_real']:,} real tiles in {stats['buckets_real']:,} of 5,000") < \
        header.index(f"add {stats['tiles_synthetic']:,} tiles and {stats['buckets_synthetic_only']:,} buckets")
    assert stats["tiles_synthetic"] == stats["buckets_synthetic_only"] == 40
    # Buckets with real tiles first, then the synthetic-only ones, each group by colour.
    ids = [e.bucket_id for e in result.buckets]
    with_real = [b for b in ids if real[b]]
    assert ids[:len(with_real)] == with_real and not any(real[b] for b in ids[len(with_real):])
    assert len(ids) - len(with_real) == 40
    # Synthetic tiles are drawn apart in every figure; the real library's figures have none of that colour.
    with Library.open(library_root, readonly=True) as plain:
        plain_figures = render_figures(plain, tmp_path / "plain")
    for name in FIGURES:
        assert magenta(result.figures[name]) > 20, name
        assert magenta(plain_figures[name]) == 0, name
    rows = {region: kept for region, kept, _f in region_rows(stats)}
    assert sum(rows.values()) == stats["tiles_real"]  # regions count real tiles; synthetic ones have their own row


@pytest.mark.slow
def test_gallery_filters_real_and_synthetic_buckets_in_chromium(synthetic_root, tmp_path):
    """The page's filter, run by Chromium: ``#real`` hides the synthetic-only buckets, ``#synthetic``
    the others, and the counter says how many are shown."""
    with Library.open(synthetic_root, readonly=True) as lib:
        result = render_report(lib, tmp_path / "report", progress=False)
    real_ids = {f"bucket_{e.bucket_id:04d}" for e in result.buckets if e.count > e.synthetic}
    every = {f"bucket_{e.bucket_id:04d}" for e in result.buckets}
    for show, wanted in (("real", real_ids), ("synthetic", every - real_ids), ("all", every)):
        dom = chromium(tmp_path, result.index.resolve().as_uri() + f"#{show}", "--dump-dom").stdout
        cards = re.findall(r'<article class="bucket[^"]*" id="(bucket_\d{4})"[^>]*?( hidden="")?>', dom)
        assert {name for name, hidden in cards} == every
        assert {name for name, hidden in cards if not hidden} == wanted, show
        assert f'<span id="shown">{len(wanted)}</span>' in dom


def test_empty_library_still_gets_a_report(make_library, tmp_path):
    lib = make_library("empty")
    result = render_report(lib, tmp_path / "r", progress=False)
    assert result.buckets == [] and set(result.figures) == set(FIGURES)
    for path in result.figures.values():
        valid_png(path)
    assert "Buckets (0 populated: 0 with real tiles, 0 synthetic only)" in result.index.read_text(encoding="utf-8")


def test_a_report_removes_what_a_killed_report_left(lib, tmp_path):
    out = tmp_path / "report"
    (out / "sheets").mkdir(parents=True)
    proc = subprocess.Popen(["true"])
    proc.wait()  # a process that has ended: what it left is a killed run's
    left = [out / f".index.html.{proc.pid}.part", out / "sheets" / f".bucket_0001_ab.png.{proc.pid}.part"]
    for path in left:
        path.write_bytes(b"half written")
    mine = out / f".notes.txt.{proc.pid}.part"  # not a report's kind of file: left alone
    mine.write_text("mine")
    render_report(lib, out, progress=False)
    assert not any(path.exists() for path in left) and mine.read_text() == "mine"
    assert not [p for p in out.rglob(".*.part") if p != mine]
