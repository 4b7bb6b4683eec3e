"""``verify [--repair]``: check ``tiles.db`` against the files, and fix what is safe to fix.

Checks, each a problem ``kind``:

* ``unsafe_row``         id is not a uuid4 or bucket out of range: no path can be derived
* ``filepath_mismatch``  ``filepath`` column differs from ``<library>/bucket_XXXX/<id>.png``
* ``missing_file``       row whose file is gone
* ``bad_image``          file that is not a decodable 256x256 RGB PNG
* ``lab_mismatch``       stored LAB differs from the file's (64x64 mean RGB -> LAB)
* ``wrong_bucket``       bucket_id is not the nearest centroid of the tile's LAB
* ``bad_phash``          stored phash differs from the file's
* ``duplicate_phash``    same phash twice in a bucket
* ``over_cap``           bucket holding more than the cap
* ``orphan_file``        entry of a bucket folder (or ``temp/``) with no row: a file, a folder...
* ``bad_synthetic``      ``synthetic`` not 0/1, or a real tile (0) claiming a ``derived_from``
* ``unknown_source``     synthetic tile whose ``derived_from`` names no real tile of the library
                         (repair quarantines it: ``synthesize`` makes another)
* ``bad_thumbnail``      the mosaic's cached thumbnail of a tile differs from the tile (every row
                         in a full run, a sample with ``deep=False``); a read-only run marks the
                         row so that no mosaic uses it, repair writes the right one
* ``unsafe_path``        a bucket folder or ``temp/`` that is a symlink (reported, never followed
                         or repaired through: a person must look)

Synthetic tiles get every other check like any tile: stored bucket, LAB and pHash must equal
the card's recipe on their file.

Each check is a small generator below (``check_*``) that yields the problems of one kind, or of a
small group, from values the scan hands it; it reads SQL or files only where its docstring says
so.  :func:`verify_library` is the scan: it streams the rows by bucket, lists each bucket's folder
once, runs the checks on each row and each bucket, then the checks of the library as a whole.

The deep checks decode each file **once** for all of them (PNG validity, LAB, pHash, the cached
thumbnail: :mod:`builder.ops.inspection`), on a process pool; the colours and hashes of a chunk are
computed together.  ``deep=False`` checks rows against the folders only.  What is found is a
:class:`~builder.ops.problems.Problem` in a :class:`~builder.ops.problems.VerifyReport`; with ``repair``,
:func:`verify_library` hands the report to :mod:`builder.ops.repair`, which fixes what is safe
(through the store's journal; it never deletes a tile file: what cannot be kept goes to
``quarantine/``, which the report lists).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from ..core import db, quarantine, store
from ..core.color import CentroidIndex
from ..core.errors import UnsafePath
from ..core.layout import bucket_name, is_bucket_id, is_tile_id, parse_bucket_dir, tile_stem
from ..core.library import Library
from ..core.thumbcache import ThumbnailCache, cache_keys
from ..core.tilefiles import MISSING, TileFiles
from .inspection import INSPECT_CHUNK, FileFacts, inspect_chunk, inspect_pool, inspect_tiles
from .problems import Problem, VerifyReport
from .repair import repair_library

logger = logging.getLogger(__name__)

LAB_TOLERANCE = 1e-6
QUICK_THUMBNAIL_SAMPLE = 32  # cached thumbnails compared with their tiles by a quick verify (~0.1 s)
CHUNK = 2048  # rows read, decoded and checked at a time: memory stays flat in the library's size


class Row(NamedTuple):
    """A ``tiles`` row as the scan reads it: the seed's columns, after the rowid."""

    rowid: int
    tile_id: str
    bucket_id: int
    filepath: str
    phash: str
    mean_l: float
    mean_a: float
    mean_b: float


# --- the checks ----------------------------------------------------------------------------------


def check_row_path(lib: Library, row: Row) -> Iterator[Problem]:
    """``unsafe_row`` when no path can be derived from the row (its id or bucket), else
    ``filepath_mismatch`` when its ``filepath`` column is not the one derived."""
    try:
        expected = lib.filepath_for(row.bucket_id, row.tile_id)
    except UnsafePath as exc:
        yield Problem("unsafe_row", str(row.tile_id)[:80], None, str(exc))
        return
    if row.filepath != expected:
        yield Problem("filepath_mismatch", row.tile_id, row.bucket_id, f"{row.filepath!r} != {expected!r}")


def check_file(lib: Library, row: Row, fact: FileFacts | None, listed: set[str]) -> Iterator[Problem]:
    """``missing_file`` or ``bad_image``, from the file's facts; a quick run (no facts) looks for
    the file in its folder's listing (``listed``: the tile stems there), then on disk."""
    path = lib.tile_path(row.bucket_id, row.tile_id)
    if fact is None:
        if row.tile_id not in listed and not path.is_file():
            yield Problem("missing_file", row.tile_id, row.bucket_id, str(path))
    elif fact.error == MISSING:
        yield Problem("missing_file", row.tile_id, row.bucket_id, str(path))
    elif fact.error:
        yield Problem("bad_image", row.tile_id, row.bucket_id, fact.error)


def check_thumbnail(tile_id: str, bucket_id: int, fact: FileFacts) -> Iterator[Problem]:
    """``bad_thumbnail``: the mosaic cache's thumbnail of the tile differs from the tile's own."""
    if fact.thumb_ok is False:
        yield Problem("bad_thumbnail", tile_id, bucket_id, "the mosaic cache's thumbnail differs from the tile")


def check_colour(row: Row, fact: FileFacts) -> Iterator[Problem]:
    """``lab_mismatch``: the stored LAB is not the file's (or not a number)."""
    stored = np.array([row.mean_l, row.mean_a, row.mean_b], dtype=np.float64)
    if not np.all(np.isfinite(stored)) or np.abs(stored - np.array(fact.lab)).max() > LAB_TOLERANCE:
        yield Problem("lab_mismatch", row.tile_id, row.bucket_id, f"stored {(row.mean_l, row.mean_a, row.mean_b)} file {fact.lab}")


def check_hash(row: Row, fact: FileFacts) -> Iterator[Problem]:
    """``bad_phash``: the stored pHash is not the file's."""
    if row.phash != fact.phash:
        yield Problem("bad_phash", row.tile_id, row.bucket_id, f"stored {row.phash!r} file {fact.phash!r}")


def check_bucket(row: Row, nearest: int) -> Iterator[Problem]:
    """``wrong_bucket``: the tile's colour is nearest another centroid (-1: no colour to place)."""
    if nearest != row.bucket_id:
        yield Problem("wrong_bucket", row.tile_id, row.bucket_id, f"nearest centroid is {nearest}")


def check_duplicate(row: Row, file_hash: str, nearest: int, held: dict[str, str], stray: dict[tuple[int, str], str],
                    stored: Callable[[int, str, str], str | None]) -> Iterator[Problem]:
    """``duplicate_phash``: the file's pHash met before in the bucket the tile belongs in.

    A tile in its bucket is compared with the hashes met so far there (``held``: hash -> first
    id) and with the wrong-bucket tiles that belong there (``stray``: (bucket, hash) -> first id);
    a wrong-bucket tile with the others heading for its bucket and, through ``stored`` (one
    query), with that bucket's rows.  The first holder of a hash is remembered, not reported.
    """
    if nearest != row.bucket_id:
        home = nearest if nearest >= 0 else row.bucket_id
        first = stray.get((home, file_hash))
        if first is None and home != row.bucket_id:
            first = stored(home, file_hash, row.tile_id)
        if first is None:
            stray[(home, file_hash)] = row.tile_id
    else:
        first = held.get(file_hash) or stray.get((row.bucket_id, file_hash))
        if first is None:
            held[file_hash] = row.tile_id
    if first is not None:
        yield Problem("duplicate_phash", row.tile_id, row.bucket_id, f"same phash as {first}")


def check_cap(bucket_id: int, held: int, cap: int) -> Iterator[Problem]:
    """``over_cap``: the bucket holds more tiles (with a file that decodes) than the cap."""
    if held > cap:
        yield Problem("over_cap", None, bucket_id, f"{held} tiles > cap {cap}")


def check_synthetic(conn) -> Iterator[Problem]:
    """``bad_synthetic`` (the flag is 0 or 1; a real tile has no source) and ``unknown_source``
    (a synthetic tile's source is a real tile of the library); two queries."""
    if not db.has_synthetic_flag(conn):
        return
    for tile_id, bucket_id, flag, source in conn.execute(
            "SELECT id, bucket_id, synthetic, derived_from FROM tiles WHERE synthetic IS NOT 0 OR derived_from IS NOT NULL "
            "ORDER BY rowid"):
        if flag not in (0, 1) or (flag == 0 and source is not None):
            yield Problem("bad_synthetic", tile_id, bucket_id, f"synthetic {flag!r}, derived_from {source!r}")
    for tile_id, bucket_id, source in conn.execute(
            "SELECT t.id, t.bucket_id, t.derived_from FROM tiles t LEFT JOIN tiles s ON s.id = t.derived_from "
            "AND s.synthetic = 0 WHERE t.synthetic = 1 AND t.derived_from IS NOT NULL AND s.id IS NULL ORDER BY t.rowid"):
        yield Problem("unknown_source", tile_id, bucket_id, f"derived_from {str(source)[:80]!r} is no real tile here")


def check_folder_links(folders: Iterable[tuple[int, Path]]) -> Iterator[Problem]:
    """``unsafe_path``: a bucket folder that is a symlink (never listed, never repaired through:
    it leads out of the library)."""
    for bucket_id, entry in folders:
        if entry.is_symlink():
            yield Problem("unsafe_path", None, bucket_id, f"{entry.name} is a symlink")


def check_orphans(lib: Library, unknown: list[tuple[int, Path]]) -> Iterator[Problem]:
    """``orphan_file``: entries of bucket folders that no row names (``unknown``), less those a
    running writer is storing; a read-only run asks the journal and the rows again (queries)."""
    # A journal is a batch being stored only while a writer runs; without one it is what a
    # killed writer left, and its renamed-but-uncommitted files are orphans until the next open.
    writer_busy = lib.readonly and Library.writer_active(lib.root)
    in_flight = _journal_ids(lib) if writer_busy else set()
    unknown = [(b, f) for b, f in unknown if tile_stem(f.name) not in in_flight]
    if unknown and lib.readonly:
        # A writer may have stored batches since the rows were read (a deep verify takes minutes):
        # their files are in the folders, their rows committed after our snapshot.  Ask again.
        in_flight = _journal_ids(lib) if Library.writer_active(lib.root) else set()
        unknown = [
            (b, f) for b, f in unknown
            if tile_stem(f.name) not in in_flight and os.path.lexists(f) and not lib.conn.execute(
                "SELECT 1 FROM tiles WHERE id = ? AND bucket_id = ?", (tile_stem(f.name), b)).fetchone()
        ]
    for bucket_id, f in unknown:  # the detail is the entry's path in the library ("/" at the end: a folder)
        folder = "/" if f.is_dir() and not f.is_symlink() else ""
        yield Problem("orphan_file", None, bucket_id, f.relative_to(lib.root).as_posix() + folder)


def check_temp(lib: Library) -> Iterator[Problem]:
    """``unsafe_path`` when ``temp/`` is a symlink, else ``orphan_file`` for each entry of it
    (unless a writer is running: then it is that writer's scratch)."""
    if lib.temp_dir.is_symlink():
        yield Problem("unsafe_path", None, None, "temp is a symlink")
    elif lib.temp_dir.is_dir() and not (lib.readonly and Library.writer_active(lib.root)):
        for f in lib.temp_dir.iterdir():
            yield Problem("orphan_file", None, None, str(f.relative_to(lib.root)))


# --- the scan ------------------------------------------------------------------------------------


def _journal_ids(lib: Library) -> set[str]:
    """Tiles of a batch being stored (or moved by a repair) right now by a running writer (not orphans)."""
    moves, _quarantined = store.read_repairs(lib.temp_dir)
    return {tile_id for tile_id, _bucket in store.read_journal(lib.temp_dir) or ()} | {r.tile_id for r in moves}


class _Bucket:
    """The bucket being checked: its folder's tile stems and the file hashes seen in it so far."""

    def __init__(self, lib: Library, bucket_id: int) -> None:
        self.bucket_id = bucket_id
        self.ids: set[str] = set()  # rows counted against the cap (file there and decodable)
        self.rows: set[str] = set()  # every safe row: the folder's files that are not orphans
        self.hashes: dict[str, str] = {}  # file phash -> first tile id holding it
        folder = lib.root / bucket_name(bucket_id)
        self.folder_ok = folder.is_dir() and not folder.is_symlink()
        self.names = os.listdir(folder) if self.folder_ok else []
        self.stems = {tile_stem(name) for name in self.names}


def _row_chunks(lib: Library) -> Iterator[list[Row]]:
    """Every row, by bucket then age, ``CHUNK`` at a time (one read snapshot: one statement)."""
    cursor = lib.conn.execute(f"SELECT rowid, {', '.join(db.SEED_COLUMNS)} FROM tiles ORDER BY bucket_id, rowid")
    while chunk := cursor.fetchmany(CHUNK):
        yield [Row._make(row) for row in chunk]


def _bucket_folders(lib: Library) -> list[tuple[int, Path]]:
    """``(bucket, path)`` of every entry of the library named like a bucket folder that is one
    (or a symlink to one), in name order."""
    found = []
    for entry in sorted(lib.root.iterdir()):
        bucket_id = parse_bucket_dir(entry.name)
        if bucket_id is not None and entry.is_dir():
            found.append((bucket_id, entry))
    return found


class _Thumbs:
    """The mosaic's thumbnail cache as verify reads it: the pixels (memory-mapped) and the row
    of each ``(id, phash)``; ``None`` pixels when there is no cache."""

    def __init__(self, lib: Library) -> None:
        self.cache = ThumbnailCache.of(lib.root)
        self.pixels, self.index = self.cache.load() if self.cache.folder.is_dir() else (None, None)
        self.file = (str(self.cache.pixels_path), len(self.pixels)) if self.pixels is not None else None

    def rows(self, ids: Sequence[str], phashes: Sequence[object]) -> np.ndarray:
        if self.pixels is None or not len(ids):
            return np.full(len(ids), -1, dtype=np.int64)
        return self.index.rows(cache_keys(list(ids), [h if isinstance(h, str) else "" for h in phashes]))


class _Inspector:
    """The deep facts of the rows' files (:mod:`builder.ops.inspection`), on a process pool for a
    library of more than a few tiles; none (``None`` facts) for a quick run."""

    def __init__(self, lib: Library, files: TileFiles, deep: bool, workers: int | None, total: int) -> None:
        self.files = files
        self.thumbs = _Thumbs(lib) if deep else None
        self.workers = workers or os.cpu_count() or 1
        self.pool = None
        if deep and self.workers > 1 and total >= 64:
            self.pool = inspect_pool(files, self.workers, self.thumbs.file if self.thumbs else None)

    def submit(self, rows: list[Row]) -> list | None:
        """Start inspecting ``rows`` (inline without a pool: done on return)."""
        if self.thumbs is None:
            return None
        cache_rows = self.thumbs.rows([r.tile_id for r in rows], [r.phash for r in rows]).tolist()
        jobs = [(r.bucket_id, r.tile_id, c) for r, c in zip(rows, cache_rows)]
        if self.pool is None:
            return [f for i in range(0, len(jobs), INSPECT_CHUNK)
                    for f in inspect_tiles(self.files, jobs[i:i + INSPECT_CHUNK], self.thumbs.pixels)]
        size = max(1, min(INSPECT_CHUNK, len(jobs) // (2 * self.workers) or 1))
        return [self.pool.submit(inspect_chunk, jobs[i:i + size]) for i in range(0, len(jobs), size)]

    def collect(self, pending: list | None, n: int) -> list[FileFacts | None]:
        """The facts of :meth:`submit`'s rows, in order."""
        if pending is None:
            return [None] * n
        if self.pool is None:
            return pending
        return [fact for future in pending for fact in future.result()]

    def ahead(self, chunks: Iterator[list[Row]]) -> Iterator[tuple[list[Row], list[FileFacts | None]]]:
        """Each chunk with its facts; the next chunk is read and its decodes started before this
        one is handed out, so the pool works while this one is checked."""
        pending = None
        for rows in chunks:
            started = (rows, self.submit(rows))
            if pending is not None:
                yield pending[0], self.collect(pending[1], len(pending[0]))
            pending = started
        if pending is not None:
            yield pending[0], self.collect(pending[1], len(pending[0]))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _nearest(index: CentroidIndex, rows: list[Row], facts: list[FileFacts | None]) -> list[int]:
    """The nearest centroid of each row's colour (the file's, else the stored one): one KD-tree
    query for the chunk; -1 where the colour is not a number."""
    labs = np.array([f.lab if f is not None and f.lab is not None else db.stored_lab((r.mean_l, r.mean_a, r.mean_b))
                     for r, f in zip(rows, facts)], dtype=np.float64).reshape(-1, 3)
    nearest = np.full(len(rows), -1, dtype=np.int64)
    finite = np.isfinite(labs).all(axis=1)
    if finite.any():
        nearest[finite] = index.assign_lab(labs[finite])[0].reshape(-1)
    return nearest.tolist()


class _Scan:
    """What the scan carries from row to row: the report, the bucket being checked, the facts
    repair needs, the wrong-bucket tiles' hashes and the folder entries no row named."""

    def __init__(self, lib: Library, report: VerifyReport) -> None:
        self.lib = lib
        self.report = report
        self.facts: dict[str, FileFacts] = {}  # what repair needs: the facts of tiles with a problem
        self.visited: set[int] = set()
        self.stray: dict[tuple[int, str], str] = {}  # (bucket it belongs in, hash) -> id, for wrong-bucket tiles
        self.bucket: _Bucket | None = None
        self.unknown: list[tuple[int, Path]] = []  # files with no row: orphans unless a writer just stored them

    def add(self, problems: Iterable[Problem], fact: FileFacts | None = None) -> bool:
        """Report ``problems`` (keeping ``fact`` for repair); True when there was one."""
        found = False
        for problem in problems:
            self.report.problems.append(problem)
            if fact is not None:
                self.facts[problem.tile_id] = fact
            found = True
        return found

    def safe_rows(self, chunks: Iterator[list[Row]]) -> Iterator[list[Row]]:
        """Each chunk's rows a path can be derived from (the others reported)."""
        for chunk in chunks:
            self.report.rows += len(chunk)
            safe = []
            for row in chunk:
                problems = list(check_row_path(self.lib, row))
                self.add(problems)
                if not any(p.kind == "unsafe_row" for p in problems):
                    safe.append(row)
            yield safe

    def row(self, row: Row, fact: FileFacts | None, nearest: int) -> None:
        """Every check of one row, its bucket's folder listed when its first row comes."""
        if self.bucket is None or self.bucket.bucket_id != row.bucket_id:
            self.close_bucket()
            self.bucket = _Bucket(self.lib, row.bucket_id)
            self.visited.add(row.bucket_id)
        self.bucket.rows.add(row.tile_id)
        if self.add(check_file(self.lib, row, fact, self.bucket.stems), fact):
            return  # no file to check further, none to count against the cap
        file_hash = row.phash
        if fact is not None:
            file_hash = fact.phash
            self.report.thumbnails_checked += fact.thumb_ok is not None
            self.add(check_thumbnail(row.tile_id, row.bucket_id, fact), fact)
            self.add(check_colour(row, fact), fact)
            self.add(check_hash(row, fact), fact)
        self.bucket.ids.add(row.tile_id)
        self.add(check_bucket(row, nearest), fact)
        self.add(check_duplicate(row, file_hash, nearest, self.bucket.hashes, self.stray, self._stored_holder))

    def _stored_holder(self, bucket_id: int, tile_hash: str, tile_id: str) -> str | None:
        """Another row of ``bucket_id`` with ``tile_hash`` (one query)."""
        clash = self.lib.conn.execute("SELECT id FROM tiles WHERE bucket_id = ? AND phash = ? AND id != ?",
                                      (bucket_id, tile_hash, tile_id)).fetchone()
        return clash[0] if clash else None

    def close_bucket(self) -> None:
        """The bucket's last row has gone by: its folder's other entries, and its cap."""
        bucket = self.bucket
        if bucket is None:
            return
        self.report.files += len(bucket.names)
        folder = self.lib.root / bucket_name(bucket.bucket_id)
        self.unknown += [(bucket.bucket_id, folder / name) for name in bucket.names if tile_stem(name) not in bucket.rows]
        self.add(check_cap(bucket.bucket_id, len(bucket.ids), self.lib.cap))

    def unvisited_folders(self, folders: list[tuple[int, Path]]) -> None:
        """The entries of bucket folders no row named (listed here: counted, and all unknown)."""
        for bucket_id, entry in folders:
            if entry.is_symlink() or bucket_id in self.visited:
                continue
            names = os.listdir(entry)
            self.report.files += len(names)
            self.unknown += [(bucket_id, entry / name) for name in names]

    def sample_thumbnails(self, files: TileFiles, size: int = QUICK_THUMBNAIL_SAMPLE) -> None:
        """A quick verify's look at the thumbnail cache: ``size`` random tiles it holds, decoded and compared."""
        thumbs = _Thumbs(self.lib)
        if thumbs.pixels is None:
            return
        sample = [r for r in self.lib.conn.execute("SELECT id, bucket_id, phash FROM tiles ORDER BY random() LIMIT ?",
                                                   (size * 4,))
                  if is_tile_id(r[0]) and is_bucket_id(r[1])]
        cache_rows = thumbs.rows([r[0] for r in sample], [r[2] for r in sample])
        jobs = [(b, t, int(c)) for (t, b, _h), c in zip(sample, cache_rows) if c >= 0][:size]
        for (bucket_id, tile_id, _c), fact in zip(jobs, inspect_tiles(files, jobs, thumbs.pixels)):
            self.report.thumbnails_checked += fact.thumb_ok is not None
            self.add(check_thumbnail(tile_id, bucket_id, fact), fact)


def verify_library(lib: Library, deep: bool = True, repair: bool = False, workers: int | None = None,
                   progress: bool | None = None) -> VerifyReport:
    """Check (and with ``repair``, fix) the library; see the module docstring for the kinds.

    Streams: rows come by bucket, ``CHUNK`` at a time; each bucket's folder is listed once, when
    its first row comes, and compared with its rows when its last row has gone by, so memory
    holds one bucket and a chunk, whatever the library's size (the deep decodes of the next
    chunk run on the pool while this one is checked).  A tile stored in the wrong bucket is
    checked for a duplicate against the stored hashes of the bucket it belongs in.
    """
    if repair:
        lib.require_writer("verify --repair")
    report = VerifyReport()
    show = sys.stderr.isatty() if progress is None else progress
    index = lib.index  # the library's own KD-tree, built once per open
    scan = _Scan(lib, report)
    files = TileFiles(lib.root)  # fresh: bucket folders are checked again on every run
    total = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    inspector = _Inspector(lib, files, deep, workers, total)
    try:
        with tqdm(total=total, unit="tile", desc="verify", disable=not show) as bar:
            for rows, facts in inspector.ahead(scan.safe_rows(_row_chunks(lib))):
                for row, fact, nearest in zip(rows, facts, _nearest(index, rows, facts)):
                    scan.row(row, fact, nearest)
                bar.update(len(rows))
            scan.close_bucket()
    finally:
        inspector.close()

    if not deep:
        scan.sample_thumbnails(files)
    scan.add(check_synthetic(lib.conn))
    folders = _bucket_folders(lib)
    scan.add(check_folder_links(folders))
    scan.unvisited_folders(folders)
    scan.add(check_orphans(lib, scan.unknown))
    scan.add(check_temp(lib))
    bad_thumbs = {p.tile_id: p.bucket_id for p in report.problems if p.kind == "bad_thumbnail"}
    if bad_thumbs and not repair:
        _mark_bad_thumbnails(lib, bad_thumbs)
    if repair and report.problems:
        repair_library(lib, report, index, scan.facts, workers=workers)
    report.quarantine = quarantine.list_items(lib.root)
    return report


def _mark_bad_thumbnails(lib: Library, bad: dict[str, int]) -> None:
    """Mark the cache rows of ``bad`` tiles so that no mosaic uses them (a read-only run repairs nothing)."""
    thumbs = _Thumbs(lib)
    ids = list(bad)
    rows = thumbs.rows(ids, [lib.conn.execute("SELECT phash FROM tiles WHERE id = ?", (i,)).fetchone()[0] for i in ids])
    try:
        thumbs.cache.mark_bad(rows[rows >= 0].tolist())
    except OSError as exc:
        logger.warning("could not mark %d wrong thumbnails in %s (%s)", len(ids), thumbs.cache.folder, exc)
