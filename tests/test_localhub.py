"""The local Hub (tests/support/localhub.py) against the real clients: ``huggingface_hub``'s
``HfApi``, ``snapshot_download``, ``hf_hub_download`` and ``HfFileSystem``, pyarrow reading through
``HfFileSystem``, and ``datasets.load_dataset``, with nothing in them mocked. Each test pushes its
own small repo with the client's own upload path (preupload, LFS batch, storage PUT, verify, commit)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.support.localhub import LocalHub

# huggingface_hub's LFS upload hands httpx2 a file as `data=`, which httpx2 deprecates: the client's own call.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "alice/tiles"
ROWS = 2000


def label_table(rows: int = ROWS, seed: int = 0) -> pa.Table:
    """Rows sorted by label with an incompressible payload, like a release shard."""
    rng = np.random.default_rng(seed)
    return pa.table({
        "label": pa.array(np.repeat(np.arange(rows // 100), 100), pa.int32()),
        "payload": pa.array([rng.bytes(200) for _ in range(rows)], pa.binary()),
    })


def make_folder(root: Path) -> Path:
    """A release-like folder: a Parquet shard (LFS), a SQLite-like binary file (LFS by content),
    a card and a small text file (regular)."""
    folder = root / "release"
    (folder / "data").mkdir(parents=True)
    pq.write_table(label_table(), folder / "data" / "train-00000-of-00001.parquet", row_group_size=250)
    (folder / "tiles.db").write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 16)
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n"
        "# Tiles\n"
    )
    (folder / "notes.txt").write_text("the small text file\n")
    return folder


def push_folder(tmp_path: Path) -> tuple[HfApi, Path, str]:
    api = HfApi()
    api.create_repo(REPO, repo_type="dataset")
    folder = make_folder(tmp_path)
    commit = api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=folder, commit_message="release 1")
    return api, folder, commit.oid


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def git_hash_object(data: bytes) -> str:
    return subprocess.run(["git", "hash-object", "--stdin"], input=data, capture_output=True, check=True).stdout.decode().strip()


def test_upload_folder_then_snapshot_download_is_byte_identical(local_hub, tmp_path):
    api, folder, oid = push_folder(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", oid) and oid == local_hub.head(REPO)
    commit = local_hub.history(REPO)[0]
    kinds = {path: entry.kind for path, entry in commit.files.items()}
    assert kinds == {".gitattributes": "regular", "README.md": "regular", "notes.txt": "regular",
                     "data/train-00000-of-00001.parquet": "lfs", "tiles.db": "lfs"}
    # the LFS files went to storage through the client's PUT, the token stayed with the Hub
    puts = [r for r in local_hub.requests if r.method == "PUT"]
    assert len(puts) == 2 and all(r.origin == "cdn" and r.auth == "none" and r.status == 200 for r in puts)
    assert all(r.auth == "valid" for r in local_hub.requests if r.origin == "hub")

    local = Path(snapshot_download(REPO, repo_type="dataset"))
    downloaded = files_under(local)
    assert downloaded.pop(".gitattributes").startswith(b"*.7z filter=lfs")  # made by the Hub at creation
    assert downloaded == files_under(folder)
    # ids are git's own: a regular file's oid is its git blob id, the commit a real 40-hex sha
    info = {i.path: i for i in api.get_paths_info(REPO, ["notes.txt"], repo_type="dataset")}
    assert info["notes.txt"].blob_id == git_hash_object((folder / "notes.txt").read_bytes())


def test_a_second_commit_deletes_and_the_old_revision_still_resolves(local_hub, tmp_path):
    api, folder, first = push_folder(tmp_path)
    second = api.create_commit(
        REPO,
        [CommitOperationDelete("notes.txt"), CommitOperationAdd("README.md", b"# Tiles, second release\n")],
        commit_message="release 2",
        repo_type="dataset",
        parent_commit=first,
    )
    assert second.oid != first and local_hub.changes(REPO) == {
        "added": [], "modified": ["README.md"], "deleted": ["notes.txt"]}
    assert "notes.txt" not in api.list_repo_files(REPO, repo_type="dataset")

    old_notes = hf_hub_download(REPO, "notes.txt", repo_type="dataset", revision=first)
    assert Path(old_notes).read_bytes() == (folder / "notes.txt").read_bytes()
    old_card = hf_hub_download(REPO, "README.md", repo_type="dataset", revision=first)
    new_card = hf_hub_download(REPO, "README.md", repo_type="dataset", revision="main")
    assert Path(old_card).read_bytes() == (folder / "README.md").read_bytes()
    assert Path(new_card).read_bytes() == b"# Tiles, second release\n"
    api.create_branch(REPO, branch="v1", revision=first, repo_type="dataset")
    assert Path(hf_hub_download(REPO, "notes.txt", repo_type="dataset", revision="v1")).read_bytes() == (
        folder / "notes.txt").read_bytes()

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "notes.txt", repo_type="dataset", revision="main")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "README.md", repo_type="dataset", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/no-such-repo", "README.md", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as stale:  # the branch moved since `first`
        api.create_commit(REPO, [CommitOperationAdd("x.txt", b"x")], commit_message="late", repo_type="dataset",
                          parent_commit=first)
    assert stale.value.response.status_code == 412 and local_hub.head(REPO) == second.oid

    # the repos live on disk: a server started again on the same folder serves every commit
    with LocalHub(local_hub.root, token=local_hub.token) as restarted:
        again = hf_hub_download(REPO, "tiles.db", repo_type="dataset", revision=first, endpoint=restarted.endpoint,
                                force_download=True)
        assert Path(again).read_bytes() == (folder / "tiles.db").read_bytes()
        assert restarted.head(REPO) == second.oid and restarted.request_count("/lfs/*", origin="cdn") == 1


def test_paths_info_reports_the_lfs_sha256_and_resolve_sends_the_hub_headers(local_hub, tmp_path):
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    api, folder, oid = push_folder(tmp_path)
    shard = "data/train-00000-of-00001.parquet"
    data = (folder / shard).read_bytes()
    infos = {i.path: i for i in api.get_paths_info(REPO, [shard, "notes.txt", "data", "absent"], repo_type="dataset")}
    assert set(infos) == {shard, "notes.txt", "data"}
    assert infos[shard].lfs.sha256 == hashlib.sha256(data).hexdigest() and infos[shard].size == len(data)
    assert infos["notes.txt"].lfs is None and not hasattr(infos["data"], "lfs")

    meta = get_hf_file_metadata(hf_hub_url(REPO, shard, repo_type="dataset"))
    assert (meta.commit_hash, meta.etag, meta.size) == (oid, hashlib.sha256(data).hexdigest(), len(data))
    assert meta.location.startswith(local_hub.cdn)  # LFS content is redirected to storage
    tree = list(api.list_repo_tree(REPO, recursive=True, expand=True, repo_type="dataset"))
    assert {e.path for e in tree} >= {shard, "data", "README.md"} and all(e.last_commit.oid == oid for e in tree
                                                                          if e.path != ".gitattributes")


def test_range_requests_get_206_and_416_with_content_range(local_hub, tmp_path):
    push_folder(tmp_path)
    url = f"{local_hub.endpoint}/datasets/{REPO}/resolve/main/notes.txt"
    body = b"the small text file\n"

    def get(range_header: str) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(url, headers={"Range": range_header})
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    status, headers, data = get("bytes=4-8")
    assert (status, data, headers["Content-Range"]) == (206, body[4:9], f"bytes 4-8/{len(body)}")
    assert headers["Accept-Ranges"] == "bytes" and headers["X-Repo-Commit"] == local_hub.head(REPO)
    assert get("bytes=-5")[::2] == (206, body[-5:])
    status, headers, _ = get(f"bytes={len(body)}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(body)}"


def test_hffs_seek_and_read_fetches_only_that_range(local_hub, tmp_path):
    api = HfApi()
    api.create_repo(REPO, repo_type="dataset")
    blob = np.random.default_rng(1).bytes(3_000_000)
    api.upload_file(path_or_fileobj=blob, path_in_repo="data/blob.bin", repo_id=REPO, repo_type="dataset")
    local_hub.reset_counters()
    fs = HfFileSystem()
    with fs.open(f"datasets/{REPO}/data/blob.bin", "rb", cache_type="none") as f:
        f.seek(1_000_000)
        assert f.read(10_000) == blob[1_000_000:1_010_000]
    storage = [r for r in local_hub.requests if r.origin == "cdn"]
    assert [(r.status, r.range, r.sent) for r in storage] == [(206, "bytes=1000000-1009999", 10_000)]
    assert storage[0].auth == "none" and storage[0].file == "data/blob.bin"
    assert 10_000 <= local_hub.served_bytes("data/blob.bin") < 12_000  # the range and a redirect or two


def test_pyarrow_reads_one_row_group_through_hffs_fetching_a_fraction(local_hub, tmp_path):
    push_folder(tmp_path)
    shard = f"datasets/{REPO}/data/train-00000-of-00001.parquet"
    size = HfFileSystem().info(shard)["size"]
    local_hub.reset_counters()
    with HfFileSystem().open(shard, "rb", cache_type="none") as f:
        parquet = pq.ParquetFile(f)
        assert parquet.num_row_groups == ROWS // 250
        group = parquet.read_row_group(3)
    assert group.equals(label_table().slice(750, 250))
    fetched = local_hub.served_bytes("*.parquet", origin="cdn")
    assert 0 < fetched < size / 3, (fetched, size)


def test_load_dataset_plain_and_streaming_with_filters(local_hub, tmp_path):
    import datasets

    push_folder(tmp_path)
    expected = label_table()
    loaded = datasets.load_dataset(REPO, split="train")
    assert loaded.num_rows == ROWS and loaded.data.table.select(["label", "payload"]).equals(expected)
    streamed = datasets.load_dataset(REPO, split="train", streaming=True, filters=[("label", "==", 7)])
    rows = list(streamed)
    assert [r["label"] for r in rows] == [7] * 100
    assert [r["payload"] for r in rows] == expected.slice(700, 100).column("payload").to_pylist()


def test_writes_need_the_token_and_private_repos_hide_without_it(local_hub, tmp_path):
    api, folder, oid = push_folder(tmp_path)
    anonymous, impostor = HfApi(token=False), HfApi(token="hf_not_the_token")
    with pytest.raises(HfHubHTTPError) as no_token:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as wrong_token:
        impostor.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, repo_type="dataset")
    assert no_token.value.response.status_code == 401 == wrong_token.value.response.status_code
    assert "Invalid credentials" in str(wrong_token.value) and local_hub.head(REPO) == oid
    assert anonymous.list_repo_files(REPO, repo_type="dataset")  # public: reading needs no token

    api.create_repo("alice/secret", repo_type="dataset", private=True)
    assert api.repo_info("alice/secret", repo_type="dataset").private is True
    with pytest.raises(RepositoryNotFoundError):
        anonymous.repo_info("alice/secret", repo_type="dataset")


def test_large_files_go_through_multipart_and_trees_paginate(local_hub, tmp_path):
    local_hub.multipart_chunk_size = 64 * 1024
    api = HfApi()
    api.create_repo(REPO, repo_type="dataset")
    blob = np.random.default_rng(2).bytes(200_000)
    texts = [CommitOperationAdd(f"notes/{i:03d}.txt", f"note {i}\n".encode()) for i in range(60)]
    api.create_commit(REPO, [CommitOperationAdd("big.bin", blob), *texts], commit_message="many",
                      repo_type="dataset")
    parts = [r for r in local_hub.requests if r.method == "PUT"]
    assert len(parts) == 4 and all(re.fullmatch(r"/upload/[0-9a-f]{64}/\d+", r.path) for r in parts)
    assert local_hub.request_count("/upload/*/complete", "POST") == 1
    assert Path(hf_hub_download(REPO, "big.bin", repo_type="dataset")).read_bytes() == blob

    local_hub.reset_counters()
    listed = list(api.list_repo_tree(REPO, "notes", expand=True, repo_type="dataset"))
    assert sorted(e.path for e in listed) == [f"notes/{i:03d}.txt" for i in range(60)]
    assert local_hub.request_count("/api/datasets/*/tree/*", "GET") == 2  # 50 a page with expand, then the rest
