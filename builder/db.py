"""``tiles.db``: schema, migrations and connections.

The ``tiles`` table starts with the dataset card's seven columns, in the card's order and
types, then provenance columns.  ``PRAGMA user_version`` versions the schema; older files are
migrated in place when a writer opens them.

Tables:

* ``tiles``   one row per stored tile (contract, see DESIGN.md).
* ``fetched`` every z/x/y a harvest has tried, per source, so no tile is fetched twice.
* ``meta``    key/value facts about the library (centroids checksum, bucket cap, ...).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .errors import LibraryError

SCHEMA_VERSION = 2

SEED_COLUMNS = ("id", "bucket_id", "filepath", "phash", "mean_l", "mean_a", "mean_b")
PROVENANCE_COLUMNS = ("source", "z", "x", "y", "lon", "lat", "region", "harvested_at")
TILE_COLUMNS = SEED_COLUMNS + PROVENANCE_COLUMNS
# One full tiles row, values in TILE_COLUMNS order (the pipeline's batches, restore's rows).
INSERT_TILE_SQL = f"INSERT INTO tiles ({', '.join(TILE_COLUMNS)}) VALUES ({', '.join('?' * len(TILE_COLUMNS))})"

_TILES_SQL = """
CREATE TABLE IF NOT EXISTS tiles (
    id TEXT PRIMARY KEY,
    bucket_id INTEGER,
    filepath TEXT,
    phash TEXT,
    mean_l REAL,
    mean_a REAL,
    mean_b REAL,
    source TEXT,
    z INTEGER,
    x INTEGER,
    y INTEGER,
    lon REAL,
    lat REAL,
    region TEXT,
    harvested_at TEXT
)
"""

_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS idx_bucket ON tiles(bucket_id)",
    "CREATE INDEX IF NOT EXISTS idx_phash ON tiles(bucket_id, phash)",
)

_FETCHED_SQL = """
CREATE TABLE IF NOT EXISTS fetched (
    source TEXT NOT NULL,
    z INTEGER NOT NULL,
    x INTEGER NOT NULL,
    y INTEGER NOT NULL,
    status TEXT NOT NULL,
    region TEXT,
    tried_at TEXT,
    PRIMARY KEY (source, z, x, y)
)
"""

_META_SQL = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)"


def connect(path: Path, readonly: bool = False, timeout: float = 30.0) -> sqlite3.Connection:
    """Open ``tiles.db``; writers get WAL mode and ``synchronous=NORMAL``.

    WAL lets readers (``stats``, ``build``, the card's snippets) work while a harvest writes;
    NORMAL keeps every committed transaction through a process crash (SIGKILL), which is the
    failure this project guards against, at a fraction of FULL's fsync cost.
    """
    if readonly:
        # A WAL database needs its -shm file even to read; in a folder we cannot write, open it
        # immutable (no locks, no WAL: a writer cannot be running there anyway).  Immutable
        # ignores the -wal file, though, and a writer killed before its last checkpoint leaves
        # committed rows there: read those through the existing -shm, or refuse, never miss them.
        resolved = Path(path).resolve()
        folder_writable = os.access(resolved.parent, os.W_OK)
        wal = resolved.with_name(resolved.name + "-wal")
        pending = wal.is_file() and wal.stat().st_size > 0
        if not folder_writable and pending and not resolved.with_name(resolved.name + "-shm").is_file():
            raise LibraryError(
                f"{path} has committed changes still in {wal.name} and its folder is read-only: "
                "open the library once with write access (any writer, e.g. `verify --repair`) to fold them in"
            )
        immutable = not folder_writable and not pending
        uri = f"{resolved.as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def create_schema(conn: sqlite3.Connection) -> None:
    """Create every table and index of the current version (idempotent)."""
    with conn:
        conn.execute(_TILES_SQL)
        for sql in _INDEX_SQL:
            conn.execute(sql)
        conn.execute(_FETCHED_SQL)
        conn.execute(_META_SQL)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring an older ``tiles.db`` to :data:`SCHEMA_VERSION`; return the version found.

    Version 0/1 is the card's seven-column table (as published): provenance columns are
    added (NULL for old rows), the ``fetched`` and ``meta`` tables created.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LibraryError(
            f"tiles.db has schema version {version}, newer than this builder's {SCHEMA_VERSION}: upgrade the builder"
        )
    columns = table_columns(conn, "tiles")
    if not columns:
        raise LibraryError("tiles.db has no 'tiles' table: not a Mosaic Library database")
    missing_seed = [c for c in SEED_COLUMNS if c not in columns]
    if missing_seed:
        raise LibraryError(f"tiles.db 'tiles' table lacks the card's columns {missing_seed}")
    if version == SCHEMA_VERSION and set(TILE_COLUMNS) <= set(columns):
        return version
    with conn:
        for name in PROVENANCE_COLUMNS:
            if name not in columns:
                sqltype = {"z": "INTEGER", "x": "INTEGER", "y": "INTEGER", "lon": "REAL", "lat": "REAL"}.get(name, "TEXT")
                conn.execute(f"ALTER TABLE tiles ADD COLUMN {name} {sqltype}")
    create_schema(conn)
    return version


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
