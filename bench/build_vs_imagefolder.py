"""Benchmark ``python -m builder build`` against ``load_dataset("imagefolder") + to_parquet``.

Each variant runs in a fresh process (imports included, caches empty); wall time, CPU time
(user + system of the process and its workers: the fairer figure on a shared machine) and the
peak memory of the whole process tree (sum of PSS, so forked workers' shared pages count once,
sampled every 20 ms) are reported.  Run by hand, never as a timed test::

    python bench/build_vs_imagefolder.py --library /data/mosaic_library --repeat 3

``--make N`` first builds a library of N real-imagery tiles (crops of data/bluemarble) under
``--workdir``; ``--clone K`` multiplies its rows K times with hard-linked files (new ids), for
memory-flatness checks on larger row counts without the ingest cost.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "build-1": "from builder.publish import build_staging; build_staging(LIB, OUT, num_proc=1)",
    "build-2": "from builder.publish import build_staging; build_staging(LIB, OUT, num_proc=2)",
    "imagefolder": (
        "import datasets, os; "
        "ds = datasets.load_dataset('imagefolder', data_dir=LIB, split='train', cache_dir=OUT + '_cache'); "
        "os.makedirs(OUT); ds.to_parquet(OUT + '/train.parquet')"
    ),
}


def tree_pss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # the tree changed while we looked
        return 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def run_variant(code: str, library: Path, out: Path) -> tuple[float, int, float]:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}_cache", ignore_errors=True)
    script = f"LIB, OUT = {str(library)!r}, {str(out)!r}\n{code}\n"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = psutil.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss(proc))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the process and its waited-for workers
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"variant failed:\n{err.decode()[-2000:]}")
    shutil.rmtree(f"{out}_cache", ignore_errors=True)
    return elapsed, peak, cpu


def make_library(workdir: Path, n: int) -> Path:
    sys.path.insert(0, str(REPO))
    from PIL import Image

    from builder.library import Library

    crops = workdir / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    world = Image.open(REPO / "data" / "bluemarble_5400x2700.jpg").convert("RGB")
    import random

    rng = random.Random(5)
    for i in range(n):
        x, y = rng.randrange(0, world.width - 256), rng.randrange(0, world.height - 256)
        world.crop((x, y, x + 256, y + 256)).save(crops / f"c{i:06d}.png", compress_level=1)
    root = workdir / "mosaic_library"
    with Library.create(root) as lib:
        print("ingest:", lib.ingest([crops], progress=False).summary(), file=sys.stderr)
    shutil.rmtree(crops)
    return root


def clone_library(src: Path, dst: Path, times: int) -> Path:
    """``times`` copies of every row, files hard-linked under new ids (buckets may exceed the cap)."""
    dst.mkdir(parents=True)
    shutil.copy(src / "centroids.npy", dst / "centroids.npy")
    source, target = sqlite3.connect(src / "tiles.db"), sqlite3.connect(dst / "tiles.db")
    source.backup(target)
    rows = target.execute("SELECT * FROM tiles").fetchall()
    out = []
    for row in rows:
        for _ in range(times):
            tid, bucket = str(uuid.uuid4()), row[1]
            folder = dst / f"bucket_{bucket:04d}"
            folder.mkdir(exist_ok=True)
            os.link(src / f"bucket_{bucket:04d}" / f"{row[0]}.png", folder / f"{tid}.png")
            out.append((tid, bucket, f"{dst.name}/bucket_{bucket:04d}/{tid}.png", *row[3:]))
    with target:
        target.execute("DELETE FROM tiles")
        target.executemany(f"INSERT INTO tiles VALUES ({', '.join('?' * len(out[0]))})", out)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=Path)
    parser.add_argument("--make", type=int, metavar="N", help="make a library of N crops first")
    parser.add_argument("--clone", type=int, default=1, metavar="K", help="multiply rows K times (hard links)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mosaic-bench-"))
    library = args.library or make_library(workdir, args.make or 2000)
    if args.clone > 1:
        library = clone_library(library, workdir / f"clone{args.clone}" / "mosaic_library", args.clone)
    rows = sqlite3.connect(library / "tiles.db").execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    results = {}
    for rep in range(args.repeat):
        for name in args.variants:  # interleaved, so load changes hit every variant alike
            seconds, peak, cpu = run_variant(VARIANTS[name], library, workdir / f"out_{name}")
            results.setdefault(name, []).append((seconds, peak, cpu))
            print(f"rep {rep} {name}: {seconds:.2f} s, cpu {cpu:.2f} s, peak {peak / 2**20:.0f} MiB", file=sys.stderr)
    summary = {
        name: {
            "median_s": round(statistics.median(r[0] for r in runs), 2),
            "median_cpu_s": round(statistics.median(r[2] for r in runs), 2),
            "peak_mib": round(max(r[1] for r in runs) / 2**20),
        }
        for name, runs in results.items()
    }
    if "imagefolder" in summary:
        base = summary["imagefolder"]["median_s"]
        for name in summary:
            summary[name]["speedup_vs_imagefolder"] = round(base / summary[name]["median_s"], 2)
    print(json.dumps({"rows": rows, "library": str(library), "results": summary}, indent=2))


if __name__ == "__main__":
    main()
