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
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core import db, quarantine, store
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


def _journal_ids(lib: Library) -> set[str]:
    """Tiles of a batch being stored (or moved by a repair) right now by a running writer (not orphans)."""
    moves, _quarantined = store.read_repairs(lib.temp_dir)
    return {tile_id for tile_id, _bucket in store.read_journal(lib.temp_dir) or ()} | {r.tile_id for r in moves}


CHUNK = 2048  # rows read, decoded and checked at a time: memory stays flat in the library's size


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


def _row_chunks(lib: Library) -> Iterator[list[tuple]]:
    """Every row, by bucket then age, ``CHUNK`` at a time (one read snapshot: one statement)."""
    cursor = lib.conn.execute(f"SELECT rowid, {', '.join(db.SEED_COLUMNS)} FROM tiles ORDER BY bucket_id, rowid")
    while chunk := cursor.fetchmany(CHUNK):
        yield chunk


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
    problem_facts: dict[str, FileFacts] = {}  # what repair needs: facts of tiles with a problem
    bad_thumbs: dict[str, int] = {}  # id -> bucket of tiles whose cached thumbnail is wrong
    visited: set[int] = set()
    stray: dict[tuple[int, str], str] = {}  # (bucket it belongs in, hash) -> id, for wrong-bucket tiles
    current: _Bucket | None = None
    unknown: list[tuple[int, Path]] = []  # files with no row: orphans unless a writer just stored them
    thumbs = _Thumbs(lib) if deep else None

    def close_bucket(bucket: _Bucket | None) -> None:
        if bucket is None:
            return
        report.files += len(bucket.names)
        for name in bucket.names:
            if tile_stem(name) not in bucket.rows:
                unknown.append((bucket.bucket_id, lib.root / bucket_name(bucket.bucket_id) / name))
        if len(bucket.ids) > lib.cap:
            report.problems.append(Problem("over_cap", None, bucket.bucket_id, f"{len(bucket.ids)} tiles > cap {lib.cap}"))

    files = TileFiles(lib.root)  # fresh: bucket folders are checked again on every run
    n_workers = workers or os.cpu_count() or 1
    total = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    pool = None
    if deep and n_workers > 1 and total >= 64:
        pool = inspect_pool(files, n_workers, thumbs.file if thumbs else None)

    def submit(safe: list[tuple]):
        if not deep or thumbs is None:
            return None
        cache_rows = thumbs.rows([r[1] for r in safe], [r[4] for r in safe]).tolist()
        jobs = [(r[2], r[1], c) for r, c in zip(safe, cache_rows)]
        if pool is None:
            return [f for i in range(0, len(jobs), INSPECT_CHUNK)
                    for f in inspect_tiles(files, jobs[i:i + INSPECT_CHUNK], thumbs.pixels)]
        size = max(1, min(INSPECT_CHUNK, len(jobs) // (2 * n_workers) or 1))
        return [(pool.submit(inspect_chunk, jobs[i:i + size]), cache_rows[i:i + size]) for i in range(0, len(jobs), size)]

    def collect(pending) -> list[FileFacts | None] | None:
        if pending is None or not pool:
            return pending
        return [fact for future, _rows in pending for fact in future.result()]

    def safe_rows(chunk: list[tuple]) -> list[tuple]:
        out = []
        for row in chunk:
            _rowid, tile_id, bucket_id, filepath, *_ = row
            try:
                expected = lib.filepath_for(bucket_id, tile_id)
            except UnsafePath as exc:
                report.problems.append(Problem("unsafe_row", str(tile_id)[:80], None, str(exc)))
                continue
            if filepath != expected:
                report.problems.append(Problem("filepath_mismatch", tile_id, bucket_id, f"{filepath!r} != {expected!r}"))
            out.append(row)
        return out

    try:
        with tqdm(total=total, unit="tile", desc="verify", disable=not show) as bar:
            chunks = _row_chunks(lib)
            ahead = None  # (rows, pending facts) of the next chunk, decoding on the pool
            chunk = next(chunks, None)
            if chunk is not None:
                report.rows += len(chunk)
                rows = safe_rows(chunk)
                ahead = (rows, submit(rows))
            while ahead is not None:
                safe, pending = ahead
                chunk = next(chunks, None)
                if chunk is not None:  # start the next chunk's decodes before checking this one
                    report.rows += len(chunk)
                    rows = safe_rows(chunk)
                    ahead = (rows, submit(rows))
                else:
                    ahead = None
                facts = collect(pending) or [None] * len(safe)
                labs = np.array([f.lab if f is not None and f.lab is not None else _floats(r[5:8])
                                 for r, f in zip(safe, facts)], dtype=np.float64).reshape(-1, 3)
                nearest_all = np.full(len(safe), -1, dtype=np.int64)
                finite = np.isfinite(labs).all(axis=1)
                if finite.any():  # one KD-tree query for the chunk
                    nearest_all[finite] = index.assign_lab(labs[finite])[0].reshape(-1)
                for row, fact, nearest in zip(safe, facts, nearest_all.tolist()):
                    _rowid, tile_id, bucket_id, _fp, stored_hash, l_, a_, b_ = row
                    if current is None or current.bucket_id != bucket_id:
                        close_bucket(current)
                        current = _Bucket(lib, bucket_id)
                        visited.add(bucket_id)
                    current.rows.add(tile_id)
                    path = lib.tile_path(bucket_id, tile_id)
                    if fact is None:
                        if tile_id not in current.stems and not path.is_file():
                            report.problems.append(Problem("missing_file", tile_id, bucket_id, str(path)))
                            continue
                        file_hash = stored_hash
                    elif fact.error == MISSING:
                        report.problems.append(Problem("missing_file", tile_id, bucket_id, str(path)))
                        continue
                    elif fact.error:
                        report.problems.append(Problem("bad_image", tile_id, bucket_id, fact.error))
                        problem_facts[tile_id] = fact
                        continue
                    else:
                        lab, file_hash = fact.lab, fact.phash
                        report.thumbnails_checked += fact.thumb_ok is not None
                        if fact.thumb_ok is False:
                            report.problems.append(Problem("bad_thumbnail", tile_id, bucket_id,
                                                           "the mosaic cache's thumbnail differs from the tile"))
                            problem_facts[tile_id] = fact
                            bad_thumbs[tile_id] = bucket_id
                        stored = np.array([l_, a_, b_], dtype=np.float64)
                        if not np.all(np.isfinite(stored)) or np.abs(stored - np.array(lab)).max() > LAB_TOLERANCE:
                            report.problems.append(Problem("lab_mismatch", tile_id, bucket_id,
                                                           f"stored {(l_, a_, b_)} file {lab}"))
                            problem_facts[tile_id] = fact
                        if stored_hash != file_hash:
                            report.problems.append(Problem("bad_phash", tile_id, bucket_id,
                                                           f"stored {stored_hash!r} file {file_hash!r}"))
                            problem_facts[tile_id] = fact
                    current.ids.add(tile_id)
                    if nearest != bucket_id:
                        report.problems.append(Problem("wrong_bucket", tile_id, bucket_id, f"nearest centroid is {nearest}"))
                        if fact is not None:
                            problem_facts[tile_id] = fact
                        home = nearest if nearest >= 0 else bucket_id
                        first = stray.get((home, file_hash))
                        if first is None and home != bucket_id:
                            clash = lib.conn.execute("SELECT id FROM tiles WHERE bucket_id = ? AND phash = ? AND id != ?",
                                                     (home, file_hash, tile_id)).fetchone()
                            first = clash[0] if clash else None
                        if first is not None:
                            report.problems.append(Problem("duplicate_phash", tile_id, bucket_id, f"same phash as {first}"))
                        else:
                            stray[(home, file_hash)] = tile_id
                        continue
                    first = current.hashes.get(file_hash) or stray.get((bucket_id, file_hash))
                    if first is not None:
                        report.problems.append(Problem("duplicate_phash", tile_id, bucket_id, f"same phash as {first}"))
                    else:
                        current.hashes[file_hash] = tile_id
                bar.update(len(safe))
            close_bucket(current)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    if not deep:
        _sample_thumbnails(lib, files, report, problem_facts, bad_thumbs)
    report.problems.extend(_synthetic_problems(lib))
    _check_folders(lib, report, visited, unknown)
    if bad_thumbs and not repair:
        _mark_bad_thumbnails(lib, bad_thumbs)
    if repair and report.problems:
        repair_library(lib, report, index, problem_facts, workers=workers)
    report.quarantine = quarantine.list_items(lib.root)
    return report


def _floats(values) -> tuple[float, ...]:
    """Stored LAB as floats; NaN for what is not a number (a damaged row: no nearest bucket)."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return tuple(out)


def _sample_thumbnails(lib: Library, files: TileFiles, report: VerifyReport, problem_facts: dict[str, FileFacts],
                       bad_thumbs: dict[str, int], size: int = QUICK_THUMBNAIL_SAMPLE) -> None:
    """A quick verify's look at the thumbnail cache: ``size`` random tiles it holds, decoded and compared."""
    thumbs = _Thumbs(lib)
    if thumbs.pixels is None:
        return
    sample = [r for r in lib.conn.execute("SELECT id, bucket_id, phash FROM tiles ORDER BY random() LIMIT ?", (size * 4,))
              if is_tile_id(r[0]) and is_bucket_id(r[1])]
    cache_rows = thumbs.rows([r[0] for r in sample], [r[2] for r in sample])
    jobs = [(b, t, int(c)) for (t, b, _h), c in zip(sample, cache_rows) if c >= 0][:size]
    facts = inspect_tiles(files, jobs, thumbs.pixels)
    for (bucket_id, tile_id, _c), fact in zip(jobs, facts):
        report.thumbnails_checked += fact.thumb_ok is not None
        if fact.thumb_ok is False:
            report.problems.append(Problem("bad_thumbnail", tile_id, bucket_id,
                                           "the mosaic cache's thumbnail differs from the tile"))
            problem_facts[tile_id] = fact
            bad_thumbs[tile_id] = bucket_id


def _mark_bad_thumbnails(lib: Library, bad: dict[str, int]) -> None:
    """Mark the cache rows of ``bad`` tiles so that no mosaic uses them (a read-only run repairs nothing)."""
    thumbs = _Thumbs(lib)
    ids = list(bad)
    rows = thumbs.rows(ids, [lib.conn.execute("SELECT phash FROM tiles WHERE id = ?", (i,)).fetchone()[0] for i in ids])
    try:
        thumbs.cache.mark_bad(rows[rows >= 0].tolist())
    except OSError as exc:
        logger.warning("could not mark %d wrong thumbnails in %s (%s)", len(ids), thumbs.cache.folder, exc)


def _check_folders(lib: Library, report: VerifyReport, visited: set[int], unknown: list[tuple[int, Path]]) -> None:
    """Orphans (entries with no row: ``unknown`` from the folders of buckets with rows, plus every
    entry of a bucket folder no row names) and unsafe folders (symlinks), then ``temp/``."""
    # A journal is a batch being stored only while a writer runs; without one it is what a
    # killed writer left, and its renamed-but-uncommitted files are orphans until the next open.
    for entry in sorted(lib.root.iterdir()):
        bucket_id = parse_bucket_dir(entry.name)
        if bucket_id is None or not entry.is_dir():
            continue
        if entry.is_symlink():  # never listed, never repaired through: it leads out of the library
            report.problems.append(Problem("unsafe_path", None, bucket_id, f"{entry.name} is a symlink"))
            continue
        if bucket_id in visited:
            continue  # listed with its rows
        names = os.listdir(entry)
        report.files += len(names)
        unknown.extend((bucket_id, entry / name) for name in names)
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
        report.problems.append(Problem("orphan_file", None, bucket_id, f.relative_to(lib.root).as_posix() + folder))
    if lib.temp_dir.is_symlink():
        report.problems.append(Problem("unsafe_path", None, None, "temp is a symlink"))
    elif lib.temp_dir.is_dir() and not (lib.readonly and Library.writer_active(lib.root)):
        for f in lib.temp_dir.iterdir():
            report.problems.append(Problem("orphan_file", None, None, str(f.relative_to(lib.root))))


def _synthetic_problems(lib: Library) -> list[Problem]:
    """The synthetic flag and its source: 0 or 1; a real tile has no source; a synthetic one's is a real tile here."""
    if "synthetic" not in db.table_columns(lib.conn, "tiles"):
        return []
    problems = []
    for tile_id, bucket_id, flag, source in lib.conn.execute(
            "SELECT id, bucket_id, synthetic, derived_from FROM tiles WHERE synthetic IS NOT 0 OR derived_from IS NOT NULL "
            "ORDER BY rowid"):
        if flag not in (0, 1) or (flag == 0 and source is not None):
            problems.append(Problem("bad_synthetic", tile_id, bucket_id, f"synthetic {flag!r}, derived_from {source!r}"))
    for tile_id, bucket_id, source in lib.conn.execute(
            "SELECT t.id, t.bucket_id, t.derived_from FROM tiles t LEFT JOIN tiles s ON s.id = t.derived_from "
            "AND s.synthetic = 0 WHERE t.synthetic = 1 AND t.derived_from IS NOT NULL AND s.id IS NULL ORDER BY t.rowid"):
        problems.append(Problem("unknown_source", tile_id, bucket_id, f"derived_from {str(source)[:80]!r} is no real tile here"))
    return problems
