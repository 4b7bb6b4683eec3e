"""Shared helpers for the benchmarks in ``bench/``: real-imagery tiles, timing, fresh-process
measurement and the one table format every bench prints.

A bench compares the project's figure with a baseline measured in the same run (never a
number from an old run or a spec sheet) and prints both with their ratio.  Nothing here
asserts on time: the machine has 2 cores shared with other work, so every figure is the
median of repeats and the table says how many.

Protocol for ``bench/run_all.py``: a bench calls :func:`report` with its :class:`Row` list.
:func:`report` prints the table and, when ``MOSAIC_BENCH_JSON`` names a file, appends the rows
to it as JSON lines; the runner reads that file and prints every bench in one table.  A bench
that does not use :func:`report` still runs under the runner; its output is shown verbatim.

Every bench accepts ``--quick`` (tiny sizes, one repeat: a smoke run, figures meaningless).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BLUEMARBLE = REPO / "data" / "bluemarble_5400x2700.jpg"
DEFAULT_CACHE = Path(os.environ.get("MOSAIC_BENCH_CACHE", "/tmp/mosaic_bench_cache"))
JSON_ENV = "MOSAIC_BENCH_JSON"
TILE = 256
# Crops narrower than a tile are upscaled (blurry, compress too well); wider ones are
# downscaled, which keeps the fine texture of z15 imagery.  Flat crops (open ocean) are
# skipped: real tiles are textured, and a texture-free PNG decodes unrealistically fast.
CROP_SIDES = (192, 640)
MIN_GREY_STD = 8.0
JPEG_QUALITY = 90
FORMATS = ("png", "jpg")


# ---------------------------------------------------------------------------------------------
# Real-imagery tiles
# ---------------------------------------------------------------------------------------------

_WORLD = None


def _world():
    """The Blue Marble image, decoded once per process."""
    global _WORLD
    if _WORLD is None:
        from PIL import Image

        with Image.open(BLUEMARBLE) as img:
            _WORLD = img.convert("RGB")
    return _WORLD


def textured_crop(index: int, seed: int = 0):
    """Tile number ``index`` of the deterministic sequence for ``seed`` (a 256x256 RGB image).

    Each index has its own random stream, so any subset is reproducible and generation can
    be split across processes in any way.
    """
    from PIL import Image

    world = _world()
    rng = np.random.default_rng([seed, index])
    while True:
        side = int(rng.integers(CROP_SIDES[0], CROP_SIDES[1] + 1))
        x = int(rng.integers(0, world.width - side))
        y = int(rng.integers(0, world.height - side))
        crop = world.crop((x, y, x + side, y + side))
        if side != TILE:
            crop = crop.resize((TILE, TILE), Image.Resampling.LANCZOS)
        if float(np.asarray(crop.convert("L")).std()) >= MIN_GREY_STD:
            return crop


def tile_name(index: int, fmt: str) -> str:
    return f"tile_{index:06d}.{fmt}"


def _write_tiles(folder: str, fmt: str, indices: Sequence[int], seed: int) -> int:
    for i in indices:
        crop = textured_crop(i, seed)
        path = Path(folder) / tile_name(i, fmt)
        tmp = path.with_suffix(".part")
        if fmt == "png":
            crop.save(tmp, format="PNG")  # Pillow's defaults, as the card's harvester wrote them
        else:
            crop.save(tmp, format="JPEG", quality=JPEG_QUALITY)
        os.replace(tmp, path)
    return len(indices)


def tile_folder(n: int, fmt: str, seed: int = 0, cache: Path = DEFAULT_CACHE, workers: int = 2) -> Path:
    """A folder holding exactly ``n`` textured Blue Marble tiles in ``fmt`` ("png" or "jpg").

    Cached under ``cache`` (tiles are a pure function of seed and index): the first run pays
    for the PNG encodes (about 15 ms a tile), later runs and smaller ``n`` reuse them.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    folder = Path(cache) / f"tiles_{fmt}_seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(n) if not (folder / tile_name(i, fmt)).is_file()]
    if missing:
        log(f"generating {len(missing)} {fmt.upper()} tiles in {folder} (cached for later runs)")
        if workers > 1 and len(missing) >= 64:
            import multiprocessing

            parts = [missing[k::workers] for k in range(workers)]
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                list(pool.map(_write_tiles, [str(folder)] * workers, [fmt] * workers, parts, [seed] * workers))
        else:
            _write_tiles(str(folder), fmt, missing, seed)
    view = Path(cache) / f"view_{fmt}_seed{seed}_n{n}"
    if not view.is_dir() or len(list(view.iterdir())) != n:
        _link_view(folder, view, [tile_name(i, fmt) for i in range(n)])
    return view


def _link_view(source: Path, view: Path, names: list[str]) -> None:
    """A folder of hard links to the first ``n`` tiles: ingest takes folders, not lists."""
    import shutil

    if view.exists():
        shutil.rmtree(view)
    tmp = view.with_name(view.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in names:
        try:
            os.link(source / name, tmp / name)
        except OSError:
            shutil.copyfile(source / name, tmp / name)
    os.replace(tmp, view)


def tile_paths(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix in (".png", ".jpg"))


def encode(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG" if fmt == "png" else "JPEG", **({} if fmt == "png" else {"quality": JPEG_QUALITY}))
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Repeated measurements of one quantity; the table shows the median."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        if len(self.values) < 2 or not self.median:
            return 0.0
        return (max(self.values) - min(self.values)) / self.median


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have been reaped
    (a closed process pool's workers included)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Timing(NamedTuple):
    """Wall and CPU seconds of one run (CPU summed over every process that took part)."""

    wall: float
    cpu: float


def timed_cpu(fn: Callable[[], object]) -> tuple[Timing, object]:
    """Wall and CPU time of ``fn()``.  CPU time barely moves when other work shares the cores,
    so it shows what the wall-clock ratios would be on an idle machine."""
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    result = fn()
    return Timing(time.perf_counter() - wall0, cpu_seconds() - cpu0), result


class Measured(dict):
    """What :func:`run_measured` saw of one fresh process: seconds, peak RSS, exit code, output."""


# A small Python process starts the measured command and reports its wall time and the kernel's
# maxrss of it.  Needed because a process exec'd straight from this (large) one inherits this
# process's RSS high-water mark in its own ru_maxrss: the kernel carries the pre-exec peak over.
_LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as fh:
    fh.write(f"{seconds} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(code)
"""


def run_measured(argv: Sequence[str], env: dict | None = None, cwd: str | None = None,
                 interval: float = 0.02) -> Measured:
    """Run ``argv`` in a fresh process; wall time, peak memory of the process tree, ``maxrss``.

    ``tree_peak_mb`` samples the summed RSS of the process and all its descendants every
    ``interval`` seconds (``num_proc`` workers included).  Pages a forked worker shares with
    its parent count in both, so for a multi-process run it is an upper bound.  RSS, not PSS:
    reading PSS (``/proc/PID/smaps``) costs about 2 ms per process per sample, which on two
    cores would slow the run being measured.  ``maxrss_mb`` is the kernel's exact peak RSS of
    the largest single process in the tree.  ``seconds`` is the command's wall time,
    ``cpu_seconds`` the user + system CPU of the whole tree (every process reaped: pool workers too).
    """
    import subprocess
    import tempfile

    import psutil

    peak = 0
    with tempfile.TemporaryDirectory(prefix="bench_run_") as tmp:
        result = Path(tmp) / "result"
        log_path = Path(tmp) / "output.log"
        with open(log_path, "w+b") as log_fh:
            launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(result), *argv], env=env, cwd=cwd,
                                        stdout=log_fh, stderr=subprocess.STDOUT)
            ps = psutil.Process(launcher.pid)
            while launcher.poll() is None:
                total = 0
                try:
                    for p in ps.children(recursive=True):  # the command's tree, not the launcher
                        try:
                            total += p.memory_info().rss
                        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                            pass
                except psutil.NoSuchProcess:
                    pass
                peak = max(peak, total)
                time.sleep(interval)
            log_fh.seek(0)
            output = log_fh.read().decode("utf-8", "replace")
        seconds, maxrss, cpu = (result.read_text().split() if result.is_file() else ("nan", "nan", "nan"))
    return Measured(
        seconds=float(seconds),
        cpu_seconds=float(cpu),
        tree_peak_mb=peak / 2**20,
        maxrss_mb=float(maxrss) / 1024,
        returncode=launcher.returncode,
        output=output,
    )


def json_object(output: str) -> dict:
    """The JSON object a ``--json`` command printed (indented, perhaps among log lines)."""
    import json

    start = output.find("{")
    if start < 0:
        raise ValueError(f"no JSON object in the output: {output[-500:]!r}")
    return json.JSONDecoder().raw_decode(output[start:])[0]


def log(message: str) -> None:
    """Progress notes go to stderr so the table on stdout stays clean."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine_note() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return f"{os.cpu_count()} cores, load {load:.2f} at start"


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One comparison: the project's figure against a baseline measured in the same run.

    ``ratio`` is ``value / base_value`` when ``higher_is_better`` (rates), else
    ``base_value / value`` (times, memory): above 1 always means the project does better.
    ``target`` is the minimum ratio the issue asks for (None: reported, no target).
    """

    bench: str
    case: str
    baseline: str
    base_value: float
    project: str
    value: float
    unit: str
    higher_is_better: bool = True
    target: float | None = None
    note: str = ""
    repeats: int = 1
    spread: float = 0.0

    @property
    def ratio(self) -> float:
        try:
            return self.value / self.base_value if self.higher_is_better else self.base_value / self.value
        except ZeroDivisionError:
            return math.inf

    @property
    def status(self) -> str:
        if self.target is None:
            return "-"
        return "met" if self.ratio >= self.target else "MISSED"

    def as_dict(self) -> dict:
        data = asdict(self)
        data.update(ratio=self.ratio, status=self.status)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Row:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


HEADERS = ("bench", "case", "baseline", "base", "project", "value", "unit", "ratio", "target", "status", "n", "noise")


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    """A plain fixed-width table (readable in a terminal, a log and a commit message)."""
    cells = [
        (
            r.bench, r.case, r.baseline, _num(r.base_value), r.project, _num(r.value), r.unit,
            f"{r.ratio:.2f}x", "-" if r.target is None else f">= {r.target:.2f}x", r.status,
            str(r.repeats), f"{r.spread * 100:.0f}%",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(HEADERS)]
    right = {3, 5, 7, 10, 11}

    def line(values) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))

    out = [line(HEADERS), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    notes = [f"  [{r.bench}/{r.case}] {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def report(rows: Sequence[Row], title: str = "") -> None:
    """Print the table; append the rows to ``$MOSAIC_BENCH_JSON`` for ``bench/run_all.py``."""
    if title:
        print(title)
    print(format_table(rows), flush=True)
    target = os.environ.get(JSON_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row.as_dict()) + "\n")


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every bench shares: ``--quick``, ``--repeats``, ``--cache``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement (median is shown)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where generated tiles are kept")
    return parser


def interleaved(repeats: int | dict[str, int], steps: dict[str, Callable[[], object]]) -> dict[str, list]:
    """Run each step once per round, round after round, so slow spells from other load on the
    machine hit every step alike instead of one step's whole series.  ``repeats`` may give a
    step fewer rounds than the others (a slow baseline); returns each step's results."""
    counts = repeats if isinstance(repeats, dict) else dict.fromkeys(steps, repeats)
    results: dict[str, list] = {name: [] for name in steps}
    for round_ in range(max(counts.values())):
        for name, step in steps.items():
            if round_ < counts.get(name, 0):
                results[name].append(step())
    return results


def samples(values) -> Samples:
    return Samples([float(v) for v in values])


class _Heartbeat:
    """Prints a dot to stderr now and then on long steps (no tqdm: stdout is the table)."""

    def __init__(self, label: str, every: float = 30.0) -> None:
        self.label, self.every = label, every
        self._stop = threading.Event()

    def __enter__(self):
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def _run(self):
        while not self._stop.wait(self.every):
            log(f"... still running: {self.label}")
