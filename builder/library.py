"""The on-disk library: layout, locking, crash recovery and path safety.

Layout (contract)::

    mosaic_library/
      tiles.db          SQLite, WAL
      centroids.npy     float64 (5000, 3), LAB; never overwritten
      temp/             scratch, empty at rest
      bucket_XXXX/      <uuid4>.png, PNG RGB 256x256

Writers hold an exclusive ``flock`` on ``.lock`` for their whole life, so two harvests never
interleave; readers (``stats``, ``build``, the card's snippets) need no lock thanks to WAL.

Crash safety: a batch of accepted tiles is made durable in this order:

1. each tile is written completely to ``temp/<id>.png``;
2. ``temp/journal.json`` lists the batch's ``(id, bucket)`` pairs (written atomically);
3. the files are renamed into their bucket folders;
4. the rows are inserted and committed in one transaction;
5. the journal is deleted.

A reader therefore never sees a row without its file.  When a writer opens the library it
replays a leftover journal (rows that committed keep their files; files whose rows did not
commit are removed) and empties ``temp/``.  The worst a crash leaves behind is scratch that
the next open removes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import sqlite3
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import db
from .color import N_BUCKETS, CentroidIndex, load_centroids, make_centroids
from .errors import CentroidsError, LibraryError, LibraryLocked, UnsafePath

logger = logging.getLogger(__name__)

DEFAULT_CAP = 100
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SHIPPED_CENTROIDS = DATA_DIR / "centroids.npy"
JOURNAL = "journal.json"
_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_BUCKET_DIR = re.compile(r"^bucket_(\d{4})$")
# What a crashed ``init`` can leave in a folder; ``create`` refuses a folder holding anything else.
_INIT_LEFTOVERS = frozenset({"tiles.db", "tiles.db-wal", "tiles.db-shm", "tiles.db-journal", "temp", ".lock"})


def is_tile_id(value: object) -> bool:
    """True for a lowercase uuid4 string, the only form a tile id may take.

    >>> is_tile_id("0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a"), is_tile_id("../../etc/passwd")
    (True, False)
    """
    return isinstance(value, str) and bool(_UUID4.match(value))


def new_tile_id() -> str:
    return str(uuid.uuid4())


def bucket_name(bucket_id: int) -> str:
    """``bucket_0042`` for 42."""
    return f"bucket_{int(bucket_id):04d}"


def parse_bucket_dir(name: str) -> int | None:
    """Bucket id of a ``bucket_XXXX`` folder name, or None."""
    match = _BUCKET_DIR.match(name)
    if not match:
        return None
    value = int(match.group(1))
    return value if value < N_BUCKETS else None


def file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def format_counts(counts) -> str:
    """``"corrupt 2, duplicate 1"``: counts by key in key order, as every summary line prints them."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


@dataclass
class IngestReport:
    """What an ingest or harvest batch did: accepted count and rejections by reason."""

    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason -> first input name rejected for it
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.accepted + sum(self.rejected.values())

    def summary(self) -> str:
        reasons = format_counts(self.rejected) or "none"
        rate = f", {self.total / self.seconds:.0f} tiles/s" if self.seconds > 0 else ""
        return f"{self.accepted} accepted, {sum(self.rejected.values())} rejected ({reasons}){rate}"

    def as_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "examples": self.examples,
            "seconds": round(self.seconds, 3),
        }


class Library:
    """A Mosaic Library folder.  Use :meth:`create` or :meth:`open`; close when done.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()) / "mosaic_library"
    >>> with Library.create(root) as lib:
    ...     lib.stats()["tiles"]
    0
    """

    def __init__(self, root: Path, conn: sqlite3.Connection, centroids: np.ndarray, readonly: bool, lock_fd: int | None):
        self.root = root
        self.name = root.name
        self.db_path = root / "tiles.db"
        self.conn = conn
        self.centroids = centroids
        self.readonly = readonly
        self._lock_fd = lock_fd
        self._index: CentroidIndex | None = None
        self._recovered = False  # close() sweeps temp/ again only if open() could
        cap = db.get_meta(conn, "cap") if "meta" in self._tables() else None
        self.cap = int(cap) if cap else DEFAULT_CAP

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(cls, root: str | os.PathLike, centroids: str | os.PathLike | None = None,
               seed: int | None = None, cap: int = DEFAULT_CAP) -> Library:
        """Create the layout and its ``centroids.npy``, then open it for writing.

        ``centroids`` imports a file (validated); ``seed`` regenerates with the card's recipe
        (about 20-50 s); neither copies the shipped ``data/centroids.npy`` (seed 0).  An
        existing ``centroids.npy`` is never overwritten.
        """
        root = Path(root)
        if (root / "centroids.npy").exists():
            raise LibraryError(f"{root} is already initialised: centroids.npy exists and is never overwritten")
        if root.exists() and not root.is_dir():
            raise LibraryError(f"{root} exists and is not a folder")
        foreign = sorted(e.name for e in root.iterdir() if e.name not in _INIT_LEFTOVERS) if root.is_dir() else []
        if foreign:
            # Writers empty temp/ on open: a folder of someone else's files is no place for a library.
            raise LibraryError(f"refusing to initialise {root}: it already holds {', '.join(foreign[:3])}"
                               f"{' ...' if len(foreign) > 3 else ''}; choose a new or empty folder")
        if cap < 1:
            raise LibraryError(f"bucket cap must be at least 1, got {cap}")
        if centroids is not None and seed is not None:
            raise LibraryError("give either centroids FILE or a seed, not both")
        if seed is not None and not 0 <= seed < 2**32:
            raise LibraryError(f"seed must be between 0 and 2**32 - 1, got {seed}")
        if centroids is not None:
            arr = load_centroids(centroids)
        elif seed is not None:
            arr = make_centroids(seed)
        else:
            arr = load_centroids(SHIPPED_CENTROIDS)
        root.mkdir(parents=True, exist_ok=True)
        (root / "temp").mkdir(exist_ok=True)
        tmp = root / "temp" / "centroids.npy.part"
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, root / "centroids.npy")
        conn = db.connect(root / "tiles.db")
        db.create_schema(conn)
        with conn:
            db.set_meta(conn, "centroids_sha256", file_sha256(root / "centroids.npy"))
            db.set_meta(conn, "cap", str(cap))
        conn.close()
        return cls.open(root)

    @classmethod
    def open(cls, root: str | os.PathLike, readonly: bool = False) -> Library:
        """Open an existing library.  Writers lock it, migrate the schema, replay a crashed
        batch and empty ``temp/``; readers do none of that and never block a writer."""
        root = Path(root)
        cls.verify_layout(root)
        lock_fd = None if readonly else cls._acquire_lock(root)
        try:
            centroids = load_centroids(root / "centroids.npy")
            if not readonly and not os.access(root / "tiles.db", os.W_OK):
                raise LibraryError(f"cannot write to {root / 'tiles.db'}: the file is read-only")
            try:
                conn = db.connect(root / "tiles.db", readonly=readonly)
            except sqlite3.DatabaseError as exc:  # not SQLite at all: WAL setup is the first read
                raise LibraryError(f"{root / 'tiles.db'} is not a usable SQLite database ({exc})") from None
            try:
                if readonly:
                    columns = db.table_columns(conn, "tiles")
                    if not columns:
                        raise LibraryError(f"{root / 'tiles.db'} has no 'tiles' table: not a Mosaic Library database")
                    missing = [c for c in db.SEED_COLUMNS if c not in columns]
                    if missing:
                        raise LibraryError(f"{root / 'tiles.db'}: table 'tiles' lacks the card's columns {missing}")
                else:
                    found = db.migrate(conn)
                    if found != db.SCHEMA_VERSION:
                        logger.warning("migrated %s from schema version %s to %s", root / "tiles.db", found, db.SCHEMA_VERSION)
                cls._check_centroids_identity(conn, root, readonly)
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise LibraryError(f"{root / 'tiles.db'} is not a usable SQLite database ({exc})") from None
            except BaseException:
                conn.close()
                raise
            lib = cls(root, conn, centroids, readonly, lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        if not readonly:
            try:
                lib.recover()
            except BaseException:
                lib.close()
                raise
        return lib

    @staticmethod
    def verify_layout(root: Path) -> None:
        """Actionable errors for a folder that is not (yet) a library."""
        if not root.exists():
            raise LibraryError(f"no library at {root}: run `python -m builder init --library {root}` first")
        if not root.is_dir():
            raise LibraryError(f"{root} is not a folder")
        if not (root / "centroids.npy").is_file():
            raise CentroidsError(
                f"{root} has no centroids.npy: run `python -m builder init --library {root}` "
                "(or restore a published library)"
            )
        if not (root / "tiles.db").is_file():
            raise LibraryError(f"{root} has no tiles.db: run `python -m builder init --library {root}`")
        if (root / "tiles.db").stat().st_size == 0:  # SQLite would happily turn it into a new database
            raise LibraryError(f"{root / 'tiles.db'} is empty: no 'tiles' table, not a Mosaic Library database")

    @staticmethod
    def _check_centroids_identity(conn: sqlite3.Connection, root: Path, readonly: bool = False) -> None:
        """Bucket ids mean nothing with other centroids: a swapped file is an error, for readers
        too (stats, verify and build would otherwise report or publish meaningless buckets)."""
        if readonly and not db.table_columns(conn, "meta"):
            return  # an old schema that never recorded the checksum
        expected = db.get_meta(conn, "centroids_sha256")
        actual = file_sha256(root / "centroids.npy")
        if expected is None:
            if not readonly:
                with conn:
                    db.set_meta(conn, "centroids_sha256", actual)
        elif expected != actual:
            raise CentroidsError(
                f"{root / 'centroids.npy'} differs from the file this library was built with "
                f"(sha256 {actual[:12]} != {expected[:12]}): restore the original centroids.npy"
            )

    @staticmethod
    def _acquire_lock(root: Path) -> int:
        path = root / ".lock"
        if path.is_symlink():
            raise UnsafePath(f"{path} is a symlink: refusing to write through it")
        try:
            # O_NOFOLLOW: the pid is written into this file; never through a planted symlink.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except PermissionError:
            raise LibraryError(f"cannot write to {root}: the library folder is read-only") from None
        except OSError as exc:
            raise LibraryError(f"cannot lock {root}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            finally:
                os.close(fd)
            raise LibraryLocked(f"{root} is being written by {holder}; wait for it to finish and retry") from None
        if not os.access(root, os.W_OK):
            os.close(fd)
            raise LibraryError(f"cannot write to {root}: the library folder is read-only")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        return fd

    @staticmethod
    def writer_active(root: str | os.PathLike) -> bool:
        """True while another process holds the writer lock (a harvest or ingest is running)."""
        path = Path(root) / ".lock"
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def close(self) -> None:
        if self.conn is not None and self._recovered and self._lock_fd is not None:
            # temp/ empty at rest: a run that failed mid-batch (disk full, a worker's error)
            # leaves its scratch there, and a full disk should not stay full until the next open.
            try:
                self.recover()
            except (OSError, sqlite3.Error, LibraryError) as exc:
                logger.warning("could not clean %s on close (%s); the next writer will", self.temp_dir, exc)
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    # ----------------------------------------------------------------- paths
    @property
    def index(self) -> CentroidIndex:
        if self._index is None:
            self._index = CentroidIndex(self.centroids, validate=False)
        return self._index

    @property
    def temp_dir(self) -> Path:
        return self.root / "temp"

    def bucket_dir(self, bucket_id: int) -> Path:
        if not isinstance(bucket_id, (int, np.integer)) or not 0 <= int(bucket_id) < N_BUCKETS:
            raise UnsafePath(f"bucket id out of range 0..{N_BUCKETS - 1}: {bucket_id!r}")
        return self.root / bucket_name(int(bucket_id))

    def tile_path(self, bucket_id: int, tile_id: str) -> Path:
        """The only way this project finds a tile's file: derived, never read from data."""
        if not is_tile_id(tile_id):
            raise UnsafePath(f"tile id is not a uuid4 string: {tile_id!r}")
        return self.bucket_dir(bucket_id) / f"{tile_id}.png"

    def filepath_for(self, bucket_id: int, tile_id: str) -> str:
        """The ``filepath`` column: relative to the folder holding the library (card's ``load_bucket``)."""
        self.tile_path(bucket_id, tile_id)
        return f"{self.name}/{bucket_name(bucket_id)}/{tile_id}.png"

    # ----------------------------------------------------------------- recovery
    def recover(self) -> dict:
        """Replay a crashed batch's journal and empty ``temp/`` (writers only)."""
        self._require_writer()
        temp = self.temp_dir
        if temp.is_symlink() or (temp.exists() and not temp.is_dir()):
            # Everything in temp/ is deleted below: never through a link to someone's folder.
            raise UnsafePath(f"{temp} is a symlink or not a folder: refusing to clean it; replace it with an empty folder")
        for entry in os.scandir(self.root):  # tiles are written (and repaired) in bucket folders
            if entry.is_symlink() and parse_bucket_dir(entry.name) is not None:
                raise UnsafePath(f"{self.root / entry.name} is a symlink: refusing to write through it")
        temp.mkdir(exist_ok=True)
        done = {"kept": 0, "rolled_back": 0, "temp_removed": 0}
        journal = temp / JOURNAL
        if journal.exists():
            try:
                entries = json.loads(journal.read_text())["tiles"]
            except (ValueError, KeyError, TypeError):
                entries = []
                logger.warning("unreadable journal %s ignored", journal)
            for tile_id, bucket_id in entries:
                try:
                    final = self.tile_path(int(bucket_id), tile_id)
                except (UnsafePath, TypeError, ValueError):
                    continue
                committed = self.conn.execute("SELECT 1 FROM tiles WHERE id = ?", (tile_id,)).fetchone()
                staged = temp / f"{tile_id}.png"
                if committed:
                    if not final.exists() and staged.exists():
                        final.parent.mkdir(exist_ok=True)
                        os.replace(staged, final)
                    done["kept"] += 1
                else:
                    final.unlink(missing_ok=True)
                    done["rolled_back"] += 1
            journal.unlink()
        for entry in temp.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            done["temp_removed"] += 1
        if any(done.values()):
            logger.info("recovered %s: %s", self.root, done)
        self._recovered = True
        return done

    def _require_writer(self) -> None:
        if self.readonly:
            raise LibraryError(f"{self.root} was opened read-only")

    # ----------------------------------------------------------------- queries
    def bucket_counts(self) -> np.ndarray:
        """Tiles per bucket, shape (5000,)."""
        counts = np.zeros(N_BUCKETS, dtype=np.int64)
        for bucket_id, n in self.conn.execute("SELECT bucket_id, COUNT(*) FROM tiles GROUP BY bucket_id"):
            if isinstance(bucket_id, int) and 0 <= bucket_id < N_BUCKETS:
                counts[bucket_id] = n
        return counts

    def stats(self) -> dict:
        """Tile count, buckets populated and full, and yield per source/region."""
        counts = self.bucket_counts()
        tiles = int(counts.sum())
        # Readers never migrate: an old (card-schema) tiles.db lacks provenance and `fetched`.
        columns = set(db.table_columns(self.conn, "tiles"))
        region_sql = "region" if "region" in columns else "NULL"
        source_sql = "source" if "source" in columns else "NULL"
        regions = {
            (region or "(none)"): n
            for region, n in self.conn.execute(f"SELECT {region_sql}, COUNT(*) FROM tiles GROUP BY 1 ORDER BY 2 DESC")
        }
        sources = {
            (source or "(none)"): n
            for source, n in self.conn.execute(f"SELECT {source_sql}, COUNT(*) FROM tiles GROUP BY 1 ORDER BY 2 DESC")
        }
        from .ledger import status_counts_by_region  # here: the ledger imports the sources (requests)

        fetched = status_counts_by_region(self.conn)
        return {
            "library": str(self.root),
            "tiles": tiles,
            "buckets_total": N_BUCKETS,
            "buckets_populated": int((counts > 0).sum()),
            "buckets_full": int((counts >= self.cap).sum()),
            "cap": self.cap,
            "coverage": round(float((counts > 0).mean()), 4),
            "by_region": regions,
            "by_source": sources,
            "fetched_by_region": fetched,
        }

    def ingest(self, paths, workers: int | None = None, progress: bool | None = None) -> IngestReport:
        """Run image files and folders through the assignment pipeline (see :mod:`builder.ingest`)."""
        from .ingest import ingest_paths

        self._require_writer()
        return ingest_paths(self, paths, workers=workers, progress=progress)
