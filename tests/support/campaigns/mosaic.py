"""SIGKILL campaign against real ``python -m builder mosaic`` runs writing a PNG or a Deep Zoom output.

Each round starts the real CLI, kills it at a moment found by polling the output's folder, and
checks what a reader finds there; then a run to completion (the "next run") and its folder:

* ``time``      a random delay after the start (imports, planning, rendering, writing);
* ``writing``   0-300 ms after the run's scratch output (``.OUT.<pid>.part``) holds data: mid-stream
                (PNG) or mid-pyramid (DZI);
* ``staged``    DZI only: the instant the scratch folder holds its descriptor (the staged output is
                complete): the kill lands in the installation or right after it;
* ``installed`` the instant the output's descriptor or file is a new one (after the swap).

The runs alternate between two option sets of different sizes, whose outputs are made once
first, uninterrupted, as references.  After every kill the output must be one of the two,
whole (a PNG byte for byte; a Deep Zoom output as descriptor, viewer and every pyramid tile),
or, only for a kill inside the Deep Zoom installation (a few renames), absent with its complete
staged copy left for the next run to finish.  After the next run: its own reference output and
not one scratch name (``.NAME.PID.part`` / ``.old``) in the folder.

Used by ``tests/test_mosaic_outputs.py`` (short) and ``bench/kill_campaign.py`` (long, figures).
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from builder.core.layout import SAMPLE_TARGET
from builder.core.scratch import parse_scratch, scratch_path
from tests.support.cli import builder_argv, cli_env
from tests.support.kill import group_killed_on_exit, kill_group, start_group
from tests.support.paths import REPO

# Two option sets whose outputs differ in size: what a kill leaves is told apart by its content.
OPTION_SETS = (["--grid", "48x48", "--tile-size", "32"], ["--grid", "40x40", "--tile-size", "32"])
TRIGGERS = {"png": ("time", "writing", "installed"), "dzi": ("time", "writing", "staged", "installed")}


@dataclass
class MosaicFigures:
    """What a mosaic campaign did and found; ``violations`` must stay empty."""

    fmt: str
    kills: int = 0
    finished: int = 0  # runs that completed before their kill moment
    by_trigger: Counter = field(default_factory=Counter)
    old_whole: int = 0  # kills after which the previous output was there, whole
    new_whole: int = 0  # kills after which the killed run's output was there, whole
    mid_install: int = 0  # DZI kills inside the installation: no descriptor, finished by the next run
    scratch_left: int = 0  # scratch entries a kill left, all gone after the next run
    debris_after_next: int = 0  # scratch entries still there after the next run (must stay 0)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        triggers = ", ".join(f"{k} {v}" for k, v in sorted(self.by_trigger.items()))
        return (f"mosaic {self.fmt}: {self.kills} kills ({triggers}), {self.finished} runs finished first; after "
                f"each kill the output was the old one whole {self.old_whole} times, the new one whole "
                f"{self.new_whole}, mid-installation (no descriptor, finished by the next run) {self.mid_install}; "
                f"{self.scratch_left} scratch entries left by kills, {self.debris_after_next} after the next runs; "
                f"violations {len(self.violations)}, {self.seconds:.0f} s")


def mosaic_command(library: Path, output: Path, options: list[str]) -> list[str]:
    return builder_argv("mosaic", "--library", library, SAMPLE_TARGET,
                        "--output", output, "--threads", "1", *options)


def output_digest(output: Path) -> str | None:
    """sha256 over everything a reader of ``output`` reads (a PNG; or a DZI's descriptor, viewer and
    every pyramid tile by name), or None when the output is not there whole."""
    digest = hashlib.sha256()
    try:
        if output.suffix == ".png":
            return hashlib.sha256(output.read_bytes()).hexdigest()
        files = output.with_name(f"{output.stem}_files")
        digest.update(output.read_bytes())
        digest.update(output.with_name(f"{output.stem}.html").read_bytes())
        for tile in sorted(files.rglob("*")):
            if tile.is_file():
                digest.update(str(tile.relative_to(files)).encode() + b"\0" + tile.read_bytes())
    except OSError:
        return None
    return digest.hexdigest()


def scratch_entries(folder: Path) -> list[str]:
    """Names of the scratch form (``.NAME.PID.part`` / ``.old``) in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if parse_scratch(p.name))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def run_and_kill(cmd: list[str], output: Path, trigger: str, rng: random.Random,
                 max_delay: float) -> tuple[bool, str]:
    """Start ``cmd`` and SIGKILL it at the ``trigger`` moment; ``(killed, fired)``."""
    before = _stamp(output)
    proc = start_group(cmd)
    with group_killed_on_exit(proc):
        part = scratch_path(output, pid=proc.pid)
        started = time.monotonic()
        fire_at = started + rng.uniform(0.2, max_delay) if trigger == "time" else None
        fired = trigger if trigger == "time" else "deadline"
        while proc.poll() is None:
            now = time.monotonic()
            if fire_at is None:
                if trigger == "writing" and _holds_data(part):
                    fire_at, fired = now + rng.uniform(0, 0.3), trigger
                elif trigger == "staged" and (part / output.name).is_file():
                    fire_at, fired = now, trigger
                elif trigger == "installed" and _stamp(output) not in (None, before):
                    fire_at, fired = now, trigger
                elif now - started > 3 * max_delay + 20:
                    fire_at = now
            if fire_at is not None and now >= fire_at:
                break
            time.sleep(0.0005)
        if proc.poll() is not None:
            return False, fired
        kill_group(proc)
        return True, fired


def _holds_data(part: Path) -> bool:
    try:
        if part.is_dir():  # a pyramid tile written
            return any(tile.suffix in (".jpg", ".png") for tile in part.glob("*_files/*/*"))
        return part.stat().st_size > 64  # past the PNG header
    except OSError:
        return False


def _staged_complete(folder: Path, output: Path) -> bool:
    """A dead run's scratch folder holding the whole staged Deep Zoom output (its descriptor)."""
    for name in scratch_entries(folder):
        target, _pid, kind = parse_scratch(name)
        if kind == "part" and target == output.name and (folder / name / output.name).is_file():
            return True
    return False


def mosaic_campaign(library: Path, output: Path, kills: int, seed: int = 0, max_delay: float = 4.0,
                    progress=None, triggers: tuple[str, ...] | None = None) -> MosaicFigures:
    """Kill ``kills`` mosaic runs writing ``output`` (``.png`` or ``.dzi``), each followed by a
    run to completion; returns the figures (see the module doc).  Rounds take the ``triggers``
    in turn (default: every one of the format's)."""
    fmt = output.suffix.lstrip(".")
    figures = MosaicFigures(fmt)
    started = time.monotonic()
    rng = random.Random(seed)
    folder = output.parent
    folder.mkdir(parents=True, exist_ok=True)
    refs = []
    for options in OPTION_SETS:  # the references, uninterrupted; the second stays as the "old" output
        subprocess.run(mosaic_command(library, output, options), env=cli_env(), cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        refs.append(output_digest(output))
    current = 1  # the option set of the output in place
    triggers = triggers or TRIGGERS[fmt]
    for round_no in range(kills):
        trigger = triggers[round_no % len(triggers)]
        attempt = 1 - current
        killed, fired = run_and_kill(mosaic_command(library, output, OPTION_SETS[attempt]), output, trigger, rng,
                                     max_delay)
        label = f"round {round_no} ({fired})"
        digest = output_digest(output)
        if not killed:
            figures.finished += 1
            if digest != refs[attempt]:
                figures.violations.append(f"{label}: a finished run's output is not its reference")
            current = attempt
        else:
            figures.kills += 1
            figures.by_trigger[fired] += 1
            figures.scratch_left += len(scratch_entries(folder))
            if digest == refs[current]:
                figures.old_whole += 1
            elif digest == refs[attempt]:
                figures.new_whole += 1
            elif fmt == "dzi" and not output.exists() and _staged_complete(folder, output):
                figures.mid_install += 1
            else:
                figures.violations.append(f"{label}: the output is neither the old one nor the new one, whole "
                                          f"({'present' if output.exists() else 'absent'}, scratch "
                                          f"{scratch_entries(folder)})")
        # the next run, to completion: it cleans (or finishes) what the kill left, then writes its own
        nxt = 1 - current if killed else attempt
        res = subprocess.run(mosaic_command(library, output, OPTION_SETS[nxt]), env=cli_env(), cwd=REPO,
                             capture_output=True, text=True)
        if res.returncode != 0:
            figures.violations.append(f"{label}: the next run failed: {res.stderr.strip()[-300:]}")
        elif output_digest(output) != refs[nxt]:
            figures.violations.append(f"{label}: the next run's output is not its reference")
        left = scratch_entries(folder)
        figures.debris_after_next += len(left)
        if left:
            figures.violations.append(f"{label}: scratch left after the next run: {left}")
        current = nxt
        if progress:
            progress(f"{label}: killed={killed}, old/new/mid {figures.old_whole}/{figures.new_whole}/"
                     f"{figures.mid_install}, violations {len(figures.violations)}")
    figures.seconds = time.monotonic() - started
    return figures
