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
* ``orphan_file``        file in a bucket folder (or ``temp/``) with no row
* ``bad_synthetic``      ``synthetic`` not 0/1, or a real tile (0) claiming a ``derived_from``
* ``unknown_source``     synthetic tile whose ``derived_from`` names no real tile of the library
                         (repair drops it: ``synthesize`` makes another)

Synthetic tiles get every other check like any tile: stored bucket, LAB and pHash must equal
the card's recipe on their file.
* ``unsafe_path``        a bucket folder or ``temp/`` that is a symlink (reported, never followed
                         or repaired through: a person must look)

The deep checks (decode every file) run on a process pool; ``deep=False`` checks rows only.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from . import db, store
from .assign import mean_rgb_64, pool_context
from .color import CentroidIndex, rgb_to_lab
from .decode import decode_tile
from .errors import BadTile, ImageRejected, UnsafePath
from .layout import TILE_SIZE, bucket_name, parse_bucket_dir, tile_stem
from .library import Library
from .phash import phash
from .summary import format_counts, plural
from .tilefiles import MISSING, TileFiles

logger = logging.getLogger(__name__)

LAB_TOLERANCE = 1e-6


class Problem(NamedTuple):
    kind: str
    tile_id: str | None
    bucket_id: int | None
    detail: str = ""


@dataclass
class VerifyReport:
    rows: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: Counter = field(default_factory=Counter)

    @property
    def counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        found = format_counts(self.counts) or "no problems"
        line = f"checked {plural(self.rows, 'row')} and {plural(self.files, 'file')}: {found}"
        if self.repaired:
            line += "; repaired: " + format_counts(self.repaired)
        return line

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "files": self.files,
            "problems": dict(self.counts),
            "repaired": dict(self.repaired),
            "details": [p._asdict() for p in self.problems[:1000]],
        }


class FileFacts(NamedTuple):
    """What a tile file really holds."""

    error: str | None
    lab: tuple[float, float, float] | None = None
    phash: str | None = None


def inspect_tile(files: TileFiles, bucket_id: int, tile_id: str) -> FileFacts:
    """Read a stored tile (safely: :meth:`TileFiles.read`), decode it, recompute its colour and hash.

    ``error`` is :data:`~builder.tilefiles.MISSING` for a file that is not there, else the
    problem :class:`~builder.errors.BadTile` or the decoder gave.
    """
    try:
        data = files.read(bucket_id, tile_id)
    except BadTile as exc:
        return FileFacts(exc.problem)
    try:
        tile = decode_tile(data)
    except ImageRejected as exc:
        return FileFacts(str(exc))
    if not tile.png_passthrough:  # decode_tile's verdict: a PNG, RGB, 256x256, no transparency
        return FileFacts(f"not a {TILE_SIZE}x{TILE_SIZE} RGB PNG")
    lab = rgb_to_lab(mean_rgb_64(tile.image))
    return FileFacts(None, (float(lab[0]), float(lab[1]), float(lab[2])), phash(tile.image))


_FILES: TileFiles | None = None  # a pool worker's reader: each bucket folder checked once per run


def _init_inspect_worker(files: TileFiles) -> None:
    global _FILES
    _FILES = files


def _inspect(job: tuple[int, str]) -> FileFacts:
    assert _FILES is not None
    return inspect_tile(_FILES, *job)


def _journal_ids(lib: Library) -> set[str]:
    """Tiles of a batch being stored right now by a running writer (not orphans)."""
    return {tile_id for tile_id, _bucket in store.read_journal(lib.temp_dir) or ()}


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
        lib._require_writer()
    report = VerifyReport()
    show = sys.stderr.isatty() if progress is None else progress
    index = lib.index  # the library's own KD-tree, built once per open
    problem_facts: dict[str, FileFacts] = {}  # what repair needs: facts of tiles with a problem
    visited: set[int] = set()
    stray: dict[tuple[int, str], str] = {}  # (bucket it belongs in, hash) -> id, for wrong-bucket tiles
    current: _Bucket | None = None
    unknown: list[tuple[int, Path]] = []  # files with no row: orphans unless a writer just stored them

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
        pool = ProcessPoolExecutor(n_workers, mp_context=pool_context(), initializer=_init_inspect_worker,
                                   initargs=(files,))

    def submit(safe: list[tuple]):
        jobs = [(r[2], r[1]) for r in safe]
        if not deep:
            return None
        if pool is None:
            return [inspect_tile(files, b, t) for b, t in jobs]
        size = max(1, min(64, len(jobs) // (2 * n_workers) or 1))
        return [pool.submit(_inspect_many, jobs[i:i + size]) for i in range(0, len(jobs), size)]

    def collect(pending) -> list[FileFacts | None] | None:
        if pending is None or not pool:
            return pending
        return [fact for future in pending for fact in future.result()]

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

    report.problems.extend(_synthetic_problems(lib))
    _check_folders(lib, report, visited, unknown)
    if repair and report.problems:
        _repair(lib, report, index, problem_facts)
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


def _inspect_many(jobs: list[tuple[int, str]]) -> list[FileFacts]:
    assert _FILES is not None
    return [inspect_tile(_FILES, *job) for job in jobs]


def _check_folders(lib: Library, report: VerifyReport, visited: set[int], unknown: list[tuple[int, Path]]) -> None:
    """Orphans (files with no row: ``unknown`` from the folders of buckets with rows, plus every
    file of a bucket folder no row names) and unsafe folders (symlinks), then ``temp/``."""
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
            if tile_stem(f.name) not in in_flight and f.exists() and not lib.conn.execute(
                "SELECT 1 FROM tiles WHERE id = ? AND bucket_id = ?", (tile_stem(f.name), b)).fetchone()
        ]
    for bucket_id, f in unknown:
        report.problems.append(Problem("orphan_file", None, bucket_id, str(f.relative_to(lib.root))))
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


def _delete_tile(lib: Library, tile_id: str, bucket_id: int | None) -> None:
    """Row first, then file: a crash in between leaves an orphan, which verify repairs."""
    with lib.conn:
        lib.conn.execute("DELETE FROM tiles WHERE id = ?", (tile_id,))
    try:
        path = lib.tile_path(bucket_id, tile_id)  # type: ignore[arg-type]  # None: no bucket known
    except UnsafePath:
        return  # no file can be named from this row
    path.unlink(missing_ok=True)


def _repair(lib: Library, report: VerifyReport, index: CentroidIndex, facts: dict) -> None:
    conn = lib.conn
    done = report.repaired
    by_kind: dict[str, list[Problem]] = {}
    for p in report.problems:
        by_kind.setdefault(p.kind, []).append(p)
    dropped: set[str] = set()

    for p in by_kind.get("unsafe_row", []):
        # Never build a path from this row: delete the row by its exact id, touch no file.
        with conn:
            conn.execute("DELETE FROM tiles WHERE id = ? OR id IS NULL", (p.tile_id,))
        done["unsafe_row"] += 1
    for kind in ("missing_file", "bad_image"):
        for p in by_kind.get(kind, []):
            _delete_tile(lib, p.tile_id, p.bucket_id)
            dropped.add(p.tile_id)
            done[kind] += 1
    for p in by_kind.get("unknown_source", []):
        if p.tile_id not in dropped:
            _delete_tile(lib, p.tile_id, p.bucket_id)
            dropped.add(p.tile_id)
            done["unknown_source"] += 1
    for p in by_kind.get("bad_synthetic", []):
        if p.tile_id not in dropped:  # a row that says it is real is real; anything else is synthetic
            with conn:
                conn.execute("UPDATE tiles SET derived_from = NULL WHERE id = ? AND synthetic = 0", (p.tile_id,))
                conn.execute("UPDATE tiles SET synthetic = 1 WHERE id = ? AND synthetic IS NOT 0", (p.tile_id,))
            done["bad_synthetic"] += 1
    for p in by_kind.get("filepath_mismatch", []):
        if p.tile_id not in dropped:
            with conn:
                conn.execute("UPDATE tiles SET filepath = ? WHERE id = ?", (lib.filepath_for(p.bucket_id, p.tile_id), p.tile_id))
            done["filepath_mismatch"] += 1
    for kind in ("lab_mismatch", "bad_phash"):
        for p in by_kind.get(kind, []):
            fact = facts.get(p.tile_id)
            if p.tile_id in dropped or fact is None or fact.error:
                continue
            with conn:
                conn.execute(
                    "UPDATE tiles SET mean_l = ?, mean_a = ?, mean_b = ?, phash = ? WHERE id = ?",
                    (*fact.lab, fact.phash, p.tile_id),
                )
            done[kind] += 1
    counts = lib.bucket_counts()
    for p in by_kind.get("wrong_bucket", []):
        if p.tile_id in dropped:
            continue
        fact = facts.get(p.tile_id)
        if fact is not None and fact.lab is not None:
            lab = fact.lab
        else:
            lab = conn.execute("SELECT mean_l, mean_a, mean_b FROM tiles WHERE id = ?", (p.tile_id,)).fetchone()
        row_hash = conn.execute("SELECT phash FROM tiles WHERE id = ?", (p.tile_id,)).fetchone()[0]
        target = int(index.assign_lab(lab)[0][0])
        clash = conn.execute("SELECT 1 FROM tiles WHERE bucket_id = ? AND phash = ?", (target, row_hash)).fetchone()
        if counts[target] >= lib.cap or clash:
            _delete_tile(lib, p.tile_id, p.bucket_id)
            dropped.add(p.tile_id)
            done["wrong_bucket_dropped"] += 1
            continue
        src, dst = lib.tile_path(p.bucket_id, p.tile_id), lib.tile_path(target, p.tile_id)
        dst.parent.mkdir(exist_ok=True)
        os.replace(src, dst)
        with conn:
            conn.execute(
                "UPDATE tiles SET bucket_id = ?, filepath = ? WHERE id = ?",
                (target, lib.filepath_for(target, p.tile_id), p.tile_id),
            )
        counts[p.bucket_id] -= 1
        counts[target] += 1
        done["wrong_bucket"] += 1
    # Duplicates and over-cap buckets: keep real tiles before synthetic ones, then the oldest rows;
    # drop the rest (the writer migrated the schema: the synthetic column is there).
    dup_rows = conn.execute(
        "SELECT t.id, t.bucket_id FROM tiles t JOIN tiles o ON o.bucket_id = t.bucket_id AND o.phash = t.phash "
        "AND (o.synthetic < t.synthetic OR (o.synthetic = t.synthetic AND o.rowid < t.rowid)) GROUP BY t.id"
    ).fetchall()
    for tile_id, bucket_id in dup_rows:
        _delete_tile(lib, tile_id, bucket_id)
        done["duplicate_phash"] += 1
    over_cap = {b: n for b, n in db.bucket_counts(conn).items() if n > lib.cap}
    for bucket_id, n in over_cap.items():
        extra = conn.execute(
            "SELECT id FROM tiles WHERE bucket_id = ? ORDER BY synthetic DESC, rowid DESC LIMIT ?", (bucket_id, n - lib.cap)
        ).fetchall()
        for (tile_id,) in extra:
            _delete_tile(lib, tile_id, bucket_id)
            done["over_cap"] += 1
    known = {(b, i) for i, b in conn.execute("SELECT id, bucket_id FROM tiles")}
    for entry in lib.root.iterdir():
        bucket_id = parse_bucket_dir(entry.name)
        if bucket_id is None or not entry.is_dir() or entry.is_symlink():
            continue
        for f in entry.iterdir():
            stem = tile_stem(f.name)
            if (bucket_id, stem) not in known:
                f.unlink()
                done["orphan_file"] += 1
    for f in lib.temp_dir.iterdir():
        f.unlink()
        done["orphan_file"] += 1
