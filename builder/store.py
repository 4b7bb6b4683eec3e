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

Stdlib only; a :class:`~builder.library.Library` is passed in (this module never imports it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from . import db
from .errors import UnsafePath
from .layout import JOURNAL_NAME, TILE_SUFFIX, new_tile_id, parse_bucket_dir

if TYPE_CHECKING:
    from .library import Library

logger = logging.getLogger(__name__)


class StagedTile(NamedTuple):
    """A tile staged in ``temp/`` and accepted into the next batch: its row in ``TILE_COLUMNS`` order."""

    tile_id: str
    bucket_id: int
    row: tuple


class Replay(NamedTuple):
    """What :func:`replay` did: journal entries kept (committed) and rolled back, scratch removed."""

    kept: int = 0
    rolled_back: int = 0
    temp_removed: int = 0


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


def commit(lib: Library, tiles: Sequence[StagedTile],
           on_commit: Callable[[sqlite3.Connection], None] | None = None,
           evict: Sequence[tuple[str, int]] = ()) -> None:
    """Journal, rename into buckets, insert and commit ``tiles`` (see the module docstring).

    ``on_commit(conn)`` runs inside the batch's transaction, even for an empty batch, so its
    writes commit together with the rows.  ``evict``: ``(id, bucket)`` of stored tiles whose
    rows are deleted in the same transaction and whose files go after it.  On any failure the
    renames are undone and the journal removed before the exception propagates (an evicted
    tile is then untouched); the staged files stay for the caller.
    """
    lib._require_writer()
    conn, temp = lib.conn, lib.temp_dir
    journal = temp / JOURNAL_NAME
    moved: list[tuple[Path, Path]] = []
    gone = [(tile_id, bucket_id, lib.tile_path(bucket_id, tile_id)) for tile_id, bucket_id in evict]
    if tiles or evict:
        write_journal(temp, [(t.tile_id, t.bucket_id) for t in tiles], evict)
    try:
        for tile in tiles:
            final = lib.tile_path(tile.bucket_id, tile.tile_id)
            final.parent.mkdir(exist_ok=True)
            staged = staged_path(temp, tile.tile_id)
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
    part = temp / (JOURNAL_NAME + ".part")
    body: dict = {"tiles": [[tile_id, bucket_id] for tile_id, bucket_id in entries]}
    if evict:
        body["evict"] = [[tile_id, bucket_id] for tile_id, bucket_id in evict]
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
        raw = body["tiles"] if key == "tiles" else body.get(key, [])
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


# --------------------------------------------------------------------------- replay


def replay(lib: Library) -> Replay:
    """Undo or finish a crashed batch and empty ``temp/`` (a writer, on open and on close).

    Refuses (:class:`~builder.errors.UnsafePath`) a ``temp`` that is a symlink or not a folder
    (everything in it is deleted) and a bucket folder that is a symlink (tiles are renamed
    and repaired into them): a person must look.
    """
    lib._require_writer()
    temp = lib.temp_dir
    if temp.is_symlink() or (temp.exists() and not temp.is_dir()):
        raise UnsafePath(f"{temp} is a symlink or not a folder: refusing to clean it; replace it with an empty folder")
    for entry in os.scandir(lib.root):
        if entry.is_symlink() and parse_bucket_dir(entry.name) is not None:
            raise UnsafePath(f"{lib.root / entry.name} is a symlink: refusing to write through it")
    temp.mkdir(exist_ok=True)
    kept = rolled_back = removed = 0
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
    done = Replay(kept, rolled_back, removed)
    if any(done):
        logger.info("recovered %s: %s", lib.root, done._asdict())
    return done
