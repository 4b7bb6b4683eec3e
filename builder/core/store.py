"""The commit protocol: how accepted tiles become part of a library, and how a crash is undone.

A batch of accepted tiles is made durable in this order:

1. **stage**: each tile is written completely to ``temp/<id>.png`` (through ``temp/<id>.part``
   and a rename, so a staged name always holds a whole file); worker processes do this;
2. **journal**: ``temp/journal.json`` lists the batch's ``(id, bucket)`` pairs (written to a
   ``.part`` file and renamed, so it is whole or absent);
3. **rename**: the staged files are renamed into their bucket folders;
4. **insert**: the rows are inserted and committed in one transaction, together with whatever
   the caller's ``on_commit(conn)`` writes (harvest's ``fetched`` statuses), and the rows of
   the tiles the batch *evicts* (synthetic tiles giving way to real ones) are deleted in it;
5. the evicted tiles' files are removed, then the journal is deleted.

If a step fails in the process (a full disk, a failed commit), :func:`commit` moves the
renamed files back to ``temp/`` and deletes the journal; the caller removes the staged files.

Crash guarantees (SIGKILL at any instant, power kept; the crash campaigns in
``tests/test_crash.py`` and ``tests/test_store.py`` check each of them):

* a reader never sees a row without its file: files are in their buckets before the commit;
* a committed row is never lost: the commit is SQLite's, and replay keeps every committed file;
* nothing half-written stays: when a writer next opens the library, :func:`replay` reads a
  leftover journal, keeps the files of rows that committed (moving one back from ``temp/`` if
  it never left), removes the files of rows that did not, and empties ``temp/``;
* an eviction is all or nothing with its batch: the journal lists the evicted ``(id, bucket)``
  pairs too; their files go only after the commit deleted their rows, and replay removes the
  file of an evicted tile whose row is gone and keeps the one whose row is still there.  The worst a
  crash leaves behind is scratch that the next open removes.

Maintenance goes through the same journal (:func:`apply_repairs`, ``verify --repair`` and
``recover``), with two more kinds of entry, and never deletes a tile file:

* a **relocation** ``(id, from bucket, to bucket)`` moves a stored tile's file to another bucket
  folder together with its row's change (a wrong-bucket tile re-filed, a file without a row
  adopted): the file is hard-linked into its new folder, the row changes in the batch's
  transaction, then the old name is removed.  A reader sees the row and its file together at
  every instant.  Replay lets the row decide: a row that names the new bucket keeps the new
  name, anything else (the change never committed, no row at all) the old one; the other name
  goes only when it is the same file (a link of it), else it is moved back;
* a **quarantine** ``(from, to, row id, row bucket)`` moves an entry of a bucket folder into
  ``quarantine/`` (:mod:`builder.core.quarantine`), deleting the row that named it (if any) in the
  batch's transaction; the move comes after the commit.  Replay finishes the move when the row
  is gone (or there never was one) and puts the entry back if the row is still there.

Stdlib only; a :class:`~builder.core.library.Library` is passed in as a :class:`Writable` (this
module never imports it, so the library can import the store).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from . import db
from .errors import UnsafePath
from .layout import JOURNAL_NAME, QUARANTINE_DIR, TILE_SUFFIX, is_tile_id, new_tile_id, parse_bucket_dir

logger = logging.getLogger(__name__)


class Writable(Protocol):
    """What the commit protocol needs of a library opened for writing: a
    :class:`~builder.core.library.Library` is one."""

    root: Path
    conn: sqlite3.Connection

    @property
    def temp_dir(self) -> Path: ...

    def tile_path(self, bucket_id: int, tile_id: str) -> Path: ...

    def require_writer(self, action: str | None = None) -> None: ...


class StagedTile(NamedTuple):
    """A tile staged in ``temp/`` and accepted into the next batch: its row in ``TILE_COLUMNS`` order."""

    tile_id: str
    bucket_id: int
    row: tuple


class Replay(NamedTuple):
    """What :func:`replay` did: journal entries kept (committed) and rolled back, scratch removed,
    and repair entries (relocations and quarantine moves) settled."""

    kept: int = 0
    rolled_back: int = 0
    temp_removed: int = 0
    repairs_settled: int = 0


class Relocation(NamedTuple):
    """A stored tile's file moving from bucket folder ``src`` to ``dst`` with its row (``dst`` is
    the bucket the row names once the batch commits; ``src == dst``: adopted where it lies)."""

    tile_id: str
    src: int
    dst: int


class Quarantined(NamedTuple):
    """An entry of a bucket folder moving into ``quarantine/``: paths relative to the library
    root; ``tile_id``/``bucket``: the row deleted with it (None: no row names the entry)."""

    src: str
    dst: str
    tile_id: str | None = None
    bucket: int | None = None


# --------------------------------------------------------------------------- 1. stage


def staged_path(temp: Path, tile_id: str) -> Path:
    """``temp/<id>.png``: where a tile waits between analysis and commit."""
    return temp / f"{tile_id}{TILE_SUFFIX}"


def stage(temp: str | os.PathLike, payload: bytes, tile_id: str | None = None) -> str:
    """Write ``payload`` to ``temp/<id>.png`` atomically (``.part`` then rename); returns the id.

    A new uuid4 is drawn unless ``tile_id`` is given (restore keeps the published ids).  Plain
    ``open`` on purpose: a full disk surfaces here as the ``OSError`` users see.
    """
    temp = Path(temp)
    tile_id = tile_id or new_tile_id()
    part = temp / f"{tile_id}.part"
    with open(part, "wb") as fh:
        fh.write(payload)
    os.replace(part, staged_path(temp, tile_id))
    return tile_id


def unstage(temp: str | os.PathLike, tile_ids: Iterable[str | None]) -> None:
    """Remove staged tiles that will not be committed (rejected, or a batch given up)."""
    for tile_id in tile_ids:
        if tile_id:
            staged_path(Path(temp), tile_id).unlink(missing_ok=True)


# --------------------------------------------------------------------------- 2-5. commit


def commit(lib: Writable, tiles: Sequence[StagedTile],
           on_commit: Callable[[sqlite3.Connection], None] | None = None,
           evict: Sequence[tuple[str, int]] = ()) -> None:
    """Journal, rename into buckets, insert and commit ``tiles`` (see the module docstring).

    ``on_commit(conn)`` runs inside the batch's transaction, even for an empty batch, so its
    writes commit together with the rows.  ``evict``: ``(id, bucket)`` of stored tiles whose
    rows are deleted in the same transaction and whose files go after it.  On any failure the
    renames are undone and the journal removed before the exception propagates (an evicted
    tile is then untouched); the staged files stay for the caller.
    """
    lib.require_writer()
    conn, temp = lib.conn, lib.temp_dir
    journal = temp / JOURNAL_NAME
    moved: list[tuple[Path, Path]] = []
    gone = [(tile_id, bucket_id, lib.tile_path(bucket_id, tile_id)) for tile_id, bucket_id in evict]
    if tiles or evict:
        write_journal(temp, [(t.tile_id, t.bucket_id) for t in tiles], evict)
    try:
        for tile in tiles:
            final = lib.tile_path(tile.bucket_id, tile.tile_id)
            staged = staged_path(temp, tile.tile_id)
            try:
                os.replace(staged, final)
            except FileNotFoundError:  # the bucket's first tile: make its folder (one mkdir, not one a tile)
                final.parent.mkdir(exist_ok=True)
                os.replace(staged, final)
            moved.append((final, staged))
        with conn:
            conn.executemany(db.INSERT_TILE_SQL, [t.row for t in tiles])
            conn.executemany("DELETE FROM tiles WHERE id = ? AND bucket_id = ?", [(t, b) for t, b, _p in gone])
            if on_commit is not None:
                on_commit(conn)
    except BaseException:
        for final, staged in moved:
            try:
                os.replace(final, staged)
            except OSError:
                final.unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
        raise
    for _tile_id, _bucket_id, path in gone:
        path.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)


def write_journal(temp: Path, entries: Sequence[tuple[str, int]], evict: Sequence[tuple[str, int]] = ()) -> None:
    """``temp/journal.json``, whole or absent (``.part`` then rename)."""
    body: dict = {"tiles": [[tile_id, bucket_id] for tile_id, bucket_id in entries]}
    if evict:
        body["evict"] = [[tile_id, bucket_id] for tile_id, bucket_id in evict]
    _write_journal_body(temp, body)


def _write_journal_body(temp: Path, body: dict) -> None:
    part = temp / (JOURNAL_NAME + ".part")
    part.write_text(json.dumps(body))
    os.replace(part, temp / JOURNAL_NAME)


def read_journal(temp: Path, key: str = "tiles") -> list[tuple[str, int]] | None:
    """The ``(id, bucket)`` pairs of a batch being (or left half) stored; None without a journal.

    ``key="evict"`` gives the tiles the batch evicts instead (none in a journal without them).
    Entries that are not an ``[id, bucket]`` pair are skipped (an unreadable journal is
    logged and reads as empty): replay must never stop a writer from opening the library.
    """
    journal = temp / JOURNAL_NAME
    try:
        body = json.loads(journal.read_text())
        raw = body.get(key, [])  # a repair's journal has no "tiles"
        if not isinstance(raw, list):
            raise TypeError(f"{key} is not a list")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("unreadable journal %s ignored (%s)", journal, exc)
        return []
    entries = []
    for entry in raw:
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
            try:
                entries.append((entry[0], int(entry[1])))
            except (TypeError, ValueError):
                continue
    return entries


# --------------------------------------------------------------------------- repairs


def apply_repairs(lib: Writable, relocations: Sequence[Relocation], quarantined: Sequence[Quarantined],
                  change: Callable[[sqlite3.Connection], None]) -> None:
    """One batch of maintenance through the journal (see the module docstring).

    Journal, hard-link each relocated file into its new bucket folder, run ``change(conn)`` in
    one transaction (the rows' UPDATEs, INSERTs and DELETEs), then drop the old names and move
    the quarantined entries, and delete the journal.  A failure before the commit undoes the
    links; one after it leaves the journal for :func:`replay` (the library's close runs it).
    """
    lib.require_writer()
    temp = lib.temp_dir
    journal = temp / JOURNAL_NAME
    if relocations or quarantined:
        _write_journal_body(temp, {
            "relocate": [[r.tile_id, r.src, r.dst] for r in relocations],
            "quarantine": [[q.src, q.dst, q.tile_id, q.bucket] for q in quarantined],
        })
    linked: list[tuple[Path, Path, bool]] = []
    try:
        for r in relocations:
            if r.src == r.dst:
                continue
            src, dst = lib.tile_path(r.src, r.tile_id), lib.tile_path(r.dst, r.tile_id)
            dst.parent.mkdir(exist_ok=True)
            linked.append((src, dst, _link_or_move(src, dst)))
        with lib.conn:
            change(lib.conn)
    except BaseException:
        undone = True
        for src, dst, moved in reversed(linked):
            try:
                if moved:
                    os.replace(dst, src)
                elif _same_file(src, dst):
                    dst.unlink()
            except OSError as exc:
                logger.warning("could not undo the move of %s (%s); the next writer's replay will", src, exc)
                undone = False
        if undone:  # else the journal stays: replay finishes the undo
            journal.unlink(missing_ok=True)
        raise
    for r in relocations:
        settle_relocation(lib, r)
    for q in quarantined:
        settle_quarantine(lib, q)
    journal.unlink(missing_ok=True)


def _link_or_move(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` as ``dst`` (both names hold the tile until the row moves); where the
    file system has no hard links, rename it instead.  True when it was renamed."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return False
    except FileExistsError:
        if _same_file(src, dst):
            return False  # a replayed or repeated batch
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "refusing to move a tile over another file", str(dst))
    os.replace(src, dst)
    return True


def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` are names of one inode (a link made by :func:`apply_repairs`); no symlink followed."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _row_bucket(lib: Writable, tile_id: str) -> object:
    row = lib.conn.execute("SELECT bucket_id FROM tiles WHERE id = ?", (tile_id,)).fetchone()
    return row[0] if row else None


def settle_relocation(lib: Writable, r: Relocation) -> bool:
    """Put a relocated tile's file where its row says (the new folder if the row names it, else
    the old one) and drop the other name if it is a link of the same file.  Never deletes the
    only name of a file.  True when anything moved or went."""
    if r.src == r.dst:
        return False
    try:
        src, dst = lib.tile_path(r.src, r.tile_id), lib.tile_path(r.dst, r.tile_id)
    except UnsafePath:
        return False
    keep, other = (dst, src) if _row_bucket(lib, r.tile_id) == r.dst else (src, dst)
    if not os.path.lexists(other):
        return False
    if os.path.lexists(keep):
        if _same_file(keep, other):
            other.unlink()
            return True
        return False  # two different files: the next verify quarantines the stray one
    keep.parent.mkdir(exist_ok=True)
    os.replace(other, keep)
    return True


def settle_quarantine(lib: Writable, q: Quarantined) -> bool:
    """Finish a quarantine move whose row is gone (or never was), or put the entry back where
    the row still names it.  True when anything moved."""
    src, dst = lib.root / q.src, lib.root / q.dst
    row_stays = q.tile_id is not None and lib.conn.execute(
        "SELECT 1 FROM tiles WHERE id = ? AND bucket_id = ?", (q.tile_id, q.bucket)).fetchone() is not None
    if row_stays:
        if os.path.lexists(dst) and not os.path.lexists(src):
            os.replace(dst, src)
            return True
        return False
    if os.path.lexists(src) and not os.path.lexists(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return True
    return False


def _bucket_entry(rel: object) -> bool:
    """``bucket_XXXX/<name>``: an entry of a bucket folder, as a quarantine journal names it."""
    if not isinstance(rel, str):
        return False
    parts = rel.split("/")
    return len(parts) == 2 and parse_bucket_dir(parts[0]) is not None and parts[1] not in ("", ".", "..")


def _quarantine_path(rel: object) -> bool:
    """``quarantine/...`` without ``..`` or empty parts: where a quarantine journal may move an entry."""
    if not isinstance(rel, str):
        return False
    parts = rel.split("/")
    return len(parts) >= 2 and parts[0] == QUARANTINE_DIR and all(p not in ("", ".", "..") for p in parts)


def read_repairs(temp: Path) -> tuple[list[Relocation], list[Quarantined]]:
    """The relocations and quarantine moves of a repair's journal (none without one).

    Entries come from a file: ids must be uuid4s, buckets integers in range, paths inside the
    bucket folders and ``quarantine/``; anything else is skipped, as an unreadable journal is.
    """
    try:
        body = json.loads((temp / JOURNAL_NAME).read_text())
        raw_moves, raw_quarantine = body.get("relocate", []), body.get("quarantine", [])
    except (OSError, ValueError, AttributeError):
        return [], []
    moves, quarantined = [], []
    for entry in raw_moves if isinstance(raw_moves, list) else []:
        if (isinstance(entry, list) and len(entry) == 3 and is_tile_id(entry[0])
                and all(isinstance(b, int) and not isinstance(b, bool) for b in entry[1:])):
            moves.append(Relocation(entry[0], entry[1], entry[2]))
    for entry in raw_quarantine if isinstance(raw_quarantine, list) else []:
        if not (isinstance(entry, list) and len(entry) == 4 and _bucket_entry(entry[0]) and _quarantine_path(entry[1])):
            continue
        tile_id, bucket = entry[2], entry[3]
        if tile_id is not None and not (is_tile_id(tile_id) and isinstance(bucket, int)):
            continue
        quarantined.append(Quarantined(entry[0], entry[1], tile_id, bucket))
    return moves, quarantined


# --------------------------------------------------------------------------- replay


def replay(lib: Writable) -> Replay:
    """Undo or finish a crashed batch and empty ``temp/`` (a writer, on open and on close).

    Refuses (:class:`~builder.core.errors.UnsafePath`) a ``temp`` that is a symlink or not a folder
    (everything in it is deleted) and a bucket folder that is a symlink (tiles are renamed
    and repaired into them): a person must look.
    """
    lib.require_writer()
    temp = lib.temp_dir
    if temp.is_symlink() or (temp.exists() and not temp.is_dir()):
        raise UnsafePath(f"{temp} is a symlink or not a folder: refusing to clean it; replace it with an empty folder")
    for entry in os.scandir(lib.root):
        if entry.is_symlink() and parse_bucket_dir(entry.name) is not None:
            raise UnsafePath(f"{lib.root / entry.name} is a symlink: refusing to write through it")
    temp.mkdir(exist_ok=True)
    kept = rolled_back = removed = settled = 0
    moves, quarantined = read_repairs(temp)
    for r in moves:
        settled += settle_relocation(lib, r)
    for q in quarantined:
        settled += settle_quarantine(lib, q)
    entries = read_journal(temp)
    for tile_id, bucket_id in (read_journal(temp, "evict") or []) if entries is not None else []:
        try:
            path = lib.tile_path(bucket_id, tile_id)
        except UnsafePath:
            continue
        if not lib.conn.execute("SELECT 1 FROM tiles WHERE id = ?", (tile_id,)).fetchone():
            path.unlink(missing_ok=True)  # its eviction committed: the file goes too
    if entries is not None:
        for tile_id, bucket_id in entries:
            try:
                final = lib.tile_path(bucket_id, tile_id)
            except UnsafePath:
                continue  # names no file of this library
            if lib.conn.execute("SELECT 1 FROM tiles WHERE id = ?", (tile_id,)).fetchone():
                staged = staged_path(temp, tile_id)
                if not final.exists() and staged.exists():
                    final.parent.mkdir(exist_ok=True)
                    os.replace(staged, final)
                kept += 1
            else:
                final.unlink(missing_ok=True)
                rolled_back += 1
        journal = temp / JOURNAL_NAME
        if not journal.is_dir() or journal.is_symlink():  # a folder by that name goes with the sweep below
            journal.unlink()
    for entry in temp.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed += 1
    done = Replay(kept, rolled_back, removed, settled)
    if any(done):
        logger.info("recovered %s: %s", lib.root, done._asdict())
    return done
