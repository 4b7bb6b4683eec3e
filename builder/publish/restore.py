"""``restore``: recreate the on-disk library from a published release, all or nothing, resumable.

Sources (:class:`ReleaseSource`): a staging folder or a downloaded copy of the Hub repo
(:class:`LocalRelease`), a folder of bare Parquet files plus a centroids file, or the Hub itself
(:mod:`.remote`).  A release names its files in ``release.json`` (:mod:`.manifest`).

**Checked before anything is written.**  Every file the restore reads must be there as the
release's manifest names it: size, sha256 and rows of each shard of the ``default`` and
``synthetic`` configs, ``tiles.db`` and ``centroids.npy``; and the shipped ``tiles.db`` must count
as many real and synthetic tiles as those configs hold.  A release without a manifest (an older
one, bare files) must hold every ``train-XXXXX-of-YYYYY`` shard its names promise, and as many rows
as its ``tiles.db`` when it ships one.  Anything else is refused with one line naming the file,
and no library folder is created.  With ``buckets`` only the files holding those buckets (per
the bucket index) are checked, and each bucket's rows are counted against the index as they
are read.

**Buckets, tile by tile.**  With ``buckets``, a bucket's rows are read as the index says: from a
format-2 index, the row group's small columns and the bucket's own image span, split into PNGs
and each checked (:mod:`.spans`: CRC of every chunk, length prefixes, row count), so a small
bucket costs its own bytes rather than its 100-row group's; from an older index, the whole row
group.  Each requested bucket's synthetic tiles bring their sources along: the real tiles their
``derived_from`` names, from the buckets the index names for them (only those tiles of those
buckets are restored), so the partial library passes ``verify``; the report counts them.

**All or nothing.**  The library is built in a scratch folder beside the target,
``.<name>.restore/<name>/`` (the library keeps its final name: ``filepath`` rows name it), and
renamed into place when complete, so the target is either absent (or left empty) or a whole
library.  Tiles enter through the store's commit protocol (:func:`builder.core.store.stage`,
:func:`builder.core.store.commit`: journal, renames, one transaction per batch), so a crash at any
instant leaves the scratch library consistent.

**Resumable.**  ``.<name>.restore/source.json`` records which release (and buckets) the scratch
library is being restored from.  The same command run again after a kill reopens it (the writer's
open replays a half-stored batch), skips the tiles already committed and finishes; a different
release or bucket list starts over cleanly.  A run killed after the final rename finds the
target complete (its ``meta`` says ``restored_from`` this release) and says so.

Every row's ``id`` and ``label`` come from data and are validated before they name a file
(``Library.tile_path``); every PNG's header is checked.  When the source ships a ``tiles.db`` that
agrees with the Parquet rows, its ``fetched`` and ``meta`` tables come along too, so a restored
library resumes harvesting without refetching what was tried.  Memory stays flat: Parquet is
read in 100-row batches and rows are compared as two sorted streams.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from ..core import db, store
from ..core.errors import LibraryError, LibraryLocked, MosaicError, UsageError
from ..core.layout import CENTROIDS_NAME, DB_NAME, LABEL_NAMES, is_bucket_id
from ..core.library import Library
from ..core.tilefiles import check_png
from . import index as bucket_index
from . import manifest as release_manifest
from . import spans
from .manifest import ReleaseIncomplete
from .schema import INDEX_NAME, RELEASE_MANIFEST

logger = logging.getLogger(__name__)

BATCH_ROWS = 100  # rows read from a shard at a time
COMMIT_ROWS = 100  # tiles per commit of the store's protocol (one journal, one transaction): a read batch
READ_BUFFER = 1 << 20  # bytes read from a shard at a time
SOURCE_RECORD = "source.json"  # in the scratch folder: which release it is being restored from
RESTORED_FROM = "restored_from"  # meta key of a restored library: the release it came from
TILE_CONFIGS = ("default", "synthetic")  # the configs that hold images: what a library is made of
_REQUIRED = ("image", "label", "id", "phash", "mean_l", "mean_a", "mean_b")
_SHARD_NAME = re.compile(r"^train-(\d{5})-of-(\d{5})\.parquet$")


class RestoreReport(NamedTuple):
    library: Path
    tiles: int
    parquet_files: int
    used_shipped_db: bool
    note: str
    resumed: int = 0  # tiles a killed run had committed, kept
    buckets: tuple[int, ...] = ()  # only these buckets (empty: the whole release)
    sources: int = 0  # of ``tiles``: real tiles outside ``buckets``, the sources of their synthetic tiles
    source_buckets: tuple[int, ...] = ()  # the buckets those sources are in

    def summary(self) -> str:
        notes = [self.note] if self.note else []
        if self.resumed:
            notes.append(f"{self.resumed} kept from an interrupted run")
        extra = f" ({'; '.join(notes)})" if notes else ""
        what = f" of {len(self.buckets)} buckets" if self.buckets else ""
        if self.sources:
            others = f"{len(self.source_buckets)} other bucket{'s' if len(self.source_buckets) != 1 else ''}"
            what += f" ({self.sources} of them real tiles of {others} that their synthetic tiles were made from)"
        return f"restored {self.tiles} tiles{what} from {self.parquet_files} Parquet files into {self.library}{extra}"


class ReleaseSource(Protocol):
    """What a restore reads: checked files, rows in batches, the release's identity."""

    description: str
    release_id: str  # the same release and bucket selection give the same id
    buckets: tuple[int, ...]
    parquet_files: int
    cap: int | None
    selection: BucketSelection | None  # with ``buckets``: what the index says to read

    def centroids(self) -> Path: ...
    def shipped_db(self) -> Path | None: ...
    def batches(self, config: str) -> Iterator[list[dict]]: ...
    def source_batches(self, ids: set[str]) -> Iterator[list[dict]]:
        """Rows of the real tiles ``ids`` (sources of restored synthetic tiles) that the source can locate."""
        ...


# ---------------------------------------------------------------------------------------------
# Reading a local release
# ---------------------------------------------------------------------------------------------


def find_parquet(source: Path) -> list[Path]:
    """``source/data/*.parquet`` (a Hub snapshot or staging folder), else ``source/*.parquet``."""
    files = sorted(source.glob("data/*.parquet")) or sorted(source.glob("*.parquet"))
    files = [f for f in files if f.name != INDEX_NAME]
    if not files:
        raise UsageError(f"no Parquet files in {source} (expected data/*.parquet or *.parquet)")
    return files


def find_synthetic_parquet(source: Path) -> list[Path]:
    """``source/synthetic/*.parquet``: the synthetic config's files (none for most releases)."""
    return sorted(source.glob("synthetic/*.parquet"))


def check_schema(path: Path, schema=None) -> None:
    """The file must carry this dataset's features: all columns, label names bucket_0000..4999.

    Read from the ``huggingface`` features in the file's metadata, as ``datasets`` reads them
    (without importing ``datasets``: a second of CPU at every restore).
    """
    schema = schema if schema is not None else pq.read_schema(path)
    try:
        features = json.loads((schema.metadata or {})[b"huggingface"])["info"]["features"]
    except (KeyError, ValueError, TypeError):
        raise LibraryError(f"{path}: not a Mosaic Library shard (no dataset features in its metadata)") from None
    missing = [c for c in _REQUIRED if c not in features or c not in schema.names]
    if missing:
        raise LibraryError(f"{path}: not a Mosaic Library shard, columns {missing} are missing")
    label = features["label"]
    if not isinstance(label, dict) or label.get("_type") != "ClassLabel" or label.get("names") != LABEL_NAMES:
        raise LibraryError(f"{path}: 'label' is not the 5,000-bucket ClassLabel ({str(label)[:80]})")


def iter_batches(files: list[Path]) -> Iterator[list[dict]]:
    """Rows of every shard, in file order, ``BATCH_ROWS`` at a time (image bytes never pile up)."""
    for path in files:
        # No pre-buffering: by default pyarrow reads ahead far more than a batch, so memory grew
        # with the shard size (25,000 tiles, 190 MB shards: 370 MB -> 200 MB for reading alone).
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            yield batch.to_pylist()


def missing_shards(files: Sequence[Path], folder: str) -> list[str]:
    """Shards a set of ``train-XXXXX-of-YYYYY.parquet`` names promises but lacks (or a mix of two sets)."""
    numbered = [(_SHARD_NAME.match(f.name), f) for f in files]
    totals = {int(m.group(2)) for m, _f in numbered if m}
    if not totals:
        return []
    if len(totals) > 1:
        return [f"{folder}/{f.name} (shards of two builds are mixed)" for _m, f in numbered][:1]
    total = totals.pop()
    present = {int(m.group(1)) for m, _f in numbered if m}
    return [f"{folder}/train-{i:05d}-of-{total:05d}.parquet" for i in range(total) if i not in present]


def db_counts(db_path: Path) -> tuple[int, int]:
    """Real and synthetic rows of a shipped ``tiles.db`` (refused if unreadable)."""
    try:
        conn = db.open_readonly(db_path)
    except (sqlite3.Error, LibraryError) as exc:
        raise ReleaseIncomplete(f"{db_path} is damaged ({exc})") from None
    try:
        if db.has_synthetic_flag(conn):
            real, synthetic = conn.execute("SELECT COALESCE(SUM(synthetic = 0), 0), COALESCE(SUM(synthetic = 1), 0) "
                                           "FROM tiles").fetchone()
        else:
            real, synthetic = conn.execute("SELECT COUNT(*), 0 FROM tiles").fetchone()
        return int(real), int(synthetic)
    except sqlite3.Error as exc:
        raise ReleaseIncomplete(f"{db_path} is damaged ({exc})") from None
    finally:
        conn.close()


def _parse_buckets(buckets: Iterable[int] | None) -> tuple[int, ...]:
    chosen = tuple(sorted(set(buckets or ())))
    bad = [b for b in chosen if not is_bucket_id(b)]
    if bad:
        raise UsageError(f"--buckets: {bad[0]!r} is not a bucket id (0..{len(LABEL_NAMES) - 1})")
    return chosen


def check_index_files(named: Iterable[str], manifest: dict, where: str) -> None:
    """Every file the bucket index names must be a shard of the release's image configs: the index
    comes from data and its names become paths, read only once they are the manifest's own."""
    shards = set(needed_shards(manifest))
    foreign = sorted(set(named) - shards)
    if foreign:
        raise ReleaseIncomplete(f"{where}: its bucket index names {foreign[0]!r}, which is no shard of the release")


def needed_shards(manifest: dict) -> list[str]:
    """The shards of the configs a library is made of (``default``, ``synthetic``)."""
    return release_manifest.needed_files(manifest, TILE_CONFIGS)


def release_identity(manifest_bytes: bytes | None, fallback: Iterable[str], buckets: Sequence[int]) -> str:
    """A stable id of what is being restored: the manifest's bytes (or the files' names and sizes)
    and the bucket selection."""
    digest = hashlib.sha256(manifest_bytes if manifest_bytes is not None else "\n".join(fallback).encode())
    digest.update(("buckets:" + ",".join(map(str, buckets))).encode())
    return digest.hexdigest()


class BucketSelection(NamedTuple):
    """What a restore of some buckets reads, from the bucket index."""

    rows: pa.Table  # the index rows of the chosen buckets, both image configs
    sources: pa.Table  # the default-config rows of the buckets holding their synthetic tiles' sources
    source_buckets: tuple[int, ...]
    located: bool  # False: a format-1 index, which does not say where the sources are

    @property
    def files(self) -> list[str]:
        """Every file to read (and so to check), in name order."""
        return sorted(set(self.rows["file"].to_pylist()) | set(self.sources["file"].to_pylist()))


def select_buckets(index: pa.Table, buckets: Sequence[int]) -> BucketSelection:
    """The index rows of ``buckets`` (both image configs) and of their synthetic tiles' sources' buckets."""
    rows = bucket_index.select(index, buckets, TILE_CONFIGS)
    synthetic = rows.filter(pa.compute.equal(rows["config"], "synthetic"))
    named = synthetic["source_buckets"].to_pylist()
    located = all(b is not None for b in named)
    source_buckets = tuple(sorted({b for bs in named if bs for b in bs} - set(buckets)))
    return BucketSelection(rows, bucket_index.select(index, source_buckets, ["default"]), source_buckets, located)


class LocalRelease:
    """A release in a local folder (a staging folder, a download of the repo, bare Parquet files).

    Construction checks everything a restore will read (see the module docstring); nothing else
    is opened later without having been checked.
    """

    def __init__(self, folder: str | os.PathLike, centroids: str | os.PathLike | None = None,
                 buckets: Iterable[int] | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UsageError(f"restore source not found or not a folder: {self.folder}")
        self.description = str(self.folder)
        self.buckets = _parse_buckets(buckets)
        self.selection: BucketSelection | None = None
        self.manifest = release_manifest.read_manifest(self.folder)
        self._centroids = Path(centroids) if centroids else self.folder / CENTROIDS_NAME
        if not self._centroids.is_file():
            raise UsageError(
                f"no {CENTROIDS_NAME} in {self.folder}: bucket ids mean nothing without the release's centroids; "
                "pass the file with --centroids"
            )
        if self.manifest is not None:
            self._check_with_manifest()
        else:
            self._check_without_manifest()
        self.parquet_files = sum(len(v) for v in self.files.values())

    # ------------------------------------------------------------------ checks
    def _check_with_manifest(self) -> None:
        manifest = self.manifest
        self.cap = manifest.get("cap")
        extra = [CENTROIDS_NAME] if self._centroids == self.folder / CENTROIDS_NAME else []
        if self.buckets:
            if INDEX_NAME not in manifest["files"]:
                raise ReleaseIncomplete(f"release {self.folder} has no {INDEX_NAME}: restore it whole")
            release_manifest.check_files(self.folder, manifest, [INDEX_NAME])
            self.selection = select_buckets(bucket_index.read_index(self.folder / INDEX_NAME), self.buckets)
            groups = self.selection.files
            check_index_files(groups, manifest, str(self.folder))
            names = list(groups) + extra
            self.files = {c: [self.folder / f for f in manifest["configs"].get(c, {}).get("files", []) if f in groups]
                          for c in TILE_CONFIGS}
        else:
            names = release_manifest.needed_files(manifest, TILE_CONFIGS, [DB_NAME]) + extra
            if DB_NAME not in manifest["files"]:
                raise ReleaseIncomplete(f"release {self.folder}: its {RELEASE_MANIFEST} names no {DB_NAME}")
            self.files = {c: [self.folder / f for f in manifest["configs"].get(c, {}).get("files", [])]
                          for c in TILE_CONFIGS}
        release_manifest.check_files(self.folder, manifest, names)
        if not self.buckets:
            real, synthetic = db_counts(self.folder / DB_NAME)
            release_manifest.check_counts(manifest, real, synthetic, str(self.folder))
        self.release_id = release_identity((self.folder / RELEASE_MANIFEST).read_bytes(), (), self.buckets)

    def _check_without_manifest(self) -> None:
        if self.buckets:
            raise ReleaseIncomplete(f"release {self.folder} has no {RELEASE_MANIFEST} and no {INDEX_NAME}: "
                                    "--buckets needs a release built by this version; restore it whole")
        self.cap = None
        default = find_parquet(self.folder)
        self.files = {"default": default, "synthetic": find_synthetic_parquet(self.folder)}
        folder_of = {"default": default[0].parent.relative_to(self.folder).as_posix() or ".", "synthetic": "synthetic"}
        missing = [m for c in TILE_CONFIGS for m in missing_shards(self.files[c], folder_of[c])]
        if missing:
            raise ReleaseIncomplete(f"release {self.folder} is incomplete: {missing[0]} is missing"
                                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        rows = {}
        for config, files in self.files.items():
            rows[config] = 0
            for path in files:
                try:
                    parquet = pq.ParquetFile(path)
                except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
                    raise ReleaseIncomplete(f"release {self.folder} is incomplete: "
                                            f"{path.relative_to(self.folder)} is damaged ({exc})") from None
                check_schema(path, parquet.schema_arrow)
                rows[config] += parquet.metadata.num_rows
        shipped = self.shipped_db()
        if shipped is not None:
            real, synthetic = db_counts(shipped)
            if (real, synthetic) != (rows["default"], rows["synthetic"]):
                raise ReleaseIncomplete(
                    f"release {self.folder} is incomplete: its Parquet files hold {rows['default']} real and "
                    f"{rows['synthetic']} synthetic tiles, its {DB_NAME} {real} and {synthetic}")
        listing = [f"{p.relative_to(self.folder)}:{p.stat().st_size}" for fs in self.files.values() for p in fs]
        self.release_id = release_identity(None, listing, self.buckets)

    # ------------------------------------------------------------------ reading
    def centroids(self) -> Path:
        return self._centroids

    def shipped_db(self) -> Path | None:
        path = self.folder / DB_NAME
        return path if path.is_file() and not self.buckets else None

    def batches(self, config: str) -> Iterator[list[dict]]:
        files = self.files.get(config, [])
        if not self.buckets:
            yield from iter_batches(files)
            return
        rows = bucket_index.select(self.selection.rows, self.buckets, [config])
        for path in files:
            yield from shard_rows(LocalShard(path), rows, path.relative_to(self.folder).as_posix())

    def source_batches(self, ids: set[str]) -> Iterator[list[dict]]:
        if self.buckets:
            for file in sorted(set(self.selection.sources["file"].to_pylist())):
                yield from wanted_rows(shard_rows(LocalShard(self.folder / file), self.selection.sources, file), ids)


def wanted_rows(batches: Iterable[list[dict]], ids: set[str]) -> Iterator[list[dict]]:
    """The rows of ``batches`` whose id is in ``ids``."""
    for batch in batches:
        kept = [row for row in batch if row["id"] in ids]
        if kept:
            yield kept


class Shard(Protocol):
    """A Parquet file of a release, read in byte ranges (a local file, a file on the Hub)."""

    def metadata(self) -> pq.FileMetaData: ...
    def read(self, ranges: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """``{(start, end): bytes}`` of each range."""
        ...
    def parquet(self, parts: dict[tuple[int, int], bytes]) -> pq.ParquetFile:
        """The file for pyarrow, holding at least ``parts`` (and the footer)."""
        ...
    def row_groups(self, ranges: Iterable[tuple[int, int]]) -> pq.ParquetFile:
        """The file for pyarrow, holding at least the byte ranges of some whole row groups."""
        ...


class LocalShard:
    """A Parquet file on disk (already checked against the release manifest)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: pq.ParquetFile | None = None

    def metadata(self) -> pq.FileMetaData:
        return self.parquet({}).metadata

    def read(self, ranges: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        out = {}
        with open(self.path, "rb") as fh:
            for start, end in ranges:
                fh.seek(start)
                out[(start, end)] = fh.read(end - start)
        return out

    def parquet(self, parts: dict[tuple[int, int], bytes]) -> pq.ParquetFile:
        if self._file is None:
            self._file = pq.ParquetFile(self.path)
        return self._file

    def row_groups(self, ranges: Iterable[tuple[int, int]]) -> pq.ParquetFile:
        return self.parquet({})


def shard_rows(shard: Shard, rows: pa.Table, file: str) -> Iterator[list[dict]]:
    """The rows of the index entries ``rows`` that are in ``file``, one row group at a time, each
    bucket's rows checked against the index (count and label) as they are read.

    A row group whose entries carry image spans is read tile by tile (its small columns, then
    each bucket's span split into checked PNGs); any other (the metadata config, a format-1
    index) as a whole row group.
    """
    entries = [r for r in rows.to_pylist() if r["file"] == file]
    for group in sorted({r["row_group"] for r in entries}):
        here = [r for r in entries if r["row_group"] == group]
        if all(r["image_offset"] is not None for r in here):
            yield from _group_by_span(shard, group, here, file)
        else:
            whole = (here[0]["offset"], here[0]["offset"] + here[0]["length"])
            # one thread: pyarrow's pool calling into a Python file object (the Hub's known parts) can
            # abort the interpreter at exit ("terminate called without an active exception", 1 run in 8)
            table = shard.row_groups([whole]).read_row_group(group, use_threads=False)
            for entry in here:
                yield _bucket_part(table, entry, file)


def _bucket_part(table: pa.Table, entry: dict, file: str) -> list[dict]:
    """The rows of one index entry from its row group's table, checked against the index."""
    part = table.slice(entry["first_row"], entry["rows"]).to_pylist()
    if len(part) != entry["rows"] or {row["label"] for row in part} != {entry["bucket"]}:
        raise ReleaseIncomplete(
            f"{file}: row group {entry['row_group']} does not hold bucket {entry['bucket']}'s {entry['rows']} rows "
            "where the bucket index says: the release is damaged")
    return part


def _group_by_span(shard: Shard, group: int, entries: list[dict], file: str) -> Iterator[list[dict]]:
    """One row group's buckets of ``entries``: its columns but the images, and each bucket's image span."""
    columns, small = spans.small_columns(shard.metadata(), group)
    wanted = [(e["image_offset"], e["image_offset"] + e["image_length"]) for e in entries]
    fetched = shard.read(spans.merge_ranges([*small, *wanted]))
    parts = spans.pieces(fetched, small)
    table = shard.parquet(parts).read_row_group(group, columns=columns, use_threads=False)
    images = spans.pieces(fetched, wanted)
    for entry, where in zip(entries, wanted):
        part = _bucket_part(table, entry, file)
        try:
            pngs = spans.split(images[where], entry["rows"])
        except spans.SpanError as exc:
            raise ReleaseIncomplete(f"{file}: bucket {entry['bucket']}'s images in row group {group} are damaged "
                                    f"({exc}): the release is damaged; nothing was restored") from None
        for row, png in zip(part, pngs):
            row["image"] = {"bytes": png, "path": (row.get("image") or {}).get("path")}
        yield part


# ---------------------------------------------------------------------------------------------
# Writing the library
# ---------------------------------------------------------------------------------------------


def _row_values(lib: Library, row: dict, synthetic: bool = False) -> tuple:
    """A ``tiles`` row in :data:`db.TILE_COLUMNS` order from a dataset row (of the synthetic config:
    flagged, ``derived_from`` from its column)."""
    values = {c: row[c] for c in db.TILE_COLUMNS if c in row}
    values["synthetic"] = int(synthetic)
    values["bucket_id"] = row["label"]
    values["filepath"] = lib.filepath_for(row["label"], row["id"])
    return db.tile_row(values)


def _compare_key(values: tuple) -> tuple:
    """Row values without ``filepath`` (it names the folder, which may differ)."""
    return tuple(v for c, v in zip(db.TILE_COLUMNS, values) if c != "filepath")


def shipped_db_agrees(shipped: Path, restored: sqlite3.Connection) -> str | None:
    """Why the shipped ``tiles.db`` disagrees with the rows restored from Parquet, or None."""
    try:
        conn = db.open_readonly(shipped)
    except (sqlite3.Error, LibraryError) as exc:
        return f"shipped {DB_NAME} unusable ({exc})"
    try:
        select = db.select_list(conn, db.TILE_COLUMNS)
        ours = restored.execute(f"SELECT {', '.join(db.TILE_COLUMNS)} FROM tiles ORDER BY id")
        theirs = conn.execute(f"SELECT {select} FROM tiles ORDER BY id")
        for mine, shipped_row in zip(ours, theirs, strict=False):
            if _compare_key(mine) != _compare_key(shipped_row):
                return f"shipped {DB_NAME} differs from the Parquet rows at tile {mine[0]}"
        if ours.fetchone() is not None or theirs.fetchone() is not None:
            return f"shipped {DB_NAME} and the Parquet files hold different numbers of tiles"
        return None
    except sqlite3.Error as exc:
        return f"shipped {DB_NAME} unreadable ({exc})"
    finally:
        conn.close()


def _copy_bookkeeping(shipped: Path, lib: Library) -> None:
    """Bring the shipped ``fetched`` rows and ``meta`` facts (cap, ...) into the restored library.

    ``INSERT OR IGNORE`` / ``INSERT OR REPLACE``: a rerun after a kill here does it again safely.
    """
    conn = db.connect(shipped, readonly=True)
    try:
        tables = db.table_names(conn)
        with lib.conn:
            if "fetched" in tables:
                columns = [c for c in db.table_columns(conn, "fetched") if c in db.table_columns(lib.conn, "fetched")]
                cols = ", ".join(columns)
                marks = ", ".join("?" for _ in columns)
                cursor = conn.execute(f"SELECT {cols} FROM fetched")
                while batch := cursor.fetchmany(1000):
                    lib.conn.executemany(f"INSERT OR IGNORE INTO fetched ({cols}) VALUES ({marks})", batch)
            if "meta" in tables:
                for key, value in conn.execute("SELECT key, value FROM meta"):
                    if key not in ("centroids_sha256", RESTORED_FROM):  # ours describe this library
                        db.set_meta(lib.conn, key, value)
    finally:
        conn.close()


def _present(lib: Library, ids: list[str]) -> set[str]:
    marks = ", ".join("?" * len(ids))
    return {row[0] for row in lib.conn.execute(f"SELECT id FROM tiles WHERE id IN ({marks})", ids)}


def _commit_rows(lib: Library, rows: list[dict], synthetic: bool) -> int:
    """Stage and commit one batch through the store's protocol; rows already committed (by a run
    that was killed) are skipped.  Returns the tiles committed now."""
    ids = [row.get("id") for row in rows]
    done = _present(lib, [i for i in ids if isinstance(i, str)])
    staged: list[store.StagedTile] = []
    seen: set[str] = set()
    try:
        for row in rows:
            tile_id, bucket_id = row.get("id"), row.get("label")
            if tile_id in done:
                continue
            lib.tile_path(bucket_id, tile_id)  # refuses ids that are not uuid4, labels not buckets
            data = (row.get("image") or {}).get("bytes")
            if not isinstance(data, bytes):
                raise LibraryError(f"tile {tile_id}: row has no embedded image bytes")
            problem = check_png(data)
            if problem:
                raise LibraryError(f"tile {tile_id}: {problem}")
            if tile_id in seen or lib.tile_path(bucket_id, tile_id).exists():
                raise LibraryError(f"tile {tile_id} appears twice in the data")
            seen.add(tile_id)
            store.stage(lib.temp_dir, data, tile_id)
            staged.append(store.StagedTile(tile_id, bucket_id, _row_values(lib, row, synthetic)))
        store.commit(lib, staged)
    except BaseException:
        store.unstage(lib.temp_dir, [t.tile_id for t in staged])
        raise
    return len(staged)


def missing_sources(conn: sqlite3.Connection) -> set[str]:
    """Ids that synthetic tiles of the library name as ``derived_from`` and that are no real tile of
    it: what ``verify`` reports as ``unknown_source``."""
    return {tile_id for (tile_id,) in conn.execute(
        "SELECT DISTINCT t.derived_from FROM tiles t LEFT JOIN tiles s ON s.id = t.derived_from AND s.synthetic = 0 "
        "WHERE t.synthetic = 1 AND t.derived_from IS NOT NULL AND s.id IS NULL")}


def _restore_sources(lib: Library, source: ReleaseSource, progress) -> str:
    """After some buckets: the real tiles their synthetic tiles were made from, from their own buckets.

    Returns a note when some stay missing (an index that does not locate them, or a release that
    left them out), which ``verify`` would then report."""
    wanted = missing_sources(lib.conn)
    if not wanted:
        return ""
    for batch in source.source_batches(wanted):
        _commit_rows(lib, batch, False)
        progress(len(batch))
    left = missing_sources(lib.conn)
    if not left:
        return ""
    why = ("the release holds none of them" if source.selection.located else
           "the release's bucket index does not say which buckets hold them (built before index format 2)")
    note = (f"{len(left)} real tiles that synthetic ones were made from are not restored: {why}; "
            "verify will report them as unknown_source: restore the whole release")
    logger.warning(note)
    return note


def _source_counts(lib: Library, buckets: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """Real tiles of the library outside ``buckets`` (restored as sources) and their buckets."""
    marks = ", ".join("?" * len(buckets))
    found = lib.conn.execute(f"SELECT bucket_id, COUNT(*) FROM tiles WHERE synthetic = 0 AND bucket_id NOT IN ({marks}) "
                             "GROUP BY bucket_id ORDER BY bucket_id", list(buckets)).fetchall()
    return sum(n for _b, n in found), tuple(b for b, _n in found)


def _restore_config(lib: Library, source: ReleaseSource, config: str, progress) -> int:
    pending: list[dict] = []
    written = 0
    for batch in source.batches(config):
        pending.extend(batch)
        if len(pending) >= COMMIT_ROWS:
            written += _commit_rows(lib, pending, config == "synthetic")
            progress(len(pending))
            pending = []
    if pending:
        written += _commit_rows(lib, pending, config == "synthetic")
        progress(len(pending))
    return written


# ---------------------------------------------------------------------------------------------
# The scratch folder and the final rename
# ---------------------------------------------------------------------------------------------


def scratch_for(root: Path) -> Path:
    """``.<name>.restore`` beside the target: where an unfinished restore lives."""
    return root.parent / f".{root.name}.restore"


def _target_is_free(root: Path) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"refusing to restore into {root}: it exists and is not empty")


def _already_restored(root: Path, release_id: str) -> int | None:
    """Tiles of ``root`` if it is a finished restore of this very release (a run killed after its
    final rename), else None."""
    try:
        with Library.open(root, readonly=True) as lib:
            if "meta" in db.table_names(lib.conn) and db.get_meta(lib.conn, RESTORED_FROM) == release_id:
                return lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    except (LibraryError, sqlite3.Error, OSError):
        return None
    return None


def _open_scratch(scratch: Path, name: str, source: ReleaseSource) -> tuple[Library, int]:
    """The scratch library for ``source``: reopened if an interrupted run of the same restore left
    it, else made anew.  Returns it and the tiles it already holds."""
    record = scratch / SOURCE_RECORD
    library = scratch / name
    if scratch.exists():
        try:
            same = json.loads(record.read_text()).get("release_id") == source.release_id
        except (OSError, ValueError, AttributeError):
            same = False
        if same:
            try:
                lib = Library.open(library)
                return lib, lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
            except LibraryLocked:
                raise  # that restore is running now
            except LibraryError as exc:
                logger.warning("starting %s over: the interrupted restore's library is unusable (%s)", library, exc)
        else:
            logger.info("starting %s over: it was being restored from another release", library)
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    lib = Library.create(library, centroids=source.centroids(), **({"cap": source.cap} if source.cap else {}))
    tmp = scratch / (SOURCE_RECORD + ".part")
    tmp.write_text(json.dumps({"release_id": source.release_id, "source": source.description,
                               "buckets": list(source.buckets)}))
    os.replace(tmp, record)
    return lib, 0


def restore_release(source: ReleaseSource, library_root: str | os.PathLike, progress: bool | None = None) -> RestoreReport:
    """Restore ``source`` (already checked) into ``library_root`` (see the module docstring)."""
    from tqdm import tqdm

    root = Path(library_root).expanduser().absolute()
    scratch = scratch_for(root)
    finished = _already_restored(root, source.release_id) if root.is_dir() else None
    if finished is not None:  # a run killed after its final rename: only its scratch folder is left
        shutil.rmtree(scratch, ignore_errors=True)
        return RestoreReport(root, finished, source.parquet_files, False, "already restored", 0, source.buckets)
    _target_is_free(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    lib, resumed = _open_scratch(scratch, root.name, source)
    show = sys.stderr.isatty() if progress is None else progress
    try:
        with lib, tqdm(unit=" tiles", desc="restore", disable=not show) as bar:
            tiles = sum(_restore_config(lib, source, config, bar.update) for config in TILE_CONFIGS)
            note, used = "", False
            if source.buckets:
                note = _restore_sources(lib, source, bar.update)
            tiles = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
            sources, source_buckets = _source_counts(lib, source.buckets) if source.buckets else (0, ())
            shipped = source.shipped_db()
            if shipped is not None:
                problem = shipped_db_agrees(shipped, lib.conn)
                if problem is None:
                    _copy_bookkeeping(shipped, lib)
                    used = True
                else:
                    note = f"{problem}; rows rebuilt from Parquet only"
                    logger.warning(note)
            with lib.conn:
                db.set_meta(lib.conn, RESTORED_FROM, source.release_id)
    except MosaicError:
        # the release's data is bad (a hostile id, a damaged row group): nothing worth resuming.
        # An interruption or a full disk keeps the scratch library for the next run.
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if root.exists():
        root.rmdir()  # empty (checked above); rename(2) would replace it too, but say so plainly
    os.replace(scratch / root.name, root)
    shutil.rmtree(scratch, ignore_errors=True)
    report = RestoreReport(root, tiles, source.parquet_files, used, note, resumed, source.buckets, sources,
                           source_buckets)
    logger.info(report.summary())
    return report


def restore_library(
    source: str | os.PathLike, library_root: str | os.PathLike, centroids: str | os.PathLike | None = None,
    buckets: Iterable[int] | None = None, progress: bool | None = None,
) -> RestoreReport:
    """Recreate bucket folders, ``tiles.db`` and ``centroids.npy`` from a local release (see module doc)."""
    root = Path(library_root)
    release = LocalRelease(source, centroids, buckets)
    if not release.buckets:
        for files in release.files.values():
            for path in files[:1]:
                check_schema(path)
    return restore_release(release, root, progress)
