"""build / push / restore on a real library: real Parquet, real SQLite, load_dataset in a fresh process."""

from __future__ import annotations

import functools
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from builder.core.db import TILE_COLUMNS
from builder.core.errors import LibraryError, UnsafePath, UsageError
from builder.core.library import Library
from builder.ops.ingest import ingest
from builder.ops.verify import verify_library
from builder.publish import (
    build_staging,
    plan_upload,
    restore_library,
    staging_state,
    validate_repo_id,
)
from builder.publish.manifest import ReleaseIncomplete
from builder.publish.staging import MANIFEST
from tests.support.images import real_crops
from tests.support.libraries import build_published_library
from tests.support.localhub import LocalHub
from tests.support.publish import (
    FAKE_TOKEN,
    db_rows,
    fake_token_env,
    load_in_fresh_process,
    reseal,
    sha256,
)

SHARD_NAME = r"data/train-\d{5}-of-\d{5}\.parquet"


@pytest.fixture(scope="module")
def library(library_factory) -> Path:
    return library_factory(build_published_library)


@pytest.fixture(scope="module")
def staging(library, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage") / "staging"
    build_staging(library, out, num_proc=1)
    return out


@pytest.fixture
def token_cli(cli, tmp_path):
    """The CLI in tmp_path with the fake token, and every Hugging Face cache under tmp_path, in its environment."""
    return functools.partial(cli, env=fake_token_env(tmp_path))


def read_parquet_rows(staging: Path) -> list[dict]:
    rows = []
    for path in sorted((staging / "data").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            row["image"] = sha256(row["image"]["bytes"])
            rows.append(row)
    return rows


def footer_bytes(path: Path) -> int:
    """A Parquet file's footer length (its last 8 bytes: length, then ``PAR1``)."""
    return int.from_bytes(path.read_bytes()[-8:-4], "little")


def card_header(readme: Path) -> tuple[str, dict]:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    header = text.split("---\n", 2)[1]
    return header, yaml.safe_load(header)


# --------------------------------------------------------------------------------------- build


def test_staging_holds_exactly_the_release_files(staging):
    names = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    shards = [n for n in names if n.startswith("data/")]
    assert shards and all(re.fullmatch(SHARD_NAME, n) for n in shards)
    metadata = [n for n in names if n.startswith("metadata/")]
    assert metadata and all(re.fullmatch(SHARD_NAME.replace("data/", "metadata/"), n) for n in metadata)
    assert sorted(set(names) - set(shards) - set(metadata)) == sorted(
        [MANIFEST, "README.md", "bucket_index.parquet", "centroids.npy", "release.json", "tiles.db"])
    # the release manifest names every file but itself and the local build record, with its content
    release = json.loads((staging / "release.json").read_text())
    assert sorted(release["files"]) == sorted(set(names) - {MANIFEST, "release.json"})
    for name, facts in release["files"].items():
        assert facts["size"] == (staging / name).stat().st_size
        assert facts["sha256"] == sha256((staging / name).read_bytes())
    assert release["configs"]["default"]["files"] == shards and release["configs"]["metadata"]["files"] == metadata
    assert "synthetic" not in release["configs"]  # this library has none
    assert not list(staging.rglob("*.py"))
    leftovers = [p.name for p in staging.parent.iterdir() if p.name.startswith(".staging.")]
    assert leftovers == []


def test_load_dataset_in_a_fresh_process_matches_tiles_db_and_files(staging, library, tmp_path):
    import datasets

    from mosaic_library import dataset_features

    loaded = load_in_fresh_process(staging, tmp_path)
    assert datasets.Features.from_dict(loaded["features_dict"]) == dataset_features()
    expected = db_rows(library / "tiles.db")
    assert loaded["num_rows"] == len(expected)
    assert loaded["features"]["label"] == "ClassLabel" and loaded["features"]["image"] == "Image"
    names = loaded["label_names"]
    assert len(names) == 5000 and names[0] == "bucket_0000" and names[-1] == "bucket_4999"
    assert loaded["first_image"] == [[256, 256], "RGB"]
    with Library.open(library, readonly=True) as lib:
        for row in loaded["rows"]:
            want = expected[row["id"]]
            assert row["label"] == want["bucket_id"]
            assert row["phash"] == want["phash"]
            assert (row["mean_l"], row["mean_a"], row["mean_b"]) == (want["mean_l"], want["mean_a"], want["mean_b"])
            for col in ("source", "z", "x", "y", "lon", "lat", "region", "harvested_at"):
                assert row[col] == want[col], col
            assert row["image_sha256"] == sha256(lib.tile_path(want["bucket_id"], row["id"]).read_bytes())
    assert sorted(r["id"] for r in loaded["rows"]) == sorted(expected)


def test_label_names_come_from_parquet_metadata_not_the_yaml(staging):
    header, meta = card_header(staging / "README.md")
    assert "bucket_4999" not in header and "dataset_info" not in meta
    schema = pq.read_schema(next((staging / "data").glob("*.parquet")))
    info = json.loads(schema.metadata[b"huggingface"])
    assert info["info"]["features"]["label"]["names"][4999] == "bucket_4999"


@pytest.mark.parametrize("with_images", [True, False])
def test_the_one_features_mapping_gives_datasets_schema_and_the_builders_features(with_images):
    """with_images=False is the metadata config: no image, and the synthetic flag and derived_from."""
    # schema.features_dict is in Features.to_dict() form; the Arrow schema and huggingface metadata
    # build derives from it without datasets are what datasets derives; MosaicLibrary uses the same.
    import datasets

    from builder.publish import schema
    from mosaic_library import dataset_features

    mapping = schema.features_dict(schema.feature_groups(with_images))
    features = datasets.Features.from_dict(mapping)
    assert json.dumps(features.to_dict()) == json.dumps(mapping)  # to_dict's own form, key order included
    ours, theirs = schema.arrow_schema(schema.feature_groups(with_images)), features.arrow_schema
    assert ours == theirs and [f.type for f in ours] == [f.type for f in theirs]
    assert ours.metadata == theirs.metadata  # the huggingface features JSON, byte for byte
    assert json.loads(ours.metadata[b"huggingface"]) == {"info": {"features": mapping}}
    assert dataset_features(with_images) == features
    assert ("image" in features) is with_images
    assert list(features)[-1] == ("harvested_at" if with_images else "derived_from")


def test_feature_groups_choose_columns_in_the_tables_order():
    from builder.publish import schema

    full = schema.features_dict()
    assert list(schema.features_dict(["provenance", "tile"])) == [c for c in full if c != "image"]
    # the metadata config: every column but the image, then the synthetic flag and derived_from
    assert list(schema.features_dict(schema.feature_groups(False))) == [
        *(c for c in full if c != "image"), "synthetic", "derived_from"]
    full["label"]["names"].clear()  # a fresh copy each time: the definition cannot be changed through it
    assert len(schema.features_dict()["label"]["names"]) == 5000
    with pytest.raises(ValueError, match="unknown feature groups"):
        schema.features_dict(["tile", "atlas"])
    # the synthetic config: the default's columns, then derived_from
    assert list(schema.features_dict(schema.feature_groups(synthetic=True))) == [*full, "derived_from"]


def test_column_options_and_chunking_equal_what_datasets_chooses():
    import datasets.config
    from datasets.arrow_writer import get_parquet_column_options

    from builder.publish import schema
    from mosaic_library import dataset_features

    features = dataset_features()
    assert schema.column_options(features.arrow_schema) == get_parquet_column_options(features, features.arrow_schema)
    assert schema.CDC_OPTIONS == datasets.config.DEFAULT_CDC_OPTIONS


def test_build_does_not_import_datasets(library, tmp_path):
    """Importing datasets costs ~0.5 s of CPU, more than writing a thousand tiles: build avoids it."""
    code = (
        "import sys; from builder.publish import build_staging; "
        f"build_staging({str(library)!r}, {str(tmp_path / 'staging')!r}, num_proc=2); "
        "print(sorted(m for m in ('datasets', 'huggingface_hub', 'scipy.spatial') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=fake_token_env(tmp_path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_parquet_row_groups_are_viewer_sized(staging):
    for path in (staging / "data").glob("*.parquet"):
        meta = pq.ParquetFile(path).metadata
        assert all(meta.row_group(i).num_rows <= 100 for i in range(meta.num_row_groups))


def test_num_proc_two_builds_byte_identical_shards(library, staging, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    build_staging(library, one, num_proc=1, max_shard_size="1MB")
    report = build_staging(library, two, num_proc=2, max_shard_size="1MB")
    assert report.rows == len(db_rows(library / "tiles.db")) and report.skipped == 0
    assert report.parquet_files > 2  # small files forced, so both processes had work
    files = sorted(p.name for p in (one / "data").iterdir())
    assert files == sorted(p.name for p in (two / "data").iterdir())
    for name in files:
        assert (one / "data" / name).read_bytes() == (two / "data" / name).read_bytes()
    assert read_parquet_rows(two) == read_parquet_rows(staging)  # same rows as the default sharding


def test_parquet_layout_is_the_one_datasets_writes(library, staging, tmp_path):
    """Schema, feature metadata and file options equal those of MosaicLibrary.download_and_prepare."""
    from mosaic_library import MosaicLibrary

    builder = MosaicLibrary(data_dir=str(library), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare(str(tmp_path / "ds"), file_format="parquet")
    theirs = sorted((tmp_path / "ds").glob("*.parquet"))
    ours = sorted((staging / "data").glob("*.parquet"))
    assert pq.read_schema(ours[0]) == pq.read_schema(theirs[0])  # the same columns and types
    assert pq.read_schema(ours[0]).metadata[b"huggingface"] == pq.read_schema(theirs[0]).metadata[b"huggingface"]
    ours_meta, theirs_meta = pq.ParquetFile(ours[0]).metadata, pq.ParquetFile(theirs[0]).metadata
    assert ours_meta.metadata[b"content_defined_chunking"] == theirs_meta.metadata[b"content_defined_chunking"]
    # but the label names once, not twice: no base64 copy of the Arrow schema (and its metadata) in the footer
    assert b"ARROW:schema" in theirs_meta.metadata and b"ARROW:schema" not in ours_meta.metadata
    assert footer_bytes(ours[0]) < 0.55 * footer_bytes(theirs[0])
    for i in range(ours_meta.num_columns):
        a, b = ours_meta.row_group(0).column(i), theirs_meta.row_group(0).column(i)
        assert (a.path_in_schema, a.compression, a.encodings) == (b.path_in_schema, b.compression, b.encodings)
    assert sorted(read_parquet_rows(staging), key=lambda r: r["id"]) == sorted(
        (dict(r, image=sha256(r["image"]["bytes"])) for f in theirs for r in pq.read_table(f).to_pylist()),
        key=lambda r: r["id"],
    )


def test_card_yaml_parses_is_small_and_reports_live_figures(staging, library):
    from huggingface_hub import DatasetCard

    header, meta = card_header(staging / "README.md")
    assert DatasetCard.load(staging / "README.md").data.to_dict() == meta  # the Hub client's own parser
    assert len(header) < 1500
    # tiles from 'earth' (NASA, public domain) and 'ingest' (unknown origin): the card explains both
    assert meta["license"] == "other" and meta["license_name"] == "mixed-see-dataset-card"
    assert meta["task_categories"] == ["image-classification"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["pretty_name"] == "Mosaic Library"
    assert "satellite-imagery" in meta["tags"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]},
                               {"config_name": "metadata", "data_files": [{"split": "train", "path": "metadata/train-*"}]}]
    assert meta["license_link"] == "README.md#limitations-and-notes"
    with Library.open(library, readonly=True) as lib:
        stats = lib.stats()
    body = (staging / "README.md").read_text()
    assert f"**{stats['tiles']:,} real tiles**" in body
    assert f"`tiles.db` holds the same {stats['tiles']:,} tiles." in body
    assert f"**{stats['buckets_populated']:,} of 5,000 colour clusters**" in body
    assert "| Desert (Sahara) |" in body and "mosaic_library.MosaicLibrary" in body
    assert str(library.parent) not in body  # no local paths in a public card
    # the seed's snippets are there, unchanged
    assert 'conn.execute("SELECT COUNT(*) FROM tiles").fetchone()' in body
    assert 'def load_bucket(base_dir, bucket_id, db_path="mosaic_library/tiles.db"):' in body


def test_shipped_tiles_db_is_a_consistent_rollback_journal_copy(staging, library):
    assert db_rows(staging / "tiles.db") == db_rows(library / "tiles.db")
    conn = sqlite3.connect(f"{(staging / 'tiles.db').as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM fetched").fetchone()[0] > 0
    finally:
        conn.close()
    assert not (staging / "tiles.db-wal").exists()
    assert (staging / "centroids.npy").read_bytes() == (library / "centroids.npy").read_bytes()


def test_a_failed_build_leaves_the_previous_staging_untouched(library_copy, tmp_path):
    out = tmp_path / "staging"
    build_staging(library_copy, out)
    before = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*")}
    victim = next(iter(db_rows(library_copy / "tiles.db").values()))
    (library_copy / f"bucket_{victim['bucket_id']:04d}" / f"{victim['id']}.png").unlink()
    with pytest.raises(LibraryError, match=victim["id"]):
        build_staging(library_copy, out, num_proc=2)
    assert {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []
    with pytest.raises(LibraryError):
        build_staging(library_copy, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_skip_bad_build_ships_a_tiles_db_matching_the_parquet(library_copy, tmp_path):
    victim, hostile, misplaced = list(db_rows(library_copy / "tiles.db").values())[:3]
    (library_copy / f"bucket_{victim['bucket_id']:04d}" / f"{victim['id']}.png").unlink()
    conn = sqlite3.connect(library_copy / "tiles.db")
    with conn:
        conn.execute("UPDATE tiles SET id = '../../evil' WHERE id = ?", (hostile["id"],))
        conn.execute("UPDATE tiles SET bucket_id = 9999 WHERE id = ?", (misplaced["id"],))
    conn.close()
    report = build_staging(library_copy, tmp_path / "staging", skip_bad=True)
    assert report.skipped == 3
    shipped = db_rows(tmp_path / "staging" / "tiles.db")
    assert {victim["id"], "../../evil", misplaced["id"]}.isdisjoint(shipped)
    assert sorted(r["id"] for r in read_parquet_rows(tmp_path / "staging")) == sorted(shipped)
    assert "3 bad tiles skipped" in report.summary()


def test_output_inside_the_library_or_a_foreign_folder_is_refused(library, tmp_path):
    with pytest.raises(UsageError, match="outside the library"):
        build_staging(library, library / "staging")
    foreign = tmp_path / "my_documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(UsageError, match="not a staging folder"):
        build_staging(library, foreign)
    assert (foreign / "thesis.txt").read_text() == "precious"


def test_an_empty_library_is_refused(tmp_path):
    Library.create(tmp_path / "empty").close()
    with pytest.raises(UsageError, match="no tiles to publish"):
        build_staging(tmp_path / "empty", tmp_path / "staging")
    assert not (tmp_path / "staging").exists()


def test_credentials_in_a_source_url_are_never_published(library_copy, tmp_path):
    conn = sqlite3.connect(library_copy / "tiles.db")
    with conn:
        conn.execute(
            "UPDATE tiles SET source = ? WHERE id = (SELECT id FROM tiles LIMIT 1)",
            ("https://tiles.example/{z}/{x}/{y}.png?access_token=sk_live_123",),
        )
    conn.close()
    with pytest.raises(UsageError, match=r"access_token=(%2A)+") as info:
        build_staging(library_copy, tmp_path / "staging")
    assert "sk_live_123" not in str(info.value)
    assert not (tmp_path / "staging").exists()
    # what harvest stores (the URL through its redact_url) is publishable
    from builder.core.redact import redact_url

    conn = sqlite3.connect(library_copy / "tiles.db")
    with conn:
        conn.execute(
            "UPDATE tiles SET source = ? WHERE source LIKE '%sk_live%'",
            (redact_url("https://tiles.example/{z}/{x}/{y}.png?access_token=sk_live_123"),),
        )
    conn.close()
    assert build_staging(library_copy, tmp_path / "staging").rows > 0


def test_staleness_follows_the_library(library_copy, tmp_path, bluemarble):
    out = tmp_path / "staging"
    build_staging(library_copy, out)
    assert staging_state(library_copy, out).current
    extra = tmp_path / "extra"
    extra.mkdir()
    for i, crop in enumerate(real_crops(bluemarble, 4, seed=123)):
        crop.save(extra / f"e{i}.png")
    with Library.open(library_copy) as lib:
        assert ingest(lib, [extra], workers=1, progress=False).accepted > 0
    state = staging_state(library_copy, out)
    assert not state.current and "library changed" in state.reason
    (out / "data" / "stray.txt").write_text("x")
    assert "stray.txt, which the build did not write" in staging_state(library_copy, out).reason


def test_a_damaged_shard_of_the_same_size_makes_the_staging_stale(library_copy, tmp_path):
    """Up to date means the same content: one flipped byte in a shard is caught by its sha256."""
    out = tmp_path / "staging"
    build_staging(library_copy, out)
    assert staging_state(library_copy, out).current
    shard = sorted((out / "data").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    state = staging_state(library_copy, out)
    assert not state.current and shard.name in state.reason and "sha256" in state.reason
    with pytest.raises(UsageError, match=shard.name):
        plan_upload(out)


# --------------------------------------------------------------------------------------- push


def test_plan_upload_is_exactly_the_release_in_order(staging):
    plan = plan_upload(staging)
    shards = sorted((staging / "data").glob("*.parquet")) + sorted((staging / "metadata").glob("*.parquet"))
    root = ["README.md", "bucket_index.parquet", "centroids.npy", "tiles.db", "release.json"]
    expected = [p.relative_to(staging).as_posix() for p in shards] + root
    assert [item.path_in_repo for item in plan] == expected
    for item in plan:
        assert item.local_path == staging / item.path_in_repo and item.size == item.local_path.stat().st_size
        assert item.sha256 == sha256(item.local_path.read_bytes())


@pytest.mark.parametrize("stray", ["mosaic_library.py", "data/notes.txt", "data/train-00009-of-00010.parquet"])
def test_plan_upload_refuses_anything_else(staging, tmp_path, stray):
    copy = tmp_path / "staging"
    shutil.copytree(staging, copy)
    (copy / stray).write_bytes(b"x")
    with pytest.raises(UsageError, match=f"not part of a release: {stray}"):
        plan_upload(copy)


@pytest.mark.parametrize("bad", ["noslash", "a/b/c", "user/../x", "user/na me", "-user/x", "user/x--y", ""])
def test_repo_id_is_validated(bad):
    with pytest.raises(UsageError) as info:
        validate_repo_id(bad)
    assert repr(bad) in str(info.value)


def test_push_dry_run_builds_then_prints_the_plan_without_the_token(library_copy, tmp_path, token_cli):
    out = tmp_path / "staging"
    result = token_cli("push", "--library", library_copy, "--output", out, "--repo-id", "alice/mosaic", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"built {out}: ")
    plan = plan_upload(out)
    assert lines[1:-1] == [f"{item.size:>14,d}  {item.path_in_repo}" for item in plan]
    assert lines[-1].startswith(f"would upload {len(plan)} files") and "datasets/alice/mosaic" in lines[-1]
    assert 'load_dataset("alice/mosaic", split="train")' in (out / "README.md").read_text()
    again = token_cli("push", "--library", library_copy, "--output", out, "--repo-id", "alice/mosaic", "--dry-run")
    assert again.returncode == 0 and not again.stdout.startswith("built")  # current: no rebuild
    for text in (result.stdout, result.stderr, again.stdout, again.stderr):
        assert FAKE_TOKEN not in text


PUSH_SCRIPT = r"""
import sys
from builder.core.errors import MosaicError
from builder.publish import push_staging
try:
    push_staging(sys.argv[1], "alice/mosaic")
except MosaicError as exc:
    print(f"error: {exc}")
    sys.exit(2)
"""


def test_push_reports_a_refusing_hub_on_one_line_and_never_leaks_the_token(staging, tmp_path):
    """The local Hub holds another token than the one in HF_TOKEN: it refuses every request 401."""
    copy = tmp_path / "staging"
    shutil.copytree(staging, copy)
    with LocalHub(token="hf_the_hubs_own_token") as hub:
        env = fake_token_env(tmp_path, **hub.env(token=False))
        result = subprocess.run(
            [sys.executable, "-c", PUSH_SCRIPT, str(copy)], env=env, capture_output=True, text=True, timeout=120
        )
        requests = hub.requests
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stdout.startswith("error: push to alice/mosaic failed:") and result.stdout.count("\n") == 1
    assert "401" in result.stdout and FAKE_TOKEN not in result.stdout + result.stderr
    # huggingface_hub's own token resolution picked HF_TOKEN up and sent it; the Hub refused it
    assert requests and all(r.auth == "invalid" and r.status == 401 for r in requests)
    assert "alice/mosaic" not in {repo_id for _type, repo_id in hub.repos}


def test_push_without_any_token_is_a_clear_error(staging, tmp_path):
    copy = tmp_path / "staging"
    shutil.copytree(staging, copy)
    env = fake_token_env(tmp_path, HF_HOME=str(tmp_path / "empty_home"))
    del env["HF_TOKEN"]
    result = subprocess.run(
        [sys.executable, "-c", PUSH_SCRIPT, str(copy)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "no Hugging Face token: set HF_TOKEN" in result.stdout


# --------------------------------------------------------------------------------------- restore


def test_restore_round_trip_passes_verify_and_equals_the_original(staging, library, tmp_path):
    target = tmp_path / "restored_lib"
    report = restore_library(staging, target)
    assert report.used_shipped_db and report.tiles == len(db_rows(library / "tiles.db"))
    original, restored = db_rows(library / "tiles.db"), db_rows(target / "tiles.db")
    assert restored.keys() == original.keys()
    for tile_id, row in original.items():
        assert {**row, "filepath": None} == {**restored[tile_id], "filepath": None}
        assert restored[tile_id]["filepath"] == f"restored_lib/bucket_{row['bucket_id']:04d}/{tile_id}.png"
        rel = f"bucket_{row['bucket_id']:04d}/{tile_id}.png"
        assert (target / rel).read_bytes() == (library / rel).read_bytes()
    with Library.open(target, readonly=True) as lib, Library.open(library, readonly=True) as orig:
        assert verify_library(lib, deep=True).ok
        assert lib.stats()["fetched_by_region"] == orig.stats()["fetched_by_region"]
        assert lib.cap == orig.cap
    assert (target / "centroids.npy").read_bytes() == (library / "centroids.npy").read_bytes()


def test_restore_from_bare_parquet_files_needs_and_uses_given_centroids(staging, library, tmp_path):
    bare = tmp_path / "downloaded"
    bare.mkdir()
    for p in (staging / "data").glob("*.parquet"):
        shutil.copy(p, bare / p.name)
    with pytest.raises(UsageError, match="--centroids"):
        restore_library(bare, tmp_path / "lib")
    report = restore_library(bare, tmp_path / "lib", centroids=staging / "centroids.npy")
    assert not report.used_shipped_db
    assert db_rows(tmp_path / "lib" / "tiles.db").keys() == db_rows(library / "tiles.db").keys()
    with Library.open(tmp_path / "lib", readonly=True) as lib:
        assert verify_library(lib, deep=True).ok


def test_restore_refuses_a_non_empty_library(staging, library):
    before = sorted(p.name for p in library.iterdir())
    with pytest.raises(UsageError, match="not empty"):
        restore_library(staging, library)
    assert sorted(p.name for p in library.iterdir()) == before


@pytest.mark.parametrize("hostile", ["../../escaped", "/etc/passwd", "bucket_0000/x"])
def test_restore_refuses_hostile_ids_in_parquet_and_cleans_up(staging, tmp_path, hostile):
    copy = tmp_path / "evil"
    shutil.copytree(staging, copy)
    shard = sorted((copy / "data").glob("*.parquet"))[-1]
    table = pq.read_table(shard)
    ids = table.column("id").to_pylist()
    ids[-1] = hostile
    table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))
    pq.write_table(table, shard)
    target = tmp_path / "lib"
    # as edited, the shard no longer matches the release's checksum: refused before anything is written
    with pytest.raises(ReleaseIncomplete, match=f"{shard.name} is damaged"):
        restore_library(copy, target)
    assert not target.exists() and not list(tmp_path.glob(".lib*"))
    reseal(copy)  # a hostile release whose manifest vouches for the edited shard: the ids are still checked
    with pytest.raises(UnsafePath) as info:
        restore_library(copy, target)
    assert repr(hostile) in str(info.value)
    assert not target.exists() and not list(tmp_path.glob(".lib*"))
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "escaped.png").exists()


def test_restore_refuses_out_of_range_labels(staging, tmp_path):
    copy = tmp_path / "evil"
    shutil.copytree(staging, copy)
    shard = sorted((copy / "data").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    labels = table.column("label").to_pylist()
    labels[0] = 7000
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64()))
    pq.write_table(table, shard)
    reseal(copy)
    with pytest.raises(UnsafePath, match="7000"):
        restore_library(copy, tmp_path / "lib")
    assert not (tmp_path / "lib").exists() and not list(tmp_path.glob(".lib*"))


# --------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_build_restore_and_errors_print_one_line(library_copy, tmp_path, token_cli):
    out = tmp_path / "staging"
    built = token_cli("build", "--library", str(library_copy), "--output", str(out), "--num-proc", "2")
    assert built.returncode == 0, built.stderr
    assert built.stdout.count("\n") == 1 and built.stdout.startswith(f"built {out}: ")
    assert "Generating" not in built.stderr  # no progress bars when stderr is not a terminal

    restored = token_cli("restore", str(out), "--library", str(tmp_path / "again"))
    assert restored.returncode == 0 and restored.stdout.startswith("restored ")

    again = token_cli("restore", str(out), "--library", str(tmp_path / "again"))  # the same release: done
    assert again.returncode == 0 and again.stdout.rstrip().endswith("(already restored)")
    refused = token_cli("restore", str(out), "--library", str(library_copy))  # anything else: refused
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "not empty" in refused.stderr

    victim = next(iter(db_rows(library_copy / "tiles.db").values()))
    (library_copy / f"bucket_{victim['bucket_id']:04d}" / f"{victim['id']}.png").unlink()
    failed = token_cli("build", "--library", str(library_copy), "--output", str(out))
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1
    assert victim["id"] in failed.stderr and "file missing" in failed.stderr
    skipped = token_cli("build", "--library", str(library_copy), "--output", str(out), "--skip-bad")
    assert skipped.returncode == 0 and "1 bad tiles skipped" in skipped.stdout

    bad_repo = token_cli("push", "--library", str(library_copy), "--repo-id", "not a repo", "--dry-run")
    assert bad_repo.returncode == 2 and "'not a repo'" in bad_repo.stderr

    everything = [built, restored, again, refused, failed, skipped, bad_repo]
    assert all(FAKE_TOKEN not in r.stdout + r.stderr for r in everything)


def test_the_token_is_never_written_anywhere(tmp_path, library_copy, token_cli):
    out = tmp_path / "staging"
    result = token_cli("push", "--library", library_copy, "--output", out, "--repo-id", "alice/m", "--dry-run")
    assert result.returncode == 0, result.stderr
    restore = token_cli("restore", str(out), "--library", str(tmp_path / "restored"))
    assert restore.returncode == 0, restore.stderr
    needle = FAKE_TOKEN.encode()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 10
    assert [p for p in written if needle in p.read_bytes()] == []


def test_cli_default_output_is_beside_the_library(library_copy, tmp_path, token_cli):
    result = token_cli("build", "--library", str(library_copy))
    assert result.returncode == 0, result.stderr
    assert (library_copy.parent / "staging" / "README.md").is_file()


# --------------------------------------------------------------------------------------- push, end to end


@pytest.mark.slow
def test_push_uploads_exactly_the_plan_and_the_repo_loads(library_copy, tmp_path, cli):
    out = tmp_path / "staging"
    with LocalHub(token=FAKE_TOKEN) as hub:
        result = cli("push", "--library", library_copy, "--output", out, "--repo-id", "alice/mosaic", "--private",
                     env=fake_token_env(tmp_path, **hub.env(token=False)))
        assert result.returncode == 0, result.stderr
        remote = hub.files("alice/mosaic")
        head = hub.history("alice/mosaic")[0]
        assert hub.repo("alice/mosaic").private is True
        requests = hub.requests
    assert remote.pop(".gitattributes").startswith(b"*.7z filter=lfs")  # the Hub's own, made with the repo
    assert {(r.method, r.path) for r in requests} >= {
        ("POST", "/api/repos/create"),
        ("POST", "/api/datasets/alice/mosaic/preupload/main"),
        ("POST", "/datasets/alice/mosaic.git/info/lfs/objects/batch"),
        ("POST", "/api/datasets/alice/mosaic/commit/main"),
    }
    assert [r for r in requests if r.status >= 400] == []
    # the token went to the Hub on every call and never to LFS storage
    assert all(r.auth == "valid" for r in requests if r.origin == "hub")
    assert {(r.method, r.auth) for r in requests if r.origin == "cdn"} == {("PUT", "none")}
    assert [r.status for r in requests if r.path == "/api/validate-yaml"] == [200]  # the card's YAML passed the check
    # the shards, the index, tiles.db and centroids.npy went through LFS (storage PUTs), the card and the
    # release manifest (small text) in the commit itself
    plan = plan_upload(out)
    assert {p for p, e in head.files.items() if e.kind == "lfs"} == {i.path_in_repo for i in plan} - {
        "README.md", "release.json"}
    assert remote == {item.path_in_repo: item.local_path.read_bytes() for item in plan}
    assert result.stdout.splitlines()[-1] == (
        f"uploaded {len(plan)} files ({sum(i.size for i in plan) / 1e6:.1f} MB) to {hub.endpoint}/datasets/alice/mosaic"
    )
    assert FAKE_TOKEN not in result.stdout + result.stderr
    # what the repo holds loads like the staging folder: same rows, same features
    downloaded = tmp_path / "downloaded"
    for path, data in remote.items():
        (downloaded / path).parent.mkdir(parents=True, exist_ok=True)
        (downloaded / path).write_bytes(data)
    assert load_in_fresh_process(downloaded, tmp_path)["rows"] == load_in_fresh_process(out, tmp_path)["rows"]


def test_a_new_release_deletes_the_previous_releases_stale_shards(library_copy, tmp_path, cli):
    out = tmp_path / "staging"
    build_staging(library_copy, out, max_shard_size="1MB")
    first = len(list((out / "data").glob("*.parquet")))
    assert first > 2
    # an organisation whose new repos are private: push without --private must not make it public
    with LocalHub(token=FAKE_TOKEN, default_private=True) as hub:
        args = ("--library", str(library_copy), "--output", str(out), "--repo-id", "alice/mosaic")
        assert cli("push", *args, env=fake_token_env(tmp_path, **hub.env(token=False))).returncode == 0
        assert hub.repo("alice/mosaic").private is True
        old = {p for p in hub.files("alice/mosaic") if p.startswith("data/")}
        assert len(old) == first
        build_staging(library_copy, out)  # default shard size: one file
        second = cli("push", *args, env=fake_token_env(tmp_path, **hub.env(token=False)))
        assert second.returncode == 0, second.stderr
        remote = hub.files("alice/mosaic")
        deleted = set(hub.changes("alice/mosaic")["deleted"])
    assert sorted(p for p in remote if p.startswith("data/")) == ["data/train-00000-of-00001.parquet"]
    assert deleted == old - {"data/train-00000-of-00001.parquet"}
    assert f"deleted {len(deleted)} stale files" in second.stdout


def test_push_to_a_revision_creates_the_branch_and_leaves_main_alone(library_copy, tmp_path, cli):
    out = tmp_path / "staging"
    with LocalHub(token=FAKE_TOKEN) as hub:
        args = ("--library", str(library_copy), "--output", str(out), "--repo-id", "alice/mosaic")
        result = cli("push", *args, "--revision", "release-2", env=fake_token_env(tmp_path, **hub.env(token=False)))
        assert result.returncode == 0, result.stderr
        assert set(hub.files("alice/mosaic", "main")) == {".gitattributes"}
        assert set(hub.files("alice/mosaic", "release-2")) == {".gitattributes"} | {
            i.path_in_repo for i in plan_upload(out)
        }


@pytest.mark.parametrize(
    ("sources", "license_name", "note"),
    [
        ({"arcgis": 5}, "esri-world-imagery-terms", "Esri's terms of use"),
        ({"earth": 5}, "nasa-blue-marble-public-domain", "public domain"),
        ({"earth": 5, "arcgis": 1}, "esri-world-imagery-terms", "Esri's terms of use"),
        ({"ingest": 5}, "mixed-see-dataset-card", "terms of their original provider"),
    ],
)
def test_card_license_follows_the_tile_sources(sources, license_name, note):
    from builder.publish.card import CardStats, render_card

    stats = CardStats(tiles=sum(sources.values()), buckets_populated=2, buckets_full=0, cap=100, by_source=sources)
    text = render_card(stats, "alice/mosaic")
    _, meta = card_header_text(text)
    assert meta["license"] == "other" and meta["license_name"] == license_name
    assert note in text and 'load_dataset("alice/mosaic", split="train")' in text


def card_header_text(text: str) -> tuple[str, dict]:
    header = text.split("---\n", 2)[1]
    return header, yaml.safe_load(header)


def test_to_arrow_equals_pyarrow_conversion_with_nulls_and_refuses_bad_values():
    from builder.publish.parquet import to_arrow
    from builder.publish.schema import arrow_schema

    columns = {
        "image": [
            {"bytes": b"\x89PNG-a", "path": "a.png"},
            {"bytes": b"", "path": None},
            {"bytes": b"z" * 70000, "path": "c"},
        ],
        "label": [0, 4999, 17],
        "id": ["a", "b", "ü"],
        "phash": ["00ff", None, ""],
        "mean_l": [1.5, 2, None],
        "mean_a": [0.0, -1e300, 3.25],
        "mean_b": [None, None, None],
        "source": [None, "earth", "arcgis"],
        "z": [15, None, -3],
        "x": [2**40, 0, None],
        "y": [None, 1, 2],
        "lon": [-180.0, 180.0, None],
        "lat": [None, 0.5, -85.05],
        "region": ["Desert (Sahara)", None, ""],
        "harvested_at": ["2024-01-01T00:00:00+00:00", None, None],
    }
    schema = arrow_schema()
    for field in schema:
        ours = to_arrow(columns[field.name], field.type, field.name)
        ours.validate(full=True)
        assert ours.equals(pa.array(columns[field.name], type=field.type)), field.name
    with pytest.raises(LibraryError, match=r"column 'z': value 2147483648 is not int32"):
        to_arrow([1, 2**31], pa.int32(), "z")
    with pytest.raises(LibraryError, match=r"column 'x': value 'seven' is not int64"):
        to_arrow([1, "seven"], pa.int64(), "x")


def test_a_library_in_the_cards_seven_column_form_builds_with_every_column(library_copy, tmp_path):
    """A library whose tiles.db is still the card's seven-column table (as first published) builds;
    the shipped snapshot is migrated to the current schema and the provenance columns are null."""
    conn = sqlite3.connect(library_copy / "tiles.db")
    conn.executescript(
        "CREATE TABLE old AS SELECT id, bucket_id, filepath, phash, mean_l, mean_a, mean_b FROM tiles;"
        "DROP TABLE tiles; DROP TABLE fetched; ALTER TABLE old RENAME TO tiles; PRAGMA user_version=0;"
    )
    n = conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    conn.close()
    report = build_staging(library_copy, tmp_path / "staging")
    assert report.rows == n
    shipped = sqlite3.connect(tmp_path / "staging" / "tiles.db")
    assert [c[1] for c in shipped.execute("PRAGMA table_info(tiles)")] == list(TILE_COLUMNS)
    assert shipped.execute("SELECT COUNT(*) FROM tiles WHERE source IS NOT NULL").fetchone()[0] == 0
    rows = read_parquet_rows(tmp_path / "staging")
    assert len(rows) == n and all(r["source"] is None for r in rows)
