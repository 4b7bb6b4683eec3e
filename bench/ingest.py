"""Ingest benchmark: the project's pipeline against the card's recipe and the decode floor.

Real-imagery tiles (textured Blue Marble crops, see :mod:`bench.common`), as PNG and as JPEG,
go into an empty library with the shipped centroids, in several ways:

(a) ``card``: the dataset card's recipe as the card runs it (``bench/card_recipe.py``), one tile
    at a time, single process: PIL open, 64x64 resize, mean, ``skimage.color.rgb2lab``,
    ``cKDTree.query`` (the tree built once), cap check, ``imagehash.phash``, duplicate check, the
    file into its bucket (a 256x256 RGB PNG's own bytes, as the card moves the downloaded file;
    other input encoded), one INSERT + commit per tile;
(b) ``pipeline``: ``Library.create`` + ``ingest(lib, [folder], workers=2)`` (and ``workers=1``);
(c) ``floor``: open and fully decode each tile, nothing else, single process;
(d) ``reject``: the same tiles again into the library of (b) with every bucket full (cap set
    to 1 after the first pass), i.e. the cheapest path a tile can take through the pipeline.

Targets (issue 6): (b) >= 5x (a) on PNG input; (b) >= 85% of twice (c)'s per-core rate on the
2-core machine (the pipeline bound by decoding); (d) close to the decode floor (same 85%).

(e) ``fresh``: what a user runs, each a new process: ``python -m builder ingest`` against
    ``python bench/card_recipe.py`` on the same PNG tiles, interleaved, medians; wall time and the
    CPU of the whole process tree (pool workers included).  Targets (issue 22): wall at least 5x
    faster, CPU at most half the recipe's.  Beside them, in this process, the CPU floor: reading,
    decoding (libspng), the card's two resizes, the thumbnail and the staging copy of the same
    tiles and nothing else, the least CPU any ingest built on these decoders and resizes needs.

Run: ``python bench/ingest.py`` (3000 tiles, 3 repeats, a few minutes; the first run also
generates and caches the tiles), ``--quick`` for a smoke run.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

try:
    from bench import common
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path, the repo is not (yet)
    import common  # type: ignore[no-redef]
try:
    from bench.card_recipe import card_recipe_ingest
except ModuleNotFoundError:
    from card_recipe import card_recipe_ingest  # type: ignore[no-redef]

from builder.core import db  # noqa: E402  (common put the repo on sys.path)
from builder.core.layout import SHIPPED_CENTROIDS  # noqa: E402
from builder.core.library import Library  # noqa: E402
from builder.ops.ingest import ingest  # noqa: E402

BENCH = "ingest"


# ---------------------------------------------------------------------------------------------
# (a) the card's recipe, literally
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# (b) the pipeline, (c) the decode floor, (d) the reject path
# ---------------------------------------------------------------------------------------------


def pipeline_ingest(folder: Path, root: Path, workers: int) -> tuple[common.Timing, Counter, int]:
    """``Library.create`` + ``ingest(lib, ...)``: timing, stored rows, accepted count."""
    timing, report = common.timed_cpu(lambda: _create_and_ingest(folder, root, workers))
    with Library.open(root, readonly=True) as lib:
        stored = Counter(lib.conn.execute("SELECT bucket_id, phash FROM tiles").fetchall())
    return timing, stored, report.accepted


def _create_and_ingest(folder: Path, root: Path, workers: int):
    with Library.create(root) as lib:
        return ingest(lib, [folder], workers=workers, progress=False)


def decode_floor(paths: list[Path]) -> common.Timing:
    """Open and fully decode every tile in this process; nothing else."""
    from PIL import Image

    def run():
        for path in paths:
            with Image.open(path) as img:
                img.load()

    timing, _ = common.timed_cpu(run)
    return timing


def steps_floor(paths: list[Path], temp: Path) -> common.Timing:
    """What no ingest of these tiles can skip, in this process, no overhead: read each file,
    decode it once (the project's decoder: libspng for the stored form), the card's two resizes
    (the 64x64 mean and the pHash's 32x32 grey), the thumbnail, and the file copied into ``temp``
    (written and renamed, as a tile is staged).  Imports, SQLite, the pool and Python's per-tile
    work are left out: the CPU the fresh ``ingest`` could reach with every overhead removed."""
    from builder.assign.phash import phash_pixels
    from builder.assign.pipeline import mean_rgb_64
    from builder.core.decode import decode_tile
    from builder.core.layout import THUMB_SIZE, TILE_SIZE

    temp.mkdir(parents=True, exist_ok=True)

    def run():
        for path in paths:
            data = path.read_bytes()
            image = decode_tile(data).image
            mean_rgb_64(image)
            phash_pixels(image)
            image.reduce(TILE_SIZE // THUMB_SIZE).tobytes()
            part = temp / f"{path.stem}.part"
            part.write_bytes(data)
            os.replace(part, temp / path.name)

    timing, _ = common.timed_cpu(run)
    shutil.rmtree(temp)
    return timing


def fill_every_bucket(root: Path) -> None:
    """Set the library's cap to 1: every bucket that holds a tile is now full."""
    conn = sqlite3.connect(root / "tiles.db")
    try:
        with conn:
            db.set_meta(conn, "cap", "1")
    finally:
        conn.close()


def reject_ingest(folder: Path, root: Path, workers: int) -> common.Timing:
    """Ingest ``folder`` again into the (full) library at ``root``; every tile must bounce."""

    def run():
        with Library.open(root) as lib:
            return ingest(lib, [folder], workers=workers, progress=False)

    timing, report = common.timed_cpu(run)
    if report.accepted or set(report.rejected) - {"bucket_full"}:
        raise RuntimeError(f"reject pass should only see full buckets, got {report.summary()}")
    return timing


# ---------------------------------------------------------------------------------------------
# The bench
# ---------------------------------------------------------------------------------------------


def bench_format(fmt: str, n: int, repeats: int, card_repeats: int, cache: Path, work: Path,
                 workers: int) -> list[common.Row]:
    folder = common.tile_folder(n, fmt, cache=cache)
    paths = common.tile_paths(folder)
    centroids = np.load(SHIPPED_CENTROIDS, allow_pickle=False)
    label = fmt.upper()
    state: dict = {"round": 0}

    def fresh(name: str) -> Path:
        return work / f"{fmt}_{name}_{state['round']}_{uuid.uuid4().hex[:6]}" / "mosaic_library"

    def step_floor() -> common.Timing:
        state["round"] += 1
        return decode_floor(paths)

    def step_card() -> common.Timing:
        root = fresh("card")
        timing, stored = common.timed_cpu(lambda: card_recipe_ingest(paths, root, centroids))
        state["card_rows"] = stored
        shutil.rmtree(root.parent)
        return timing

    def step_pipe() -> common.Timing:
        root = fresh("pipe")
        timing, stored, accepted = pipeline_ingest(folder, root, workers)
        state["pipe_rows"], state["accepted"] = stored, accepted
        fill_every_bucket(root)
        state["full_root"] = root
        return timing

    def step_reject() -> common.Timing:
        root = state.pop("full_root")
        timing = reject_ingest(folder, root, workers)
        shutil.rmtree(root.parent)
        return timing

    common.log(f"ingest {label}: {n} tiles; rounds: floor/pipeline w={workers}/reject x{repeats}, card x{card_repeats}")
    with common._Heartbeat(f"ingest {label}"):
        runs = common.interleaved(
            {"floor": repeats, "card": card_repeats, "pipe": repeats, "reject": repeats},
            {"floor": step_floor, "card": step_card, "pipe": step_pipe, "reject": step_reject},
        )
    same = state["card_rows"] == state["pipe_rows"]
    if not same:
        common.log(f"WARNING {label}: pipeline and card recipe stored different rows")
    agree = (f"{state['accepted']}/{n} accepted; stored (bucket, phash) rows "
             f"{'identical to' if same else 'DIFFER from'} the card recipe's")
    rate = {k: common.samples(n / t.wall for t in v) for k, v in runs.items()}
    cpu = {k: common.samples(t.cpu / n * 1e3 for t in v) for k, v in runs.items()}
    floor2 = common.Samples([2 * v for v in rate["floor"].values])

    def spread(*xs: common.Samples) -> float:
        return max(x.spread for x in xs)

    cpu_note = ("CPU ms per tile summed over all processes: floor/pipeline is the per-core efficiency, "
                "i.e. what 'vs 2x floor' gives on an idle 2-core machine")
    return [
        common.Row(BENCH, f"{label} accept: pipeline vs card", f"card recipe x{card_repeats}", rate["card"].median,
                   f"ingest w={workers}", rate["pipe"].median, "tiles/s", target=5.0 if fmt == "png" else None,
                   note=agree, repeats=repeats, spread=spread(rate["card"], rate["pipe"])),
        common.Row(BENCH, f"{label} accept: cpu per tile vs card", f"card recipe x{card_repeats}",
                   cpu["card"].median, f"ingest w={workers}", cpu["pipe"].median, "cpu ms", higher_is_better=False,
                   note="the pipeline spreads its CPU over 2 cores: on an idle machine the wall ratio is ~2x this",
                   repeats=repeats, spread=spread(cpu["card"], cpu["pipe"])),
        common.Row(BENCH, f"{label} accept: pipeline vs 2x floor", "2x decode 1 proc", floor2.median,
                   f"ingest w={workers}", rate["pipe"].median, "tiles/s", target=0.85,
                   repeats=repeats, spread=spread(rate["floor"], rate["pipe"])),
        common.Row(BENCH, f"{label} accept: cpu per tile", "decode 1 proc", cpu["floor"].median,
                   f"ingest w={workers}", cpu["pipe"].median, "cpu ms", higher_is_better=False, target=0.85,
                   note=cpu_note, repeats=repeats, spread=spread(cpu["floor"], cpu["pipe"])),
        common.Row(BENCH, f"{label} reject (all full) vs 2x floor", "2x decode 1 proc", floor2.median,
                   f"ingest w={workers}", rate["reject"].median, "tiles/s", target=0.85,
                   repeats=repeats, spread=spread(rate["floor"], rate["reject"])),
        common.Row(BENCH, f"{label} reject (all full): cpu per tile", "decode 1 proc", cpu["floor"].median,
                   f"ingest w={workers}", cpu["reject"].median, "cpu ms", higher_is_better=False, target=0.85,
                   repeats=repeats, spread=spread(cpu["floor"], cpu["reject"])),
    ]


# ---------------------------------------------------------------------------------------------
# (e) fresh processes: what a user runs
# ---------------------------------------------------------------------------------------------


def bench_fresh(n: int, repeats: int, cache: Path, work: Path) -> list[common.Row]:
    """``python -m builder ingest`` against ``python bench/card_recipe.py``, each a fresh process
    on the same ``n`` PNG tiles into a new library: start-up, imports and the pool included.
    The project's library is made by ``init`` first (not timed); the card's script makes its own."""
    import sys

    folder = common.tile_folder(n, "png", cache=cache)
    env = {**os.environ, "PYTHONPATH": str(common.REPO), "TQDM_DISABLE": "1"}
    recipe = Path(__file__).resolve().parent / "card_recipe.py"
    state = {"round": 0}

    def fresh() -> Path:
        state["round"] += 1
        return work / f"fresh_{state['round']}_{uuid.uuid4().hex[:6]}" / "mosaic_library"

    def run(argv: list[str]) -> tuple[float, float]:
        measured = common.run_measured(argv, env=env)
        if measured["returncode"] != 0:
            raise RuntimeError(f"{argv[:4]} failed: {measured['output'][-2000:]}")
        return measured["seconds"], measured["cpu_seconds"]

    def step_pipe() -> tuple[float, float]:
        root = fresh()
        subprocess.run([sys.executable, "-m", "builder", "init", "--library", str(root)], env=env, check=True,
                       capture_output=True)
        seconds = run([sys.executable, "-m", "builder", "ingest", "--library", str(root), str(folder)])
        shutil.rmtree(root.parent)
        return seconds

    def step_card() -> tuple[float, float]:
        root = fresh()
        seconds = run([sys.executable, str(recipe), str(folder), str(root)])
        shutil.rmtree(root.parent)
        return seconds

    def step_help() -> tuple[float, float]:
        return run([sys.executable, "-m", "builder", "--help"])

    def step_floor() -> tuple[float, float]:
        timing = steps_floor(common.tile_paths(folder), fresh().parent)
        return timing.wall, timing.cpu

    common.log(f"fresh processes: {n} PNG tiles, x{repeats}")
    runs = common.interleaved(repeats, {"card": step_card, "pipe": step_pipe, "help": step_help, "floor": step_floor})
    card, pipe, help_ = (common.samples(wall for wall, _cpu in runs[k]) for k in ("card", "pipe", "help"))
    card_cpu, pipe_cpu, floor_cpu = (common.samples(cpu for _wall, cpu in runs[k]) for k in ("card", "pipe", "floor"))
    return [
        common.Row(BENCH, f"PNG fresh process: ingest vs card ({n} tiles)", "card_recipe.py", card.median,
                   "python -m builder ingest", pipe.median, "s", higher_is_better=False, target=5.0,
                   note="each a new process: interpreter, imports, pool start and library open included",
                   repeats=repeats, spread=max(card.spread, pipe.spread)),
        common.Row(BENCH, f"PNG fresh process: CPU, ingest vs card ({n} tiles)", "card_recipe.py", card_cpu.median,
                   "python -m builder ingest", pipe_cpu.median, "cpu s", higher_is_better=False, target=2.0,
                   note="user + system of every process; on an idle 2-core machine the wall ratio is up to ~2x this",
                   repeats=repeats, spread=max(card_cpu.spread, pipe_cpu.spread)),
        common.Row(BENCH, f"PNG CPU floor vs card ({n} tiles)", "card_recipe.py", card_cpu.median,
                   "read+decode+2 resizes+thumb+copy", floor_cpu.median, "cpu s", higher_is_better=False,
                   note="the steps no ingest can skip, one process, no imports/SQLite/pool/Python overhead: "
                        "the best CPU ratio any ingest built on libspng and Pillow's resizes could reach",
                   repeats=repeats, spread=max(card_cpu.spread, floor_cpu.spread)),
        common.Row(BENCH, f"PNG fresh process: CPU, ingest vs floor ({n} tiles)", "floor (above)", floor_cpu.median,
                   "python -m builder ingest", pipe_cpu.median, "cpu s", higher_is_better=False,
                   note="what ingest spends beyond the floor: imports, pool, SQLite, commit protocol, per-tile Python",
                   repeats=repeats, spread=max(floor_cpu.spread, pipe_cpu.spread)),
        common.Row(BENCH, "python -m builder --help", "0.3 s (issue 13)", 0.3, "fresh process", help_.median, "s",
                   higher_is_better=False, target=1.0, repeats=repeats, spread=help_.spread),
    ]


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="tiles per format (default 2000, quick 48)")
    parser.add_argument("--card-repeats", type=int, default=None,
                        help="rounds of the in-process card recipe (default 1)")
    parser.add_argument("--formats", default="png,jpg", help="comma-separated: png,jpg")
    parser.add_argument("--workers", type=int, default=2, help="pipeline workers (default 2, the machine's cores)")
    parser.add_argument("--fresh-n", type=int, default=None,
                        help="PNG tiles of the fresh-process comparison (default 1500, quick 48; 0 skips it)")
    args = parser.parse_args(argv)
    n = args.n or (48 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    card_repeats = args.card_repeats or (1 if args.quick else min(repeats, 1))
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ingest_", dir=args.cache))
    rows: list[common.Row] = []
    try:
        fresh_n = args.fresh_n if args.fresh_n is not None else (48 if args.quick else 1500)
        if fresh_n:
            rows += bench_fresh(fresh_n, repeats, args.cache, work)
        for fmt in formats:
            rows += bench_format(fmt, n, repeats, card_repeats, args.cache, work, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common.report(rows, title=f"ingest: {n} tiles per format, median of {repeats} rounds ({common.machine_note()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
