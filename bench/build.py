"""Build benchmark: ``python -m builder build`` against ``load_dataset("imagefolder") + to_parquet``.

The same library (real-imagery tiles ingested through the pipeline) is turned into Parquet:

* ``build np1`` / ``build np2``: ``python -m builder build --num-proc 1|2`` (``builder.publish.
  build_staging``: snapshot, MosaicLibrary -> Parquet shards, card, manifest);
* ``imagefolder``: ``datasets.load_dataset("imagefolder", data_dir=<library>, split="train")``
  then ``.to_parquet(...)``, the route the card's users would take without this project.

Every run is a fresh process (imports and an empty datasets cache included); wall time and the
peak memory of the whole process tree are
measured from outside (summed RSS of the process tree, sampled every 20 ms).  Two library
sizes show whether peak memory grows with the tile count.

Targets (issue 6): build with ``num_proc=2`` at least 2x faster than the imagefolder route;
peak memory that does not grow with the tile count (4x the tiles: at most 10% more memory).

Run: ``python bench/build.py`` (1000 and 4000 tiles, 3 rounds, a few minutes), ``--quick``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

try:
    from bench import common
except ModuleNotFoundError:  # run as a script
    import common  # type: ignore[no-redef]

from builder.core.library import Library  # noqa: E402  (common put the repo on sys.path)
from builder.ops.ingest import ingest  # noqa: E402

BENCH = "build"
MEMORY_GROWTH_TARGET = 1 / 1.10  # ratio small/large peak: at most 10% more memory for 4x the tiles

IMAGEFOLDER = (
    "import sys, datasets\n"
    "lib, out, cache, embed = sys.argv[1:5]\n"
    "ds = datasets.load_dataset('imagefolder', data_dir=lib, split='train', cache_dir=cache)\n"
    "if embed == '1':  # what push_to_hub does to each shard before writing it\n"
    "    from datasets.table import embed_table_storage\n"
    "    ds = ds.with_format('arrow').map(embed_table_storage, batched=True)\n"
    "ds.to_parquet(out)\n"
    "print(len(ds), 'rows')\n"
)
NAMES = ("build np1", "build np2", "imagefolder", "imagefolder+embed")


def make_library(root: Path, n: int, cache: Path) -> int:
    """A library of ``n`` textured Blue Marble tiles (cap raised so every distinct tile stays)."""
    folder = common.tile_folder(n, "png", cache=cache)
    with Library.create(root, cap=n) as lib:
        report = ingest(lib, [folder], workers=2, progress=False)
    common.log(f"library {root.parent.name}: {report.summary()}")
    return report.accepted


def variants(library: Path, out: Path, hf_home: Path) -> dict[str, tuple[list[str], dict]]:
    """argv and environment of each route; every route gets its own empty HF cache."""
    env = {
        **os.environ,
        "PYTHONPATH": str(common.REPO),
        "HF_HOME": str(hf_home),
        "HF_DATASETS_CACHE": str(hf_home / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    build = [sys.executable, "-m", "builder", "build", "--library", str(library), "--output", str(out)]
    return {
        "build np1": ([*build, "--num-proc", "1"], env),
        "build np2": ([*build, "--num-proc", "2"], env),
        "imagefolder": ([sys.executable, "-c", IMAGEFOLDER, str(library), str(out / "train.parquet"),
                         str(hf_home / "datasets"), "0"], env),
        "imagefolder+embed": ([sys.executable, "-c", IMAGEFOLDER, str(library), str(out / "train.parquet"),
                               str(hf_home / "datasets"), "1"], env),
    }


def run_once(name: str, library: Path, work: Path) -> common.Measured:
    run_dir = work / f"run_{uuid.uuid4().hex[:8]}"
    out, hf_home = run_dir / "out", run_dir / "hf"
    hf_home.mkdir(parents=True)
    if name.startswith("imagefolder"):
        out.mkdir()
    argv, env = variants(library, out, hf_home)[name]
    measured = common.run_measured(argv, env=env, cwd=str(common.REPO))
    if measured["returncode"] != 0:
        raise RuntimeError(f"{name} failed (exit {measured['returncode']}):\n{measured['output'][-3000:]}")
    measured["rows"] = parquet_rows(out)
    shutil.rmtree(run_dir, ignore_errors=True)
    return measured


def parquet_rows(out: Path) -> tuple[int, bool]:
    """Rows written, and whether the image bytes are embedded (publishable) or only paths."""
    import pyarrow.parquet as pq

    rows, embedded = 0, True
    for path in sorted(out.rglob("*.parquet")):
        if "image" not in pq.read_schema(path).names:
            continue  # a release's metadata config and bucket index hold no images
        table = pq.read_table(path, columns=["image"])
        rows += table.num_rows
        if table.num_rows:
            first = table.column("image")[0].as_py()
            embedded = embedded and bool(first.get("bytes"))
    return rows, embedded


def bench_size(n: int, repeats: int, cache: Path, work: Path) -> tuple[int, dict[str, list[common.Measured]]]:
    root = work / f"lib{n}" / "mosaic_library"
    tiles = make_library(root, n, cache)
    names = list(NAMES)
    common.log(f"build: {tiles} tiles, {repeats} rounds of {', '.join(names)} (fresh processes)")
    with common._Heartbeat(f"build {n}"):
        runs = common.interleaved(repeats, {name: (lambda name=name: run_once(name, root, work)) for name in names})
    for name, results in runs.items():
        rows = {m["rows"] for m in results}
        if rows != {(tiles, True)} and not (name == "imagefolder" and rows == {(tiles, False)}):
            raise RuntimeError(f"{name} wrote {rows} (rows, bytes embedded), expected {tiles} rows")
    shutil.rmtree(root.parent, ignore_errors=True)
    return tiles, runs


def rows_for(sizes: list[tuple[int, dict]], repeats: int) -> list[common.Row]:
    """Time and memory rows per library size, then the memory growth from the smallest to the largest."""
    out: list[common.Row] = []

    def med(runs, key) -> common.Samples:
        return common.samples(m[key] for m in runs)

    for index, (tiles, runs) in enumerate(sizes):
        for base, base_label, note in (
            ("imagefolder", "imagefolder+to_parquet",
             "the issue's baseline; its to_parquet writes absolute file paths, not image bytes (not publishable)"),
            ("imagefolder+embed", "imagefolder+embed+to_par",
             "imagefolder with the image bytes embedded as push_to_hub does: the same output as build"),
        ):
            base_t = med(runs[base], "seconds")
            for name, target in (("build np1", None), ("build np2", 2.0 if base == "imagefolder" else None)):
                t = med(runs[name], "seconds")
                out.append(common.Row(BENCH, f"{tiles} tiles: time", base_label, base_t.median, name, t.median, "s",
                                      higher_is_better=False, target=target, repeats=repeats,
                                      spread=max(base_t.spread, t.spread),
                                      note=note if name == "build np1" and index == 0 else ""))
        base_m = med(runs["imagefolder+embed"], "tree_peak_mb")
        for name in ("build np1", "build np2"):
            m = med(runs[name], "tree_peak_mb")
            out.append(common.Row(BENCH, f"{tiles} tiles: peak memory (tree RSS)", "imagefolder+embed+to_par",
                                  base_m.median, name, m.median, "MiB", higher_is_better=False, repeats=repeats,
                                  spread=max(base_m.spread, m.spread)))
    if len(sizes) >= 2:
        (small, small_runs), (large, large_runs) = sizes[0], sizes[-1]
        for name in NAMES:
            a, b = med(small_runs[name], "tree_peak_mb"), med(large_runs[name], "tree_peak_mb")
            ours = name.startswith("build")
            out.append(common.Row(
                BENCH, f"peak memory {small} -> {large} tiles", f"{name} @ {small}", a.median, f"{name} @ {large}",
                b.median, "MiB", higher_is_better=False, target=MEMORY_GROWTH_TARGET if ours else None,
                repeats=repeats, spread=max(a.spread, b.spread),
                note=(f"kernel maxrss of the largest process {med(small_runs[name], 'maxrss_mb').median:.0f} -> "
                      f"{med(large_runs[name], 'maxrss_mb').median:.0f} MiB"
                      + ("; ratio = small/large peak: >= 0.91x means at most 10% more memory for 4x the tiles"
                         if name == "build np1" else "")),
            ))
    return out


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated tile counts (default 1000,4000; quick 24,48)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("24,48" if args.quick else "1000,4000")).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build_", dir=args.cache))
    try:
        measured = [bench_size(n, repeats, args.cache, work) for n in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common.report(rows_for(measured, repeats),
                  title=f"build: libraries of {', '.join(str(t) for t, _ in measured)} tiles, median of {repeats} "
                        f"fresh-process runs ({common.machine_note()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
