"""Tiles from an MBTiles archive (SQLite; raster tiles; TMS row order per the MBTiles spec).

MBTiles stores ``tile_row`` counted from the south (TMS), while everything else here is XYZ
(counted from the north), so ``tile_row = 2**z - 1 - y``. The archive is opened read-only
through a ``file:`` URI so a harvest can never modify or lock out its writer; one
connection, guarded by a lock, serves all threads (a lookup is a primary-key read of
microseconds, so the lock costs nothing measurable).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from ...core.errors import SourceError
from ...core.layout import TILE_SIZE, tile_in_range
from .base import TileSource, check_tile_bytes

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("zoom_level", "tile_column", "tile_row", "tile_data")
RASTER_FORMATS = frozenset({"png", "jpg", "jpeg", "webp"})


class MBTilesSource(TileSource):
    """Raster tiles from ``path``; named ``mbtiles:<file name>``."""

    remote = False  # a file read again costs nobody anything

    def __init__(self, path: str | Path, *, tile_size: int | None = TILE_SIZE) -> None:
        self.path = Path(path)
        self.name = f"mbtiles:{self.path.name}"
        self.tile_size = tile_size
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = _open_readonly(self.path)
        try:
            _validate(self._conn, self.path)
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"MBTilesSource({str(self.path)!r})"

    def fetch(self, z: int, x: int, y: int) -> bytes | None:
        if not tile_in_range(z, x, y):
            return None
        tms_row = (1 << z) - 1 - y
        with self._lock:
            if self._conn is None:
                raise SourceError(f"tile source {self.name!r} is closed")
            try:
                row = self._conn.execute(
                    "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND tile_row = ?",
                    (z, x, tms_row),
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                raise SourceError(f"{self.path}: cannot read tile {z}/{x}/{y}: {exc}") from exc
        if row is None or row[0] is None:
            return None
        body = bytes(row[0])
        check_tile_bytes(body, f"{self.name} {z}/{x}/{y}", tile_size=self.tile_size, retryable=False)
        return body

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise SourceError(f"MBTiles file {str(path)!r} does not exist or is not a file")
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise SourceError(f"cannot open MBTiles file {str(path)!r}: {exc}") from exc


def _validate(conn: sqlite3.Connection, path: Path) -> None:
    """Fail at open, not on the first tile: not SQLite, no ``tiles`` table, vector tiles."""
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tiles)")}
        has_metadata = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'metadata' AND type IN ('table', 'view')"
        ).fetchone()
        fmt = None
        if has_metadata:
            row = conn.execute("SELECT value FROM metadata WHERE name = 'format'").fetchone()
            fmt = row[0] if row else None
    except sqlite3.DatabaseError as exc:
        raise SourceError(f"{str(path)!r} is not a readable MBTiles (SQLite) file: {exc}") from exc
    if not columns:
        raise SourceError(f"MBTiles file {str(path)!r} has no 'tiles' table")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise SourceError(f"MBTiles file {str(path)!r}: table 'tiles' lacks column(s) {', '.join(missing)}")
    if fmt is not None and str(fmt).lower() not in RASTER_FORMATS:
        raise SourceError(f"MBTiles file {str(path)!r} holds {fmt!r} tiles; only raster png/jpg/webp can be used")
