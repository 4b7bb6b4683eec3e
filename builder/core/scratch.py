"""Scratch files beside an output: how they are named, and which ones a killed run left.

A command that replaces a file (a mosaic, a report page, a cache file) writes the new content
under a hidden scratch name beside it and renames it into place, so a reader sees the old file
or the new one, never half of one.  A SIGKILL between the two leaves the scratch file behind;
the name says whose it was::

    .<name>.<pid>.part      the new content being written (a file, or a folder for a pyramid)
    .<name>.<pid>.old       the old content moved aside, about to be deleted

so the next run can tell what a *dead* process left (:func:`dead_scratch`) from what a running
one is writing, and never touches a name of any other form: a user's file is never taken for
debris.  What a leftover must hold before it is removed is the caller's to check (a PNG part
starts with the PNG signature, a pyramid folder holds only level folders of tiles).

>>> scratch_path(Path("out/m.png"), pid=42)
PosixPath('out/.m.png.42.part')
>>> parse_scratch(".m.png.42.part"), parse_scratch("m.png") is None
(('m.png', 42, 'part'), True)
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

KINDS = ("part", "old")
_SCRATCH = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]{1,10})\.(?P<kind>part|old)$", re.S)


def scratch_path(path: str | os.PathLike, kind: str = "part", pid: int | None = None) -> Path:
    """The scratch name of ``path`` for this process (or ``pid``): ``.<name>.<pid>.<kind>``."""
    if kind not in KINDS:
        raise ValueError(f"scratch kind is one of {KINDS}, not {kind!r}")
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.{kind}")


def parse_scratch(file_name: str) -> tuple[str, int, str] | None:
    """``(name, pid, kind)`` of a scratch name, or None for any other name."""
    match = _SCRATCH.match(file_name)
    return (match["name"], int(match["pid"]), match["kind"]) if match else None


def pid_alive(pid: int) -> bool:
    """True while a process ``pid`` exists (ours, or another user's); False once it is gone."""
    if pid <= 0:
        return True  # never a process of ours: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


class Leftover(NamedTuple):
    """A scratch file or folder whose process is gone: ``target`` is the name it was for."""

    path: Path
    target: str
    kind: str


def dead_scratch(folder: str | os.PathLike) -> list[Leftover]:
    """Scratch entries of ``folder`` (not below it) left by processes that no longer run, by name."""
    found = []
    try:
        with os.scandir(folder) as entries:
            names = sorted(entry.name for entry in entries)
    except OSError:
        return []
    for name in names:
        parsed = parse_scratch(name)
        if parsed is None:
            continue
        target, pid, kind = parsed
        if pid != os.getpid() and not pid_alive(pid):
            found.append(Leftover(Path(folder) / name, target, kind))
    return found
