"""``tiles.db``: schema, migrations, connections and the ``tiles`` table contract.

The ``tiles`` table starts with the dataset card's seven columns, in the card's order and
types, then provenance columns, then the synthetic-tile flag and its source tile.
``PRAGMA user_version`` versions the schema; older files are migrated in place when a writer
opens them (version 0/1: the card's seven columns; 2: provenance and ``fetched``; 3: the
synthetic columns and what a fetch predicted and found).

This module is the one home of that contract: the column lists (:data:`SEED_COLUMNS`,
:data:`PROVENANCE_COLUMNS`, :data:`TILE_COLUMNS`, :data:`INSERT_TILE_SQL`), the check every
reader and writer runs on a file (:func:`check_tiles_table`, one wording for every command),
SELECT lists that read an older schema (:func:`select_list`), rows per bucket
(:func:`bucket_counts`) and the table listing (:func:`table_names`).  Standard library only:
callers convert to NumPy where they need it.

Tables:

* ``tiles``   one row per stored tile (its columns are the dataset card's columns).
* ``fetched`` every z/x/y a harvest has tried, per source, so no tile is fetched twice (the
  ledger's columns), with the bucket the colour atlas predicted for it and the bucket and LAB
  its pixels gave (calibration and hit rates are computed from these).
* ``meta``    key/value facts about the library (centroids checksum, bucket cap, ...).

The colour atlas's tables (:func:`create_atlas_tables`, made by the first ``atlas`` run only,
so a library without an atlas has none of them; see :mod:`builder.acquire.atlas`):

* ``atlas_meta``     one row per atlas ``(source, zoom)``: its overview zoom, sample size, the
  centroids checksum it was made with, and its calibration (JSON, or NULL);
* ``atlas_buckets``  per atlas and bucket, the overview pixels (or pixel blocks) seen in it;
* ``atlas_sample``   per atlas, a bounded uniform sample of candidate zoom-``z`` tiles per bucket
  (the ones with the smallest random ``key``), with the LAB the overview gave, the bucket
  that LAB falls in (``bucket_id``) and the bucket predicted after calibration (``predicted``);
* ``atlas_fetched``  the fetch ledger of the overview tiles (the ledger's columns; its
  ``source`` is ``<source>@z<zoom>``, so atlases of two zooms keep separate books).
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from .errors import LibraryError
from .layout import DB_NAME

SCHEMA_VERSION = 3

# The tiles table, column by column with its SQLite type, in order: the card's seven, then provenance.
_SEED_TYPES = (
    ("id", "TEXT PRIMARY KEY"),
    ("bucket_id", "INTEGER"),
    ("filepath", "TEXT"),
    ("phash", "TEXT"),
    ("mean_l", "REAL"),
    ("mean_a", "REAL"),
    ("mean_b", "REAL"),
)
_PROVENANCE_TYPES = (
    ("source", "TEXT"),
    ("z", "INTEGER"),
    ("x", "INTEGER"),
    ("y", "INTEGER"),
    ("lon", "REAL"),
    ("lat", "REAL"),
    ("region", "TEXT"),
    ("harvested_at", "TEXT"),
)
# Tiles made by colour transfer from a real tile of the library (``synthesize``): flagged in
# every output, never mixed up with real ones.
_SYNTHETIC_TYPES = (
    ("synthetic", "INTEGER NOT NULL DEFAULT 0"),
    ("derived_from", "TEXT"),
)
SEED_COLUMNS = tuple(name for name, _type in _SEED_TYPES)
PROVENANCE_COLUMNS = tuple(name for name, _type in _PROVENANCE_TYPES)
SYNTHETIC_COLUMNS = tuple(name for name, _type in _SYNTHETIC_TYPES)
TILE_COLUMNS = SEED_COLUMNS + PROVENANCE_COLUMNS + SYNTHETIC_COLUMNS
# The ``source`` of a tile whose file was found without its row and taken back by ``verify --repair``
# or ``recover`` (same id, colour and hash from the file; where it came from is unknown).
ADOPTED_SOURCE = "adopted"
# Values a row gets for columns its maker does not set (everything else is NULL).
TILE_DEFAULTS = {"synthetic": 0}
# One full tiles row, values in TILE_COLUMNS order (the commit protocol's batches, restore's rows).
INSERT_TILE_SQL = f"INSERT INTO tiles ({', '.join(TILE_COLUMNS)}) VALUES ({', '.join('?' * len(TILE_COLUMNS))})"

_TILES_SQL = "CREATE TABLE IF NOT EXISTS tiles (\n{}\n)".format(
    ",\n".join(f"    {name} {sqltype}" for name, sqltype in _SEED_TYPES + _PROVENANCE_TYPES + _SYNTHETIC_TYPES)
)

_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS idx_bucket ON tiles(bucket_id)",
    "CREATE INDEX IF NOT EXISTS idx_phash ON tiles(bucket_id, phash)",
)

# ``fetched``: the ledger's columns (builder.acquire.ledger keeps the same books in other tables with
# only these), then what a fetch predicted and found.
LEDGER_TYPES = (
    ("source", "TEXT NOT NULL"),
    ("z", "INTEGER NOT NULL"),
    ("x", "INTEGER NOT NULL"),
    ("y", "INTEGER NOT NULL"),
    ("status", "TEXT NOT NULL"),
    ("region", "TEXT"),
    ("tried_at", "TEXT"),
)
_FETCH_OUTCOME_TYPES = (
    ("predicted_bucket", "INTEGER"),  # the colour atlas's prediction when the tile was drawn for a target
    ("bucket_id", "INTEGER"),  # where the tile's colour landed (NULL: not decoded)
    ("mean_l", "REAL"),  # its LAB by the card's recipe (NULL: not decoded)
    ("mean_a", "REAL"),
    ("mean_b", "REAL"),
)
FETCH_OUTCOME_COLUMNS = tuple(name for name, _type in _FETCH_OUTCOME_TYPES)


def stored_lab(values: Sequence[object]) -> tuple[float, float, float]:
    """A row's ``(mean_l, mean_a, mean_b)`` as floats, NaN for what is not a number (a damaged
    row's colour: no nearest bucket, no colour check).

    >>> stored_lab((50, "1.5", None))
    (50.0, 1.5, nan)
    """
    out = []
    for value in values:
        try:
            out.append(float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            out.append(float("nan"))
    return out[0], out[1], out[2]


def check_ledger_table_name(table: object) -> None:
    """A ledger table's name is put into SQL text: only a plain lower-case identifier is."""
    if not isinstance(table, str) or not _TABLE_NAME.match(table):
        raise LibraryError(f"not a ledger table name: {table!r}")


_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def ledger_table_sql(table: str, extra: Sequence[tuple[str, str]] = ()) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a fetch-ledger table (key ``(source, z, x, y)``)."""
    columns = ",\n".join(f"    {name} {sqltype}" for name, sqltype in (*LEDGER_TYPES, *extra))
    return f"CREATE TABLE IF NOT EXISTS {table} (\n{columns},\n    PRIMARY KEY (source, z, x, y)\n)"


_FETCHED_SQL = ledger_table_sql("fetched", _FETCH_OUTCOME_TYPES)

_META_SQL = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)"

ATLAS_LEDGER_TABLE = "atlas_fetched"
ATLAS_TABLES = ("atlas_meta", "atlas_buckets", "atlas_sample", ATLAS_LEDGER_TABLE)
_ATLAS_SQL = (
    "CREATE TABLE IF NOT EXISTS atlas_meta (source TEXT NOT NULL, zoom INTEGER NOT NULL, "
    "atlas_zoom INTEGER NOT NULL, sample_size INTEGER NOT NULL, centroids_sha256 TEXT NOT NULL, "
    "calibration TEXT, created_at TEXT, updated_at TEXT, PRIMARY KEY (source, zoom))",
    "CREATE TABLE IF NOT EXISTS atlas_buckets (source TEXT NOT NULL, zoom INTEGER NOT NULL, "
    "bucket_id INTEGER NOT NULL, pixels INTEGER NOT NULL, PRIMARY KEY (source, zoom, bucket_id))",
    "CREATE TABLE IF NOT EXISTS atlas_sample (source TEXT NOT NULL, zoom INTEGER NOT NULL, "
    "x INTEGER NOT NULL, y INTEGER NOT NULL, bucket_id INTEGER NOT NULL, predicted INTEGER NOT NULL, "
    "key REAL NOT NULL, mean_l REAL NOT NULL, mean_a REAL NOT NULL, mean_b REAL NOT NULL, "
    "PRIMARY KEY (source, zoom, x, y))",
    "CREATE INDEX IF NOT EXISTS idx_atlas_sample_bucket ON atlas_sample(source, zoom, bucket_id, key)",
    "CREATE INDEX IF NOT EXISTS idx_atlas_sample_predicted ON atlas_sample(source, zoom, predicted)",
    ledger_table_sql(ATLAS_LEDGER_TABLE),
)


def create_atlas_tables(conn: sqlite3.Connection) -> None:
    """Create the colour atlas's tables (idempotent; see the module doc)."""
    with conn:
        for sql in _ATLAS_SQL:
            conn.execute(sql)


def has_atlas(conn: sqlite3.Connection) -> bool:
    """True when the file holds an atlas (its tables exist and ``atlas_meta`` has a row)."""
    if "atlas_meta" not in table_names(conn):
        return False
    return conn.execute("SELECT 1 FROM atlas_meta LIMIT 1").fetchone() is not None


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


def open_readonly(path: str | os.PathLike, library: str | os.PathLike | None = None) -> sqlite3.Connection:
    """A read-only connection to a ``tiles.db`` whose ``tiles`` table passed :func:`check_tiles_table`.

    Never migrates, never takes the writer's lock.  A file that is not SQLite at all, or has
    no usable ``tiles`` table, is one :class:`~builder.core.errors.LibraryError` (``library``: the
    library folder the file belongs to, named in the way back the message gives).
    """
    try:
        conn = connect(Path(path), readonly=True)
    except sqlite3.DatabaseError as exc:
        raise not_a_database(path, exc, library) from None
    try:
        check_tiles_table(conn, path)
    except sqlite3.DatabaseError as exc:  # the first read is where SQLite notices a file is not a database
        conn.close()
        raise not_a_database(path, exc, library) from None
    except BaseException:
        conn.close()
        raise
    return conn


def not_a_database(path: str | os.PathLike, exc: sqlite3.DatabaseError,
                   library: str | os.PathLike | None = None) -> LibraryError:
    """The error for a file SQLite cannot read as a database (one wording for every command);
    for a library's own ``tiles.db`` it names the way back (:func:`recover_hint`)."""
    return LibraryError(f"{path} is not a usable SQLite database ({exc})" + (recover_hint(library) if library else ""))


def recover_hint(library: str | os.PathLike) -> str:
    """What to run when a library's ``tiles.db`` is damaged (``recover`` rebuilds it from the files)."""
    return f"; rebuild it from the files with `python -m builder recover --library {library}`"


def database_file(conn: sqlite3.Connection) -> str:
    """The file behind ``conn``'s main database, for messages."""
    return next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "") or DB_NAME


def table_names(conn: sqlite3.Connection) -> set[str]:
    """Names of the database's tables."""
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """Column names of ``table`` in order; empty when there is no such table."""
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def has_synthetic_flag(conn: sqlite3.Connection) -> bool:
    """Whether ``tiles`` has the ``synthetic`` column.  A writer migrates every library to it; a
    read-only open of a library from before it (schema version 2) has none, and then every tile
    is real."""
    return "synthetic" in table_columns(conn, "tiles")


def check_tiles_table(conn: sqlite3.Connection, path: str | os.PathLike | None = None) -> list[str]:
    """The ``tiles`` table's columns, after checking it exists and holds the card's seven columns.

    Every reader and writer runs this one check, so a file that is not a Mosaic Library
    database gets the same message from every command.  ``path`` names the file in the
    message (default: the connection's own file).  Extra or missing provenance columns are
    fine: readers read them as NULL (:func:`select_list`), writers add them (:func:`migrate`).
    """
    columns = table_columns(conn, "tiles")
    where = path if path is not None else database_file(conn)
    if not columns:
        raise LibraryError(f"{where} has no 'tiles' table: not a Mosaic Library database")
    missing = [c for c in SEED_COLUMNS if c not in columns]
    if missing:
        raise LibraryError(
            f"{where}: table 'tiles' lacks the card's columns {', '.join(missing)} "
            f"(it needs {', '.join(SEED_COLUMNS)}): not a Mosaic Library database"
        )
    return columns


def select_list(conn: sqlite3.Connection, columns: Sequence[str], table: str = "tiles") -> str:
    """``SELECT`` list for ``columns``; a column an older schema lacks reads as ``NULL AS name``.

    Readers never migrate, so a card-schema ``tiles.db`` (seven columns) still reads with the
    provenance columns present, as NULL.
    """
    present = set(table_columns(conn, table))
    return ", ".join(c if c in present else f"NULL AS {c}" for c in columns)


def synthetic_expr(conn: sqlite3.Connection) -> str:
    """SQL for a row's synthetic flag in expressions (``WHERE ... = 0``): the column, or ``0`` in
    a schema from before it (every row real)."""
    return "synthetic" if "synthetic" in table_columns(conn, "tiles") else "0"


def bucket_counts(conn: sqlite3.Connection, buckets: Iterable[int] | None = None,
                  real_only: bool = False) -> dict[object, int]:
    """Rows per ``bucket_id`` value as stored, for every value or only ``buckets``.

    Values are returned as stored, invalid ones included (a string, -1, 7000), so callers that
    must see every row (the build) can refuse them; callers that index arrays filter them.
    ``real_only`` counts real tiles only (``synthetic = 0``: what the cap means for a real
    tile, which synthetic ones never block; every row of a schema without the column).
    One indexed query (``idx_bucket``).
    """
    real = " AND synthetic = 0" if real_only and "synthetic" in table_columns(conn, "tiles") else ""
    if buckets is None:
        return dict(conn.execute(f"SELECT bucket_id, COUNT(*) FROM tiles WHERE 1{real} GROUP BY bucket_id"))
    wanted = tuple(buckets)
    if not wanted:
        return {}
    marks = ", ".join("?" * len(wanted))
    return dict(conn.execute(
        f"SELECT bucket_id, COUNT(*) FROM tiles WHERE bucket_id IN ({marks}){real} GROUP BY bucket_id", wanted
    ))


def synthetic_counts(conn: sqlite3.Connection, cap: int) -> dict[str, int]:
    """Real and synthetic tiles apart: what ``stats``, the card and the demo report.

    ``tiles`` synthetic tiles (``flat``: made without a source, ``sources``: distinct real tiles
    they were made from), ``buckets`` holding one, ``buckets_only_synthetic`` holding nothing
    else; ``real_tiles`` and the real tiles' ``buckets_populated_real`` / ``buckets_full_real``
    (at ``cap``).  A schema without the column holds real tiles only.
    """
    has = "synthetic" in table_columns(conn, "tiles")
    flag = "synthetic" if has else "0"
    per_bucket = conn.execute(
        f"SELECT bucket_id, SUM({flag} = 0), SUM({flag} = 1) FROM tiles GROUP BY bucket_id").fetchall()
    tiles, flat, sources = (conn.execute(
        "SELECT COUNT(*), SUM(derived_from IS NULL), COUNT(DISTINCT derived_from) FROM tiles WHERE synthetic = 1"
    ).fetchone() if has else (0, 0, 0))
    return {
        "tiles": int(tiles or 0),
        "flat": int(flat or 0),
        "sources": int(sources or 0),
        "buckets": sum(1 for _b, _r, s in per_bucket if s),
        "buckets_only_synthetic": sum(1 for _b, r, s in per_bucket if s and not r),
        "real_tiles": sum(int(r) for _b, r, _s in per_bucket),
        "buckets_populated_real": sum(1 for _b, r, _s in per_bucket if r),
        "buckets_full_real": sum(1 for _b, r, _s in per_bucket if r >= cap),
    }


def tile_row(values: dict) -> tuple:
    """A ``tiles`` row in :data:`TILE_COLUMNS` order from ``{column: value}``; a column not given
    gets its :data:`TILE_DEFAULTS` value, else NULL.

    >>> tile_row({"id": "x"})[:2], tile_row({})[TILE_COLUMNS.index("synthetic")]
    (('x', None), 0)
    """
    return tuple(values.get(c, TILE_DEFAULTS.get(c)) for c in TILE_COLUMNS)


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
    added (NULL for old rows), the ``fetched`` and ``meta`` tables created.  Version 2 gains
    the synthetic columns (old rows are real: ``synthetic = 0``) and ``fetched``'s prediction
    and outcome columns (NULL for old fetches).
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LibraryError(
            f"tiles.db has schema version {version}, newer than this builder's {SCHEMA_VERSION}: upgrade the builder"
        )
    columns = check_tiles_table(conn)
    if version == SCHEMA_VERSION and set(TILE_COLUMNS) <= set(columns):
        return version
    fetched = table_columns(conn, "fetched")
    with conn:
        for name, sqltype in _PROVENANCE_TYPES + _SYNTHETIC_TYPES:
            if name not in columns:
                conn.execute(f"ALTER TABLE tiles ADD COLUMN {name} {sqltype}")
        if fetched:
            for name, sqltype in _FETCH_OUTCOME_TYPES:
                if name not in fetched:
                    conn.execute(f"ALTER TABLE fetched ADD COLUMN {name} {sqltype}")
    create_schema(conn)
    return version


def utc_now() -> str:
    """The form of every timestamp stored in ``tiles.db`` (``harvested_at``, ``tried_at``):
    UTC, ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
