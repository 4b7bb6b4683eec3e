"""The release on a Hub: ``push`` of every config by content, ``query --hub`` and ``restore --hub``
(whole, or some buckets by their row groups), against the local Hub (tests/support/localhub.py:
real HTTP, real ``huggingface_hub`` and pyarrow, the bytes it serves counted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from builder.core.library import Library
from builder.ops.synthesize import synthesize
from builder.publish import build_staging, plan_upload, push_staging, restore_library, spans
from builder.publish.index import INDEX_SCHEMA, SPAN_COLUMNS, index_rows, read_index, select
from builder.publish.manifest import ReleaseIncomplete, describe, read_manifest, write_manifest
from builder.publish.remote import query_hub, restore_from_hub
from builder.publish.restore import LocalShard, scratch_for, shard_rows
from builder.publish.schema import INDEX_NAME, column_options
from tests.support.campaigns.restore import library_state
from tests.support.libraries import build_published_library as make_library
from tests.support.paths import REPO

REPO_ID = "user/mosaic_library"
# huggingface_hub's own LFS upload passes bytes as data= to httpx, which warns
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


@pytest.fixture(scope="module")
def library(tmp_path_factory, bluemarble) -> Path:
    """Real tiles with a fetch ledger, and synthetic tiles for 30 empty buckets."""
    root = make_library(tmp_path_factory.mktemp("hubrel") / "mosaic_library", bluemarble, n_ingest=60, n_harvest=20)
    with Library.open(root) as lib:
        empty = [int(b) for b in np.flatnonzero(lib.bucket_counts() == 0)]
        assert synthesize(lib, max_uses=2, buckets=empty[::150][:30], progress=False).made == 30
    return root


@pytest.fixture(scope="module")
def staging(library, tmp_path_factory) -> Path:
    return build_staging(library, tmp_path_factory.mktemp("hubrel_staging") / "staging", max_shard_size="1MB").output


def builder_cli(hub, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "PYTEST"))}
    env.update(hub.env() if hub is not None else {}, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "builder", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_push_is_every_config_then_up_to_date_and_re_uploads_only_what_differs(local_hub, staging, tmp_path):
    from huggingface_hub import HfApi

    first = push_staging(staging, REPO_ID)
    plan = plan_upload(staging)
    remote = local_hub.files(REPO_ID)
    assert {p for p in remote if p != ".gitattributes"} == {i.path_in_repo for i in plan}
    assert {p.split("/")[0] for p in remote if "/" in p} == {"data", "synthetic", "metadata"}
    assert len(first.uploaded) == len(plan) and first.commit_url
    commits = len(local_hub.history(REPO_ID))

    again = push_staging(staging, REPO_ID)  # the Hub holds every file with the same sha256
    assert again.commit_url is None and len(again.unchanged) == len(plan)
    assert "is up to date" in again.summary() and len(local_hub.history(REPO_ID)) == commits

    # someone replaces a shard on the Hub with other bytes of the same size: that file alone goes up again
    shard = next(i for i in plan if i.path_in_repo.startswith("synthetic/"))
    forged = bytearray(shard.local_path.read_bytes())
    forged[100] ^= 0xFF
    HfApi().upload_file(path_or_fileobj=bytes(forged), path_in_repo=shard.path_in_repo, repo_id=REPO_ID,
                        repo_type="dataset")
    fixed = push_staging(staging, REPO_ID)
    assert [i.path_in_repo for i in fixed.uploaded] == [shard.path_in_repo]
    assert local_hub.changes(REPO_ID) == {"added": [], "modified": [shard.path_in_repo], "deleted": []}
    assert local_hub.files(REPO_ID)[shard.path_in_repo] == shard.local_path.read_bytes()


def test_query_hub_reads_no_image_and_agrees_with_the_library(local_hub, staging, library):
    push_staging(staging, REPO_ID)
    local_hub.reset_counters()
    result = builder_cli(local_hub, "query", "--hub", REPO_ID, "--hex", "4f7d3a", "-k", "4", "--paths", "100", "--json")
    assert result.returncode == 0, result.stderr
    served_images = local_hub.served_bytes("data/*") + local_hub.served_bytes("synthetic/*")
    assert served_images == 0  # no image fetched: the index, the centroids, the metadata rows
    found = json.loads(result.stdout)["buckets"]
    local = builder_cli(local_hub, "query", "--library", str(library), "--hex", "4f7d3a", "-k", "4", "--populated",
                        "--paths", "100", "--json")
    expected = json.loads(local.stdout)["buckets"]
    fields = ("bucket_id", "count", "real", "synthetic", "centroid_hex")
    assert [{f: b[f] for f in fields} for b in found] == [{f: b[f] for f in fields} for b in expected]
    for ours, theirs in zip(found, expected):  # the same tiles, each of the same kind
        assert sorted(zip(ours["tiles"], ours["kinds"])) == sorted(
            (Path(t).stem, kind) for t, kind in zip(theirs["tiles"], theirs["kinds"]))
    real_only = builder_cli(local_hub, "query", "--hub", REPO_ID, "--hex", "4f7d3a", "-k", "4", "--real-only", "--json")
    assert all(set(b["kinds"]) <= {"real"} and b["synthetic"] == 0 for b in json.loads(real_only.stdout)["buckets"])


def footer_bytes(path: Path) -> int:
    """A Parquet file's footer with its length and magic (what a reader fetches to open it)."""
    return int.from_bytes(path.read_bytes()[-8:-4], "little") + 8


def small_column_bytes(path: Path, group: int) -> int:
    """Bytes of every column chunk of a row group but the images, from the file's own metadata."""
    row_group = pq.ParquetFile(path).metadata.row_group(group)
    return sum(row_group.column(i).total_compressed_size for i in range(row_group.num_columns)
               if row_group.column(i).path_in_schema != "image.bytes")


# What one bucket's images cost beyond their own PNG bytes, a tile: its 4-byte length prefix and at
# most one data page's header and levels (27 bytes measured; pages hold 256 KB to 1 MB of images).
PER_TILE = 4 + 64


def kinds(state: dict) -> tuple[list[int], list[int]]:
    """Buckets holding real tiles, and buckets holding synthetic ones made from a real tile."""
    rows = state["rows"].values()
    return (sorted({r[1] for r in rows if r[-2] == 0}), sorted({r[1] for r in rows if r[-2] == 1 and r[-1]}))


def with_sources(state: dict, chosen) -> set[str]:
    """The tiles of ``chosen`` buckets and the real tiles their synthetic ones were made from."""
    tiles = {i for i, row in state["rows"].items() if row[1] in chosen}
    return tiles | {state["rows"][i][-1] for i in tiles if state["rows"][i][-2] == 1 and state["rows"][i][-1]}


def test_spans_split_back_into_each_buckets_tiles_and_refuse_damage(staging, library, tmp_path):
    whole = library_state(library)
    index = read_index(staging / INDEX_NAME)
    images = [r for r in index.to_pylist() if r["config"] != "metadata"]
    assert images and all(r["image_offset"] is not None for r in images)
    assert all(r["image_offset"] is None for r in index.to_pylist() if r["config"] == "metadata")
    for entry in images:  # every span of the release: the bucket's own PNGs, in (label, id) order
        data = (staging / entry["file"]).read_bytes()
        span = data[entry["image_offset"]:entry["image_offset"] + entry["image_length"]]
        ids = sorted(i for i, row in whole["rows"].items() if row[1] == entry["bucket"]
                     and row[-2] == (entry["config"] == "synthetic"))
        assert entry["rows"] == len(ids)  # (no bucket here outgrows a row group)
        assert spans.split(span, entry["rows"]) == [whole["files"][i] for i in ids]
        assert entry["image_length"] <= sum(len(whole["files"][i]) for i in ids) + PER_TILE * entry["rows"]
    # the synthetic config's rows name the buckets of their sources
    synthetic = [r for r in images if r["config"] == "synthetic"]
    for entry in synthetic:
        sources = {whole["rows"][i][-1] for i, row in whole["rows"].items() if row[1] == entry["bucket"] and row[-2] == 1}
        assert entry["source_buckets"] == sorted({whole["rows"][s][1] for s in sources if s})

    entry = max(images, key=lambda r: r["rows"])
    span = bytearray((staging / entry["file"]).read_bytes()[entry["image_offset"]:][:entry["image_length"]])
    first = int.from_bytes(span[:4], "little")
    idat = span.find(b"IDAT")
    damaged = {
        "fails its CRC": (idat + 4 + 100, 0x01),  # a byte of the first PNG's image data
        "follows a length prefix of": (0, 0x01),  # its length prefix, one more or less
        "no PNG signature": (5, 0x40),  # its signature
    }
    for message, (at, flip) in damaged.items():
        copy = bytearray(span)
        copy[at] ^= flip
        with pytest.raises(spans.SpanError, match=f"PNG 1 of {entry['rows']}: .*{message}"):
            spans.split(bytes(copy), entry["rows"])
    with pytest.raises(spans.SpanError, match="cut short|past the end"):
        spans.split(bytes(span[:first]), entry["rows"])
    with pytest.raises(spans.SpanError, match="follow the last of its"):
        spans.split(bytes(span) + b"\0", entry["rows"])
    if entry["rows"] > 1:
        with pytest.raises(spans.SpanError, match="follow the last of its"):
            spans.split(bytes(span), entry["rows"] - 1)
    with pytest.raises(spans.SpanError, match=f"holds {entry['rows']} PNGs, not {entry['rows'] + 1}"):
        spans.split(bytes(span), entry["rows"] + 1)

    # a local restore of some buckets: their tiles and their synthetic tiles' sources; verify passes
    real, made = kinds(whole)
    chosen = real[:1] + made[:2]
    report = restore_library(staging, tmp_path / "local" / "mosaic_library", buckets=chosen)
    wanted = with_sources(whole, chosen)
    assert set(library_state(tmp_path / "local" / "mosaic_library")["rows"]) == wanted
    assert report.sources == len(wanted - {i for i, r in whole["rows"].items() if r[1] in chosen}) > 0
    verified = builder_cli(None, "verify", "--library", str(tmp_path / "local" / "mosaic_library"))
    assert verified.returncode == 0 and "no problems" in verified.stdout, verified.stdout


def test_a_row_group_whose_images_do_not_walk_gets_no_span_and_is_read_whole(library, tmp_path):
    """A PNG with bytes after its IEND chunk: its row group is indexed without spans, read whole."""
    pngs = sorted(v for v in library_state(library)["files"].values() if v)[:4]
    arrow = pa.schema([pa.field("image", pa.struct({"bytes": pa.binary(), "path": pa.string()})),
                       pa.field("label", pa.int64())])
    path = tmp_path / "odd.parquet"
    with pq.ParquetWriter(path, arrow, write_page_index=True, **column_options(arrow)) as writer:
        for group, images in enumerate((pngs[:2], [pngs[2], pngs[3] + b"trailing bytes"])):
            writer.write_table(pa.table({"image": [{"bytes": b, "path": None} for b in images],
                                         "label": [7 + group] * len(images)}, schema=arrow))
    rows = index_rows(path, "data/odd.parquet", "default")
    assert [(r["bucket"], r["row_group"], r["rows"]) for r in rows] == [(7, 0, 2), (8, 1, 2)]
    assert rows[0]["image_offset"] is not None and rows[1]["image_offset"] is None
    read = [row for part in shard_rows(LocalShard(path), pa.Table.from_pylist(rows, schema=INDEX_SCHEMA),
                                       "data/odd.parquet") for row in part]
    assert [row["image"]["bytes"] for row in read] == [*pngs[:3], pngs[3] + b"trailing bytes"]


def test_restore_hub_of_some_buckets_fetches_their_images_and_small_columns_and_their_sources(
        local_hub, staging, library, tmp_path):
    push_staging(staging, REPO_ID)
    whole = library_state(library)
    real, made = kinds(whole)
    chosen = real[:2] + made[:1]
    local_hub.reset_counters()
    target = tmp_path / "part" / "mosaic_library"
    result = builder_cli(local_hub, "restore", "--hub", REPO_ID, "--buckets", ",".join(map(str, chosen)),
                         "--library", str(target), "--json")
    assert result.returncode == 0, result.stderr
    wanted = with_sources(whole, chosen)
    sources = wanted - {i for i, row in whole["rows"].items() if row[1] in chosen}
    assert sources  # the synthetic bucket's tile was made from a real tile of another bucket
    report = json.loads(result.stdout)
    assert report["sources"] == len(sources) and report["tiles"] == len(wanted)
    assert report["source_buckets"] == sorted({whole["rows"][i][1] for i in sources})
    state = library_state(target)
    assert state["rows"] == {i: whole["rows"][i] for i in wanted}
    assert state["files"] == {i: whole["files"][i] for i in wanted} and state["files_on_disk"] == len(wanted)
    verified = builder_cli(local_hub, "verify", "--library", str(target))
    assert verified.returncode == 0 and "no problems" in verified.stdout, verified.stdout
    # exactly each file's footer, each row group's small columns and each bucket's image span
    index = read_index(staging / INDEX_NAME)
    entries = select(index, chosen, ["default", "synthetic"]).to_pylist() + select(
        index, report["source_buckets"], ["default"]).to_pylist()
    files = {e["file"] for e in entries}
    expected = (sum(footer_bytes(staging / f) for f in files)
                + sum(small_column_bytes(staging / f, g) for f, g in {(e["file"], e["row_group"]) for e in entries})
                + sum(e["image_length"] for e in entries))
    # (payload bytes from LFS storage; the Hub's redirects to it carry a few hundred bytes each)
    fetched = local_hub.served_bytes("data/*", origin="cdn") + local_hub.served_bytes("synthetic/*", origin="cdn")
    assert fetched == expected
    assert fetched < sum(footer_bytes(staging / e["file"]) + e["length"] for e in entries)  # less than row groups


def test_one_small_bucket_costs_its_own_images_not_its_row_group(local_hub, staging, library, tmp_path):
    push_staging(staging, REPO_ID)
    whole = library_state(library)
    default = [r for r in read_index(staging / INDEX_NAME).to_pylist() if r["config"] == "default"]
    shared = [r for r in default
              if sum(1 for o in default if (o["file"], o["row_group"]) == (r["file"], r["row_group"])) >= 3]
    entry = shared[len(shared) // 2]  # a bucket that shares its row group with two others at least
    local_hub.reset_counters()
    target = tmp_path / "one" / "mosaic_library"
    assert restore_from_hub(REPO_ID, target, buckets=[entry["bucket"]]).sources == 0
    ids = {i for i, row in whole["rows"].items() if row[1] == entry["bucket"]}
    assert library_state(target)["files"] == {i: whole["files"][i] for i in ids}
    shard = staging / entry["file"]
    fetched = local_hub.served_bytes(entry["file"], origin="cdn")
    shards = sum(local_hub.served_bytes(f"{folder}/*", origin="cdn") for folder in ("data", "synthetic", "metadata"))
    assert shards == fetched  # nothing of another shard
    # the budget, footer aside: the row group's small columns, the bucket's own PNGs, PER_TILE a tile
    budget = small_column_bytes(shard, entry["row_group"]) + sum(len(whole["files"][i]) for i in ids) + PER_TILE * len(ids)
    assert fetched - footer_bytes(shard) <= budget
    assert fetched - footer_bytes(shard) < entry["length"] / 2  # the row group the bucket shares


def test_a_damaged_image_span_is_refused_with_one_line_and_nothing_restored(local_hub, staging, library, tmp_path):
    push_staging(staging, REPO_ID)
    entry = next(r for r in read_index(staging / INDEX_NAME).to_pylist() if r["config"] == "default")
    stored = local_hub._lfs_path(read_manifest(staging)["files"][entry["file"]]["sha256"])  # the Hub's storage
    original = stored.read_bytes()
    start = entry["image_offset"]
    idat = original.find(b"IDAT", start)
    target = tmp_path / "part" / "mosaic_library"
    for at, message, through in ((idat + 4 + 100, "IDAT chunk fails its CRC", "cli"),
                                 (start, "follows a length prefix", "api")):
        damaged = bytearray(original)
        damaged[at] ^= 0x01  # storage serves other bytes than the ones the Hub's metadata describes
        stored.write_bytes(bytes(damaged))
        line = f"{entry['file']}: bucket {entry['bucket']}'s images in row group {entry['row_group']} are damaged"
        if through == "cli":
            result = builder_cli(local_hub, "restore", "--hub", REPO_ID, "--buckets", str(entry["bucket"]),
                                 "--library", str(target))
            assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
            assert result.stderr.startswith(f"error: {line} (PNG 1 of {entry['rows']}: ")
            assert message in result.stderr and "the release is damaged" in result.stderr
        else:
            with pytest.raises(ReleaseIncomplete, match=f"{line}.*{message}"):
                restore_from_hub(REPO_ID, target, buckets=[entry["bucket"]])
        assert not target.exists() and not scratch_for(target).exists()


def test_a_release_whose_index_has_no_spans_is_read_a_row_group_at_a_time(local_hub, staging, library, tmp_path):
    older = tmp_path / "older_staging"
    shutil.copytree(staging, older)
    pq.write_table(pq.read_table(older / INDEX_NAME).drop_columns(list(SPAN_COLUMNS)), older / INDEX_NAME)
    manifest = read_manifest(older)
    manifest["files"][INDEX_NAME] = describe(older / INDEX_NAME)
    write_manifest(older, manifest)
    push_staging(older, REPO_ID)
    whole = library_state(library)
    real, made = kinds(whole)
    chosen = real[:1] + made[:1]
    local_hub.reset_counters()
    target = tmp_path / "part" / "mosaic_library"
    result = builder_cli(local_hub, "restore", "--hub", REPO_ID, "--buckets", ",".join(map(str, chosen)),
                         "--library", str(target))
    assert result.returncode == 0, result.stderr
    wanted = {i for i, row in whole["rows"].items() if row[1] in chosen}  # no sources: the index does not locate them
    assert library_state(target)["files"] == {i: whole["files"][i] for i in wanted}
    assert "not restored" in result.stdout and "restore the whole release" in result.stdout
    index = select(read_index(older / INDEX_NAME), chosen, ["default", "synthetic"])
    groups = {(r["file"], r["row_group"]): r["length"] for r in index.to_pylist()}
    footers = sum(footer_bytes(older / f) for f in {f for f, _g in groups})
    fetched = local_hub.served_bytes("data/*", origin="cdn") + local_hub.served_bytes("synthetic/*", origin="cdn")
    assert fetched == sum(groups.values()) + footers  # exactly the footers and the whole row groups
    verified = builder_cli(local_hub, "verify", "--library", str(target))
    assert verified.returncode == 1 and "unknown_source" in verified.stdout


def test_restore_hub_whole_equals_the_library_and_a_missing_shard_is_refused_before_any_download(
        local_hub, staging, library, tmp_path):
    from huggingface_hub import HfApi

    push_staging(staging, REPO_ID)
    report = restore_from_hub(REPO_ID, tmp_path / "whole" / "mosaic_library")
    assert report.used_shipped_db and library_state(tmp_path / "whole" / "mosaic_library") == library_state(library)

    victim = sorted(p for p in local_hub.files(REPO_ID) if p.startswith("data/"))[1]
    HfApi().delete_file(victim, repo_id=REPO_ID, repo_type="dataset")
    local_hub.reset_counters()
    target = tmp_path / "again" / "mosaic_library"
    result = builder_cli(local_hub, "restore", "--hub", REPO_ID, "--library", str(target))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"{victim} is missing" in result.stderr
    assert not target.exists() and not scratch_for(target).exists()
    assert local_hub.served_bytes("*.parquet") == 0  # refused from the manifest and paths-info alone
    with pytest.raises(ReleaseIncomplete, match=victim):
        restore_from_hub(REPO_ID, target)
    assert len(query_hub(REPO_ID, (50.0, 0.0, 0.0), k=2)) == 2  # the metadata and the index are still all there


def test_a_release_on_a_branch_is_read_with_revision(local_hub, staging, library, tmp_path):
    push_staging(staging, REPO_ID, revision="release-2")
    assert set(local_hub.files(REPO_ID, "main")) == {".gitattributes"}
    whole = library_state(library)
    bucket = next(row[1] for row in whole["rows"].values() if row[-2] == 0)
    target = tmp_path / "part" / "mosaic_library"
    refused = builder_cli(local_hub, "restore", "--hub", REPO_ID, "--buckets", str(bucket), "--library", str(target))
    assert refused.returncode == 2 and "has no release.json" in refused.stderr and refused.stderr.count("\n") == 1
    result = builder_cli(local_hub, "restore", "--hub", REPO_ID, "--revision", "release-2", "--buckets", str(bucket),
                         "--library", str(target))
    assert result.returncode == 0, result.stderr
    assert set(library_state(target)["rows"]) == {i for i, row in whole["rows"].items() if row[1] == bucket}
    query = builder_cli(local_hub, "query", "--hub", REPO_ID, "--revision", "release-2", "--lab", "50", "0", "0")
    assert query.returncode == 0 and "populated" in query.stdout
