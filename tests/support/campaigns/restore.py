"""SIGKILL a real ``python -m builder restore`` at chosen points, then run it again: it must complete
and equal the source library.

The points (:data:`POINTS`) are found by polling the file system, never by sleeping: the scratch
folder appearing, its source record, the first tile staged in ``temp/``, a batch journal on disk,
the first committed tile in a bucket folder, a quarter and half of the tiles, the first synthetic
tile, every tile in place (bookkeeping next), and the target renamed into place.  After each kill
the target must be absent or a whole library (all or nothing); the same command run again must
exit 0 and give the source's rows, files, synthetic flags and fetch ledger.

Used by ``tests/test_restore.py`` (CI: the ten points once) and ``bench/kill_campaign.py``
(``--restore-kills``: the points over and over, with figures).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.core import db
from tests.support.cli import builder_argv, offline_env
from tests.support.kill import group_killed_on_exit, kill_group, start_group
from tests.support.paths import REPO


def tile_files(folder: Path) -> int:
    """PNG files in a library's bucket folders (0 if it does not exist yet)."""
    n = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith("bucket_") and entry.is_dir(follow_symlinks=False):
            try:
                n += sum(1 for f in os.scandir(entry.path) if f.name.endswith(".png"))
            except FileNotFoundError:
                continue
    return n


@dataclass
class Paths:
    target: Path
    real: int  # real tiles of the source
    total: int  # every tile of the source

    @property
    def scratch(self) -> Path:
        return self.target.parent / f".{self.target.name}.restore"

    @property
    def library(self) -> Path:
        return self.scratch / self.target.name


def _staged(p: Paths) -> bool:
    try:
        return any(e.name.endswith(".png") for e in os.scandir(p.library / "temp"))
    except FileNotFoundError:
        return False


POINTS: dict[str, Callable[[Paths], bool]] = {
    "scratch folder made": lambda p: p.scratch.is_dir(),
    "source recorded": lambda p: (p.scratch / "source.json").is_file(),
    "first tile staged": _staged,
    "batch journal on disk": lambda p: (p.library / "temp" / "journal.json").is_file(),
    "first tile committed": lambda p: tile_files(p.library) >= 1,
    "a quarter of the tiles": lambda p: tile_files(p.library) >= p.total // 4,
    "half of the tiles": lambda p: tile_files(p.library) >= p.total // 2,
    "first synthetic tile": lambda p: tile_files(p.library) > p.real,
    "every tile in place": lambda p: tile_files(p.library) >= p.total,
    "renamed into place": lambda p: p.target.is_dir(),
}


def library_state(root: Path) -> dict:
    """What must survive a restore: every row but ``filepath`` (it names the folder), each tile file's
    bytes, and the fetch ledger."""
    conn = sqlite3.connect(f"{(root / 'tiles.db').resolve().as_uri()}?mode=ro", uri=True)
    try:
        columns = [c for c in db.TILE_COLUMNS if c != "filepath"]
        rows = {r[0]: r for r in conn.execute(f"SELECT {', '.join(columns)} FROM tiles")}
        fetched = sorted(conn.execute("SELECT source, z, x, y, status, region, tried_at FROM fetched"))
    finally:
        conn.close()
    files = {}
    for tile_id, row in rows.items():
        path = root / f"bucket_{row[1]:04d}" / f"{tile_id}.png"
        files[tile_id] = path.read_bytes() if path.is_file() else None
    on_disk = tile_files(root)
    return {"rows": rows, "files": files, "fetched": fetched, "files_on_disk": on_disk}


@dataclass
class RestoreFigures:
    kills: int = 0
    missed: list[str] = field(default_factory=list)  # points the run finished before reaching
    tiles_before: int = 0  # tiles of the source
    tiles_after: list[int] = field(default_factory=list)  # tiles of each completed rerun
    lost: int = 0
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        after = sorted(set(self.tiles_after))
        return (f"restore: {self.kills} kills at {self.kills} points ({len(self.missed)} points missed: "
                f"{', '.join(self.missed) or 'none'}), {self.tiles_before} tiles in the source, "
                f"{after} after each rerun, lost {self.lost}, violations {len(self.violations)}")


def kill_at(cmd: list[str], paths: Paths, point: str, timeout: float = 120.0) -> bool:
    """Run ``cmd`` and SIGKILL its process group the moment ``POINTS[point]`` holds; False if it ended first."""
    check = POINTS[point]
    proc = start_group(cmd, env=offline_env())
    with group_killed_on_exit(proc):
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if check(paths):
                kill_group(proc)
                return True
            time.sleep(0.0002)  # a poll interval, not a kill moment: the moment is the point's
        return False


def restore_campaign(source: Path, expected: dict, work: Path, points: list[str] | None = None,
                     real: int = 0, progress=None) -> RestoreFigures:
    """Kill ``restore SOURCE`` at each point (a fresh target each time), rerun it, compare with ``expected``."""
    figures = RestoreFigures(tiles_before=len(expected["rows"]))
    for i, point in enumerate(points or list(POINTS)):
        paths = Paths(work / f"round{i:03d}" / "mosaic_library", real, len(expected["rows"]))
        cmd = builder_argv("restore", source, "--library", paths.target)
        if not kill_at(cmd, paths, point):
            figures.missed.append(point)
        else:
            figures.kills += 1
            if paths.target.exists():  # all or nothing: a target that exists is the whole library
                state = library_state(paths.target)
                if state != expected:
                    figures.violations.append(f"{point}: the target exists but is not the whole library")
        rerun = subprocess.run(cmd, capture_output=True, text=True, env=offline_env(), cwd=REPO, timeout=600)
        if rerun.returncode != 0:
            figures.violations.append(f"{point}: the rerun failed: {rerun.stderr.strip()[-300:]}")
            continue
        state = library_state(paths.target)
        figures.tiles_after.append(len(state["rows"]))
        figures.lost += len(set(expected["rows"]) - set(state["rows"]))
        if state != expected:
            figures.violations.append(f"{point}: the rerun's library differs from the source")
        if paths.scratch.exists():
            figures.violations.append(f"{point}: the scratch folder was left behind")
        if progress:
            progress(f"{point}: killed, rerun -> {len(state['rows'])} tiles ({rerun.stdout.strip()})")
        shutil.rmtree(paths.target.parent, ignore_errors=True)
    return figures
