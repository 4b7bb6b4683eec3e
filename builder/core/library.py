"""The on-disk library: opening, creating, locking, recovery on open, paths; its figures
(``stats``) are computed in :mod:`builder.core.stats`.

Layout (contract; names and limits in :mod:`builder.core.layout`)::

    mosaic_library/
      tiles.db          SQLite, WAL
      centroids.npy     float64 (5000, 3), LAB; never overwritten
      temp/             scratch, empty at rest
      bucket_XXXX/      <uuid4>.png, PNG RGB 256x256

Writers hold the writer lock (:mod:`builder.core.lock`: an exclusive ``flock`` on the library folder
itself, and on ``.lock``, which names the holder) for their whole life, so two harvests never
interleave, even when ``.lock`` is deleted; readers (``stats``, ``build``, the card's snippets)
need no lock thanks to WAL.

Crash safety is the commit protocol of :mod:`builder.core.store`: a writer's open replays a batch
a crash left half stored (:meth:`Library.recover`) and empties ``temp/``.  Tile files are named
and read through :mod:`builder.core.tilefiles`; the ``tiles`` table contract is :mod:`builder.core.db`.
Adding tiles is :func:`builder.ops.ingest.ingest` and :func:`builder.acquire.harvest.harvest`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import numpy as np

from . import db, store
from .color import CentroidIndex, load_centroids, make_centroids
from .errors import CentroidsError, LibraryError
from .layout import (
    CENTROIDS_NAME,
    DB_NAME,
    DEFAULT_CAP,
    LOCK_NAME,
    QUARANTINE_DIR,
    RECOVERED_DB_NAME,
    SHIPPED_CENTROIDS,
    TEMP_DIR,
    parse_bucket_dir,
    tile_filepath,
)
from .lock import WriterLock, writer_active
from .stats import library_stats, tiles_per_bucket
from .tilefiles import TileFiles

logger = logging.getLogger(__name__)

# What a crashed ``init`` can leave in a folder; ``create`` refuses a folder holding anything else.
_INIT_LEFTOVERS = frozenset({DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal", TEMP_DIR, LOCK_NAME})


# How far :func:`nearby_libraries` looks: folders under the missing library's parent, this deep,
# at most this many folders read (a home folder must not cost a long walk for one error line).
NEARBY_DEPTH = 2
NEARBY_MAX_FOLDERS = 400
RELEASE_CARD = "README.md"  # the dataset card every release holds at its root; a library never does


def is_library_folder(folder: Path) -> bool:
    """A folder holding a library's two defining files (``tiles.db`` and ``centroids.npy``) and
    no dataset card: a release (a staging folder, a download) holds both files too, beside its
    ``README.md``, and is restored, not opened."""
    try:
        return ((folder / DB_NAME).is_file() and (folder / CENTROIDS_NAME).is_file()
                and not (folder / RELEASE_CARD).is_file())
    except OSError:
        return False


def nearby_libraries(root: Path) -> list[Path]:
    """Libraries near a path that holds none: in its parent folder and up to
    :data:`NEARBY_DEPTH` levels below it (the demo's ``demo_output/mosaic_library`` seen from the
    checkout), nearest first, then by name; hidden folders and bucket folders are not entered."""
    parent = root.parent
    found: list[Path] = []
    level, read = [parent], 0
    for _depth in range(NEARBY_DEPTH):
        below: list[Path] = []
        for folder in level:
            if read >= NEARBY_MAX_FOLDERS:
                break
            read += 1
            try:
                with os.scandir(folder) as scan:
                    entries = [e for e in scan if not e.name.startswith(".") and e.is_dir()]
            except OSError:
                continue
            for entry in sorted(entries, key=lambda e: e.name):
                path = Path(folder) / entry.name if folder != Path(".") else Path(entry.name)
                if is_library_folder(path):
                    found.append(path)
                elif not entry.name.startswith(("bucket_", TEMP_DIR)):
                    below.append(path)
        level = below
    return found


def centroids_origin(sha256: str) -> str:
    """Where the right ``centroids.npy`` of a library comes from, for the mismatch error: the
    shipped file when the library was made with it (``init``'s default, seed 0), else its release."""
    try:
        shipped = file_sha256(SHIPPED_CENTROIDS)
    except OSError:
        shipped = None
    if sha256 == shipped:
        return f"the shipped seed-0 file: copy {SHIPPED_CENTROIDS} (sha256 {sha256})"
    return (f"the one with sha256 {sha256}: the centroids.npy of the release this library was built or restored "
            "from (a staging folder or the Hub repo), or `python -m builder init --seed N` with the seed that made it")


def file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Library:
    """A Mosaic Library folder.  Use :meth:`create` or :meth:`open`; close when done.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()) / "mosaic_library"
    >>> with Library.create(root) as lib:
    ...     lib.stats()["tiles"]
    0
    """

    def __init__(self, root: Path, conn: sqlite3.Connection, centroids: np.ndarray, readonly: bool,
                 lock: WriterLock | None):
        self.root = root
        self.name = root.name
        self.db_path = root / DB_NAME
        self.files = TileFiles(root)
        self.conn = conn
        self.centroids = centroids
        self.readonly = readonly
        self._lock = lock
        self._index: CentroidIndex | None = None
        self._recovered = False  # close() sweeps temp/ again only if open() could
        cap = db.get_meta(conn, "cap") if "meta" in db.table_names(conn) else None
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
        if root.exists() and not root.is_dir():
            raise LibraryError(f"{root} exists and is not a folder")
        foreign = sorted(e.name for e in root.iterdir() if e.name not in _INIT_LEFTOVERS) if root.is_dir() else []
        if CENTROIDS_NAME in foreign:
            raise LibraryError(f"{root} is already initialised: {root / CENTROIDS_NAME} exists and is never overwritten")
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
        (root / TEMP_DIR).mkdir(exist_ok=True)
        cls._publish_centroids(root, arr)
        conn = db.connect(root / DB_NAME)
        db.create_schema(conn)
        with conn:
            db.set_meta(conn, "centroids_sha256", file_sha256(root / CENTROIDS_NAME))
            db.set_meta(conn, "cap", str(cap))
        conn.close()
        return cls.open(root)

    @staticmethod
    def _publish_centroids(root: Path, centroids: np.ndarray) -> None:
        """Write ``centroids.npy`` once: staged under a name of this process's own, then linked
        into place, which fails if the file exists.  Two ``init`` racing into one folder: one
        links, the other is told that ``centroids.npy`` exists, never about a scratch file (and
        never publishes a file the other was still writing)."""
        final = root / CENTROIDS_NAME
        part = root / TEMP_DIR / f"{CENTROIDS_NAME}.{os.getpid()}.part"
        try:
            try:
                with open(part, "xb") as fh:
                    np.save(fh, centroids, allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(part, final)
            finally:
                part.unlink(missing_ok=True)
        except OSError as exc:
            # FileExistsError from the link, or our scratch file gone: the winner's open emptied temp/.
            if final.exists():
                raise LibraryError(f"{root} is already initialised: {final} was created by another "
                                   "`init` meanwhile and is never overwritten") from None
            raise LibraryError(f"cannot write {final}: {exc.strerror or exc}") from None

    @classmethod
    def open(cls, root: str | os.PathLike, readonly: bool = False, lock: WriterLock | None = None) -> Library:
        """Open an existing library.  Writers lock it, migrate the schema, replay a crashed
        batch and empty ``temp/``; readers do none of that and never block a writer.

        ``lock``: a writer lock the caller already holds on ``root`` (``recover`` takes it before
        there is a database to open); the library releases it on close."""
        root = Path(root)
        cls.verify_layout(root)
        if readonly:
            lock = None
        elif lock is None:
            lock = WriterLock.acquire(root)
        try:
            centroids = load_centroids(root / CENTROIDS_NAME)
            if not readonly and not os.access(root / DB_NAME, os.W_OK):
                raise LibraryError(f"cannot write to {root / DB_NAME}: the file is read-only")
            if readonly:  # checks the tiles table, never migrates
                conn = db.open_readonly(root / DB_NAME, library=root)
            else:
                try:
                    conn = db.connect(root / DB_NAME)
                except sqlite3.DatabaseError as exc:  # not SQLite at all: WAL setup is the first read
                    raise db.not_a_database(root / DB_NAME, exc, root) from None
            try:
                if not readonly:
                    found = db.migrate(conn)  # checks the tiles table first
                    if found != db.SCHEMA_VERSION:
                        logger.warning("migrated %s from schema version %s to %s", root / DB_NAME, found, db.SCHEMA_VERSION)
                cls._check_centroids_identity(conn, root, readonly)
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise db.not_a_database(root / DB_NAME, exc, root) from None
            except BaseException:
                conn.close()
                raise
            lib = cls(root, conn, centroids, readonly, lock)
        except BaseException:
            if lock is not None:
                lock.release()
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
            nearby = nearby_libraries(root)
            if nearby:
                shown = ", ".join(str(p) for p in nearby[:3]) + (" ..." if len(nearby) > 3 else "")
                raise LibraryError(f"no library at {root}; libraries nearby: {shown}: pass one with "
                                   f"`--library {nearby[0]}` (or create a new one here with "
                                   f"`python -m builder init --library {root}`)")
            raise LibraryError(f"no library at {root}: run `python -m builder init --library {root}` first")
        if not root.is_dir():
            raise LibraryError(f"{root} is not a folder")
        if not (root / CENTROIDS_NAME).is_file():
            raise CentroidsError(
                f"{root} has no {CENTROIDS_NAME}: run `python -m builder init --library {root}` "
                "(or restore a published library)"
            )
        if (root / RECOVERED_DB_NAME).is_file():
            raise LibraryError(f"a recover of {root} was interrupted: run `python -m builder recover --library {root}` "
                               "to finish it")
        if not (root / DB_NAME).is_file():
            if any(parse_bucket_dir(e.name) is not None for e in os.scandir(root)):
                raise LibraryError(f"{root} has bucket folders but no {DB_NAME}{db.recover_hint(root)}")
            raise LibraryError(f"{root} has no {DB_NAME}: run `python -m builder init --library {root}`")
        if (root / DB_NAME).stat().st_size == 0:  # SQLite would happily turn it into a new database
            raise LibraryError(f"{root / DB_NAME} is empty: no 'tiles' table, not a Mosaic Library database"
                               f"{db.recover_hint(root)}")

    @staticmethod
    def _check_centroids_identity(conn: sqlite3.Connection, root: Path, readonly: bool = False) -> None:
        """Bucket ids mean nothing with other centroids: a swapped file is an error, for readers
        too (stats, verify and build would otherwise report or publish meaningless buckets)."""
        if readonly and "meta" not in db.table_names(conn):
            return  # an old schema that never recorded the checksum
        expected = db.get_meta(conn, "centroids_sha256")
        actual = file_sha256(root / CENTROIDS_NAME)
        if expected is None:
            if not readonly:
                with conn:
                    db.set_meta(conn, "centroids_sha256", actual)
        elif expected != actual:
            raise CentroidsError(
                f"{root / CENTROIDS_NAME} differs from the file this library was built with "
                f"(sha256 {actual[:12]} != {expected[:12]}): restore the original {CENTROIDS_NAME}, "
                f"{centroids_origin(expected)}"
            )

    @staticmethod
    def writer_active(root: str | os.PathLike) -> bool:
        """True while another process holds the writer lock (a harvest or ingest is running)."""
        return writer_active(root)

    def close(self) -> None:
        if self.conn is not None and self._recovered and self._lock is not None:
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
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- paths
    @property
    def index(self) -> CentroidIndex:
        if self._index is None:
            self._index = CentroidIndex(self.centroids, validate=False)
        return self._index

    @property
    def temp_dir(self) -> Path:
        return self.root / TEMP_DIR

    @property
    def quarantine_dir(self) -> Path:
        """Where ``verify --repair`` puts what it takes out of the bucket folders (:mod:`builder.core.quarantine`)."""
        return self.root / QUARANTINE_DIR

    def tile_path(self, bucket_id: int, tile_id: str) -> Path:
        """The only way this project names a tile's file: derived from a validated
        ``(bucket_id, id)``, never read from data (:class:`UnsafePath` otherwise)."""
        return self.files.path(bucket_id, tile_id)

    def read_tile(self, bucket_id: int, tile_id: str) -> bytes:
        """A stored tile's bytes, read safely (see :mod:`builder.core.tilefiles`); raises
        :class:`~builder.core.errors.BadTile` naming the id, the path and the problem."""
        return self.files.read(bucket_id, tile_id)

    def filepath_for(self, bucket_id: int, tile_id: str) -> str:
        """The ``filepath`` column: relative to the folder holding the library (card's ``load_bucket``)."""
        return tile_filepath(self.name, bucket_id, tile_id)

    # ----------------------------------------------------------------- recovery
    def recover(self) -> dict:
        """Replay a crashed batch's journal and empty ``temp/`` (writers only; :func:`builder.core.store.replay`)."""
        done = store.replay(self)
        self._recovered = True
        return done._asdict()

    def require_writer(self, action: str | None = None) -> None:
        """Refuse to write to a library opened read-only; ``action`` (``"harvest"``...) names
        what was refused.  Entry points call it before starting any pool, thread or request,
        and the store before every commit and replay."""
        if self.readonly:
            needs = f"{action} needs the library opened for writing: " if action else ""
            raise LibraryError(f"{needs}{self.root} was opened read-only")

    # ----------------------------------------------------------------- queries
    def bucket_counts(self, real_only: bool = False) -> np.ndarray:
        """Tiles per bucket, shape (5000,); ``real_only``: real tiles only (synthetic ones left out)."""
        return tiles_per_bucket(self.conn, real_only=real_only)

    def stats(self) -> dict:
        """The library's figures (:func:`builder.core.stats.library_stats`): tiles, buckets populated
        and full, yield per source and region, real and synthetic tiles apart."""
        return library_stats(self.conn, self.root, self.cap)
