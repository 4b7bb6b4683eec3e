"""The release on a Hub: ``push`` of every config by content, ``query --hub`` and ``restore --hub``
(whole, or some buckets by their row groups), against the local Hub (tests/support/localhub.py:
real HTTP, real ``huggingface_hub`` and pyarrow, the bytes it serves counted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builder.library import Library
from builder.publish import build_staging, plan_upload, push_staging
from builder.publish.manifest import ReleaseIncomplete
from builder.publish.remote import query_hub, restore_from_hub
from builder.publish.restore import scratch_for
from builder.synthesize import synthesize
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
    env.update(hub.env(), PYTHONPATH=str(REPO))
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
    import json

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


def test_restore_hub_of_some_buckets_fetches_their_row_groups_only(local_hub, staging, library, tmp_path):
    push_staging(staging, REPO_ID)
    whole = library_state(library)
    bucket_of = {tile_id: row[1] for tile_id, row in whole["rows"].items()}
    real = sorted({b for i, b in bucket_of.items() if whole["rows"][i][-2] == 0})
    synthetic = sorted({b for i, b in bucket_of.items() if whole["rows"][i][-2] == 1})
    chosen = real[:2] + synthetic[:1]
    local_hub.reset_counters()
    target = tmp_path / "part" / "mosaic_library"
    result = builder_cli(local_hub, "restore", "--hub", REPO_ID, "--buckets", ",".join(map(str, chosen)),
                         "--library", str(target))
    assert result.returncode == 0, result.stderr
    wanted = {i for i, b in bucket_of.items() if b in chosen}
    state = library_state(target)
    assert state["rows"] == {i: whole["rows"][i] for i in wanted}
    assert state["files"] == {i: whole["files"][i] for i in wanted} and state["files_on_disk"] == len(wanted)
    # exactly the footers and the row groups holding a chosen bucket: nothing else of a shard
    from builder.publish.index import read_index, select

    index = select(read_index(staging / "bucket_index.parquet"), chosen, ["default", "synthetic"])
    groups = {(r["file"], r["row_group"]): r["length"] for r in index.to_pylist()}
    files = {f for f, _g in groups}
    footers = sum(int.from_bytes((staging / f).read_bytes()[-8:-4], "little") + 8 for f in files)
    # (payload bytes from LFS storage; the Hub's redirects to it carry a few hundred bytes each)
    fetched = local_hub.served_bytes("data/*", origin="cdn") + local_hub.served_bytes("synthetic/*", origin="cdn")
    assert fetched == sum(groups.values()) + footers
    assert fetched < sum((staging / f).stat().st_size for f in files)


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
