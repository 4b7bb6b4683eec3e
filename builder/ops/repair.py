"""``verify --repair``: fix what :func:`builder.ops.verify.verify_library` found, as a writer like any other.

Every change goes through the store's journal (:func:`builder.core.store.apply_repairs`), in batches
of :data:`REPAIR_BATCH`: a SIGKILL at any instant loses nothing, and the next writer's open
(replay) or the next repair finishes the job.  No tile file is ever deleted:

* a file without a row that is a valid tile (a 256x256 RGB PNG that decodes, named
  ``<uuid4>.png``) is **adopted**: analysed with the card's recipe (LAB of the 64x64 mean, pHash,
  nearest centroid), given its row back with the same id (``source = 'adopted'``: provenance
  unknown) and moved to the bucket its colour names.  A file whose row lives in another bucket
  and lost its own file there is that row's file: it is re-filed the same way;
* what cannot be adopted (not an image, wrong size, a name that is not a uuid4, a second copy of
  a stored tile, a duplicate in its bucket, a full bucket, a folder, a symlink) and the files of
  rows repair drops (duplicates, tiles over the cap, a wrong-bucket tile whose bucket is full, a
  synthetic tile without its source, a file that is not a tile) move into ``quarantine/`` with
  their reason (:mod:`builder.core.quarantine`);
* row-only fixes (``filepath``, LAB, pHash, the synthetic flag, rows of files that are gone,
  rows no path can be derived from) are single transactions;
* wrong thumbnails in the mosaic cache are written again (the newer row of a key wins).

Which tile stays when two compete: rows already in the library before adopted files, real
tiles before synthetic ones, then the oldest row.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..core import db, quarantine, store
from ..core.color import CentroidIndex
from ..core.errors import UnsafePath
from ..core.layout import bucket_name, is_bucket_id, is_tile_id, tile_stem
from ..core.library import Library
from ..core.thumbcache import ThumbnailCache
from ..core.tilefiles import TileFiles
from .inspection import FileFacts, inspect_all
from .problems import Problem, VerifyReport

logger = logging.getLogger(__name__)

REPAIR_BATCH = 64  # moves and quarantine entries per journal and transaction


class _Plan:
    """Repairs not yet applied (one batch for :func:`builder.core.store.apply_repairs`), and the library
    as it will be once they are: rows per bucket, hashes arriving in buckets, rows leaving theirs."""

    def __init__(self, lib: Library, report: VerifyReport) -> None:
        self.lib = lib
        self.report = report
        self.relocations: list[store.Relocation] = []
        self.quarantined: list[store.Quarantined] = []
        self.sql: list[tuple[str, tuple]] = []
        self.records: list[dict] = []
        self.taken: set[str] = set()  # quarantine names given out in this batch
        self.counts = lib.bucket_counts()
        self.arriving: set[tuple[int, str]] = set()
        self.leaving: set[str] = set()  # ids whose row leaves its bucket in a batch not yet applied
        self.dropped: set[str] = set()  # ids whose row this repair deletes

    # ------------------------------------------------------------------ what the library will hold
    def room(self, bucket_id: int) -> bool:
        return bool(self.counts[bucket_id] < self.lib.cap)

    def clash(self, bucket_id: int, tile_hash: str | None, tile_id: str) -> str | None:
        """A tile that stays in ``bucket_id`` with ``tile_hash`` (a duplicate of ``tile_id`` there), or None."""
        if (bucket_id, tile_hash) in self.arriving:
            return "a tile re-filed there by this repair"
        for (other,) in self.lib.conn.execute("SELECT id FROM tiles WHERE bucket_id = ? AND phash = ? AND id != ?",
                                              (bucket_id, tile_hash, tile_id)):
            if other not in self.leaving and other not in self.dropped:
                return other
        return None

    # ------------------------------------------------------------------ planning
    def execute(self, sql: str, params: tuple) -> None:
        self.sql.append((sql, params))

    def relocate(self, tile_id: str, src: int, dst: int, tile_hash: str, sql: Sequence[tuple[str, tuple]],
                 row_bucket: int | None = None) -> None:
        """Move ``tile_id``'s file from folder ``src`` to ``dst`` with ``sql`` (its row's change);
        ``row_bucket``: the bucket its row is counted in now (None: no row yet)."""
        self.relocations.append(store.Relocation(tile_id, src, dst))
        self.sql.extend(sql)
        if row_bucket is not None:
            self.counts[row_bucket] -= 1
        self.counts[dst] += 1
        self.arriving.add((dst, tile_hash))
        self.leaving.add(tile_id)
        self._maybe_flush()

    def quarantine(self, origin: str, reason: str, detail: str, tile_id: str | None = None,
                   bucket_id: int | None = None) -> None:
        """Move bucket folder entry ``origin`` (``bucket_XXXX/<name>``) into quarantine; with
        ``tile_id``, the row ``(tile_id, bucket_id)`` is deleted in the same batch."""
        dst = quarantine.destination(self.lib.root, reason, origin, self.taken)
        record = {"path": dst, "origin": origin, "reason": reason, "detail": detail, "at": db.utc_now()}
        if tile_id is not None:
            row = self.lib.conn.execute(f"SELECT {', '.join(db.TILE_COLUMNS)} FROM tiles WHERE id = ? AND bucket_id = ?",
                                        (tile_id, bucket_id)).fetchone()
            record["row"] = dict(zip(db.TILE_COLUMNS, row)) if row else None
            self.sql.append(("DELETE FROM tiles WHERE id = ? AND bucket_id = ?", (tile_id, bucket_id)))
            self.counts[bucket_id] -= 1
            self.dropped.add(tile_id)
        self.quarantined.append(store.Quarantined(origin, dst, tile_id, bucket_id))
        self.records.append(record)
        self.report.quarantined[reason] += 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self.relocations) + len(self.quarantined) >= REPAIR_BATCH:
            self.flush()

    def flush(self) -> None:
        """Apply the batch (records first: a record without its entry is harmless)."""
        if not (self.relocations or self.quarantined or self.sql):
            return
        quarantine.append_records(self.lib.root, self.records)
        sql = list(self.sql)

        def change(conn) -> None:
            for statement, params in sql:
                conn.execute(statement, params)

        store.apply_repairs(self.lib, self.relocations, self.quarantined, change)
        self.relocations, self.quarantined, self.sql, self.records = [], [], [], []
        self.taken.clear()
        self.arriving.clear()
        self.leaving.clear()


def _origin(bucket_id: int, name: str) -> str:
    return f"{bucket_name(bucket_id)}/{name}"


def _row_sql(lib: Library, tile_id: str, bucket_id: int, fact: FileFacts) -> tuple[str, tuple]:
    """The UPDATE that files a row in ``bucket_id`` with the colour and hash of its file."""
    return ("UPDATE tiles SET bucket_id = ?, filepath = ?, mean_l = ?, mean_a = ?, mean_b = ?, phash = ? WHERE id = ?",
            (bucket_id, lib.filepath_for(bucket_id, tile_id), *fact.lab, fact.phash, tile_id))


def _adopted_row(lib: Library, tile_id: str, bucket_id: int, fact: FileFacts) -> tuple[str, tuple]:
    mean_l, mean_a, mean_b = fact.lab
    values = db.tile_row({"id": tile_id, "bucket_id": bucket_id, "filepath": lib.filepath_for(bucket_id, tile_id),
                          "phash": fact.phash, "mean_l": mean_l, "mean_a": mean_a, "mean_b": mean_b,
                          "source": db.ADOPTED_SOURCE})
    return db.INSERT_TILE_SQL, values


def _place(plan: _Plan, index: CentroidIndex, tile_id: str, src: int, fact: FileFacts,
           row_bucket: int | None) -> str | None:
    """Re-file a decodable tile into the bucket its colour names; the reason it cannot be (a full
    bucket, a duplicate there) or None when planned.  ``row_bucket``: where its row is (None: adopt)."""
    target = int(index.assign_lab(fact.lab)[0][0])
    if target != row_bucket and not plan.room(target):
        return "bucket_full"
    if plan.clash(target, fact.phash, tile_id):
        return "duplicate"
    lib = plan.lib
    if src != target and os.path.lexists(lib.tile_path(target, tile_id)):
        return "copy"  # another file holds that name already (quarantined as a copy on the next run)
    sql = [_adopted_row(lib, tile_id, target, fact)] if row_bucket is None else [_row_sql(lib, tile_id, target, fact)]
    plan.relocate(tile_id, src, target, fact.phash, sql, row_bucket)
    return None


def repair_library(lib: Library, report: VerifyReport, index: CentroidIndex, facts: dict[str, FileFacts],
                   workers: int | None = None) -> None:
    """Fix ``report``'s problems (see the module docstring); counts go into ``report.repaired``,
    ``report.adopted`` and ``report.quarantined``."""
    lib.require_writer("repair")
    quarantine.check_folder(lib.root)
    conn, done = lib.conn, report.repaired
    by_kind: dict[str, list[Problem]] = {}
    for p in report.problems:
        by_kind.setdefault(p.kind, []).append(p)

    scratch = [p for p in by_kind.get("orphan_file", []) if p.bucket_id is None]
    if scratch:  # temp/ is this writer's own scratch: replay empties it
        lib.recover()
        done["orphan_file"] += len(scratch)

    plan = _Plan(lib, report)
    # Rows alone: one transaction.
    for p in by_kind.get("unsafe_row", []):
        # Never build a path from this row: delete it by its exact id, touch no file.
        plan.execute("DELETE FROM tiles WHERE id = ? OR id IS NULL", (p.tile_id,))
        done["unsafe_row"] += 1
    for p in by_kind.get("bad_synthetic", []):  # a row that says it is real is real; anything else is synthetic
        plan.execute("UPDATE tiles SET derived_from = NULL WHERE id = ? AND synthetic = 0", (p.tile_id,))
        plan.execute("UPDATE tiles SET synthetic = 1 WHERE id = ? AND synthetic IS NOT 0", (p.tile_id,))
        done["bad_synthetic"] += 1
    for p in by_kind.get("filepath_mismatch", []):
        plan.execute("UPDATE tiles SET filepath = ? WHERE id = ?", (lib.filepath_for(p.bucket_id, p.tile_id), p.tile_id))
        done["filepath_mismatch"] += 1
    for kind in ("lab_mismatch", "bad_phash"):
        for p in by_kind.get(kind, []):
            fact = facts.get(p.tile_id)
            if fact is None or fact.error:
                continue
            plan.execute("UPDATE tiles SET mean_l = ?, mean_a = ?, mean_b = ?, phash = ? WHERE id = ?",
                         (*fact.lab, fact.phash, p.tile_id))
            done[kind] += 1
    plan.flush()

    adopt, found = _sort_orphans(plan, by_kind.get("orphan_file", []))
    plan.flush()  # copies and junk out first: nothing is re-filed over them
    files = TileFiles(lib.root)
    jobs = [(src, tile_id, -1) for src, tile_id, _row in found] + [(src, tile_id, -1) for src, tile_id in adopt]
    analysed = dict(zip([(src, tile_id) for src, tile_id, _c in jobs], inspect_all(files, jobs, workers)))

    # A row whose file turned up in another bucket folder: that is its file, re-filed by its colour.
    resolved: set[str] = set()
    for src, tile_id, row_bucket in found:
        fact = analysed[(src, tile_id)]
        origin = _origin(src, f"{tile_id}.png")
        if fact.error:
            plan.quarantine(origin, "bad_image", fact.error)
            done["orphan_file"] += 1
            continue
        reason = _place(plan, index, tile_id, src, fact, row_bucket)
        if reason is not None:
            plan.quarantine(origin, reason, f"file of tile {tile_id} (its row named {bucket_name(row_bucket)})")
        resolved.add(tile_id)
        done["orphan_file"] += 1

    for p in by_kind.get("missing_file", []):
        if p.tile_id in resolved:
            done["missing_file"] += 1
            continue
        plan.execute("DELETE FROM tiles WHERE id = ? AND bucket_id = ?", (p.tile_id, p.bucket_id))
        plan.counts[p.bucket_id] -= 1
        plan.dropped.add(p.tile_id)
        done["missing_file"] += 1
    for kind, reason in (("bad_image", "bad_image"), ("unknown_source", "unknown_source")):
        for p in by_kind.get(kind, []):
            if p.tile_id in plan.dropped:
                continue
            plan.quarantine(_origin(p.bucket_id, f"{p.tile_id}.png"), reason, p.detail, p.tile_id, p.bucket_id)
            done[kind] += 1
    plan.flush()

    for p in by_kind.get("wrong_bucket", []):
        if p.tile_id in plan.dropped:
            continue
        fact = facts.get(p.tile_id)
        if fact is None or fact.lab is None:  # a quick verify: the row's own colour and hash
            row = conn.execute("SELECT mean_l, mean_a, mean_b, phash FROM tiles WHERE id = ?", (p.tile_id,)).fetchone()
            fact = FileFacts(None, tuple(row[:3]), row[3])
        reason = _place(plan, index, p.tile_id, p.bucket_id, fact, p.bucket_id)
        if reason == "copy":
            logger.warning("tile %s not re-filed: another file holds its name in its bucket", p.tile_id)
            continue
        if reason is not None:
            plan.quarantine(_origin(p.bucket_id, f"{p.tile_id}.png"), reason,
                            f"belongs in {bucket_name(int(index.assign_lab(fact.lab)[0][0]))}", p.tile_id, p.bucket_id)
        done["wrong_bucket"] += 1

    # Files without a row: adopted with their id where their colour has room.
    for src, tile_id in adopt:
        fact = analysed[(src, tile_id)]
        origin = _origin(src, f"{tile_id}.png")
        done["orphan_file"] += 1
        if fact.error:
            plan.quarantine(origin, "bad_image", fact.error)
            continue
        reason = _place(plan, index, tile_id, src, fact, None)
        if reason is None:
            report.adopted += 1
        else:
            plan.quarantine(origin, reason, f"tile {tile_id} without a row")
    plan.flush()

    # Duplicates and over-cap buckets: keep rows already here before adopted ones, real tiles
    # before synthetic ones, then the oldest rows (the writer migrated the schema: the columns are there).
    def adopted(alias: str) -> str:
        return f"({alias}.source IS '{db.ADOPTED_SOURCE}')"

    dup_rows = conn.execute(
        "SELECT t.id, t.bucket_id, MIN(o.id) FROM tiles t JOIN tiles o ON o.bucket_id = t.bucket_id AND o.phash = t.phash "
        f"AND ({adopted('o')} < {adopted('t')} OR ({adopted('o')} = {adopted('t')} AND (o.synthetic < t.synthetic "
        "OR (o.synthetic = t.synthetic AND o.rowid < t.rowid)))) GROUP BY t.id"
    ).fetchall()
    for tile_id, bucket_id, kept in dup_rows:
        plan.quarantine(_origin(bucket_id, f"{tile_id}.png"), "duplicate", f"same pHash as {kept}", tile_id, bucket_id)
        done["duplicate_phash"] += 1
    plan.flush()
    over_cap = {b: n for b, n in db.bucket_counts(conn).items() if is_bucket_id(b) and n > lib.cap}
    for bucket_id, n in over_cap.items():
        extra = conn.execute(
            f"SELECT id FROM tiles t WHERE bucket_id = ? ORDER BY {adopted('t')} DESC, synthetic DESC, rowid DESC LIMIT ?",
            (bucket_id, n - lib.cap)).fetchall()
        for (tile_id,) in extra:
            plan.quarantine(_origin(bucket_id, f"{tile_id}.png"), "bucket_full", f"{n} tiles > cap {lib.cap}",
                            tile_id, bucket_id)
            done["over_cap"] += 1
    plan.flush()
    _rewrite_thumbnails(lib, by_kind.get("bad_thumbnail", []), facts, plan.dropped, done)


def _sort_orphans(plan: _Plan, orphans: list[Problem]) -> tuple[list[tuple[int, str]], list[tuple[int, str, int]]]:
    """Quarantine the entries of bucket folders that cannot be tiles; return the files to analyse:
    ``(folder bucket, id)`` of files no row names (to adopt) and ``(folder bucket, id, row bucket)``
    of files whose row is in another bucket and lost its own file there (found)."""
    lib, conn = plan.lib, plan.lib.conn
    adopt: list[tuple[int, str]] = []
    found: list[tuple[int, str, int]] = []
    seen: set[str] = set()
    for p in orphans:
        if p.bucket_id is None:
            continue
        rel = p.detail.rstrip("/")
        name = rel.rpartition("/")[2]
        origin = _origin(p.bucket_id, name)
        if rel != origin:
            continue  # not an entry of a bucket folder: never touched
        try:
            info = os.lstat(lib.root / origin)
        except FileNotFoundError:
            continue  # gone since verify listed it
        tile_id = tile_stem(name)
        if stat.S_ISDIR(info.st_mode):
            plan.quarantine(origin, "subfolder", "a folder inside a bucket folder")
        elif not stat.S_ISREG(info.st_mode):
            plan.quarantine(origin, "not_a_file", stat.filemode(info.st_mode))
        elif not is_tile_id(tile_id):
            plan.quarantine(origin, "bad_name", "not <uuid4>.png")
        else:
            row = conn.execute("SELECT bucket_id FROM tiles WHERE id = ?", (tile_id,)).fetchone()
            if row is not None and row[0] == p.bucket_id:
                continue  # its row came since verify read the rows
            if row is not None and not is_bucket_id(row[0]):
                continue  # a row no path can be derived from: left to unsafe_row
            if tile_id in seen or (row is not None and _file_exists(lib, row[0], tile_id)):
                where = bucket_name(row[0]) if row is not None else "another bucket folder"
                plan.quarantine(origin, "copy", f"tile {tile_id} is stored in {where}")
            else:
                seen.add(tile_id)
                if row is None:
                    adopt.append((p.bucket_id, tile_id))
                else:
                    found.append((p.bucket_id, tile_id, row[0]))
                continue  # counted once analysed
        plan.report.repaired["orphan_file"] += 1
    return adopt, found


def _file_exists(lib: Library, bucket_id: object, tile_id: str) -> bool:
    try:
        return os.path.lexists(lib.tile_path(bucket_id, tile_id))
    except UnsafePath:
        return False


def _rewrite_thumbnails(lib: Library, problems: list[Problem], facts: dict[str, FileFacts], dropped: set[str],
                        done: Counter) -> None:
    """Append the right thumbnail of every tile whose cached one was wrong (the newest row of a key wins)."""
    rows = [(p.tile_id, facts[p.tile_id]) for p in problems
            if p.tile_id not in dropped and p.tile_id in facts and facts[p.tile_id].thumb is not None]
    if not rows:
        return
    try:
        ThumbnailCache.of(lib.root).append([t for t, _f in rows], [f.phash for _t, f in rows],
                                           np.frombuffer(b"".join(f.thumb for _t, f in rows), dtype=np.uint8))
    except (OSError, ValueError) as exc:
        logger.warning("mosaic thumbnail cache not repaired: %s", exc)
        return
    done["bad_thumbnail"] += len(rows)
