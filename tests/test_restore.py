"""``restore`` is all or nothing and resumable: a release is checked whole before anything is written,
a damaged or incomplete one is refused with one line and leaves no folder behind, and a restore
killed at any of ten points completes when run again and equals the source (real Parquet, real
SQLite, real processes; kill points found by polling the file system)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder.core.library import Library
from builder.ops.verify import verify_library
from builder.publish import build_staging, restore_library
from builder.publish.manifest import ReleaseIncomplete
from builder.publish.restore import scratch_for
from tests.support.campaigns.restore import POINTS, library_state, restore_campaign
from tests.support.cli import builder_argv, offline_env, run_cli
from tests.support.libraries import build_mixed_library
from tests.support.publish import reseal


@pytest.fixture(scope="module")
def source(tmp_path_factory, bluemarble) -> Path:
    """A library of real tiles (with a fetch ledger) and synthetic ones for 40 empty buckets."""
    return build_mixed_library(tmp_path_factory.mktemp("restore") / "mosaic_library", bluemarble, n_ingest=120,
                               n_harvest=40, synthetic=40, every=100)


@pytest.fixture(scope="module")
def staging(source, tmp_path_factory) -> Path:
    return build_staging(source, tmp_path_factory.mktemp("restore_staging") / "staging", max_shard_size="1MB").output


def nothing_left(target: Path) -> bool:
    return not target.exists() and not scratch_for(target).exists()


def test_a_release_with_a_shard_deleted_and_another_truncated_is_refused_and_leaves_nothing(staging, tmp_path):
    copy = tmp_path / "download"
    shutil.copytree(staging, copy)
    shards = sorted((copy / "data").glob("*.parquet"))
    assert len(shards) >= 3
    shards[1].unlink()
    data = shards[2].read_bytes()
    shards[2].write_bytes(data[: len(data) // 2])
    target = tmp_path / "lib" / "mosaic_library"
    result = run_cli("restore", str(copy), "--library", str(target), env=offline_env())
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: release ")
    assert f"data/{shards[1].name} is missing (and 1 more file)" in result.stderr
    assert nothing_left(target) and not target.parent.exists()
    shutil.copy(staging / "data" / shards[1].name, shards[1])  # the missing one back: now the truncated one is named
    with pytest.raises(ReleaseIncomplete, match=rf"data/{shards[2].name} is damaged \({len(data) // 2:,} bytes"):
        restore_library(copy, target)
    assert nothing_left(target)


def test_a_damaged_shard_of_the_same_size_is_refused_by_its_checksum(staging, tmp_path):
    copy = tmp_path / "download"
    shutil.copytree(staging, copy)
    shard = sorted((copy / "synthetic").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ReleaseIncomplete, match=rf"synthetic/{shard.name} is damaged \(its sha256 differs"):
        restore_library(copy, tmp_path / "mosaic_library")
    assert nothing_left(tmp_path / "mosaic_library")


def test_a_release_without_a_manifest_must_hold_every_shard_and_tiles_db_rows(staging, tmp_path):
    """An older release (no release.json): the shard names promise a set, tiles.db a row count."""
    copy = tmp_path / "old"
    shutil.copytree(staging, copy)
    (copy / "release.json").unlink()
    shards = sorted((copy / "data").glob("*.parquet"))
    shards[-1].unlink()
    with pytest.raises(ReleaseIncomplete, match=f"data/{shards[-1].name} is missing"):
        restore_library(copy, tmp_path / "a")
    # the names complete but a shard's rows gone (renumbered by hand): tiles.db counts the difference
    shards[0].unlink()
    for i, path in enumerate(sorted((copy / "data").glob("*.parquet"))):
        path.rename(path.with_name(f"train-{i:05d}-of-{len(shards) - 2:05d}.parquet"))
    with pytest.raises(ReleaseIncomplete, match="its Parquet files hold .* real and 40 synthetic tiles, its tiles.db"):
        restore_library(copy, tmp_path / "b")
    assert nothing_left(tmp_path / "a") and nothing_left(tmp_path / "b")


def test_tiles_db_of_another_release_is_refused(staging, tmp_path, source):
    copy = tmp_path / "mixed"
    shutil.copytree(staging, copy)
    conn = __import__("sqlite3").connect(copy / "tiles.db")
    with conn:
        conn.execute("DELETE FROM tiles WHERE rowid IN (SELECT rowid FROM tiles WHERE synthetic = 0 LIMIT 3)")
    conn.execute("VACUUM")
    conn.close()
    reseal(copy)  # a manifest that vouches for the edited file
    with pytest.raises(ReleaseIncomplete, match=r"tiles.db holds \d+ real and 40 synthetic tiles, the release's files"):
        restore_library(copy, tmp_path / "mosaic_library")
    assert nothing_left(tmp_path / "mosaic_library")


def test_restore_equals_the_source_and_a_second_run_says_it_is_done(staging, source, tmp_path):
    target = tmp_path / "mosaic_library"
    report = restore_library(staging, target)
    assert report.used_shipped_db and report.tiles == 200
    assert library_state(target) == library_state(source)
    with Library.open(target, readonly=True) as lib:
        assert verify_library(lib, deep=True, workers=1, progress=False).ok
    again = restore_library(staging, target)
    assert again.note == "already restored" and again.tiles == 200
    assert library_state(target) == library_state(source)
    other = tmp_path / "other"
    shutil.copytree(staging, other)
    (other / "README.md").write_text("another card")  # another release: the same target is not overwritten
    reseal(other)
    with pytest.raises(Exception, match="not empty"):
        restore_library(other, target)


def test_restore_of_some_buckets_holds_exactly_their_tiles(staging, source, tmp_path):
    whole = library_state(source)
    by_bucket: dict[int, set[str]] = {}
    for tile_id, row in whole["rows"].items():
        by_bucket.setdefault(row[1], set()).add(tile_id)
    real = [b for b, ids in by_bucket.items() if any(whole["rows"][i][-2] == 0 for i in ids)]
    synthetic_only = [b for b, ids in by_bucket.items() if all(whole["rows"][i][-2] == 1 for i in ids)]
    chosen = sorted(real[:3] + synthetic_only[:2])
    target = tmp_path / "part" / "mosaic_library"
    result = run_cli("restore", str(staging), "--library", str(target), "--buckets", ",".join(map(str, chosen)), env=offline_env())
    assert result.returncode == 0, result.stderr
    wanted = {i for b in chosen for i in by_bucket[b]}
    assert f"restored {len(wanted)} tiles of {len(chosen)} buckets" in result.stdout
    state = library_state(target)
    assert state["rows"] == {i: whole["rows"][i] for i in wanted}
    assert state["files"] == {i: whole["files"][i] for i in wanted} and state["files_on_disk"] == len(wanted)


def test_a_killed_restore_then_another_release_starts_over_cleanly(staging, source, tmp_path):
    from tests.support.campaigns.restore import Paths, kill_at

    paths = Paths(tmp_path / "mosaic_library", 0, 200)
    cmd = builder_argv("restore", staging, "--library", paths.target)
    assert kill_at(cmd, paths, "half of the tiles")
    part = tmp_path / "part_release"
    shutil.copytree(staging, part)
    shutil.rmtree(part / "synthetic")
    (part / "release.json").unlink()
    (part / "tiles.db").unlink()  # bare real-tile Parquet files and the centroids: a different release
    report = restore_library(part, paths.target)
    assert report.tiles == 160 and report.resumed == 0 and not paths.scratch.exists()


@pytest.mark.slow
def test_a_restore_killed_at_ten_points_completes_when_run_again(staging, source, tmp_path):
    expected = library_state(source)
    real = sum(1 for row in expected["rows"].values() if row[-2] == 0)
    figures = restore_campaign(staging, expected, tmp_path, list(POINTS), real=real)
    assert figures.violations == [] and figures.lost == 0
    assert figures.kills == 10, figures.missed
    assert figures.tiles_after == [200] * 10


def test_a_bucket_index_naming_a_file_outside_the_release_is_refused(staging, tmp_path):
    """The index comes from data and its file names become paths: only the release's own shards are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = tmp_path / "evil"
    shutil.copytree(staging, copy)
    index = pq.read_table(copy / "bucket_index.parquet")
    files = index.column("file").to_pylist()
    row = index.column("config").to_pylist().index("default")
    files[row] = "../outside.parquet"
    index = index.set_column(index.schema.get_field_index("file"), "file", pa.array(files, pa.string()))
    pq.write_table(index, copy / "bucket_index.parquet")
    reseal(copy)
    bucket = index.column("bucket")[row].as_py()
    with pytest.raises(ReleaseIncomplete, match="names '../outside.parquet', which is no shard of the release"):
        restore_library(copy, tmp_path / "lib", buckets=[bucket])
    assert nothing_left(tmp_path / "lib")
