"""Synthesize benchmark: every core busy, the same tiles whatever the number of processes, and the
default uses per source.

The library: ``--real`` real tiles harvested from the ``earth`` source (zoom 6, then 7 and 8, as
the demo does; cached in the bench cache).  Each run works on a fresh copy, in a fresh process:

(a) ``synthesize`` of ``--n`` empty buckets (the first ones, nearest colours or not), one worker
    against two (``python -c`` calling ``builder.ops.synthesize.synthesize(lib, buckets=...,
    workers=W)``: the command has no option to limit the buckets), interleaved, medians: wall
    time, CPU of the whole process tree, and CPU over wall (cores kept busy; target 1.7 on two
    cores); the stored tiles must be the same for both;
(b) (not with ``--quick``) ``python -m builder synthesize`` with its defaults against
    ``--max-uses 1`` on the whole library: the share of the synthetic tiles that are textured
    (target: at least 95% with the defaults, issue 20).

Run: ``python bench/synthesize.py`` (600 tiles, 2,000 buckets, 3 rounds: about 15 minutes on two
cores), ``--quick`` for a smoke run.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
from contextlib import closing
from pathlib import Path

try:
    from bench import common
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    import common  # type: ignore[no-redef]

BENCH = "synthesize"
TARGET_BUSY = 1.7  # CPU over wall with two workers on two cores (issue 22)
TARGET_TEXTURED = 95.0  # % of synthetic tiles textured with the defaults (issue 20)

_RUN = """
import json, sys
from builder.core.library import Library
from builder.ops.synthesize import synthesize
root, workers, buckets = sys.argv[1], int(sys.argv[2]), json.loads(open(sys.argv[3]).read())
with Library.open(root) as lib:
    report = synthesize(lib, buckets=buckets, workers=workers, progress=False)
print(json.dumps(report.as_dict()))
"""


def harvested_library(cache: Path, real: int) -> Path:
    """A library of about ``real`` earth tiles (made once, then reused from ``cache``)."""
    root = cache / f"synth_library_{real}" / "mosaic_library"
    if (root / "tiles.db").is_file():
        return root
    from builder.acquire.harvest import harvest
    from builder.core.library import Library

    common.log(f"harvesting a {real}-tile library from earth into {root}")
    if root.parent.exists():
        shutil.rmtree(root.parent)
    part = root.parent.with_name(root.parent.name + ".part") / "mosaic_library"
    if part.parent.exists():
        shutil.rmtree(part.parent)
    with Library.create(part) as lib:
        for zoom in (6, 7, 8):
            have = int(lib.bucket_counts().sum())
            if have >= real:
                break
            harvest(lib, "earth", plan="all", zoom=zoom, threads=4, batch=100, max_tiles=real - have, seed=0,
                    progress=False)
    part.parent.rename(root.parent)
    return root


def empty_buckets(root: Path, n: int) -> list[int]:
    with closing(sqlite3.connect(root / "tiles.db")) as conn:
        held = {b for (b,) in conn.execute("SELECT DISTINCT bucket_id FROM tiles")}
    return [b for b in range(5000) if b not in held][:n]


def synthetic_rows(root: Path) -> list[tuple]:
    with closing(sqlite3.connect(root / "tiles.db")) as conn:
        return sorted(conn.execute("SELECT bucket_id, phash, mean_l, mean_a, mean_b, derived_from FROM tiles "
                                   "WHERE synthetic = 1").fetchall(), key=repr)


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--real", type=int, default=None, help="real tiles in the library (default 600, quick 60)")
    parser.add_argument("--n", type=int, default=None, help="buckets synthesized in (a) (default 2000, quick 40)")
    args = parser.parse_args(argv)
    real = args.real or (60 if args.quick else 600)
    n = args.n or (40 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    args.cache.mkdir(parents=True, exist_ok=True)
    library = harvested_library(args.cache, real)
    work = Path(tempfile.mkdtemp(prefix="synthesize_", dir=args.cache))
    env = {**os.environ, "PYTHONPATH": str(common.REPO), "TQDM_DISABLE": "1"}
    buckets_file = work / "buckets.json"
    buckets_file.write_text(json.dumps(empty_buckets(library, n)))
    made: dict[int, list] = {}
    state = {"round": 0}

    def copy() -> Path:
        state["round"] += 1
        root = work / f"run_{state['round']}" / "mosaic_library"
        shutil.copytree(library, root)
        return root

    def step(workers: int):
        def run() -> tuple[float, float]:
            root = copy()
            measured = common.run_measured([sys.executable, "-c", _RUN, str(root), str(workers), str(buckets_file)],
                                           env=env)
            if measured["returncode"] != 0:
                raise RuntimeError(f"synthesize w={workers} failed: {measured['output'][-2000:]}")
            made[workers] = synthetic_rows(root)
            shutil.rmtree(root.parent)
            return measured["seconds"], measured["cpu_seconds"]
        return run

    try:
        common.log(f"synthesize: {len(json.loads(buckets_file.read_text()))} buckets from {real} real tiles, "
                   f"w=1 and w=2, x{repeats}")
        runs = common.interleaved(repeats, {"w1": step(1), "w2": step(2)})
        wall = {k: common.samples(w for w, _c in v) for k, v in runs.items()}
        busy = {k: common.samples(c / w for w, c in v) for k, v in runs.items()}
        cpu = {k: common.samples(c for _w, c in v) for k, v in runs.items()}
        same = made[1] == made[2]
        note = (f"{len(made[2])} tiles; stored tiles (bucket, pHash, LAB, source) "
                f"{'identical' if same else 'DIFFER'} for 1 and 2 workers")
        rows = [
            common.Row(BENCH, f"{n} tiles: wall, 2 workers vs 1", "synthesize w=1", wall["w1"].median,
                       "synthesize w=2", wall["w2"].median, "s", higher_is_better=False, note=note,
                       repeats=repeats, spread=max(wall["w1"].spread, wall["w2"].spread)),
            common.Row(BENCH, f"{n} tiles: cores busy (CPU / wall)", "one core", 1.0, "synthesize w=2",
                       busy["w2"].median, "cores", target=TARGET_BUSY, repeats=repeats, spread=busy["w2"].spread,
                       note="user + system of every process over wall time; on a shared machine it is lower"),
            common.Row(BENCH, f"{n} tiles: CPU, 2 workers vs 1", "synthesize w=1", cpu["w1"].median,
                       "synthesize w=2", cpu["w2"].median, "cpu s", higher_is_better=False, repeats=repeats,
                       spread=max(cpu["w1"].spread, cpu["w2"].spread)),
        ]
        if not args.quick:
            rows += textured_rows(library, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common.report(rows, title=f"synthesize: {real} real tiles, median of {repeats} rounds ({common.machine_note()})")
    return 0


def textured_rows(library: Path, work: Path, env: dict) -> list:
    """(b): the whole library's empty buckets, defaults against --max-uses 1."""
    shares = {}
    for name, extra in (("defaults", []), ("max_uses_1", ["--max-uses", "1"])):
        root = work / name / "mosaic_library"
        shutil.copytree(library, root)
        measured = common.run_measured([sys.executable, "-m", "builder", "synthesize", "--library", str(root),
                                        "--json", *extra], env=env)
        if measured["returncode"] != 0:
            raise RuntimeError(f"synthesize {extra} failed: {measured['output'][-2000:]}")
        report = common.json_object(measured["output"])
        shares[name] = (100.0 * report["textured"] / max(1, report["made"]), report, measured["seconds"])
        shutil.rmtree(root.parent)
    share, report, seconds = shares["defaults"]
    capped = shares["max_uses_1"][0]
    return [
        common.Row(BENCH, "whole library: textured share, defaults", f"target {TARGET_TEXTURED:.0f}%",
                   TARGET_TEXTURED, "synthesize (defaults)", share, "% textured", target=1.0,
                   note=(f"{report['made']} made, {report['flat']} flat, uses limit {report['uses_limit']} over "
                         f"{report['usable_sources']} textured sources, {seconds:.0f} s; --max-uses 1: "
                         f"{capped:.1f}% textured")),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
