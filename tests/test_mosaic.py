"""Photomosaics on a real library of Blue Marble tiles: bucket choice, fallback, repetition,
sizes, the streamed PNG, the feature cache and bad inputs."""

import shutil
import uuid

import numpy as np
import pytest
from PIL import Image

from builder.cli import main
from builder.core.color import lab_to_rgb, rgb_to_lab
from builder.core.errors import ImageRejected, UsageError
from builder.core.library import Library
from builder.core.thumbcache import cache_keys, read_thumbs
from builder.mosaic import (
    CacheIndex,
    MosaicOptions,
    ThumbnailCache,
    load_tile_table,
    make_mosaic,
    mosaic_file,
    plan_mosaic,
    render_mosaic,
    required_tiles,
)
from builder.mosaic.tiletable import DEAD_ROWS_KEPT
from builder.ops.ingest import ingest
from tests.support.images import png_claiming

SAMPLE = "data/sample_target.jpg"


@pytest.fixture(scope="module")
def library_root(earth_library):
    return earth_library


@pytest.fixture
def lib(library_root):
    with Library.open(library_root, readonly=True) as lib:
        yield lib


def flat(rgb, size=(96, 64)):
    return Image.new("RGB", size, tuple(int(v) for v in rgb))


def populated_by_distance(lib, lab):
    """Populated buckets sorted by distance to ``lab`` (brute force) and their tile counts."""
    counts = lib.bucket_counts()
    ids = np.flatnonzero(counts)
    d = np.linalg.norm(lib.centroids[ids] - lab, axis=1)
    order = np.argsort(d, kind="stable")
    return ids[order], counts[ids[order]]


def nearest_until(ids, counts, minimum):
    """Whole buckets, nearest first, until they hold ``minimum`` tiles: the documented candidate set."""
    n = int(np.searchsorted(np.cumsum(counts), minimum) + 1)
    return set(ids[:n].tolist())


def test_flat_colour_uses_only_its_own_populated_bucket(lib):
    counts = lib.bucket_counts()
    bucket = int(np.argmax(counts))
    assert counts[bucket] >= 3
    # The colour of a real tile of that bucket (rounded to sRGB integers) lands in that bucket.
    row = lib.conn.execute("SELECT mean_l, mean_a, mean_b FROM tiles WHERE bucket_id = ? LIMIT 1", (bucket,)).fetchone()
    rgb = np.round(lab_to_rgb(np.array(row)))
    assert int(lib.index.assign_lab(rgb_to_lab(rgb))[0][0]) == bucket
    plan = plan_mosaic(lib, flat(rgb), MosaicOptions(grid=(6, 4), no_repeat_radius=0, min_candidates=1))
    assert set(plan.bucket_grid.ravel().tolist()) == {bucket}
    assert plan.fallback_cells == 0

    # With repetition control the set widens to whole nearest populated buckets, never beyond.
    radius = 1
    plan = plan_mosaic(lib, flat(rgb), MosaicOptions(grid=(6, 4), no_repeat_radius=radius, min_candidates=8))
    ids, n = populated_by_distance(lib, rgb_to_lab(rgb))
    assert ids[0] == bucket
    assert set(plan.bucket_grid.ravel().tolist()) <= nearest_until(ids, n, max(8, required_tiles(radius)))


def test_flat_colour_with_an_empty_bucket_falls_back_to_the_nearest_populated_ones(lib):
    rgb = (255, 0, 255)  # magenta: no Earth tile has it
    lab = rgb_to_lab(np.array(rgb, dtype=float))
    own = int(lib.index.assign_lab(lab)[0][0])
    assert lib.bucket_counts()[own] == 0
    ids, n = populated_by_distance(lib, lab)
    plan = plan_mosaic(lib, flat(rgb), MosaicOptions(grid=(5, 3), no_repeat_radius=0, min_candidates=1))
    assert set(plan.bucket_grid.ravel().tolist()) == {int(ids[0])}
    assert plan.fallback_cells == 15
    plan = plan_mosaic(lib, flat(rgb), MosaicOptions(grid=(5, 3), no_repeat_radius=1))
    assert set(plan.bucket_grid.ravel().tolist()) <= nearest_until(ids, n, 32)


@pytest.mark.parametrize("radius", [1, 2])
def test_no_repeat_radius_holds_on_the_tile_id_grid(lib, radius):
    plan = plan_mosaic(lib, SAMPLE, MosaicOptions(grid=(24, 24), no_repeat_radius=radius))
    ids = plan.tile_ids
    rows, cols = ids.shape
    clashes = [
        (r, c, rr, cc)
        for r in range(rows) for c in range(cols)
        for rr in range(max(0, r - radius), min(rows, r + radius + 1))
        for cc in range(max(0, c - radius), min(cols, c + radius + 1))
        if (rr, cc) != (r, c) and ids[r, c] == ids[rr, cc]
    ]
    assert clashes == []
    # Without the constraint the same picture does repeat tiles next to each other.
    free = plan_mosaic(lib, SAMPLE, MosaicOptions(grid=(24, 24), no_repeat_radius=0)).tile_ids
    assert (free[:, 1:] == free[:, :-1]).any() or (free[1:] == free[:-1]).any()


def test_radius_needing_more_tiles_than_the_library_has_is_a_usage_error(lib):
    n = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    radius = 1
    while required_tiles(radius) <= n:
        radius += 1
    with pytest.raises(UsageError, match=f"--no-repeat-radius {radius} needs at least"):
        plan_mosaic(lib, SAMPLE, MosaicOptions(grid=(4, 4), no_repeat_radius=radius))


def test_output_sizes_and_streamed_png_equals_the_in_memory_image(lib, tmp_path, bluemarble):
    target = bluemarble.crop((1000, 600, 1200, 750))  # 200x150
    img = make_mosaic(lib, target, MosaicOptions(cell_size=16))
    assert img.size == (12 * 32, 9 * 32)  # default tile size: the cell size, at least 32
    opts = MosaicOptions(grid=(10, 5), tile_size=20, blend=0.4, no_repeat_radius=1)
    plan = plan_mosaic(lib, target, opts)
    assert plan.grid.shape == (5, 10) and plan.output_size == (200, 100)
    memory = np.asarray(render_mosaic(lib, plan))
    result = mosaic_file(lib, target, tmp_path / "out" / "m.png", opts)
    with Image.open(result.output) as written:
        assert written.format == "PNG" and written.size == (200, 100)
        assert np.array_equal(np.asarray(written.convert("RGB")), memory)
    assert "200x100 px, 10x5 cells of 20 px" in result.summary()
    # Blending pulls the picture toward the target: closer cell means than without it.
    plain = np.asarray(render_mosaic(lib, plan_mosaic(lib, target, MosaicOptions(grid=(10, 5), tile_size=20, blend=0))))
    goal = np.asarray(target.resize((10, 5), Image.Resampling.BOX), dtype=float)
    err = [np.abs(np.asarray(Image.fromarray(m).resize((10, 5), Image.Resampling.BOX), dtype=float) - goal).mean()
           for m in (plain, memory)]
    assert err[1] < err[0]


def test_tiles_are_placed_as_planned(lib):
    """Each output cell is the planned tile, resized: compare against the tile file itself."""
    plan = plan_mosaic(lib, SAMPLE, MosaicOptions(grid=(4, 3), tile_size=64, no_repeat_radius=1, max_correction=0,
                                                     contrast=False))
    out = np.asarray(render_mosaic(lib, plan))
    for r in range(3):
        for c in range(4):
            tile = Image.open(lib.tile_path(int(plan.bucket_grid[r, c]), str(plan.tile_ids[r, c]))).convert("RGB")
            assert np.array_equal(out[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64], np.asarray(tile.reduce(4)))


def cache_files(folder):
    return sorted(p.name for p in folder.glob("mosaic_thumbs64.*"))


def test_thumbnail_cache_is_filled_by_the_store_reused_and_never_trusted_blindly(library_root, tmp_path, bluemarble):
    root = tmp_path / "mosaic_library"
    shutil.copytree(library_root, root, ignore=shutil.ignore_patterns(".lock"))
    cache = ThumbnailCache.of(root)
    with Library.open(root, readonly=True) as lib:
        n = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        # The ingest that built the library cached every stored tile's thumbnail as it committed.
        pixels, index = cache.load()
        assert len(index) == n and len(pixels) == n
        fresh = load_tile_table(lib, 2, use_cache=False)
        every = np.arange(len(fresh))
        first = load_tile_table(lib, 2)
        assert np.array_equal(first.rgb, fresh.rgb) and np.array_equal(first.thumbnails(every, 64), fresh.thumbnails(every, 64))
        tile = Image.open(lib.tile_path(int(first.bucket_ids[0]), str(first.ids[0]))).convert("RGB")
        assert np.array_equal(first.thumbnails([0], 64)[0], np.asarray(tile.reduce(4)))
        assert np.allclose(first.rgb[0], np.asarray(tile.reduce(4), dtype=float).reshape(2, 32, 2, 32, 3).mean(axis=(1, 3)))
        stamps = {p: p.stat().st_mtime_ns for p in (cache.keys_path, cache.pixels_path)}
        again = load_tile_table(lib, 2)
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing decoded, nothing appended
        assert np.array_equal(again.rgb, fresh.rgb)

        # Wrong sub-cell colours beside right thumbnails: caught against the re-decoded spot checks.
        (features,) = cache.folder.glob("mosaic_thumbs64.*.sub2.npy")
        np.save(features, np.load(features) * 0.5)
        assert np.array_equal(load_tile_table(lib, 2).rgb, fresh.rgb)
        table = load_tile_table(lib, 2)
        assert np.array_equal(np.load(features)[table.thumb_rows], table.rgb)  # rewritten right
        # Wrong pixels under the right keys: the spot check catches them and the cache is rebuilt.
        wrong = np.memmap(cache.pixels_path, dtype=np.uint8, mode="r+")
        wrong[:] = 255 - wrong
        wrong.flush()
        del wrong
        assert np.array_equal(load_tile_table(lib, 2).rgb, fresh.rgb)
        assert np.array_equal(cache.load()[0][cache.load()[1][(str(first.ids[0]), lib.conn.execute(
            "SELECT phash FROM tiles WHERE id = ?", (str(first.ids[0]),)).fetchone()[0])]], np.asarray(tile.reduce(4)))
        # A torn tail (a crash mid-append) and garbage keys are ignored, never trusted.
        with open(cache.pixels_path, "ab") as fh:
            fh.write(b"\x07" * 5000)
        assert np.array_equal(load_tile_table(lib, 2).rgb, fresh.rgb)
        cache.keys_path.write_bytes(b"../../tiles.db\0" * 400)
        assert np.array_equal(load_tile_table(lib, 2).rgb, fresh.rgb)
        assert len(cache.load()[1]) >= n

    # tiles.db changes: a new tile joins the cache through the store, a deleted one leaves the table.
    cache.rewrite([], [], np.empty((0, 64, 64, 3), np.uint8))
    with Library.open(root, readonly=True) as lib:
        load_tile_table(lib, 2)  # a library cached before the hook existed: decoded once, appended
    assert len(cache.load()[1]) == n
    extra = tmp_path / "extra"
    extra.mkdir()
    bluemarble.crop((4000, 300, 4256, 556)).save(extra / "new.png")
    with Library.open(root) as writer:
        assert ingest(writer, [extra], workers=1, progress=False).accepted == 1
        new_id = writer.conn.execute("SELECT id FROM tiles ORDER BY rowid DESC LIMIT 1").fetchone()[0]
        gone = writer.conn.execute("SELECT id, bucket_id FROM tiles WHERE id != ? LIMIT 1", (new_id,)).fetchone()
        with writer.conn:
            writer.conn.execute("DELETE FROM tiles WHERE id = ?", (gone[0],))
        writer.tile_path(gone[1], gone[0]).unlink()
    assert new_id in {key[0] for key in cache.load()[1]}  # appended by the store, no mosaic needed
    with Library.open(root, readonly=True) as lib:
        size = cache.pixels_path.stat().st_size
        table = load_tile_table(lib, 2)
        assert cache.pixels_path.stat().st_size == size  # the new tile was already there
        assert len(table) == n and gone[0] not in set(table.ids.tolist()) and new_id in set(table.ids.tolist())
        assert np.array_equal(table.rgb, load_tile_table(lib, 2, use_cache=False).rgb)
    assert len([f for f in cache_files(cache.folder) if f.endswith(".sub2.npy")]) == 1


def test_cache_index_finds_the_last_row_of_each_key_and_leaves_hostile_ids_out():
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    index = CacheIndex(cache_keys([a, b, a, "../../tiles.db", b], ["aa", "bb", "aa", "cc", "b2"]))
    assert index.size == 5
    found = index.rows(cache_keys([a, b, b, "../../tiles.db", str(uuid.uuid4())], ["aa", "bb", "b2", "cc", "aa"]))
    assert found.tolist() == [2, 1, 4, 3, -1]  # the newer row of a key written twice; -1 when absent
    assert index[(a, "aa")] == 2 and len(index) == 3 and set(index) == {(a, "aa"), (b, "bb"), (b, "b2")}
    for missing in [(a, "bb"), ("../../tiles.db", "cc")]:  # another pHash; an id that is no tile id
        with pytest.raises(KeyError):
            index[missing]
    assert CacheIndex(cache_keys([], [])).rows(cache_keys([a], ["aa"])).tolist() == [-1]


def test_read_thumbs_gives_the_memory_maps_rows_in_order(tmp_path):
    rng = np.random.default_rng(3)
    thumbs = rng.integers(0, 256, (700, 64, 64, 3), dtype=np.uint8)
    cache = ThumbnailCache(tmp_path)
    cache.append([str(uuid.uuid4()) for _ in range(700)], ["ab"] * 700, thumbs)
    pixels, _index = cache.load()
    rows = rng.integers(0, 700, 1000)  # unsorted, repeated, longer than one read block
    assert isinstance(pixels, np.memmap) and np.array_equal(read_thumbs(pixels, rows), thumbs[rows])
    assert np.array_equal(read_thumbs(thumbs, rows[:5]), thumbs[rows[:5]])  # an in-memory array too


def test_a_cache_mostly_of_deleted_tiles_is_compacted(library_root, tmp_path):
    root = tmp_path / "mosaic_library"
    shutil.copytree(library_root, root, ignore=shutil.ignore_patterns(".lock"))
    cache = ThumbnailCache.of(root)
    n = len(cache.load()[1])
    dead = DEAD_ROWS_KEPT + n + 1  # rows of tiles tiles.db no longer holds
    cache.append([str(uuid.uuid4()) for _ in range(dead)], ["00"] * dead, np.zeros((dead, 64, 64, 3), np.uint8))
    assert cache.load()[1].size == n + dead
    with Library.open(root, readonly=True) as lib:
        table = load_tile_table(lib, 2)
        fresh = load_tile_table(lib, 2, use_cache=False)
    pixels, index = cache.load()
    assert index.size == len(index) == n and len(pixels) == n  # rewritten with the live rows only
    assert np.array_equal(table.id_bytes, fresh.id_bytes) and np.array_equal(table.rgb, fresh.rgb)
    every = np.arange(len(table))
    assert np.array_equal(table.thumbnails(every, 64), fresh.thumbnails(every, 64))


def test_bad_inputs_are_rejected_before_decoding(lib, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello, not an image")
    with pytest.raises(ImageRejected, match="not_image"):
        plan_mosaic(lib, text)
    for side in (9000, 20000):  # over our limit, and over twice Pillow's
        bomb = tmp_path / f"bomb{side}.png"
        bomb.write_bytes(png_claiming(side, side))
        with pytest.raises(ImageRejected, match="too_large"):
            plan_mosaic(lib, bomb)
    truncated = tmp_path / "cut.jpg"
    with open(SAMPLE, "rb") as fh:
        truncated.write_bytes(fh.read()[:3000])
    with pytest.raises(ImageRejected, match="corrupt"):
        plan_mosaic(lib, truncated)
    with pytest.raises(UsageError, match="--cell-size 999 is larger than"):
        plan_mosaic(lib, SAMPLE, MosaicOptions(cell_size=999))


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/notes.txt", "--output", "{tmp}/o.png"], "error: not_image: {tmp}/notes.txt: not a PNG/JPEG/WEBP/BMP/GIF/TIFF image"),
        (["{tmp}/missing.jpg", "--output", "{tmp}/o.png"], "error: no such input image: {tmp}/missing.jpg"),
        ([SAMPLE, "--output", "{tmp}/o.jpg"], "error: --output must be a .png or .dzi file, got '{tmp}/o.jpg'"),
        ([SAMPLE, "--output", "{tmp}/o.png", "--grid", "10by3"],
         "error: python -m builder mosaic: argument --grid: --grid must look like COLSxROWS (e.g. 48x32), got '10by3'"),
        ([SAMPLE, "--output", "{tmp}/o.png", "--blend", "1.5"],
         "error: python -m builder mosaic: argument --blend: must be within 0..1, got 1.5"),
        ([SAMPLE, "--output", "{tmp}/o.png", "--tile-size", "300"], "error: --tile-size must be within 1..256, got 300"),
    ],
)
def test_cli_errors_are_one_line(library_root, tmp_path, capsys, args, message):
    (tmp_path / "notes.txt").write_text("not an image")
    argv = ["mosaic", "--library", str(library_root), *(a.format(tmp=tmp_path) for a in args)]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == message.format(tmp=tmp_path) and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()


def test_cli_writes_the_mosaic_and_prints_one_line(library_root, tmp_path, capsys):
    out = tmp_path / "mosaic.png"
    argv = ["mosaic", "--library", str(library_root), SAMPLE, "--output", str(out), "--grid", "16x16",
            "--tile-size", "16", "--no-repeat-radius", "1", "--subcells", "3"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mosaic {out}: 256x256 px, 16x16 cells of 16 px")
    with Image.open(out) as img:
        img.load()
        assert img.size == (256, 256) and img.mode == "RGB"
        assert np.asarray(img).std() > 10  # a picture, not a blank
    assert not list(tmp_path.glob(".*.part"))


def test_grey_transparent_and_exif_rotated_inputs(lib, tmp_path, bluemarble):
    crop = bluemarble.crop((2000, 800, 2200, 900))  # 200x100, wider than tall
    grey = tmp_path / "grey.png"
    crop.convert("L").save(grey)
    assert plan_mosaic(lib, grey, MosaicOptions(cell_size=20, no_repeat_radius=0)).grid.shape == (5, 10)
    rgba = crop.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white, so the cells ask for white tiles
    plan = plan_mosaic(lib, rgba, MosaicOptions(cell_size=20, no_repeat_radius=0))
    assert np.allclose(plan.target_rgb, 255)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    crop.save(rotated, exif=exif.tobytes())
    plan = plan_mosaic(lib, rotated, MosaicOptions(cell_size=20, no_repeat_radius=0))
    assert plan.grid.shape == (10, 5)
