"""``demo``: the whole job offline, in one command, on the embedded Blue Marble imagery.

Steps, each printed with where its result is:

1. ``init`` a library at ``OUTPUT/mosaic_library`` (or reuse the one a previous demo made);
2. ``harvest`` from the ``earth`` source (Web-Mercator tiles rendered from
   ``data/bluemarble_5400x2700.jpg``, no network), both of the card's phases, at ``zoom``
   and, while the library holds fewer than ``max_tiles`` tiles, the next two zooms (the
   plan's regions hold only a few hundred tiles at zoom 6);
3. ``synthesize`` flagged synthetic tiles for every bucket the harvest left empty (colour
   transfer from the harvested tiles, each textured tile used as often as the need asks; skipped
   with ``synthesize=False``);
4. ``verify`` the library against its files (deep: every tile decoded and re-hashed);
5. ``build`` the Hub-ready staging folder (``OUTPUT/staging``; synthetic tiles in its
   ``synthetic`` config);
6. ``report``: figures, contact sheets and ``OUTPUT/report/index.html``;
7. ``mosaic`` of ``data/sample_target.jpg`` (NASA's portrait of astronaut Eileen Collins,
   public domain) to ``OUTPUT/mosaic.png``, and, after a synthesize, the same from real tiles
   only (``OUTPUT/mosaic_real_only.png``): the difference synthetic tiles make, in cells that
   fell back to a neighbouring bucket.

Running it again continues where the last run stopped: the harvest tops the library up to
``max_tiles`` (tiles already tried are never fetched again), the rest is rebuilt.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.defaults import EARTH
from ..core.errors import UsageError
from ..core.layout import CENTROIDS_NAME, SAMPLE_TARGET
from ..core.summary import plural

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = "demo_output"
DEFAULT_MAX_TILES = 1500
DEFAULT_ZOOM = 6
# The plan's regions hold a few hundred tiles at zoom 6; the demo goes one or two zooms deeper
# (same places, finer tiles) until it has --max-tiles.
ZOOM_STEPS = 3
MAX_DEMO_ZOOM = 10
DEFAULT_SEED = 0
MOSAIC_GRID = (48, 48)
MOSAIC_TILE = 32
@dataclass
class DemoResult:
    """Where everything went, and the one-line summaries of each step."""

    output: Path
    library: Path
    staging: Path | None = None
    report: Path | None = None
    mosaic: Path | None = None
    mosaic_real_only: Path | None = None
    steps: list[tuple[str, str]] = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # before/after synthesize: buckets covered, fallback cells
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"demo done in {self.seconds:.0f} s: library {self.library}, staging {self.staging}, "
                f"report {self.report}, mosaic {self.mosaic}")

    def next_commands(self, program: str = "python -m builder") -> list[str]:
        """What to run next on the library the demo made, each naming it with ``--library``
        (the default ``./mosaic_library`` is not where the demo put it)."""
        lib = shlex.quote(str(self.library))
        commands = [f"{program} stats --library {lib}",
                    f"{program} query --library {lib} --hex 2e8b57 --real-only",
                    f"{program} mosaic --library {lib} YOUR_PHOTO.jpg --output my_mosaic.png",
                    f"{program} verify --library {lib}"]
        if self.report is not None:
            commands.append(f"open {shlex.quote(str(self.report))} in a browser: the gallery")
        return commands

    def next_lines(self, program: str = "python -m builder") -> list[str]:
        """The lines printed under the summary: :meth:`next_commands`, indented."""
        return ["next, explore the library:", *(f"  {c}" for c in self.next_commands(program))]

    def as_dict(self) -> dict:
        """JSON-safe: paths as strings (None for a step that did not run), steps in order."""
        paths = {"output": self.output, "library": self.library, "staging": self.staging, "report": self.report,
                 "mosaic": self.mosaic, "mosaic_real_only": self.mosaic_real_only}
        return {**{k: None if v is None else str(v) for k, v in paths.items()},
                "steps": [{"step": name, "summary": line} for name, line in self.steps],
                "figures": self.figures, "next": self.next_commands(), "seconds": round(self.seconds, 3)}


# Progress lines where no bar is shown (a log file, CI): at most one per this many seconds,
# besides the first and the last.
PROGRESS_EVERY = 10.0


class ProgressLines:
    """``on_progress(done, total)`` for a long step, as lines: ``[synthesize] 980 of 4,881 tiles
    (20%), 35 s``, the first at once, then at most one per :data:`PROGRESS_EVERY` seconds, and
    the last; so a demo run in a log or a pipe shows it is alive."""

    def __init__(self, name: str, say: Callable[[str], None], every: float = PROGRESS_EVERY) -> None:
        self.name, self.say, self.every = name, say, every
        self.started = time.perf_counter()
        self.last: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and self.last is not None and now - self.last < self.every:
            return
        self.last = now
        share = f" ({done / total:.0%})" if total else ""
        self.say(f"[{self.name}] {done:,} of {total:,} {'tile' if total == 1 else 'tiles'}{share}, "
                 f"{now - self.started:.0f} s")


def compare_line(with_synthetic, real_only) -> str:
    """The demo's comparison of its two mosaics (``MosaicResult``s): fidelity side by side, then
    the cells that fell back to a neighbouring bucket."""
    cells = real_only.plan.grid.size
    fidelity = ""
    if with_synthetic.fidelity is not None and real_only.fidelity is not None:
        a, b = with_synthetic.fidelity, real_only.fidelity
        fidelity = (f"fidelity (CIEDE2000, lower is better / SSIM, higher is better): with synthetic tiles "
                    f"{a.delta_e:.2f} / {a.ssim:.3f}, real tiles only {b.delta_e:.2f} / {b.ssim:.3f}; ")
    return (f"{fidelity}real tiles only ({real_only.output.name}): {real_only.plan.fallback_cells} of "
            f"{plural(cells, 'cell')} fell back to a neighbouring bucket; with the synthetic tiles "
            f"{with_synthetic.plan.fallback_cells}, {plural(with_synthetic.synthetic_cells, 'cell')} drawn with one")


def _check(max_tiles: int, zoom: int) -> None:
    if not isinstance(max_tiles, int) or max_tiles < 1:
        raise UsageError(f"--max-tiles must be a positive integer, got {max_tiles!r}")
    if not isinstance(zoom, int) or not 2 <= zoom <= MAX_DEMO_ZOOM:
        raise UsageError(f"--zoom for the demo must be within 2..10 (the embedded image's detail), got {zoom!r}")


def run_demo(output: str | os.PathLike = DEFAULT_OUTPUT, max_tiles: int = DEFAULT_MAX_TILES,
             zoom: int = DEFAULT_ZOOM, seed: int = DEFAULT_SEED, workers: int | None = None,
             progress: bool | None = None, say: Callable[[str], None] = print,
             sample: str | os.PathLike = SAMPLE_TARGET, library: str | os.PathLike | None = None,
             threads: int | None = None, synthesize: bool = True) -> DemoResult:
    """Run every step (see the module doc); ``say`` receives one line per step.

    ``workers``: processes of the harvest's assignment pipeline and of ``verify`` (default: one
    per CPU); ``threads``: tile-decoding threads of the report and the mosaic (default: up to 4).
    ``library`` puts the library elsewhere than ``OUTPUT/mosaic_library``; ``synthesize=False``
    leaves out the synthetic tiles (and the real-only mosaic).
    """
    # Imported here: the CLI imports this module for its defaults, and --help stays light.
    from ..acquire.harvest import harvest
    from ..core import db
    from ..core.library import Library
    from ..mosaic import MosaicOptions, mosaic_file
    from ..ops.report import render_report
    from ..ops.synthesize import synthesize as synthesize_tiles
    from ..ops.verify import verify_library
    from ..publish import build_staging

    _check(max_tiles, zoom)
    started = time.perf_counter()
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {output} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    root = Path(library).expanduser() if library is not None else out / "mosaic_library"
    result = DemoResult(out, root)

    def step(name: str, line: str) -> None:
        result.steps.append((name, line))
        say(f"[{name}] {line}")

    if (root / CENTROIDS_NAME).is_file():
        lib = Library.open(root)
        step("init", f"reusing the library at {root}")
    else:
        lib = Library.create(root)
        step("init", f"created {root} with the shipped centroids (seed 0), cap {lib.cap}")
    with lib:
        have = int(lib.bucket_counts().sum())
        if have >= max_tiles:
            step("harvest", f"skipped: the library already holds {have} tiles (--max-tiles {max_tiles})")
        for z in range(zoom, min(zoom + ZOOM_STEPS, MAX_DEMO_ZOOM + 1)):
            if have >= max_tiles:
                break
            report = harvest(lib, EARTH, plan="all", zoom=z, threads=4, batch=100, max_tiles=max_tiles - have,
                             seed=seed, progress=progress, workers=workers)
            have = int(lib.bucket_counts().sum())
            step("harvest", f"{EARTH} zoom {z}: {report.summary()}")
        if synthesize:
            show_bar = sys.stderr.isatty() if progress is None else progress
            made = synthesize_tiles(lib, progress=progress, workers=workers,
                                    on_progress=None if show_bar else ProgressLines("synthesize", say))
            result.figures.update(
                buckets_covered_real=db.synthetic_counts(lib.conn, lib.cap)["buckets_populated_real"],
                buckets_covered=made.buckets_covered_after, synthetic_tiles_made=made.made)
            step("synthesize", made.summary())
        checked = verify_library(lib, deep=True, workers=workers, progress=progress)
        step("verify", checked.summary())
    built = build_staging(root, out / "staging")
    result.staging = built.output
    step("build", built.summary())
    with Library.open(root, readonly=True) as reader:
        rep = render_report(reader, out / "report", progress=progress, threads=threads)
        result.report = rep.index
        step("report", rep.summary())
        options = MosaicOptions(grid=MOSAIC_GRID, tile_size=MOSAIC_TILE, no_repeat_radius=2, threads=threads)
        mos = mosaic_file(reader, sample, out / "mosaic.png", options, progress=progress)
        result.mosaic = mos.output
        step("mosaic", mos.summary())
        if synthesize:
            real = mosaic_file(reader, sample, out / "mosaic_real_only.png", replace(options, real_only=True),
                               progress=progress)
            result.mosaic_real_only = real.output
            result.figures.update(fallback_cells_real_only=real.plan.fallback_cells,
                                  fallback_cells=mos.plan.fallback_cells, synthetic_cells=mos.synthetic_cells)
            if mos.fidelity is not None and real.fidelity is not None:
                result.figures.update(fidelity=mos.fidelity.as_dict(), fidelity_real_only=real.fidelity.as_dict())
            step("compare", compare_line(mos, real))
    result.seconds = time.perf_counter() - started
    return result
