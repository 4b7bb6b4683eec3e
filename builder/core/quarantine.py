"""``quarantine/``: what ``verify --repair`` takes out of the bucket folders instead of deleting it.

Repair never deletes a tile file.  An entry of a bucket folder that cannot be a tile of the
library (see :data:`REASONS`), and the file of a row repair drops (a duplicate, a tile over its
bucket's cap...), is moved here through the store's journal (:func:`builder.core.store.apply_repairs`)::

    quarantine/
      <reason>/bucket_XXXX/<name>    the entry as it was (a file or a whole folder); a name
                                     already taken gets ``~1``, ``~2``... appended
      records.jsonl                  one JSON object per entry: where it went (``path``), where it
                                     came from (``origin``), ``reason``, ``detail``, ``at`` (UTC),
                                     and for a dropped row the row itself (``row``)

No reader of the library looks inside (everything reads ``tiles.db`` and the bucket folders);
``verify`` lists what is here, and only ``verify --empty-quarantine`` deletes it.  A record is
written before its entry moves, so a crash can leave a record without its entry (ignored), never
an entry without a reason (the folder names it).

Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from .errors import UnsafePath
from .layout import QUARANTINE_DIR, TEMP_DIR
from .summary import format_counts

RECORDS_NAME = "records.jsonl"

# Why an entry is in quarantine: the folder it goes in, and what it means.
REASONS = {
    "bad_image": "not a decodable 256x256 RGB PNG",
    "bad_name": "its name is not <uuid4>.png",
    "not_a_file": "a symlink, FIFO, socket or device, not a regular file",
    "subfolder": "a folder inside a bucket folder",
    "copy": "a second copy of a tile stored in another bucket",
    "duplicate": "the same pHash as a tile kept in its bucket",
    "bucket_full": "its bucket was at the cap",
    "unknown_source": "a synthetic tile whose source tile is not in the library",
}


class Item(NamedTuple):
    """One entry in quarantine: its path (relative to the library), reason, and what its record says."""

    path: str
    reason: str
    detail: str = ""
    origin: str = ""
    at: str = ""


def check_folder(root: Path) -> None:
    """Refuse a ``quarantine`` that is a symlink or not a folder: tiles would be moved through it
    out of the library (:class:`UnsafePath`; a person must look)."""
    folder = root / QUARANTINE_DIR
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UnsafePath(f"{folder} is a symlink or not a folder: refusing to move tiles into it; "
                         "replace it with an empty folder")


def destination(root: Path, reason: str, origin: str, taken: set[str] | None = None) -> str:
    """``quarantine/<reason>/<origin>`` (``origin``: ``bucket_XXXX/<name>``), or with ``~N``
    appended when that name is taken on disk or in ``taken`` (names already given in this batch)."""
    if reason not in REASONS:
        raise ValueError(f"unknown quarantine reason {reason!r}")
    base = f"{QUARANTINE_DIR}/{reason}/{origin}"
    candidate, n = base, 0
    while os.path.lexists(root / candidate) or (taken is not None and candidate in taken):
        n += 1
        candidate = f"{base}~{n}"
    if taken is not None:
        taken.add(candidate)
    return candidate


def append_records(root: Path, records: Iterable[dict]) -> None:
    """Add records to ``records.jsonl``, one ``write`` each (a crash tears at most the last line,
    which :func:`read_records` skips)."""
    lines = [json.dumps(record, sort_keys=True) + "\n" for record in records]
    if not lines:
        return
    folder = root / QUARANTINE_DIR
    folder.mkdir(exist_ok=True)
    fd = os.open(folder / RECORDS_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        for line in lines:
            os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_records(root: Path) -> dict[str, dict]:
    """``path -> record`` (the last record of a path wins); unreadable lines are skipped."""
    path = root / QUARANTINE_DIR / RECORDS_NAME
    found: dict[str, dict] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("path"), str):
            found[record["path"]] = record
    return found


def list_items(root: Path) -> list[Item]:
    """Every entry in quarantine, in path order, with its record's detail where there is one."""
    folder = root / QUARANTINE_DIR
    if not folder.is_dir() or folder.is_symlink():
        return []
    records = read_records(root)
    items = []
    for reason_dir in sorted(folder.iterdir()):
        if not reason_dir.is_dir() or reason_dir.is_symlink():
            continue
        for origin_dir in sorted(reason_dir.iterdir()):
            entries = sorted(origin_dir.iterdir()) if origin_dir.is_dir() and not origin_dir.is_symlink() else [origin_dir]
            for entry in entries:
                rel = entry.relative_to(root).as_posix()
                record = records.get(rel, {})
                items.append(Item(rel, reason_dir.name, str(record.get("detail", "")), str(record.get("origin", "")),
                                  str(record.get("at", ""))))
    return items


def summary(items: list[Item]) -> str:
    """``3 entries (bad_name 1, subfolder 2)``."""
    return f"{len(items)} entries ({format_counts(Counter(item.reason for item in items))})"


def empty(root: Path) -> int:
    """Delete everything in quarantine; returns the number of entries it held.

    The folder is first renamed into ``temp/`` (which the next writer empties), so a crash
    midway leaves either the whole quarantine or none of it.  Writers only (the caller holds
    the lock).
    """
    check_folder(root)
    folder = root / QUARANTINE_DIR
    if not folder.is_dir():
        return 0
    count = len(list_items(root))
    doomed = root / TEMP_DIR / f"{QUARANTINE_DIR}.emptied.{os.getpid()}"
    (root / TEMP_DIR).mkdir(exist_ok=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed)
    return count
