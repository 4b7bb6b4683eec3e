"""``restore``: recreate the on-disk library from a published release.

The source is a staging folder or a downloaded copy of the Hub repo (``data/*.parquet``, and
``synthetic/*.parquet`` for the synthetic config's tiles, restored flagged ``synthetic = 1`` with
their ``derived_from``; ``tiles.db``, ``centroids.npy``), or a folder of Parquet files plus a
centroids file.  Every
row's ``id`` and ``label`` come from data and are validated before they name a file
(``Library.tile_path``); every PNG's header is checked.  Rows are rebuilt from the Parquet
columns (``filepath`` re-derived for the new folder name); when the source ships a
``tiles.db`` that agrees with the Parquet rows, its ``fetched`` and ``meta`` tables come along
too, so a restored library resumes harvesting without refetching what was tried.

Memory stays flat: Parquet is read in 100-row batches and rows are compared as two sorted
streams.  A non-empty target folder is refused; a failed restore removes what it created.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pyarrow.parquet as pq

from .. import db, store
from ..errors import LibraryError, UsageError
from ..layout import CENTROIDS_NAME, DB_NAME, LABEL_NAMES
from ..library import Library
from ..tilefiles import check_png

logger = logging.getLogger(__name__)

BATCH_ROWS = 100
READ_BUFFER = 1 << 20  # bytes read from a shard at a time
_REQUIRED = ("image", "label", "id", "phash", "mean_l", "mean_a", "mean_b")


class RestoreReport(NamedTuple):
    library: Path
    tiles: int
    parquet_files: int
    used_shipped_db: bool
    note: str

    def summary(self) -> str:
        extra = f" ({self.note})" if self.note else ""
        return f"restored {self.tiles} tiles from {self.parquet_files} Parquet files into {self.library}{extra}"


def find_parquet(source: Path) -> list[Path]:
    """``source/data/*.parquet`` (a Hub snapshot or staging folder), else ``source/*.parquet``."""
    files = sorted(source.glob("data/*.parquet")) or sorted(source.glob("*.parquet"))
    if not files:
        raise UsageError(f"no Parquet files in {source} (expected data/*.parquet or *.parquet)")
    return files


def find_synthetic_parquet(source: Path) -> list[Path]:
    """``source/synthetic/*.parquet``: the synthetic config's files (none for most releases)."""
    return sorted(source.glob("synthetic/*.parquet"))


def check_schema(path: Path) -> None:
    """The file must carry this dataset's features: all columns, label names bucket_0000..4999."""
    import datasets

    features = datasets.Features.from_arrow_schema(pq.read_schema(path))
    missing = [c for c in _REQUIRED if c not in features]
    if missing:
        raise LibraryError(f"{path}: not a Mosaic Library shard, columns {missing} are missing")
    label = features["label"]
    if not isinstance(label, datasets.ClassLabel) or label.names != LABEL_NAMES:
        raise LibraryError(f"{path}: 'label' is not the 5,000-bucket ClassLabel ({label!r:.80})")


def iter_rows(files: list[Path]) -> Iterator[dict]:
    """Rows of every shard, in file order, ``BATCH_ROWS`` at a time (image bytes never pile up)."""
    for path in files:
        # No pre-buffering: by default pyarrow reads ahead far more than a batch, so memory grew
        # with the shard size (25,000 tiles, 190 MB shards: 370 MB -> 200 MB for reading alone).
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            yield from batch.to_pylist()


def _target_is_free(root: Path) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"refusing to restore into {root}: it exists and is not empty")


def _write_tile(lib: Library, bucket_id: object, tile_id: object, data: object) -> None:
    """Validate and write one PNG atomically (staged in temp/, then renamed), never over an existing file.

    ``id`` and ``label`` come from the data: ``lib.tile_path`` refuses (:class:`UnsafePath`) any
    id that is not a uuid4 and any label that is not a bucket id before they name a file.
    """
    final = lib.tile_path(bucket_id, tile_id)
    if not isinstance(data, bytes):
        raise LibraryError(f"tile {tile_id}: row has no embedded image bytes")
    problem = check_png(data)
    if problem:
        raise LibraryError(f"tile {tile_id}: {problem}")
    if final.exists():
        raise LibraryError(f"tile {tile_id} appears twice in the data")
    final.parent.mkdir(exist_ok=True)
    store.stage(lib.temp_dir, data, tile_id)
    os.replace(store.staged_path(lib.temp_dir, tile_id), final)


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
    """Bring the shipped ``fetched`` rows and ``meta`` facts (cap, ...) into the restored library."""
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
                    if key != "centroids_sha256":  # describes the file we copied: already set
                        db.set_meta(lib.conn, key, value)
    finally:
        conn.close()


def _centroids_for(source: Path, centroids: str | os.PathLike | None) -> Path:
    path = Path(centroids) if centroids else source / CENTROIDS_NAME
    if not path.is_file():
        raise UsageError(
            f"no {CENTROIDS_NAME} in {source}: bucket ids mean nothing without the release's centroids; "
            "pass the file with --centroids"
        )
    return path


def restore_library(
    source: str | os.PathLike, library_root: str | os.PathLike, centroids: str | os.PathLike | None = None
) -> RestoreReport:
    """Recreate bucket folders, ``tiles.db`` and ``centroids.npy`` from a release (see module doc)."""
    source, root = Path(source), Path(library_root)
    if not source.is_dir():
        raise UsageError(f"restore source not found or not a folder: {source}")
    files = find_parquet(source)
    synthetic_files = find_synthetic_parquet(source)
    centroids_path = _centroids_for(source, centroids)
    _target_is_free(root)
    for path in files + synthetic_files:
        check_schema(path)
    created = not root.exists()
    try:
        with Library.create(root, centroids=centroids_path) as lib:
            tiles = _restore_rows(lib, files) + _restore_rows(lib, synthetic_files, synthetic=True)
            shipped = source / DB_NAME
            note, used = "", False
            if shipped.is_file():
                problem = shipped_db_agrees(shipped, lib.conn)
                if problem is None:
                    _copy_bookkeeping(shipped, lib)
                    used = True
                else:
                    note = f"{problem}; rows rebuilt from Parquet only"
                    logger.warning(note)
    except BaseException:
        _remove_partial(root, created)
        raise
    report = RestoreReport(root, tiles, len(files) + len(synthetic_files), used, note)
    logger.info(report.summary())
    return report


def _restore_rows(lib: Library, files: list[Path], synthetic: bool = False) -> int:
    tiles = 0
    pending: list[tuple] = []
    with lib.conn:
        for row in iter_rows(files):
            image = row.get("image") or {}
            _write_tile(lib, row.get("label"), row.get("id"), image.get("bytes"))
            pending.append(_row_values(lib, row, synthetic))
            if len(pending) >= 1000:
                lib.conn.executemany(db.INSERT_TILE_SQL, pending)
                tiles += len(pending)
                pending = []
        lib.conn.executemany(db.INSERT_TILE_SQL, pending)
        tiles += len(pending)
    return tiles


def _remove_partial(root: Path, created: bool) -> None:
    """Undo a failed restore: the target was empty (or absent) before we started."""
    if not root.is_dir():
        return
    if created:
        shutil.rmtree(root, ignore_errors=True)
        return
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
