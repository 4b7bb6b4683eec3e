"""The assignment pipeline against the card's recipe, on real imagery, real files, real SQLite."""

import io
import sqlite3

import numpy as np
import pytest
from PIL import Image

from builder.assign.pipeline import Candidate, Pipeline
from builder.core.db import SEED_COLUMNS, TILE_COLUMNS
from builder.ops.ingest import ingest
from tests.support.images import jpeg_bytes, png_bytes, png_claiming, real_crops
from tests.support.recipe import card_recipe


def test_ingest_stores_what_the_cards_recipe_gives(make_library, real_tiles_dir):
    lib = make_library()
    report = ingest(lib, [real_tiles_dir], workers=2)
    assert report.accepted > 150
    assert report.accepted + sum(report.rejected.values()) == 240
    rows = lib.conn.execute("SELECT id, bucket_id, filepath, phash, mean_l, mean_a, mean_b FROM tiles").fetchall()
    assert len(rows) == report.accepted
    for tile_id, bucket_id, filepath, phash, *lab in rows:
        path = lib.tile_path(bucket_id, tile_id)
        assert filepath == f"mosaic_library/bucket_{bucket_id:04d}/{tile_id}.png"
        assert (lib.root.parent / filepath).resolve() == path.resolve()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "RGB" and img.size == (256, 256)
        ref_bucket, ref_lab, ref_hash = card_recipe(path, lib.centroids)
        assert bucket_id == ref_bucket
        assert np.allclose(lab, ref_lab, atol=1e-9)
        assert phash == ref_hash
    # No bucket over the cap, no duplicate phash in a bucket, temp empty at rest.
    assert lib.conn.execute("SELECT MAX(n) FROM (SELECT COUNT(*) n FROM tiles GROUP BY bucket_id)").fetchone()[0] <= 100
    assert not lib.conn.execute("SELECT bucket_id, phash FROM tiles GROUP BY 1, 2 HAVING COUNT(*) > 1").fetchall()
    assert list(lib.temp_dir.iterdir()) == []


def test_png_input_is_stored_byte_for_byte_and_jpeg_is_reencoded(make_library, tmp_path, bluemarble):
    lib = make_library()
    a, b = real_crops(bluemarble, 2, seed=99)
    png, jpg = png_bytes(a), jpeg_bytes(b)
    with Pipeline(lib, workers=1) as pipe:
        out = pipe.process([Candidate("a.png", data=png), Candidate("b.jpg", data=jpg)])
    assert [o.accepted for o in out] == [True, True]
    assert lib.tile_path(out[0].bucket_id, out[0].tile_id).read_bytes() == png
    stored = Image.open(lib.tile_path(out[1].bucket_id, out[1].tile_id))
    assert stored.format == "PNG"
    assert np.array_equal(np.asarray(stored.convert("RGB")), np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")))


def test_cap_and_duplicates_hold_within_and_across_batches(make_library, bluemarble):
    lib = make_library(cap=3)
    crop = real_crops(bluemarble, 1, seed=5)[0]
    same = [Candidate(f"same{i}.png", data=png_bytes(crop)) for i in range(3)]
    with Pipeline(lib, workers=1) as pipe:
        first = pipe.process(same)
        again = pipe.process(same[:1])
    assert [o.accepted for o in first] == [True, False, False]
    assert {o.reason for o in first[1:]} == {"duplicate"}
    assert again[0].reason == "duplicate"
    # Distinct tiles of one colour: shift the same crop so its mean colour (and bucket) stays put.
    arr = np.asarray(crop)
    shifted = [Image.fromarray(np.roll(arr, k * 37, axis=(0, 1))) for k in range(1, 8)]
    with Pipeline(lib, workers=1) as pipe:
        out = pipe.process([Candidate(f"s{k}.png", data=png_bytes(im)) for k, im in enumerate(shifted)])
    bucket = first[0].bucket_id
    n = lib.conn.execute("SELECT COUNT(*) FROM tiles WHERE bucket_id = ?", (bucket,)).fetchone()[0]
    assert n == 3
    assert sum(o.reason == "bucket_full" for o in out) >= 1


@pytest.mark.parametrize(
    "name, payload, reason",
    [
        ("empty.png", b"", "empty"),
        ("text.png", b"hello, I am not an image", "not_image"),
        ("page.jpg", b"<!DOCTYPE html><html><body>error</body></html>", "not_image"),
        ("bomb.png", png_claiming(60000, 60000), "too_large"),
        ("wide.png", None, "not_square"),
        ("tiny.png", None, "too_small"),
        ("truncated.png", None, "corrupt"),
        ("truncated.jpg", None, "corrupt"),
        ("header_only.jpg", None, "corrupt"),  # a JPEG cut inside its header: the signature, nothing decodable
        ("damaged.jpg", None, "corrupt"),  # bytes flipped all through a real JPEG
    ],
)
def test_bad_inputs_are_rejected_with_a_reason_and_never_stored(make_library, tmp_path, bluemarble, name, payload, reason):
    crop = real_crops(bluemarble, 1, seed=3)[0]
    if name == "wide.png":
        payload = png_bytes(crop.resize((512, 256)))
    elif name == "tiny.png":
        payload = png_bytes(crop.resize((32, 32)))
    elif name == "truncated.png":
        payload = png_bytes(crop)[:5000]
    elif name == "truncated.jpg":
        payload = jpeg_bytes(crop)[:3000]
    elif name == "header_only.jpg":
        payload = jpeg_bytes(crop)[:20]
    elif name == "damaged.jpg":
        damaged = bytearray(jpeg_bytes(crop))
        damaged[200::97] = bytes(b ^ 0x5A for b in damaged[200::97])
        payload = bytes(damaged)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(payload)
    lib = make_library()
    report = ingest(lib, [tmp_path / "in"])
    assert report.accepted == 0
    assert report.rejected == {reason: 1}
    assert name in report.examples[reason]
    assert lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0] == 0
    assert not [p for p in lib.root.glob("bucket_*/*")]
    assert list(lib.temp_dir.iterdir()) == []


def test_square_non_256_images_are_resized_to_256(make_library, tmp_path, bluemarble):
    crop = real_crops(bluemarble, 1, seed=8, size=512)[0]
    (tmp_path / "in").mkdir()
    crop.save(tmp_path / "in" / "big.png")
    lib = make_library()
    assert ingest(lib, [tmp_path / "in"]).accepted == 1
    (tile_id, bucket_id), = lib.conn.execute("SELECT id, bucket_id FROM tiles").fetchall()
    assert Image.open(lib.tile_path(bucket_id, tile_id)).size == (256, 256)


def test_rgba_and_palette_inputs_become_rgb_pngs(make_library, bluemarble):
    a, b = real_crops(bluemarble, 2, seed=21)
    lib = make_library()
    with Pipeline(lib, workers=1) as pipe:
        out = pipe.process([Candidate("rgba.png", data=png_bytes(a.convert("RGBA"))),
                            Candidate("pal.png", data=png_bytes(b.convert("P")))])
    for o in out:
        assert o.accepted
        assert Image.open(lib.tile_path(o.bucket_id, o.tile_id)).mode == "RGB"


def test_schema_is_the_cards_then_provenance(make_library):
    lib = make_library()
    cols = lib.conn.execute("PRAGMA table_info(tiles)").fetchall()
    assert [c[1] for c in cols] == list(TILE_COLUMNS)
    assert [(c[1], c[2]) for c in cols[:7]] == list(zip(SEED_COLUMNS, ["TEXT", "INTEGER", "TEXT", "TEXT", "REAL", "REAL", "REAL"]))
    assert cols[0][5] == 1  # id is the primary key
    indexes = {r[1]: [c[2] for c in lib.conn.execute(f"PRAGMA index_info({r[1]})")] for r in lib.conn.execute("PRAGMA index_list(tiles)") if r[1].startswith("idx_")}
    assert indexes == {"idx_bucket": ["bucket_id"], "idx_phash": ["bucket_id", "phash"]}
    assert lib.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert lib.conn.execute("PRAGMA user_version").fetchone()[0] >= 1


def test_old_seed_schema_is_migrated_on_open(tmp_path, make_library, bluemarble):
    from builder.core.library import Library

    lib = make_library()
    lib.ingest_ = None
    with Pipeline(lib, workers=1) as pipe:
        (out,) = pipe.process([Candidate("a.png", data=png_bytes(real_crops(bluemarble, 1, seed=2)[0]))])
    lib.close()
    # Rewrite tiles.db as the card published it: seven columns, no version.
    db = lib.root / "tiles.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE old AS SELECT id, bucket_id, filepath, phash, mean_l, mean_a, mean_b FROM tiles;"
        "DROP TABLE tiles; DROP TABLE fetched; DROP TABLE meta; ALTER TABLE old RENAME TO tiles;"
        "PRAGMA user_version=0;"
    )
    conn.close()
    with Library.open(lib.root) as again:
        cols = [c[1] for c in again.conn.execute("PRAGMA table_info(tiles)")]
        assert cols == list(TILE_COLUMNS)
        assert again.conn.execute("SELECT id, source FROM tiles").fetchall() == [(out.tile_id, None)]


def test_every_rejected_input_is_listed_with_its_reason(tmp_path, bluemarble, cli):
    """``ingest --json`` lists every rejected file with its reason; the text the first 20 (unusable
    ones first) and how many more; exit status 1 for the unusable ones."""
    import json
    from pathlib import Path

    from builder.core.library import Library

    folder = tmp_path / "in"
    folder.mkdir()
    crops = real_crops(bluemarble, 4, seed=12)
    crops[0].save(folder / "a_good.png")
    crops[0].save(folder / "b_same.png")  # a duplicate of a_good: the library's choice
    for i in range(24):
        (folder / f"c_junk_{i:02d}.png").write_bytes(b"junk %d" % i)
    (folder / "d_cut.jpg").write_bytes(jpeg_bytes(crops[1])[:2000])
    png_bytes_wide = png_bytes(crops[2].resize((300, 200)))
    (folder / "e_wide.png").write_bytes(png_bytes_wide)
    assert cli("init").returncode == 0
    res = cli("ingest", folder, "--workers", "1", "--json")
    assert res.returncode == 1
    report = json.loads(res.stdout)
    listed = {Path(r["path"]).name: r["reason"] for r in report["rejected_files"]}
    assert listed == {"b_same.png": "duplicate", **{f"c_junk_{i:02d}.png": "not_image" for i in range(24)},
                      "d_cut.jpg": "corrupt", "e_wide.png": "not_square"}
    wide = next(r for r in report["rejected_files"] if r["path"].endswith("e_wide.png"))
    assert wide["detail"] == "300x200: tiles are square; `ingest --crop` takes the centre square of such images"

    res = cli("ingest", folder, "--workers", "1")  # again, as text: everything is now a duplicate or unusable
    lines = res.stdout.splitlines()
    assert lines[0].startswith("ingest: 0 accepted, 28 rejected (corrupt 1, duplicate 2, not_image 24, not_square 1)")
    shown = lines[1:21]
    assert all(line.startswith("  rejected ") for line in shown) and not any("duplicate" in line for line in shown)
    assert lines[21] == "  ... and 8 more rejected (--json lists every one)" and len(lines) == 22

    res = cli("ingest", folder / "e_wide.png", "--crop", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["accepted"] == 1
    with Library.open(tmp_path / "mosaic_library", readonly=True) as lib:
        tile_id, bucket_id = lib.conn.execute("SELECT id, bucket_id FROM tiles ORDER BY rowid DESC LIMIT 1").fetchone()
        stored = Image.open(lib.tile_path(bucket_id, tile_id))
        assert stored.size == (256, 256)
        centre = crops[2].resize((300, 200)).crop((50, 0, 250, 200)).resize((256, 256), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(stored.convert("RGB")), np.asarray(centre))
