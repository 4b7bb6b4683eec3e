"""Tile rows for the dataset, without ``datasets``: the code ``mosaic_library.MosaicLibrary`` runs.

``MosaicLibrary._generate_examples`` and ``build``'s Parquet writer both read rows through
:func:`iter_examples`, so the Hub dataset and the ``datasets`` builder cannot drift apart.  It
lives here, free of any ``datasets`` import, because importing ``datasets`` costs ~0.5 s of CPU
at every ``build`` start, more than writing a thousand tiles.

Security: a tile's file is derived from ``(bucket_id, id)`` after validating both (uuid4,
``0 <= bucket_id < 5000``); the ``filepath`` column is never opened.  Files are read through
:class:`builder.core.tilefiles.TileFiles` (bucket folders checked to stay inside the library,
``O_NOFOLLOW``, a size limit) and their PNG header checked.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from ..core import db as _db
from ..core.errors import BadTile, LibraryError, UnsafePath
from ..core.layout import DB_NAME, LABEL_NAMES, N_BUCKETS, is_bucket_id, tile_relpath  # noqa: F401  (LABEL_NAMES: read by publish.schema)
from ..core.library import Library
from ..core.tilefiles import TileFiles

logger = logging.getLogger(__name__)

# Bumped whenever the rows or features a build writes change, so caches and staging folders
# made by an older builder are treated as stale.
BUILD_FORMAT = 2

DEFAULT_SHARD_ROWS = 1000

# Columns read from tiles.db, in dataset order (``bucket_id`` becomes ``label``; ``filepath``,
# which names a folder, is not published).
ROW_COLUMNS = tuple(c for c in _db.SEED_COLUMNS + _db.PROVENANCE_COLUMNS if c != "filepath")
# The synthetic config's: the same, then the tile it was made from.
SYNTHETIC_ROW_COLUMNS = (*ROW_COLUMNS, "derived_from")
# The metadata config's, where real and synthetic tiles sit side by side: the flag too.
METADATA_ROW_COLUMNS = (*ROW_COLUMNS, "synthetic", "derived_from")


def row_columns(synthetic: bool | None) -> tuple[str, ...]:
    """The ``tiles`` columns a config's rows are made of (see :func:`kind_filter` for ``synthetic``)."""
    if synthetic is None:
        return METADATA_ROW_COLUMNS
    return SYNTHETIC_ROW_COLUMNS if synthetic else ROW_COLUMNS


def kind_filter(conn: sqlite3.Connection, synthetic: bool | None = False) -> str:
    """``AND ...`` selecting the rows of a config: real tiles (``default``), synthetic ones, or
    with ``synthetic=None`` every tile (``metadata``).

    A ``tiles.db`` without the ``synthetic`` column (an older schema) holds real tiles only.
    """
    if synthetic is None:
        return ""
    if _db.has_synthetic_flag(conn):
        return f" AND synthetic = {int(bool(synthetic))}"
    return " AND 0" if synthetic else ""


def config_counts(conn: sqlite3.Connection, synthetic: bool | None = False) -> dict[object, int]:
    """Rows per ``bucket_id`` value of a config (see :func:`kind_filter`)."""
    return dict(conn.execute(f"SELECT bucket_id, COUNT(*) FROM tiles WHERE 1{kind_filter(conn, synthetic)} GROUP BY bucket_id"))


class Shard(NamedTuple):
    """A half-open range of buckets ``[lo, hi)`` read by one generator call."""

    lo: int
    hi: int


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def open_tiles_db(db_path: Path) -> sqlite3.Connection:
    """Open a ``tiles.db`` (a library's or a snapshot) read-only, its table checked
    (:func:`builder.core.db.open_readonly`: never migrates, never takes the writer's lock)."""
    if not Path(db_path).is_file():  # SQLite would create it
        raise LibraryError(f"{DB_NAME} not found: {db_path}")
    return _db.open_readonly(db_path)


def plan_shards(counts: dict[int, int], shard_rows: int = DEFAULT_SHARD_ROWS, min_shards: int = 16) -> list[Shard]:
    """Split buckets ``0..4999`` into contiguous ranges of about ``shard_rows`` rows.

    Every bucket belongs to exactly one range, so no valid row can fall between shards.  Small
    libraries are still cut into up to ``min_shards`` ranges so that ``num_proc`` has work to
    share; a range is cheap (one indexed query).

    >>> plan_shards({0: 5, 7: 5, 4000: 5}, shard_rows=10, min_shards=1)
    [Shard(lo=0, hi=8), Shard(lo=8, hi=5000)]
    """
    total = sum(n for b, n in counts.items() if is_bucket_id(b))
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
    synthetic: bool | None = False,
) -> dict:
    """``gen_kwargs`` of the ``train`` split: the library root, the database and bucket-range shards
    (of the real tiles, or with ``synthetic`` of the synthetic ones).

    Rows whose ``bucket_id`` is outside ``0..4999`` belong to no shard: they are an error (or
    skipped with ``skip_bad``) here, so none is dropped silently.
    """
    db_path = Path(db_path) if db_path else Path(root) / DB_NAME
    conn = open_tiles_db(db_path)
    try:
        counts = config_counts(conn, synthetic)
    finally:
        conn.close()
    invalid = {b: n for b, n in counts.items() if not is_bucket_id(b)}
    if invalid:
        detail = ", ".join(f"{b!r} ({n} rows)" for b, n in sorted(invalid.items(), key=repr))
        if not skip_bad:
            raise LibraryError(f"{db_path}: rows with bucket_id outside 0..{N_BUCKETS - 1}: {detail}")
        logger.warning("skipping %d rows with invalid bucket_id: %s", sum(invalid.values()), detail)
    shards = plan_shards(counts, shard_rows, min_shards)
    logger.info("%s: %d rows in %d shards", db_path, sum(counts.values()), len(shards))
    plan = {"root": str(root), "db_path": str(db_path), "shards": shards}
    return plan if synthetic is False else {**plan, "synthetic": synthetic}


def iter_examples(
    root: str | Path,
    db_path: str | Path,
    shards: list[Shard],
    with_images: bool = True,
    skip_bad: bool = False,
    on_skip: Callable[[object, Exception], None] | None = None,
    synthetic: bool | None = False,
) -> Iterator[tuple[int, int, dict]]:
    """``(shard_idx, sample_idx, example)`` for every row of ``shards``, ordered by ``(bucket_id, id)``:
    the real tiles, with ``synthetic`` the synthetic ones (with ``derived_from``), with
    ``synthetic=None`` every tile (with the ``synthetic`` flag and ``derived_from``).

    Files are found with ``Library.tile_path`` from validated ``(bucket_id, id)``; a bad row
    raises (:class:`BadTile` / :class:`UnsafePath`) or, with ``skip_bad``, is logged, reported to
    ``on_skip(id, error)`` and skipped.
    """
    with Library.open(Path(root), readonly=True) as lib:
        conn = lib.conn if Path(db_path) == lib.db_path else open_tiles_db(Path(db_path))
        files = TileFiles(lib.root)  # fresh per call: each bucket folder is checked once per read
        try:
            columns = row_columns(synthetic)
            select = _db.select_list(conn, columns)
            kind = kind_filter(conn, synthetic)
            for shard_idx, (lo, hi) in enumerate(shards):
                skipped = 0
                rows = conn.execute(
                    f"SELECT {select} FROM tiles WHERE bucket_id >= ? AND bucket_id < ?{kind} ORDER BY bucket_id, id",
                    (lo, hi),
                )
                for sample_idx, row in enumerate(rows):
                    try:
                        example = _example(files, row, with_images, columns)
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


def _example(files: TileFiles, row: tuple, with_images: bool, columns: tuple[str, ...] = ROW_COLUMNS) -> dict:
    record = dict(zip(columns, row))
    tile_id, bucket_id = record.pop("id"), record.pop("bucket_id")
    example: dict[str, object] = {}
    if with_images:
        data = files.read_png(bucket_id, tile_id)
        example["image"] = {"bytes": data, "path": f"{tile_id}.png"}
    else:
        tile_relpath(bucket_id, tile_id)  # same validation, no file access
    example["label"] = bucket_id
    example["id"] = tile_id
    if "synthetic" in record:
        record["synthetic"] = bool(record["synthetic"])
    example.update(record)
    return example
