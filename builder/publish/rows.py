"""Tile rows for the dataset, without ``datasets``: the code ``mosaic_library.MosaicLibrary`` runs.

``MosaicLibrary._generate_examples`` and ``build``'s Parquet writer both read rows through
:func:`iter_examples`, so the Hub dataset and the ``datasets`` builder cannot drift apart.  It
lives here, free of any ``datasets`` import, because importing ``datasets`` costs ~0.5 s of CPU
at every ``build`` start, more than writing a thousand tiles.

Security: a tile's file is derived from ``(bucket_id, id)`` after validating both (uuid4,
``0 <= bucket_id < 5000``) with ``Library.tile_path``; the ``filepath`` column is never opened.
Bucket folders are resolved once each to stay inside the library; files are opened with
``O_NOFOLLOW`` and read up to a size limit.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from .. import db as _db
from ..color import N_BUCKETS
from ..errors import LibraryError, UnsafePath
from ..library import Library, bucket_name, is_tile_id

logger = logging.getLogger(__name__)

# Bumped whenever the rows or features a build writes change, so caches and staging folders
# made by an older builder are treated as stale.
BUILD_FORMAT = 1

LABEL_NAMES = [f"bucket_{i:04d}" for i in range(N_BUCKETS)]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TILE_SIZE = 256
MAX_TILE_BYTES = 4 * 2**20  # a 256x256 RGB PNG is < 200 KB even uncompressed
DEFAULT_SHARD_ROWS = 1000

# Columns read from tiles.db, in dataset order (``bucket_id`` becomes ``label``).
ROW_COLUMNS = ("id", "bucket_id", "phash", "mean_l", "mean_a", "mean_b") + _db.PROVENANCE_COLUMNS


class BadTile(LibraryError):
    """A row's PNG is missing, unreadable or not a 256x256 RGB PNG."""

    def __init__(self, tile_id: str, path: Path | str, problem: str) -> None:
        self.tile_id, self.path, self.problem = tile_id, str(path), problem
        super().__init__(f"tile {tile_id}: {problem}: {path}")

    def __reduce__(self):  # survive the trip back from a num_proc worker
        return (type(self), (self.tile_id, self.path, self.problem))


class Shard(NamedTuple):
    """A half-open range of buckets ``[lo, hi)`` read by one generator call."""

    lo: int
    hi: int


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def tile_relpath(bucket_id: object, tile_id: object) -> str:
    """``bucket_XXXX/<id>.png`` for a validated ``(bucket_id, id)`` (:class:`UnsafePath` otherwise).

    Ids and buckets come from data (a database or a downloaded Parquet file) and become file
    names, so only a canonical lower-case uuid4 and an integer bucket in range are accepted.

    >>> tile_relpath(7, "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a")
    'bucket_0007/0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a.png'
    """
    if not is_tile_id(tile_id):
        raise UnsafePath(f"tile id is not a uuid4 string: {tile_id!r}")
    if isinstance(bucket_id, bool) or not isinstance(bucket_id, int) or not 0 <= bucket_id < N_BUCKETS:
        raise UnsafePath(f"bucket id out of range 0..{N_BUCKETS - 1}: {bucket_id!r}")
    return f"{bucket_name(bucket_id)}/{tile_id}.png"


def check_png(data: bytes) -> str | None:
    """Why ``data`` is not a 256x256 8-bit RGB PNG, or ``None`` if its header says it is.

    Reads only the signature and IHDR chunk: a full decode would cost more than the rest of
    the build per tile.  Truncated or corrupt bodies are caught by ``verify``, not here.
    """
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return "not a PNG file"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if (width, height) != (TILE_SIZE, TILE_SIZE):
        return f"PNG is {width}x{height}, expected {TILE_SIZE}x{TILE_SIZE}"
    bit_depth, colour_type = data[24], data[25]
    if (bit_depth, colour_type) != (8, 2):
        return f"PNG has bit depth {bit_depth} and colour type {colour_type}, expected 8-bit RGB (2)"
    return None


class TileReader:
    """Reads the PNGs of one library, safely and cheaply.

    Paths come from ``lib.tile_path`` (validated ``(bucket_id, id)``), each bucket folder is
    resolved once to check it stays inside the library (a symlinked bucket leading elsewhere is
    refused), files are opened with ``O_NOFOLLOW`` (a symlinked tile is refused) and at most
    :data:`MAX_TILE_BYTES` are read.  Resolving every file instead cost as much as reading it.
    """

    def __init__(self, lib: Library) -> None:
        self.lib = lib
        self.root = lib.root.resolve()
        self._buckets_ok: set[int] = set()

    def path(self, bucket_id: object, tile_id: object) -> Path:
        tile_relpath(bucket_id, tile_id)  # refuses bools and non-int buckets too
        path = self.lib.tile_path(bucket_id, tile_id)
        if bucket_id not in self._buckets_ok:
            folder = path.parent.resolve()
            if folder.parent != self.root:
                raise UnsafePath(f"tile {tile_id}: {path} resolves outside the library ({folder})")
            self._buckets_ok.add(bucket_id)
        return path

    def read(self, bucket_id: object, tile_id: object) -> bytes:
        """The checked PNG bytes of one tile; :class:`BadTile` names the id and path on failure."""
        path = self.path(bucket_id, tile_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise BadTile(tile_id, path, "file missing") from None
        except OSError as exc:
            problem = "is a symbolic link" if exc.errno == errno.ELOOP else f"unreadable ({exc.strerror or exc})"
            raise BadTile(tile_id, path, problem) from None
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_TILE_BYTES + 1)
        if len(data) > MAX_TILE_BYTES:
            raise BadTile(tile_id, path, f"larger than {MAX_TILE_BYTES} bytes")
        problem = check_png(data)
        if problem:
            raise BadTile(tile_id, path, problem)
        return data


def open_tiles_db(db_path: Path) -> sqlite3.Connection:
    """Open a ``tiles.db`` read-only (never migrates, never takes the writer's lock)."""
    if not Path(db_path).is_file():
        raise LibraryError(f"tiles.db not found: {db_path}")
    try:
        conn = _db.connect(Path(db_path), readonly=True)
        columns = _db.table_columns(conn, "tiles")
    except sqlite3.DatabaseError as exc:
        raise LibraryError(f"{db_path}: not a readable SQLite database ({exc})") from None
    missing = [c for c in _db.SEED_COLUMNS if c not in columns]
    if missing:
        conn.close()
        raise LibraryError(f"{db_path}: table 'tiles' lacks the card's columns {missing}")
    return conn


def _select_list(conn: sqlite3.Connection) -> str:
    """SELECT list for :data:`ROW_COLUMNS`; provenance columns an old schema lacks read as NULL."""
    present = set(_db.table_columns(conn, "tiles"))
    return ", ".join(c if c in present else f"NULL AS {c}" for c in ROW_COLUMNS)


def bucket_counts(conn: sqlite3.Connection) -> dict[object, int]:
    """Rows per ``bucket_id`` value as stored (including invalid values, so none go unseen)."""
    return dict(conn.execute("SELECT bucket_id, COUNT(*) FROM tiles GROUP BY bucket_id"))


def plan_shards(counts: dict[int, int], shard_rows: int = DEFAULT_SHARD_ROWS, min_shards: int = 16) -> list[Shard]:
    """Split buckets ``0..4999`` into contiguous ranges of about ``shard_rows`` rows.

    Every bucket belongs to exactly one range, so no valid row can fall between shards.  Small
    libraries are still cut into up to ``min_shards`` ranges so that ``num_proc`` has work to
    share; a range is cheap (one indexed query).

    >>> plan_shards({0: 5, 7: 5, 4000: 5}, shard_rows=10, min_shards=1)
    [Shard(lo=0, hi=8), Shard(lo=8, hi=5000)]
    """
    total = sum(n for b, n in counts.items() if isinstance(b, int) and 0 <= b < N_BUCKETS)
    if total == 0:
        return [Shard(0, N_BUCKETS)]
    target = max(1, min(shard_rows, -(-total // min_shards)))
    shards: list[Shard] = []
    lo, acc = 0, 0
    for bucket in range(N_BUCKETS):
        acc += counts.get(bucket, 0)
        if acc >= target and bucket + 1 < N_BUCKETS:
            shards.append(Shard(lo, bucket + 1))
            lo, acc = bucket + 1, 0
    if acc or not shards:
        shards.append(Shard(lo, N_BUCKETS))
    else:  # the last bucket range holds no rows: fold it into the previous shard
        shards[-1] = Shard(shards[-1].lo, N_BUCKETS)
    return shards


def library_fingerprint(db_path: Path, centroids_path: Path | None = None) -> str:
    """A sha256 over every ``tiles`` row (ordered by id), the centroids file and BUILD_FORMAT.

    Equal fingerprints mean a build would produce the same rows, so caches and staging folders
    keyed on it are never served stale.  Costs one scan of the table (about 1 s per 500k rows).
    """
    digest = hashlib.sha256(f"mosaic-library-build-{BUILD_FORMAT}\n".encode())
    conn = open_tiles_db(db_path)
    try:
        columns = ", ".join(_db.table_columns(conn, "tiles"))
        digest.update(columns.encode() + b"\n")
        for row in conn.execute(f"SELECT {columns} FROM tiles ORDER BY id"):
            digest.update(repr(row).encode())
    finally:
        conn.close()
    if centroids_path is not None:
        digest.update(b"\ncentroids:" + hashlib.sha256(Path(centroids_path).read_bytes()).digest())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Row generation
# ---------------------------------------------------------------------------------------------


def split_plan(
    root: Path,
    db_path: str | Path | None = None,
    skip_bad: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    min_shards: int = 16,
) -> dict:
    """``gen_kwargs`` of the ``train`` split: the library root, the database and bucket-range shards.

    Rows whose ``bucket_id`` is outside ``0..4999`` belong to no shard: they are an error (or
    skipped with ``skip_bad``) here, so none is dropped silently.
    """
    db_path = Path(db_path) if db_path else Path(root) / "tiles.db"
    conn = open_tiles_db(db_path)
    try:
        counts = bucket_counts(conn)
    finally:
        conn.close()
    invalid = {b: n for b, n in counts.items() if not (isinstance(b, int) and 0 <= b < N_BUCKETS)}
    if invalid:
        detail = ", ".join(f"{b!r} ({n} rows)" for b, n in sorted(invalid.items(), key=repr))
        if not skip_bad:
            raise LibraryError(f"{db_path}: rows with bucket_id outside 0..{N_BUCKETS - 1}: {detail}")
        logger.warning("skipping %d rows with invalid bucket_id: %s", sum(invalid.values()), detail)
    shards = plan_shards(counts, shard_rows, min_shards)
    logger.info("%s: %d rows in %d shards", db_path, sum(counts.values()), len(shards))
    return {"root": str(root), "db_path": str(db_path), "shards": shards}


def iter_examples(
    root: str | Path,
    db_path: str | Path,
    shards: list[Shard],
    with_images: bool = True,
    skip_bad: bool = False,
    on_skip: Callable[[object, Exception], None] | None = None,
) -> Iterator[tuple[int, int, dict]]:
    """``(shard_idx, sample_idx, example)`` for every row of ``shards``, ordered by ``(bucket_id, id)``.

    Files are found with ``Library.tile_path`` from validated ``(bucket_id, id)``; a bad row
    raises (:class:`BadTile` / :class:`UnsafePath`) or, with ``skip_bad``, is logged, reported to
    ``on_skip(id, error)`` and skipped.
    """
    with Library.open(Path(root), readonly=True) as lib:
        conn = lib.conn if Path(db_path) == lib.db_path else open_tiles_db(Path(db_path))
        reader = TileReader(lib)
        try:
            select = _select_list(conn)
            for shard_idx, (lo, hi) in enumerate(shards):
                skipped = 0
                rows = conn.execute(
                    f"SELECT {select} FROM tiles WHERE bucket_id >= ? AND bucket_id < ? ORDER BY bucket_id, id",
                    (lo, hi),
                )
                for sample_idx, row in enumerate(rows):
                    try:
                        example = _example(reader, row, with_images)
                    except (BadTile, UnsafePath) as exc:
                        if not skip_bad:
                            raise
                        skipped += 1
                        logger.warning("skipping bad tile: %s", exc)
                        if on_skip is not None:
                            on_skip(row[0], exc)
                        continue
                    yield shard_idx, sample_idx, example
                if skipped:
                    logger.warning("buckets %d..%d: skipped %d bad tiles", lo, hi - 1, skipped)
        finally:
            if conn is not lib.conn:
                conn.close()


def _example(reader: TileReader, row: tuple, with_images: bool) -> dict:
    record = dict(zip(ROW_COLUMNS, row))
    tile_id, bucket_id = record.pop("id"), record.pop("bucket_id")
    example: dict[str, object] = {}
    if with_images:
        data = reader.read(bucket_id, tile_id)
        example["image"] = {"bytes": data, "path": f"{tile_id}.png"}
    else:
        tile_relpath(bucket_id, tile_id)  # same validation, no file access
    example["label"] = bucket_id
    example["id"] = tile_id
    example.update(record)
    return example
