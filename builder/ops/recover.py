"""``recover``: a way back from a damaged ``tiles.db`` (truncated, a bad page, not SQLite at all).

The bucket folders are the truth about the tiles: ``recover`` rebuilds the database from them,
keeps every tile's id (the file's name), and takes back what it can of the rest:

1. **salvage**: the damaged file is copied into ``temp/`` (with its ``-wal``) and read table by
   table in rowid order; where SQLite reports a damaged page, reading jumps ahead and goes on.
   Provenance, synthetic flags, ``derived_from``, the fetch ledger (``fetched``), ``meta`` and
   the atlas tables come back for every row SQLite can still give (a tile's salvaged row only
   when its pHash is its file's: a damaged page can give zeros or another tile's bytes);
2. **release** (``--release DIR``, a staging folder or a downloaded release: its ``tiles.db``
   and/or its Parquet shards, which the caller lists: ``python -m builder recover`` finds them
   as ``restore`` does): provenance, synthetic flags and ``derived_from`` for the ids it
   knows (it wins over salvaged values: it was checked when it was built), and the ``fetched``,
   ``meta`` and atlas rows the salvage did not give (the library's own, salvaged, are newer);
3. **scan**: every ``bucket_XXXX/<uuid4>.png`` that is a 256x256 RGB PNG gets its row, with its
   colour and pHash by the card's recipe, in the bucket folder it is in; a tile neither the
   release nor the salvage knows is adopted (``source = 'adopted'``);
4. **swap**: the damaged file (and its ``-wal``, ``-shm``) is renamed aside as
   ``tiles.db.broken-<UTC time>`` (never overwritten) and the rebuilt one put in its place;
5. **repair**: ``verify --repair`` (:mod:`builder.ops.repair`) re-files tiles whose colour names
   another bucket and moves what is not a tile, duplicates and tiles over the cap to
   ``quarantine/``.

Crash safety: the rebuilt database is made in ``temp/`` and renamed to ``tiles.db.recovered``
only when complete; its presence means "swap me in", and the swap's renames are redone by the
next run.  The rebuilt database carries a ``recover`` entry in ``meta`` until the repair is
done, so a run killed after the swap resumes at the repair.  Killed anywhere, ``recover`` run
again completes; no tile file is touched before the repair, which has its own journal.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from ..core import db
from ..core.color import load_centroids
from ..core.errors import LibraryError, UsageError
from ..core.layout import (
    BROKEN_DB_PREFIX,
    CENTROIDS_NAME,
    DB_NAME,
    DEFAULT_CAP,
    RECOVERED_DB_NAME,
    TEMP_DIR,
    is_tile_id,
    parse_bucket_dir,
    tile_filepath,
    tile_stem,
)
from ..core.library import Library, file_sha256
from ..core.lock import WriterLock
from ..core.summary import fields_dict
from ..core.tilefiles import TileFiles
from .inspection import inspect_stream
from .verify import verify_library

logger = logging.getLogger(__name__)

BUILD_NAME = "recover.db"  # in temp/: the database being rebuilt
SALVAGE_DIR = "salvage"  # in temp/: the copy of the damaged file read by the salvage
META_KEY = "recover"  # meta entry of a rebuilt database until its repair is done (JSON: what recover did)
# Columns a tile's row takes from the release or the salvage (the rest comes from its file).
KEPT_COLUMNS = db.PROVENANCE_COLUMNS + db.SYNTHETIC_COLUMNS
ROWS_AT_ONCE = 2048
MAX_SKIP = 2**40  # rowids a salvage jumps ahead at most past a damaged page before it stops


@dataclass
class RecoverReport:
    library: Path
    tiles: int = 0
    from_release: int = 0
    from_salvage: int = 0
    adopted: int = 0
    salvaged: dict = field(default_factory=dict)  # table -> rows read from the damaged file
    from_release_tables: dict = field(default_factory=dict)  # table -> rows taken from the release
    aside: str | None = None  # the name the damaged file was kept under
    repair: str = ""  # verify --repair's summary

    def summary(self) -> str:
        salvaged = ", ".join(f"{k} {v}" for k, v in sorted(self.salvaged.items()) if v) or "nothing"
        kept = f"damaged file kept as {self.aside}" if self.aside else f"no {DB_NAME} was there"
        return (f"recovered {self.tiles} tiles into {self.library} (ids kept): {self.from_release} with provenance "
                f"from the release, {self.from_salvage} from the damaged {DB_NAME}, {self.adopted} adopted "
                f"(provenance unknown); salvaged from the damaged file: {salvaged}; {kept}; "
                f"then verify --repair: {self.repair}")

    def as_dict(self) -> dict:
        return fields_dict(self, library=str(self.library))


def recover_library(root: str | os.PathLike, release: str | os.PathLike | None = None, workers: int | None = None,
                    progress: bool | None = None, release_shards: Sequence[tuple[Path, bool]] = ()) -> RecoverReport:
    """Rebuild ``root``'s ``tiles.db`` from its files (see the module docstring); resumable.

    ``release``: a release folder of this library; ``release_shards``: its Parquet files as
    ``(path, synthetic?)`` (:func:`builder.cli.recover.release_shards` finds them), read for the
    tiles its ``tiles.db`` does not name."""
    root = Path(root)
    if not root.is_dir():
        raise LibraryError(f"no library at {root}: nothing to recover")
    load_centroids(root / CENTROIDS_NAME)  # bucket ids mean nothing without the library's own centroids
    lock: WriterLock | None = WriterLock.acquire(root)
    try:
        if not (root / RECOVERED_DB_NAME).is_file() and not _pending(root):
            _build(root, Path(release) if release is not None else None, release_shards, workers, progress)
        if (root / RECOVERED_DB_NAME).is_file():
            _swap(root)
        lib, lock = Library.open(root, lock=lock), None  # the library holds the lock now
        with lib:
            report = RecoverReport(lib.root, **json.loads(db.get_meta(lib.conn, META_KEY) or "{}"))
            checked = verify_library(lib, deep=True, repair=True, workers=workers, progress=progress)
            report.repair = checked.summary()
            report.tiles = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
            with lib.conn:
                lib.conn.execute("DELETE FROM meta WHERE key = ?", (META_KEY,))
        return report
    finally:
        if lock is not None:
            lock.release()


def _pending(root: Path) -> bool:
    """True when ``tiles.db`` is a rebuilt database whose repair has not finished (a killed run)."""
    try:
        conn = sqlite3.connect(f"{(root / DB_NAME).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        return conn.execute("SELECT 1 FROM meta WHERE key = ?", (META_KEY,)).fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        conn.close()


# --------------------------------------------------------------------------- building the new database


def _build(root: Path, release: Path | None, release_shards: Sequence[tuple[Path, bool]], workers: int | None,
           progress: bool | None) -> None:
    temp = root / TEMP_DIR
    if temp.is_symlink():
        raise LibraryError(f"{temp} is a symlink: refusing to write through it; replace it with an empty folder")
    temp.mkdir(exist_ok=True)
    for leftover in (temp / BUILD_NAME, temp / f"{BUILD_NAME}-journal"):  # a killed build: ours, under our lock
        leftover.unlink(missing_ok=True)
    shutil.rmtree(temp / SALVAGE_DIR, ignore_errors=True)
    centroids_sha = file_sha256(root / CENTROIDS_NAME)
    report = RecoverReport(root, aside=_aside_name(root) if _db_files(root) else None)
    out = sqlite3.connect(temp / BUILD_NAME)  # rollback journal: one file, nothing beside it once closed
    try:
        db.create_schema(out)
        with out:
            out.execute(f"CREATE TABLE _kept (id TEXT PRIMARY KEY, origin TEXT, phash TEXT, {', '.join(KEPT_COLUMNS)})")
        if release is not None:
            report.from_release_tables = _take_release(release, release_shards, out, centroids_sha)
        report.salvaged = _salvage(root, temp, out)
        _scan(root, out, report, workers, progress)
        with out:
            out.execute("DROP TABLE _kept")
            db.set_meta(out, "centroids_sha256", centroids_sha)
            out.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('cap', ?)", (str(DEFAULT_CAP),))
            state = {k: v for k, v in report.as_dict().items() if k not in ("library", "repair", "tiles")}
            db.set_meta(out, META_KEY, json.dumps(state))
    finally:
        out.close()
    shutil.rmtree(temp / SALVAGE_DIR, ignore_errors=True)
    os.replace(temp / BUILD_NAME, root / RECOVERED_DB_NAME)


def _db_files(root: Path) -> list[str]:
    """The names of the damaged database's files present in ``root``."""
    return [name for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal")
            if os.path.lexists(root / name)]


def _aside_name(root: Path) -> str:
    """``tiles.db.broken-<UTC time>``, with ``-N`` added until no file of that name (or its
    ``-wal``/``-shm``/``-journal``) exists: a damaged file set aside is never overwritten."""
    base = BROKEN_DB_PREFIX + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name, n = base, 0
    while any(os.path.lexists(root / (name + suffix)) for suffix in ("", "-wal", "-shm", "-journal")):
        n += 1
        name = f"{base}-{n}"
    return name


def _swap(root: Path) -> None:
    """Set the damaged files aside and put the rebuilt database in place (each rename redone by a rerun)."""
    conn = sqlite3.connect(f"{(root / RECOVERED_DB_NAME).resolve().as_uri()}?mode=ro", uri=True)
    try:
        state = json.loads(db.get_meta(conn, META_KEY) or "{}")
    finally:
        conn.close()
    aside = state.get("aside")
    # The -wal first: a rebuilt tiles.db must never meet the damaged one's write-ahead log.
    for suffix in ("-wal", "-shm", "-journal", ""):
        src = root / (DB_NAME + suffix)
        if not os.path.lexists(src):
            continue
        if not aside:
            raise LibraryError(f"{src} appeared during the recover: run `python -m builder recover --library {root}` again")
        dst = root / (aside + suffix)
        if os.path.lexists(dst):
            raise LibraryError(f"refusing to overwrite {dst} (a damaged file set aside earlier); move it and run recover again")
        os.replace(src, dst)
    os.replace(root / RECOVERED_DB_NAME, root / DB_NAME)


def _keep(out: sqlite3.Connection, rows: list[tuple], origin: str) -> None:
    """Remember the kept columns of ``rows`` (``id``, ``phash``, then :data:`KEPT_COLUMNS`); the first origin wins."""
    marks = ", ".join("?" * (len(KEPT_COLUMNS) + 3))
    out.executemany(f"INSERT OR IGNORE INTO _kept (id, origin, phash, {', '.join(KEPT_COLUMNS)}) VALUES ({marks})",
                    [(row[0], origin, *row[1:]) for row in rows if is_tile_id(row[0])])


def _copy_table(out: sqlite3.Connection, table: str, columns: list[str], rows: Iterator[tuple],
                replace: bool = False) -> int:
    """INSERT ``rows`` (``columns`` of a source table) into the same table of ``out``; a row whose
    key is there already is kept (``replace``: overwritten)."""
    if table in db.ATLAS_TABLES and table not in db.table_names(out):
        db.create_atlas_tables(out)
    wanted = [c for c in columns if c in db.table_columns(out, table)]
    if not wanted:
        return 0
    pick = [columns.index(c) for c in wanted]
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    sql = f"{verb} INTO {table} ({', '.join(wanted)}) VALUES ({', '.join('?' * len(wanted))})"
    count = 0
    batch: list[tuple] = []
    for row in rows:
        if table == "meta" and row[0] == "centroids_sha256":
            continue  # describes the file this library has: set from it
        batch.append(tuple(row[i] for i in pick))
        if len(batch) >= ROWS_AT_ONCE:
            count += _insert(out, sql, batch)
            batch = []
    return count + _insert(out, sql, batch)


def _insert(out: sqlite3.Connection, sql: str, batch: list[tuple]) -> int:
    with out:
        before = out.total_changes
        out.executemany(sql, batch)
        return out.total_changes - before


# --------------------------------------------------------------------------- the release


def _take_release(release: Path, shards: Sequence[tuple[Path, bool]], out: sqlite3.Connection,
                  centroids_sha: str) -> dict[str, int]:
    """Provenance of the release's tiles into ``_kept`` (from its tiles.db, then its Parquet
    ``shards``), its ``fetched``/``meta``/atlas rows into ``out``; refuses a release made with
    other centroids."""
    if not release.is_dir():
        raise UsageError(f"--release {release} is not a folder (a staging folder or a downloaded release)")
    if (release / CENTROIDS_NAME).is_file() and file_sha256(release / CENTROIDS_NAME) != centroids_sha:
        raise UsageError(f"--release {release} was made with other centroids than this library's: not its release")
    taken: dict[str, int] = {}
    shipped = release / DB_NAME
    if shipped.is_file():
        try:
            conn = db.open_readonly(shipped)
        except LibraryError as exc:
            logger.warning("release's %s unusable (%s); reading its Parquet files", DB_NAME, exc)
        else:
            try:
                taken.update(_release_db(conn, out, centroids_sha))
            finally:
                conn.close()
    if shards:
        taken["parquet rows"] = _release_parquet(shards, out)
    if not taken:
        raise UsageError(f"--release {release} holds no {DB_NAME} and no Parquet files: not a release")
    return taken


def _release_db(conn: sqlite3.Connection, out: sqlite3.Connection, centroids_sha: str) -> dict[str, int]:
    tables = db.table_names(conn)
    if "meta" in tables:
        theirs = db.get_meta(conn, "centroids_sha256")
        if theirs and theirs != centroids_sha:
            raise UsageError("the release's tiles.db was made with other centroids than this library's: not its release")
    taken = {}
    cursor = conn.execute(f"SELECT id, phash, {db.select_list(conn, KEPT_COLUMNS)} FROM tiles")
    count = 0
    with out:
        while rows := cursor.fetchmany(ROWS_AT_ONCE):
            _keep(out, rows, "release")
            count += len(rows)
    taken["tiles"] = count
    for table in ("fetched", "meta", *db.ATLAS_TABLES):
        if table in tables:
            columns = db.table_columns(conn, table)
            taken[table] = _copy_table(out, table, columns, iter(conn.execute(f"SELECT {', '.join(columns)} FROM {table}")))
    return taken


def _release_parquet(shards: Sequence[tuple[Path, bool]], out: sqlite3.Connection) -> int:
    """Provenance of the shards' rows into ``_kept`` (after the release's tiles.db, which wins)."""
    import pyarrow.parquet as pq

    count = 0
    for path, synthetic in shards:
        parquet = pq.ParquetFile(path)
        present = set(parquet.schema_arrow.names)
        if "id" not in present:
            continue
        columns = [c for c in ("id", "phash", *KEPT_COLUMNS) if c in present]
        for batch in parquet.iter_batches(batch_size=ROWS_AT_ONCE, columns=columns):
            rows = []
            for record in batch.to_pylist():
                values = {**record, "synthetic": int(synthetic)}
                rows.append((record["id"], record.get("phash"), *(values.get(c) for c in KEPT_COLUMNS)))
            with out:
                _keep(out, rows, "release")
            count += len(rows)
    return count


# --------------------------------------------------------------------------- the salvage


def _salvage(root: Path, temp: Path, out: sqlite3.Connection) -> dict[str, int]:
    """What SQLite can still read of the damaged ``tiles.db``: tile provenance into ``_kept``,
    ``fetched``, ``meta`` and the atlas tables into ``out``; rows read per table."""
    source = root / DB_NAME
    if not source.is_file():
        return {}
    copy = temp / SALVAGE_DIR
    copy.mkdir()
    shutil.copyfile(source, copy / DB_NAME)  # the damaged file itself is never opened: it is kept as it is
    if (root / f"{DB_NAME}-wal").is_file():
        shutil.copyfile(root / f"{DB_NAME}-wal", copy / f"{DB_NAME}-wal")
    salvaged: dict[str, int] = {}
    try:
        conn = sqlite3.connect(copy / DB_NAME)
        # A truncated file's header counts pages it no longer has; SQLite then refuses even the
        # schema unless the schema is "writable" (it reads the pages there are).  query_only: the
        # copy is read, never written.
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute("PRAGMA query_only=ON")
    except sqlite3.Error:
        return salvaged
    try:
        for table in ("tiles", "fetched", "meta", *db.ATLAS_TABLES):
            try:
                columns = db.table_columns(conn, table)
            except sqlite3.Error:
                continue
            if not columns:
                continue
            if table == "tiles":
                if "id" not in columns:
                    continue
                select = [c if c in columns else "NULL" for c in ("id", "phash", *KEPT_COLUMNS)]
                count = 0
                batch: list[tuple] = []
                for row in readable_rows(conn, table, select):
                    batch.append(row)
                    if len(batch) >= ROWS_AT_ONCE:
                        with out:
                            _keep(out, batch, "salvage")
                        count += len(batch)
                        batch = []
                with out:
                    _keep(out, batch, "salvage")
                salvaged[table] = count + len(batch)
            else:
                # The library's own books are newer than any release's: they win.
                salvaged[table] = _copy_table(out, table, columns, readable_rows(conn, table, columns), replace=True)
    finally:
        conn.close()
    return salvaged


def readable_rows(conn: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[tuple]:
    """Every row of ``table`` SQLite can read, in rowid order: where a read fails on a damaged page,
    it starts again past the last rowid read, jumping further each time (1, 2, 4... rowids) until
    reading works again, so the rows after a damaged stretch come back too."""
    select = f"SELECT rowid, {', '.join(columns)} FROM {table} WHERE rowid > ? ORDER BY rowid"
    try:
        top = conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        top = None
    after, step = -(2**63), 1
    while True:
        try:
            for row in conn.execute(select, (after,)):
                after, step = row[0], 1
                yield row[1:]
            return
        except sqlite3.DatabaseError:
            if after == -(2**63):
                after = 0  # rowids of this project's tables start at 1
            if (top is not None and after >= top) or step > MAX_SKIP:
                return
            after += step
            step *= 2


# --------------------------------------------------------------------------- the files


def _tile_jobs(root: Path) -> Iterator[tuple[int, str, int]]:
    """``(bucket, id, -1)`` of every ``bucket_XXXX/<uuid4>.png`` regular file, bucket by bucket."""
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        bucket_id = parse_bucket_dir(entry.name)
        if bucket_id is None or entry.is_symlink() or not entry.is_dir():
            continue  # a symlinked bucket folder is never read: verify reports it
        for item in sorted(os.scandir(entry.path), key=lambda e: e.name):
            tile_id = tile_stem(item.name)
            if is_tile_id(tile_id) and item.is_file(follow_symlinks=False):
                yield bucket_id, tile_id, -1


def _scan(root: Path, out: sqlite3.Connection, report: RecoverReport, workers: int | None,
          progress: bool | None) -> None:
    """A row for every valid tile file, in the bucket folder it is in, with what ``_kept`` knows of it."""
    show = sys.stderr.isatty() if progress is None else progress
    name = root.name
    origins: Counter = Counter()
    pending: list[tuple[tuple[int, str, int], object]] = []

    def flush() -> None:
        ids = list(dict.fromkeys(job[1] for job, _f in pending))
        marks = ", ".join("?" * len(ids))
        kept = {row[0]: row[1:] for row in out.execute(
            f"SELECT id, origin, phash, {', '.join(KEPT_COLUMNS)} FROM _kept WHERE id IN ({marks})", ids)}
        # An id in two bucket folders: the first one seen gets the row (repair quarantines the other).
        taken = {row[0] for row in out.execute(f"SELECT id FROM tiles WHERE id IN ({marks})", ids)}
        rows = []
        for (bucket_id, tile_id, _c), fact in pending:
            if tile_id in taken:
                continue
            taken.add(tile_id)
            known = kept.get(tile_id)
            if known is not None and known[0] == "salvage" and known[1] != fact.phash:
                known = None  # a row read off a damaged page (zeros, another tile's bytes): not this tile's
            values = dict(zip(KEPT_COLUMNS, known[2:])) if known else {"source": db.ADOPTED_SOURCE}
            mean_l, mean_a, mean_b = fact.lab
            rows.append(db.tile_row({**values, "id": tile_id, "bucket_id": bucket_id, "phash": fact.phash,
                                     "filepath": tile_filepath(name, bucket_id, tile_id),
                                     "mean_l": mean_l, "mean_a": mean_a, "mean_b": mean_b}))
            origins[known[0] if known else "adopted"] += 1
        with out:
            out.executemany(db.INSERT_TILE_SQL, rows)
        pending.clear()

    files = TileFiles(root)
    with tqdm(unit="tile", desc="recover", disable=not show) as bar:
        for job, fact in inspect_stream(files, _tile_jobs(root), workers):
            bar.update()
            if fact.error is None:
                pending.append((job, fact))
            if len(pending) >= ROWS_AT_ONCE:
                flush()
        if pending:
            flush()
    report.from_release, report.from_salvage, report.adopted = origins["release"], origins["salvage"], origins["adopted"]
    report.tiles = sum(origins.values())
