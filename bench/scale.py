"""Every command at library scale, as fresh processes: ``python bench/scale.py`` (by hand).

Makes libraries of 5,000, 25,000 and 100,000 real-imagery tiles (``--sizes``) and times each
command the way a user runs it, one fresh ``python -m builder ...`` process (or a fresh
``python -c`` for the notebook snippets) per measurement, printing wall time, time per tile,
peak memory (the kernel's ``maxrss`` of the command's largest process) and the growth ratio
from the smallest size to the largest.

The tiles: 256x256 crops of the Blue Marble image (``data/``), textured like ``bench.common``'s
tiles, each with its own seeded colour shift (per-channel gain and offset) so that the tiles
spread over the LAB buckets the way a full harvest's do (Blue Marble's own colours reach only
a few hundred of the 5,000 buckets, too few for 100,000 tiles at 100 a bucket).  They are
encoded with zlib level 1 (fast, still lossless) and go into the library through ``ingest``,
the project's own pipeline, so every row and file is exactly what the library would hold.
Libraries are cached under ``/tmp/mosaic_scale_cache`` (``--cache``), one per size; a larger
one starts as a hard-link copy of the next smaller one and ingests only the difference.
Commands that write (``ingest``, ``harvest``) run on a hard-link copy of the cached library
(tiles are never rewritten in place, so the links are safe), which is removed afterwards.

``--quick``: 300 and 1,500 tiles, one loopback harvest of 50 tiles (a smoke run, figures
meaningless).  A full run needs ~30 GB of disk under the cache and tens of minutes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

try:
    from bench import common
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path, the repo is not (yet)
    import common  # type: ignore[no-redef]

REPO = common.REPO
DEFAULT_CACHE = Path(os.environ.get("MOSAIC_SCALE_CACHE", "/tmp/mosaic_scale_cache"))
SIZES = (5_000, 25_000, 100_000)
QUICK_SIZES = (300, 1_500)
TILE = 256
PNG_LEVEL = 1  # generated tiles: zlib level 1 with the RLE strategy (builder.core.decode.PNG_ZLIB_STRATEGY), lossless
GEN_BATCH = 4_000
SEED = 7  # the library tiles' stream; the 1,500 extra ingest tiles use another seed


# ---------------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------------


def shifted_crop(index: int, seed: int = SEED):
    """Tile ``index`` of ``seed``'s stream: a textured 256x256 Blue Marble crop with a per-tile
    colour shift (a PIL RGB image).  Deterministic per (seed, index).

    The new mean colour is uniform in RGB, as the card's k-means sample was, so the tiles spread
    over the buckets evenly; the texture keeps its structure at a random contrast.  The shift is
    affine per channel, so it is one lookup table (``Image.point``): cheap next to the encode.
    """
    world = common._world()
    rng = np.random.default_rng([seed, index, 1])
    while True:
        x = int(rng.integers(0, world.width - TILE))
        y = int(rng.integers(0, world.height - TILE))
        crop = world.crop((x, y, x + TILE, y + TILE))
        sample = np.asarray(crop)[::4, ::4]
        if float(sample[..., 1].std()) >= common.MIN_GREY_STD:  # textured (green standing for grey)
            break
    mean = sample.reshape(-1, 3).mean(axis=0)
    target = rng.uniform(0.0, 255.0, size=3)
    gain = rng.uniform(0.2, 1.2, size=3)
    levels = np.arange(256, dtype=np.float64)
    lut = np.concatenate([np.clip(np.rint(target[c] + (levels - mean[c]) * gain[c]), 0, 255) for c in range(3)])
    return crop.point(lut.astype(np.uint8).tolist())


def _write_shifted(folder: str, indices: list[int], seed: int) -> int:
    for i in indices:
        path = Path(folder) / f"s{seed}_{i:07d}.png"
        shifted_crop(i, seed).save(path, format="PNG", compress_level=PNG_LEVEL, compress_type=3)
    return len(indices)


def write_tiles(folder: Path, start: int, stop: int, seed: int = SEED, workers: int = 2) -> Path:
    """Tiles ``start .. stop-1`` of ``seed``'s stream as PNG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    indices = list(range(start, stop))
    if workers > 1 and len(indices) >= 64:
        parts = [indices[k::workers] for k in range(workers)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(_write_shifted, [str(folder)] * workers, parts, [seed] * workers))
    else:
        _write_shifted(str(folder), indices, seed)
    return folder


def extra_tiles(cache: Path, n: int) -> Path:
    """``n`` more tiles (another seed), the same for every size: what ``ingest`` is timed on."""
    folder = cache / f"extra_seed{SEED + 1}_n{n}"
    if not folder.is_dir() or len(list(folder.iterdir())) != n:
        part = folder.with_name(folder.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        write_tiles(part, 0, n, seed=SEED + 1)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(part, folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Libraries
# ---------------------------------------------------------------------------------------------


def n_tiles(root: Path) -> int:
    """Rows in the library's ``tiles`` table (-1 when there is no library)."""
    if not (root / "tiles.db").is_file():
        return -1
    with sqlite3.connect(f"file:{root / 'tiles.db'}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]


def clone(source: Path, target: Path) -> Path:
    """A copy of the library ``source`` whose tile files are hard links to the source's.

    Tiles are never rewritten in place, so linking them is safe; everything else (``tiles.db``,
    the thumbnail cache in ``.cache/``, which is appended to, the in-flight logs) is copied.
    """
    from builder.core.layout import parse_bucket_dir

    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == "temp":
            (target / "temp").mkdir()
        elif entry.is_dir() and parse_bucket_dir(entry.name) is not None:
            subprocess.run(["cp", "-al", str(entry), str(target / entry.name)], check=True)
        elif entry.is_dir():
            shutil.copytree(entry, target / entry.name)
        else:
            shutil.copy2(entry, target / entry.name)
    return target


def _meta_path(lib_dir: Path) -> Path:
    return lib_dir / "made.json"


def make_library(cache: Path, n: int, smaller: list[tuple[int, Path]]) -> Path:
    """The cached library of ``n`` tiles (``<cache>/lib_<n>/mosaic_library``), made if missing."""
    from builder.core.library import Library
    from builder.ops.ingest import ingest

    lib_dir = cache / f"lib_{n}"
    root = lib_dir / "mosaic_library"
    meta = _meta_path(lib_dir)
    made = json.loads(meta.read_text()) if meta.is_file() else {}
    if made.get("tiles") == n_tiles(root) and made.get("done"):
        return root
    if made.get("tiles") == n_tiles(root):  # an interrupted run: carry on from its last batch
        next_index = made["next_index"]
    else:
        base = next(((m, r) for m, r in reversed(smaller) if m < n), None)
        shutil.rmtree(lib_dir, ignore_errors=True)
        if base is None:
            lib_dir.mkdir(parents=True)
            Library.create(root).close()
            next_index = 0
        else:
            clone(base[1], root)
            next_index = json.loads(_meta_path(base[1].parent).read_text())["next_index"]
    started = time.perf_counter()
    with Library.open(root) as lib:
        have = lib.stats()["tiles"]
        while have < n:
            want = n - have
            batch = min(GEN_BATCH, int(want * 1.1) + 16)
            folder = cache / "gen_tmp"
            shutil.rmtree(folder, ignore_errors=True)
            write_tiles(folder, next_index, next_index + batch)
            paths = sorted(folder.iterdir())[:want]  # never past n tiles (rejections aside)
            next_index += batch
            ingest(lib, [str(p) for p in paths], workers=2, progress=False)
            shutil.rmtree(folder, ignore_errors=True)
            have = lib.stats()["tiles"]
            meta.write_text(json.dumps({"tiles": have, "next_index": next_index, "done": False}))
            common.log(f"library {n}: {have} tiles ({time.perf_counter() - started:.0f} s)")
    meta.write_text(json.dumps({"tiles": have, "next_index": next_index, "done": True}))
    return root


def make_libraries(cache: Path, sizes: list[int], as_is: bool = False) -> list[tuple[int, Path]]:
    """The cached library of each size, made or completed first (``as_is``: an unfinished
    cached library is measured with the tiles it holds)."""
    made: list[tuple[int, Path]] = []
    for n in sorted(sizes):
        root = cache / f"lib_{n}" / "mosaic_library"
        made.append((n, root if as_is and n_tiles(root) > 0 else make_library(cache, n, made)))
    return made


# ---------------------------------------------------------------------------------------------
# Commands, each a fresh process
# ---------------------------------------------------------------------------------------------

TARGET_IMAGE = REPO / "data" / "sample_target.jpg"
QUERY_HEX = "4a7a3c"
CARD_BUCKET = 42
LOAD_DATASET = """
import sys
from datasets import load_dataset
ds = load_dataset(sys.argv[1], split="train")
print(len(ds), ds.features["label"].num_classes)
"""
# The card's snippet, unchanged but for the bucket (42 unless the library leaves it empty).
LOAD_BUCKET = """
from PIL import Image
import numpy as np
import sqlite3, os
def load_bucket(base_dir, bucket_id, db_path="mosaic_library/tiles.db"):
    conn = sqlite3.connect(db_path)
    rows = conn.execute(
        "SELECT filepath FROM tiles WHERE bucket_id = ?", (bucket_id,)
    ).fetchall()
    images = []
    for (fp,) in rows:
        img = Image.open(os.path.join(base_dir, fp)).convert("RGB")
        images.append(np.array(img))
    return np.stack(images)  # shape: (N, 256, 256, 3)
imgs = load_bucket(".", bucket_id=BUCKET)
print(imgs.shape)
"""
# name -> (what its time is divided by: "library" tiles or the command's own "work" items)
COMMANDS = {
    "ingest": "work", "harvest": "work", "stats": "library", "verify --quick": "library",
    "verify": "library", "query": "library", "build --num-proc 2": "library", "load_dataset": "library",
    "restore": "library", "report": "library", "mosaic cold": "library", "mosaic warm": "library",
    "load_bucket": "library",
}


def builder(*args: str) -> list[str]:
    return [sys.executable, "-m", "builder", *args]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}


def serve(tiles: list[tuple[int, int, int]], conn) -> None:
    """Loopback tile server process (as bench/harvest.py): warm its cache, serve until told."""
    sys.path.insert(0, str(REPO))
    from tests.support.tileserver import TileServer, distinct_tile

    for z, x, y in tiles:
        distinct_tile(z, x, y)
    with TileServer(distinct_tile, delay=0.0, lifetime=3600) as server:
        conn.send(server.tile_template)
        conn.recv()


def planned_tiles(zoom: int, seed: int, n: int) -> list[tuple[int, int, int]]:
    from builder.acquire.tiles import Sampler
    from builder.core.plans import load_plan

    return [(r.z, r.x, r.y) for r in Sampler(load_plan("1"), zoom, seed).sample(n)]


def card_bucket(root: Path) -> int:
    with sqlite3.connect(f"file:{root / 'tiles.db'}?mode=ro", uri=True) as conn:
        if conn.execute("SELECT 1 FROM tiles WHERE bucket_id = ?", (CARD_BUCKET,)).fetchone():
            return CARD_BUCKET
        return conn.execute("SELECT bucket_id FROM tiles GROUP BY 1 ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]


def measure(name: str, argv: list[str], work_items: int, cwd: Path | None = None) -> dict:
    common.log(f"  {name} ...")
    m = common.run_measured(argv, env=env(), cwd=str(cwd) if cwd else None)
    if m["returncode"] != 0:
        raise SystemExit(f"{name} failed (exit {m['returncode']}):\n{m['output'][-3000:]}")
    common.log(f"  {name}: {m['seconds']:.2f} s, maxrss {m['maxrss_mb']:.0f} MiB")
    return {"seconds": m["seconds"], "cpu_seconds": m.get("cpu_seconds"), "maxrss_mb": m["maxrss_mb"],
            "tree_mb": m["tree_peak_mb"],
            "items": work_items, "tail": m["output"].strip().splitlines()[-1:] if m["output"].strip() else []}


def run_size(n: int, root: Path, cache: Path, extra: Path, harvest_tiles: int, only: set[str] | None,
             saved: Callable[[dict], None] = lambda out: None) -> dict:
    """Every command once on the library ``root`` (``n`` tiles asked for); figures by name.
    ``saved(figures)`` is called after each command (so a long run keeps what it measured)."""
    work = cache / f"work_{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tiles = n_tiles(root)
    out: dict[str, dict] = {"_tiles": {"tiles": tiles}}

    def want(name: str) -> bool:
        return only is None or name in only

    def done(name: str, result: dict) -> None:
        out[name] = result
        saved(out)

    try:
        if want("stats"):
            done("stats", measure("stats", builder("stats", "--library", str(root)), tiles))
        if want("query"):
            done("query", measure("query", builder("query", "--library", str(root), "--hex", QUERY_HEX), tiles))
        if want("verify --quick"):
            done("verify --quick", measure("verify --quick", builder("verify", "--library", str(root), "--quick"), tiles))
        if want("ingest"):
            lib = clone(root, work / "ingest" / "mosaic_library")
            done("ingest", measure("ingest", builder("ingest", "--library", str(lib), str(extra)),
                                         len(list(extra.iterdir()))))
            shutil.rmtree(lib.parent)
        if want("harvest"):
            lib = clone(root, work / "harvest" / "mosaic_library")
            planned = planned_tiles(12, 1, harvest_tiles)
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=serve, args=(planned, child), daemon=True)
            proc.start()
            try:
                template = parent.recv()
                done("harvest", measure("harvest", builder(
                    "harvest", "--library", str(lib), "--source", template, "--phase", "1", "--zoom", "12",
                    "--seed", "1", "--threads", "20", "--max-requests", str(harvest_tiles)), harvest_tiles))
            finally:
                parent.send("stop")
                proc.join(timeout=10)
            shutil.rmtree(lib.parent)
        staging = work / "staging"
        if want("build --num-proc 2") or want("restore") or want("load_dataset"):
            done("build --num-proc 2", measure("build --num-proc 2", builder(
                "build", "--library", str(root), "--output", str(staging), "--num-proc", "2"), tiles))
        if want("load_dataset"):
            hf = work / "hf_cache"
            argv = [sys.executable, "-c", LOAD_DATASET, str(staging)]
            os.environ["HF_DATASETS_CACHE"] = str(hf)  # fresh: nothing converted before
            try:
                done("load_dataset", measure("load_dataset", argv, tiles))
            finally:
                del os.environ["HF_DATASETS_CACHE"]
                shutil.rmtree(hf, ignore_errors=True)
        if want("restore"):
            target = work / "restored" / "mosaic_library"
            done("restore", measure("restore", builder("restore", "--library", str(target), str(staging)), tiles))
            shutil.rmtree(target.parent)
        shutil.rmtree(staging, ignore_errors=True)
        if want("report"):
            done("report", measure("report", builder("report", "--library", str(root), "--output",
                                                       str(work / "report")), tiles))
            shutil.rmtree(work / "report")
        if want("mosaic cold") or want("mosaic warm"):
            lib = clone(root, work / "mosaic" / "mosaic_library")
            for name in ("mosaic cold", "mosaic warm"):
                done(name, measure(name, builder("mosaic", "--library", str(lib), str(TARGET_IMAGE),
                                                 "--output", str(work / "mosaic.png")), tiles))
            shutil.rmtree(lib.parent)
        if want("load_bucket"):
            code = LOAD_BUCKET.replace("BUCKET", str(card_bucket(root)))
            done("load_bucket", measure("load_bucket", [sys.executable, "-c", code], tiles, cwd=root.parent))
        if want("verify"):  # last: the longest (every tile decoded)
            done("verify", measure("verify", builder("verify", "--library", str(root), "--workers", "2"), tiles))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def per_item_ms(result: dict, key: str = "seconds") -> float:
    value = result.get(key)
    return math.nan if value is None else value / max(result["items"], 1) * 1000


def _ratio(a: float, b: float) -> str:
    return "-" if not (a and b) or math.isnan(a) or math.isnan(b) else f"{b / a:.2f}x"


def _label(results: dict[int, dict], n: int) -> str:
    """A size as the tiles its library really held (an ``--as-is`` library may hold fewer)."""
    tiles = results[n].get("_tiles", {}).get("tiles", n)
    return f"{tiles // 1000}k" if tiles % 1000 == 0 else str(tiles)


def table(results: dict[int, dict]) -> str:
    """Per command and size: wall s, CPU s (every process), wall ms a tile, peak MiB; then the
    smallest-to-largest ratios of wall and CPU per tile and of peak memory."""
    sizes = sorted(results)
    head = ["command"]
    for n in sizes:
        held = _label(results, n)
        head += [f"wall s @{held}", f"cpu s @{held}", f"ms/tile @{held}", f"MiB @{held}"]
    if len(sizes) > 1:
        head += ["ratio time/tile", "ratio cpu/tile", "ratio MiB"]
    lines = [head]
    for name, unit in COMMANDS.items():
        row = [name + (" (per item)" if unit == "work" else "")]
        have = [results[n].get(name) for n in sizes]
        for r in have:
            cpu = r.get("cpu_seconds") if r else None
            row += ["-"] * 4 if r is None else [f"{r['seconds']:.2f}", "-" if cpu is None else f"{cpu:.2f}",
                                                 f"{per_item_ms(r):.3f}", f"{r['maxrss_mb']:.0f}"]
        if len(sizes) > 1:
            a, b = have[0], have[-1]
            if a and b:
                row += [_ratio(per_item_ms(a), per_item_ms(b)),
                        _ratio(per_item_ms(a, "cpu_seconds"), per_item_ms(b, "cpu_seconds")),
                        _ratio(a["maxrss_mb"], b["maxrss_mb"])]
            else:
                row += ["-"] * 3
        lines.append(row)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    tiles = "  ".join(f"{n}: {results[n]['_tiles']['tiles']} tiles" for n in sizes)
    text = [f"libraries: {tiles}; ms/tile = wall / library tiles (per item: / the command's own tiles); "
            "MiB = maxrss of the largest process"]
    text += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in lines]
    return "\n".join(text)


def rows(results: dict[int, dict]) -> list:
    """bench.common rows: time (and CPU) per tile and peak memory at the largest size against the smallest."""
    sizes = sorted(results)
    if len(sizes) < 2:
        return []
    small, large = sizes[0], sizes[-1]
    at_small, at_large = f"@{_label(results, small)}", f"@{_label(results, large)}"
    out = []
    for name in COMMANDS:
        a, b = results[small].get(name), results[large].get(name)
        if not (a and b):
            continue
        out.append(common.Row("scale", f"{name}: time per tile", at_small, per_item_ms(a), at_large,
                              per_item_ms(b), "ms", higher_is_better=False, target=1 / 1.3))
        if a.get("cpu_seconds") and b.get("cpu_seconds"):
            out.append(common.Row("scale", f"{name}: CPU per tile", at_small, per_item_ms(a, "cpu_seconds"),
                                  at_large, per_item_ms(b, "cpu_seconds"), "cpu ms", higher_is_better=False,
                                  target=1 / 1.3))
        out.append(common.Row("scale", f"{name}: peak memory", at_small, a["maxrss_mb"], at_large,
                              b["maxrss_mb"], "MiB", higher_is_better=False, target=1 / 1.3))
    return out


def load_results(paths: list[Path]) -> dict[int, dict]:
    """Figures saved by earlier runs (``--results``), merged by size (a later file wins per command)."""
    merged: dict[int, dict] = {}
    for path in paths:
        for n, by_command in json.loads(Path(path).read_text()).items():
            merged.setdefault(int(n), {}).update(by_command)
    return merged


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated library sizes (default 5000,25000,100000)")
    parser.add_argument("--only", default=None, help="comma-separated commands to time (default: all)")
    parser.add_argument("--make-only", action="store_true", help="make the cached libraries and stop")
    parser.add_argument("--as-is", action="store_true",
                        help="measure an unfinished cached library with the tiles it holds (no generation)")
    parser.add_argument("--harvest-requests", type=int, default=None, help="loopback harvest size (default 500)")
    parser.add_argument("--results", type=Path, default=None, help="JSON file for the figures (default: in the cache)")
    parser.add_argument("--table-from", default=None, metavar="FILES",
                        help="print the table of earlier runs' comma-separated --results files and stop")
    args = parser.parse_args()
    if args.table_from:
        merged = load_results([Path(p) for p in args.table_from.split(",")])
        print(table(merged))
        print()
        common.report(rows(merged))
        return
    if os.environ.get("MOSAIC_SCALE_CACHE"):
        cache = Path(os.environ["MOSAIC_SCALE_CACHE"])
    else:
        cache = args.cache / "scale" if args.quick or args.cache != common.DEFAULT_CACHE else DEFAULT_CACHE
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    only = set(args.only.split(",")) if args.only else None
    common.log(f"scale bench: sizes {sizes}, cache {cache}; {common.machine_note()}")
    libs = make_libraries(cache, sizes, as_is=args.as_is)
    if args.make_only:
        for n, root in libs:
            print(n, root, n_tiles(root))
        return
    extra = extra_tiles(cache, 150 if args.quick else 1500)
    harvest_requests = args.harvest_requests or (50 if args.quick else 500)
    results_path = args.results or cache / f"results_{'_'.join(map(str, sizes))}.json"
    results: dict[int, dict] = {}
    for n, root in libs:
        common.log(f"library of {n} tiles")
        def save(figures: dict, n: int = n) -> None:
            results[n] = figures
            results_path.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))

        save(run_size(n, root, cache, extra, harvest_requests, only, saved=save))
    print(table(results))
    print()
    common.report(rows(results))


if __name__ == "__main__":
    main()
