"""mosaic_library.MosaicLibrary: rows, features and safety on a real library (real PNGs, real SQLite)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import datasets
import pytest

import mosaic_library
from builder.core.errors import LibraryError, UnsafePath
from builder.core.library import Library
from builder.ops.ingest import ingest
from mosaic_library import BadTile, MosaicLibrary, plan_shards
from tests.support.libraries import build_published_library
from tests.support.publish import db_rows, sha256

ROW_COLUMNS = ("phash", "mean_l", "mean_a", "mean_b", "source", "z", "x", "y", "lon", "lat", "region", "harvested_at")


@pytest.fixture(scope="module")
def library(library_factory) -> Path:
    return library_factory(build_published_library)


def prepare(root: Path, cache: Path, num_proc: int | None = None, **config) -> datasets.Dataset:
    builder = MosaicLibrary(data_dir=str(root), cache_dir=str(cache), **config)
    builder.download_and_prepare(num_proc=num_proc)
    return builder.as_dataset(split="train")


def raw_rows(ds: datasets.Dataset) -> list[dict]:
    """Rows with the image as its PNG bytes' sha256 (no decoding)."""
    if "image" in ds.features:
        ds = ds.cast_column("image", datasets.Image(decode=False))
    rows = []
    for row in ds:
        if "image" in row:
            row["image"] = sha256(row["image"]["bytes"])
        rows.append(row)
    return rows


def test_rows_features_and_bytes_match_the_library(library, tmp_path):
    ds = prepare(library, tmp_path / "cache")
    expected = db_rows(library / "tiles.db")
    assert ds.num_rows == len(expected) > 40

    label = ds.features["label"]
    assert isinstance(label, datasets.ClassLabel) and label.num_classes == 5000
    assert label.names[0] == "bucket_0000" and label.names[4999] == "bucket_4999"
    assert list(ds.features) == ["image", "label", "id", *ROW_COLUMNS]
    assert isinstance(ds.features["image"], datasets.Image)

    with Library.open(library, readonly=True) as lib:
        for row in raw_rows(ds):
            want = expected[row["id"]]
            assert row["label"] == want["bucket_id"]
            assert label.int2str(row["label"]) == f"bucket_{want['bucket_id']:04d}"
            assert {c: row[c] for c in ROW_COLUMNS} == {c: want[c] for c in ROW_COLUMNS}
            assert row["image"] == sha256(lib.tile_path(want["bucket_id"], row["id"]).read_bytes())
    # provenance survives: the harvested rows carry z/x/y and regions, ingested ones are null there
    assert {r["source"] for r in expected.values()} == {"ingest", "earth"}
    decoded = ds[0]["image"]
    assert decoded.size == (256, 256) and decoded.mode == "RGB"


def test_rows_are_ordered_by_bucket_then_id(library, tmp_path):
    ds = prepare(library, tmp_path / "cache", config_name="metadata")
    keys = list(zip(ds["label"], ds["id"]))
    assert keys == sorted(keys)


def test_num_proc_two_gives_the_same_dataset_as_one(library, tmp_path):
    one = raw_rows(prepare(library, tmp_path / "c1"))
    two = raw_rows(prepare(library, tmp_path / "c2", num_proc=2))
    assert two == one


def test_metadata_config_has_the_same_rows_without_images(library, tmp_path):
    meta = prepare(library, tmp_path / "cache", config_name="metadata")
    full = prepare(library, tmp_path / "cache")
    assert "image" not in meta.features
    assert meta.features["label"] == full.features["label"]
    # this library holds real tiles only: the metadata rows are the default config's, flagged real
    assert raw_rows(meta) == [{**{k: v for k, v in row.items() if k != "image"}, "synthetic": False, "derived_from": None}
                              for row in raw_rows(full)]


def test_missing_file_is_a_clear_error_naming_id_and_path(library_copy, tmp_path):
    victim = next(iter(db_rows(library_copy / "tiles.db").values()))
    path = library_copy / f"bucket_{victim['bucket_id']:04d}" / f"{victim['id']}.png"
    path.unlink()
    for num_proc in (None, 2):
        with pytest.raises(BadTile) as info:
            prepare(library_copy, tmp_path / f"cache{num_proc}", num_proc=num_proc)
        assert victim["id"] in str(info.value) and str(path) in str(info.value)
        assert "file missing" in str(info.value)


def test_skip_bad_skips_missing_and_corrupt_files_and_logs_them(library_copy, tmp_path, caplog):
    rows = list(db_rows(library_copy / "tiles.db").values())
    missing, corrupt = rows[0], rows[1]
    (library_copy / f"bucket_{corrupt['bucket_id']:04d}" / f"{corrupt['id']}.png").write_bytes(b"GIF89a not a png")
    with pytest.raises(BadTile, match=f"tile {corrupt['id']}: not a PNG file"):
        prepare(library_copy, tmp_path / "strict")
    (library_copy / f"bucket_{missing['bucket_id']:04d}" / f"{missing['id']}.png").unlink()
    with caplog.at_level(logging.WARNING, logger="mosaic_library"):
        ds = prepare(library_copy, tmp_path / "lenient", skip_bad=True)
    assert ds.num_rows == len(rows) - 2
    assert {missing["id"], corrupt["id"]}.isdisjoint(ds["id"])
    logged = caplog.text
    assert missing["id"] in logged and corrupt["id"] in logged and "skipped" in logged


def test_filepath_column_is_never_opened(library_copy, tmp_path):
    """A hostile filepath pointing at another file changes nothing: paths come from (bucket, id)."""
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not the tile")
    conn = sqlite3.connect(library_copy / "tiles.db")
    with conn:
        conn.execute("UPDATE tiles SET filepath = ?", (str(outside),))
    conn.close()
    ds = prepare(library_copy, tmp_path / "cache")
    expected = db_rows(library_copy / "tiles.db")
    for row in raw_rows(ds):
        b = expected[row["id"]]["bucket_id"]
        assert row["image"] == sha256((library_copy / f"bucket_{b:04d}" / f"{row['id']}.png").read_bytes())


@pytest.mark.parametrize("hostile", ["../../../etc/passwd", "/etc/passwd", "bucket_0001/../../x", "ABC", ""])
def test_hostile_ids_are_refused(library_copy, tmp_path, hostile):
    conn = sqlite3.connect(library_copy / "tiles.db")
    with conn:
        victim = conn.execute("SELECT id FROM tiles LIMIT 1").fetchone()[0]
        conn.execute("UPDATE tiles SET id = ? WHERE id = ?", (hostile, victim))
    conn.close()
    for config in ("default", "metadata"):
        with pytest.raises(UnsafePath) as info:
            prepare(library_copy, tmp_path / f"strict_{config}", config_name=config)
        assert repr(hostile) in str(info.value)
    ds = prepare(library_copy, tmp_path / "lenient", skip_bad=True)
    assert hostile not in ds["id"] and ds.num_rows == len(db_rows(library_copy / "tiles.db")) - 1


@pytest.mark.parametrize("bucket", [5000, -1, "x7", 2.5])
def test_out_of_range_buckets_are_refused(library_copy, tmp_path, bucket):
    conn = sqlite3.connect(library_copy / "tiles.db")
    with conn:
        conn.execute("UPDATE tiles SET bucket_id = ? WHERE id = (SELECT id FROM tiles LIMIT 1)", (bucket,))
    conn.close()
    with pytest.raises(LibraryError, match="bucket_id outside 0..4999") as info:
        prepare(library_copy, tmp_path / "strict")
    assert repr(bucket) in str(info.value)
    ds = prepare(library_copy, tmp_path / "lenient", skip_bad=True)
    assert ds.num_rows == len(db_rows(library_copy / "tiles.db")) - 1


def test_symlinked_bucket_leading_outside_is_refused(library_copy, tmp_path):
    victim = next(iter(db_rows(library_copy / "tiles.db").values()))
    bucket = library_copy / f"bucket_{victim['bucket_id']:04d}"
    elsewhere = tmp_path / "elsewhere"
    shutil.move(bucket, elsewhere)
    bucket.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePath, match="resolves outside the library"):
        prepare(library_copy, tmp_path / "cache")


def test_symlinked_tile_file_is_refused(library_copy, tmp_path):
    victim = next(iter(db_rows(library_copy / "tiles.db").values()))
    path = library_copy / f"bucket_{victim['bucket_id']:04d}" / f"{victim['id']}.png"
    outside = tmp_path / "outside.png"
    shutil.move(path, outside)
    path.symlink_to(outside)
    with pytest.raises(BadTile, match="is a symbolic link") as info:
        prepare(library_copy, tmp_path / "cache")
    assert victim["id"] in str(info.value)


def test_cache_is_keyed_on_library_content(library_copy, tmp_path, bluemarble):
    """A grown library is regenerated, not served stale from the same cache_dir."""
    cache = tmp_path / "cache"
    before = prepare(library_copy, cache, config_name="metadata").num_rows
    again = prepare(library_copy, cache, config_name="metadata").num_rows
    extra = tmp_path / "extra"
    extra.mkdir()
    from tests.support.images import real_crops

    for i, crop in enumerate(real_crops(bluemarble, 6, seed=99)):
        crop.save(extra / f"e{i}.png")
    with Library.open(library_copy) as lib:
        added = ingest(lib, [extra], workers=1, progress=False).accepted
    assert added > 0
    after = prepare(library_copy, cache, config_name="metadata").num_rows
    assert before == again and after == before + added


def test_not_a_library_is_a_clear_error(tmp_path):
    with pytest.raises(LibraryError, match="no library at"):
        MosaicLibrary(data_dir=str(tmp_path / "nope"), cache_dir=str(tmp_path / "c"))


def test_plan_shards_covers_every_bucket_exactly_once():
    counts = {b: (b % 7) * 3 for b in range(0, 5000, 13)}
    shards = plan_shards(counts, shard_rows=50)
    assert shards[0].lo == 0 and shards[-1].hi == 5000
    assert all(a.hi == b.lo for a, b in zip(shards, shards[1:]))
    assert all(s.lo < s.hi for s in shards)
    sizes = [sum(n for b, n in counts.items() if s.lo <= b < s.hi) for s in shards]
    assert max(sizes) < 50 + 18 and sum(sizes) == sum(counts.values())
    assert len(plan_shards({3: 10}, shard_rows=1000)) == 1
    assert len(plan_shards({b: 1 for b in range(64)}, shard_rows=1000)) == 16  # small libraries still split
    assert plan_shards({}) == [mosaic_library.Shard(0, 5000)]
