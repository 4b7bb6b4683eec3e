"""Reading a release on the Hub, whole or in part, through ``huggingface_hub`` and pyarrow.

:class:`HubRelease` pins a repo to one commit (``--revision``, default ``main``, resolved once so
every read sees the same release), fetches its small files (``release.json``, the bucket index,
``centroids.npy``) with ``hf_hub_download`` and checks each against the manifest's sha256, and
reads given buckets through ``HfFileSystem`` (:class:`HubShard`): one range request for a
shard's footer (its length is in the manifest), then, per row group, one for its small columns
(every column chunk but the images: their ranges are in the footer) and one for each bucket's
image span (in the bucket index; :mod:`.spans`), or, from an index without spans, one for the
whole row group; handed to pyarrow, nothing else of a shard.  ``HF_ENDPOINT``, ``HF_TOKEN`` and
the saved login apply as everywhere in ``huggingface_hub``; the token is never printed.

* :func:`query_hub`: the nearest populated buckets of a colour and their tiles, from the index
  and the ``metadata`` config alone (no image fetched).
* :func:`restore_from_hub`: the whole release (its files downloaded into the Hub cache, checked,
  then restored as a local download is), or only some buckets' tiles of both configs and the
  sources of their synthetic tiles (:class:`HubBuckets`: only their images and small columns
  fetched, each bucket checked against the index, each PNG against its span).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..core.color import lab_to_rgb, load_centroids, rgb_to_hex
from ..core.errors import MosaicError, UsageError
from ..core.layout import CENTROIDS_NAME, DB_NAME, N_BUCKETS
from ..core.query import FLAT_SYNTHETIC, REAL, SYNTHETIC, BucketMatch, PopulatedIndex
from . import index as bucket_index
from . import manifest as release_manifest
from .manifest import ReleaseIncomplete
from .restore import (
    TILE_CONFIGS,
    LocalRelease,
    RestoreReport,
    _parse_buckets,
    check_index_files,
    release_identity,
    restore_release,
    select_buckets,
    shard_rows,
    wanted_rows,
)
from .schema import INDEX_NAME, RELEASE_MANIFEST
from .spans import merge_ranges, pieces

logger = logging.getLogger(__name__)


class HubError(MosaicError):
    """The Hub could not be reached, or refused; one line, never the token."""


def _hub_call(what: str, call, *args, **kwargs):
    """Run a ``huggingface_hub`` call (progress bars on a terminal only); its errors become one
    :class:`HubError` line."""
    from .hub import hub_progress

    try:
        with hub_progress():
            return call(*args, **kwargs)
    except MosaicError:
        raise
    except Exception as exc:  # noqa: BLE001 - the Hub's and the network's errors, on one line
        from huggingface_hub.utils import get_token

        token = get_token()
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if token:
            message = message.replace(token, "***")
        raise HubError(f"{what} failed: {message}") from None


class HubRelease:
    """A release on the Hub at one commit: its manifest, checked small files and row-group reads."""

    def __init__(self, repo_id: str, revision: str | None = None, token: str | None = None) -> None:
        from huggingface_hub import HfApi, HfFileSystem

        from .hub import validate_repo_id

        self.repo_id = validate_repo_id(repo_id)
        self.token = token
        self.api = HfApi(token=token)
        info = _hub_call(f"reading {repo_id}", self.api.dataset_info, repo_id, revision=revision)
        self.commit = info.sha
        self.fs = HfFileSystem(token=token)
        from huggingface_hub.errors import EntryNotFoundError

        try:
            self.manifest_bytes = self.download(RELEASE_MANIFEST, check=False).read_bytes()
        except HubError as exc:
            if EntryNotFoundError.__name__ not in str(exc):
                raise
            raise ReleaseIncomplete(
                f"{self.where} has no {RELEASE_MANIFEST}: it was not published by this builder's push; download it "
                "(huggingface_hub.snapshot_download) and restore the folder") from None
        self.manifest = release_manifest.parse_manifest(self.manifest_bytes, self.where)

    @property
    def where(self) -> str:
        return f"{self.repo_id}@{self.commit[:12]}"

    def path(self, name: str) -> str:
        """``HfFileSystem`` path of a file of this commit."""
        return f"datasets/{self.repo_id}@{self.commit}/{name}"

    def download(self, name: str, check: bool = True) -> Path:
        """A file of the release in the Hub cache (``hf_hub_download``), checked against the manifest."""
        from huggingface_hub import hf_hub_download

        local = Path(_hub_call(f"downloading {name} from {self.repo_id}", hf_hub_download, self.repo_id, name,
                               repo_type="dataset", revision=self.commit, token=self.token))
        if check:
            facts = self.manifest["files"].get(name)
            problem = "is not in its manifest" if facts is None else release_manifest.file_problem(local, facts)
            if problem:
                raise ReleaseIncomplete(f"release {self.where} is damaged: {name} {problem}")
        return local

    def read(self, name: str, check: bool = True) -> bytes:
        return self.download(name, check).read_bytes()

    def index(self):
        if INDEX_NAME not in self.manifest["files"]:
            raise ReleaseIncomplete(f"release {self.where} has no {INDEX_NAME}: read it whole")
        return bucket_index.read_index(io.BytesIO(self.read(INDEX_NAME)))

    def centroids(self) -> Path:
        return self.download(CENTROIDS_NAME)

    def check_remote(self, names: Iterable[str]) -> None:
        """The Hub's files are those the manifest names: LFS sha256 and size (``paths-info``)."""
        names = list(names)
        infos = _hub_call(f"reading {self.repo_id}", self.api.get_paths_info, self.repo_id, names,
                          repo_type="dataset", revision=self.commit)
        found = {info.path: info for info in infos}
        for name in names:
            facts, info = self.manifest["files"][name], found.get(name)
            if info is None:
                raise ReleaseIncomplete(f"release {self.where} is incomplete: {name} is missing")
            lfs = getattr(info, "lfs", None)
            sha, size = (lfs.sha256, lfs.size) if lfs is not None else (None, info.size)
            if size != facts["size"] or (sha is not None and sha != facts["sha256"]):
                raise ReleaseIncomplete(f"release {self.where} is damaged: {name} differs from its manifest")

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a file of this commit: one HTTP range request, no read-ahead."""
        def read() -> bytes:
            with self.fs.open(self.path(name), "rb", cache_type="none") as fh:
                fh.seek(start)
                return fh.read(end - start)

        return _hub_call(f"reading {name} from {self.repo_id}", read)

    def read_ranges(self, name: str, ranges) -> dict[tuple[int, int], bytes]:
        """``{(start, end): bytes}`` of each range of a file of this commit: one request per run
        of touching ranges (:func:`.spans.merge_ranges`), no read-ahead."""
        merged = merge_ranges(list(ranges))
        fetched = {(start, end): self.read_range(name, start, end) for start, end in merged}
        return pieces(fetched, list(ranges))


class HubShard:
    """A shard of a Hub release read in byte ranges: a :class:`~.restore.Shard`.

    ``HfFileSystem``'s own ``cat_ranges`` reads each range through a file with a 5 MB read-ahead
    block (measured: a 2.6 MB row group cost 7.9 MB, the footer twice), so the ranges are read
    here (:meth:`HubRelease.read_range`) and handed to pyarrow through fsspec's known-parts file,
    strict: a read outside them fails.  The footer (its length is in the manifest) is read once.
    """

    def __init__(self, release: HubRelease, name: str) -> None:
        self.release, self.name = release, name
        self.size = release.manifest["files"][name]["size"]
        self._footer: dict[tuple[int, int], bytes] | None = None
        self._metadata = None

    def _footer_parts(self) -> dict[tuple[int, int], bytes]:
        if self._footer is None:
            length = self.release.manifest["files"][self.name].get("footer", 0) + 8
            tail = (self.size - length, self.size)
            self._footer = {(0, 4): b"PAR1", tail: self.release.read_range(self.name, *tail)}
        return self._footer

    def metadata(self):
        if self._metadata is None:
            self._metadata = self.parquet({}).metadata
        return self._metadata

    def read(self, ranges) -> dict[tuple[int, int], bytes]:
        return self.release.read_ranges(self.name, ranges)

    def row_groups(self, ranges):
        return self.parquet(self.read(ranges))

    def parquet(self, parts: dict[tuple[int, int], bytes]):
        import pyarrow.parquet as pq
        from fsspec.parquet import AlreadyBufferedFile

        handle = AlreadyBufferedFile(fs=None, path=self.release.path(self.name), mode="rb", cache_type="parts",
                                     cache_options={"data": {**self._footer_parts(), **parts}, "strict": True},
                                     size=self.size)
        return pq.ParquetFile(handle)


class HubBuckets:
    """The tiles of some buckets of a Hub release, both configs, and their synthetic tiles' sources:
    a :class:`~.restore.ReleaseSource`."""

    def __init__(self, release: HubRelease, buckets: Iterable[int]) -> None:
        self.release = release
        self.buckets = _parse_buckets(buckets)
        self.description = f"hub:{release.where}"
        self.cap = release.manifest.get("cap")
        self.selection = select_buckets(release.index(), self.buckets)
        files = self.selection.files
        check_index_files(files, release.manifest, release.where)
        release.check_remote(files)
        self.parquet_files = len(files)
        self.release_id = release_identity(release.manifest_bytes, (), self.buckets)
        self._centroids = release.centroids()

    def centroids(self) -> Path:
        return self._centroids

    def shipped_db(self) -> None:
        return None

    def batches(self, config: str) -> Iterator[list[dict]]:
        rows = bucket_index.select(self.selection.rows, self.buckets, [config])
        for name in sorted(set(rows["file"].to_pylist())):
            yield from shard_rows(HubShard(self.release, name), rows, name)

    def source_batches(self, ids: set[str]) -> Iterator[list[dict]]:
        rows = self.selection.sources
        for name in sorted(set(rows["file"].to_pylist())):
            yield from wanted_rows(shard_rows(HubShard(self.release, name), rows, name), ids)


def parse_bucket_list(buckets: str | Iterable[int] | None) -> tuple[int, ...] | None:
    if buckets is None:
        return None
    if isinstance(buckets, str):
        try:
            values = [int(b) for b in buckets.replace(" ", "").split(",") if b]
        except ValueError:
            raise UsageError(f"--buckets takes bucket ids separated by commas, e.g. 42,57; got {buckets!r}") from None
        if not values:
            raise UsageError("--buckets names no bucket")
        return _parse_buckets(values)
    return _parse_buckets(buckets)


def restore_from_hub(repo_id: str, library_root: str | os.PathLike, revision: str | None = None,
                     buckets: str | Iterable[int] | None = None, token: str | None = None,
                     progress: bool | None = None) -> RestoreReport:
    """``restore --hub``: the whole release, or only ``buckets`` (both configs), into ``library_root``."""
    from .restore import _already_restored, _target_is_free, scratch_for

    chosen = parse_bucket_list(buckets)
    release = HubRelease(repo_id, revision, token)
    if chosen:
        return restore_release(HubBuckets(release, chosen), library_root, progress)
    root = Path(library_root)
    needed = release_manifest.needed_files(release.manifest, TILE_CONFIGS, [DB_NAME, CENTROIDS_NAME])
    done = _already_restored(root, release_identity(release.manifest_bytes, (), ()))
    if done is not None:  # nothing to download: a run killed after its final rename, or a second run
        shutil.rmtree(scratch_for(root), ignore_errors=True)
        return RestoreReport(root, done, sum(1 for n in needed if n.endswith(".parquet")), False, "already restored")
    _target_is_free(root)  # before downloading anything
    release.check_remote(needed)  # before downloading anything: a file missing on the Hub is refused here
    from huggingface_hub import snapshot_download

    folder = Path(_hub_call(f"downloading {repo_id}", snapshot_download, repo_id, repo_type="dataset",
                            revision=release.commit, allow_patterns=[*needed, RELEASE_MANIFEST], token=token))
    local = LocalRelease(folder)
    local.description = f"hub:{release.where}"
    return restore_release(local, root, progress)


# ---------------------------------------------------------------------------------------------
# query --hub
# ---------------------------------------------------------------------------------------------


def query_hub(repo_id: str, lab, k: int = 5, revision: str | None = None, token: str | None = None,
              real_only: bool = False, max_paths: int | None = None) -> list[BucketMatch]:
    """The ``k`` populated buckets nearest the LAB colour ``lab`` and their tiles, from the release's
    index, ``centroids.npy`` and ``metadata`` rows of those buckets (no image is fetched).

    As :func:`builder.core.query.describe` answers it for a library (``populated=True``), but each
    tile is named by its id (the release has no folders) and kinds come from the metadata rows;
    ``real_only`` counts and lists real tiles only; ``max_paths`` lists at most that many ids a bucket.
    """
    if not isinstance(k, int) or k < 1:
        raise UsageError(f"k must be a positive integer, got {k!r}")
    release = HubRelease(repo_id, revision, token)
    index = release.index()
    real = np.zeros(N_BUCKETS, dtype=np.int64)
    every = np.zeros(N_BUCKETS, dtype=np.int64)
    for config, counts in (("default", real), ("metadata", every)):
        for bucket, n in bucket_index.bucket_counts(index, config).items():
            counts[bucket] = n
    counts = real if real_only else every
    if not counts.any():
        raise UsageError(f"release {release.where} holds no {'real ' if real_only else ''}tiles")
    centroids = load_centroids(release.centroids())
    near = PopulatedIndex(centroids, counts).query(np.asarray(lab, dtype=np.float64).reshape(1, 3), k)
    buckets = [int(b) for b in near.bucket_ids[0]]
    rows = bucket_index.select(index, buckets, ["metadata"])
    named = bucket_index.row_groups_by_file(rows)
    metadata = set(release_manifest.needed_files(release.manifest, ["metadata"]))
    foreign = sorted(set(named) - metadata)
    if foreign:
        raise ReleaseIncomplete(f"{release.where}: its bucket index names {foreign[0]!r}, which is no metadata shard")
    release.check_remote(named)
    tiles: dict[int, list[tuple[int, str, str]]] = {}
    for name in sorted(named):
        for part in shard_rows(HubShard(release, name), rows, name):
            for row in part:
                kind = (FLAT_SYNTHETIC if row.get("derived_from") is None else SYNTHETIC) if row.get("synthetic") else REAL
                if kind == REAL or not real_only:
                    tiles.setdefault(row["label"], []).append((kind != REAL, row["id"], kind))
    out = []
    rgb = lab_to_rgb(centroids[buckets])
    for bucket, distance, colour in zip(buckets, near.distances[0], rgb):
        listed = sorted(tiles.get(bucket, []))[:max_paths]
        out.append(BucketMatch(bucket, float(distance), int(counts[bucket]), tuple(float(v) for v in centroids[bucket]),
                               rgb_to_hex(colour), [tile_id for _s, tile_id, _k in listed],
                               int(real[bucket]), 0 if real_only else int(every[bucket] - real[bucket]),
                               [kind for _s, _i, kind in listed]))
    return out
