"""Benchmark: colour queries, and photomosaics measured for fidelity, time and memory.

    /path/to/python bench/mosaic.py [--library DIR] [--crops N] [--quick] [--only SECTIONS] [--skip-dzi]
        [--skip-cold] [--skip-nocache] [--cold-library DIR] [--dzi-library DIR] [--pyvips-path DIR]
        [--phomo-path DIR] [--peer-sizes 16,32] [--peer-sets real,real+synthetic]

phomo 1.2 is not a project dependency: ``pip install --target DIR --no-deps phomo==1.2.0 matplotlib
opencv-python-headless pyparsing cycler kiwisolver fonttools contourpy python-dateutil six`` and
``--phomo-path DIR`` (or run with a Python that has it); metapixel 1.0.2 is Debian's package
(``apt-get install metapixel``).  Without them their rows say "absent" and they are left out.

1. **1,000,000 LAB colours -> nearest bucket.**  One ``nearest_buckets`` call against the card's
   recipe, ``cKDTree(centroids).query(colour)`` per colour in a loop (timed on ``--sample``
   colours, extrapolated; answers checked identical).
2. **Fidelity** (:mod:`builder.mosaic.fidelity`: mean CIEDE2000 at 2x2 samples a cell, greyscale
   SSIM at 4x4) and time of every method on the same tiles and photos (``data/sample_target.jpg``
   and skimage's ``coffee``, ``chelsea``, ``rocket``; 40 cells on the long side, 16-px tiles):
   a naive per-cell loop (cell mean -> brute-force nearest tile mean -> open, resize, paste),
   the mosaic before this work (``--detail 0 --max-correction 0 --no-contrast``: sub-cell
   matching, no correction; on these in-memory pictures it places exactly the tiles the old
   code placed), the new default, each new option, a sweep of the
   correction budget (the default is the smallest budget that gets 90% of the unbounded
   budget's CIEDE2000 gain, on average over the photos), and phomo 1.2 (``Mosaic.build`` on
   its ``d_matrix``: exact assignment over whole 16x16 tile pixels, the same thumbnails as its
   pool).  Our times include opening the target, planning and rendering with the thumbnail
   cache warm; phomo's its distance matrix and assignment (its pool and master are given as
   arrays, no file loading).
3. **Fair assignment**: ``--max-uses 1`` against the greedy default on 2,500 cells and 5,000
   tiles (a random subset of the library), same process, interleaved rounds, wall and CPU time
   and their ratios; and at scale, 10,000 cells on 100,000+ tiles (the library's tiles repeated
   with jittered colours), each in a fresh process with its peak memory.
4. **No cold start**: fresh ``python -m builder mosaic`` processes on a library of 20,000+ tiles
   built through ``ingest`` (so the store cached every thumbnail as it committed): the first
   mosaic (the derived sub-cell colour file deleted, as ingest leaves a library) against the
   second, interleaved rounds, wall and CPU; and the first with the thumbnail cache deleted (what
   every first mosaic paid before; ``--skip-nocache`` leaves it out).
5. **Huge mosaics**: ``--format dzi`` of 200x200 cells of 256-px tiles (51,200 px a side) in a
   fresh process: wall, CPU, peak RSS and the stage seconds of its ``--json``; then the same plan
   and render streamed (an uncompressed PNG on a pipe) into libvips' ``dzsave`` (``pyvips``;
   ``--pyvips-path`` for a folder it was ``pip install --target``-ed into), and the render
   alone, so each pyramid writer's own cost is the difference.
6. **Peers** (``--only peers``): the project beside phomo 1.2 and metapixel 1.0.2, each run as its
   users run it, in fresh processes: the same input file (each photo cropped to the grid and
   resized to the cell size), the same grid (48 cells on the long side), cells of 16 and 32 px,
   on two tile sets: the real one (``common.tile_folder(1500)`` through ``ingest``) and a
   real+synthetic one (the same after ``synthesize --max-uses 4``).  phomo: ``Pool.from_dir``
   (its preparation, timed apart), ``d_matrix`` (``norm``), the exact ``build``; left out where
   its dense matrix would take more than ~2 minutes.  metapixel: ``metapixel-prepare`` once per
   tile set and size (its preparation), then ``metapixel --metapixel`` and ``--cheat 30``; the
   project: ``python -m builder mosaic`` (default, ``--overlay 30``, ``--real-only``,
   ``--max-uses 1``).  Every output is measured with :func:`measure_fidelity` against the input.

The library is built once (if ``--library`` does not hold one) from real Blue Marble crops
through ``builder.ops.ingest.ingest``: crops of 64..1024 px at random places, saved as JPEG and ingested,
so buckets fill with real, de-duplicated tiles.  Timings are wall-clock on this machine;
nothing here runs as a test.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # phomo draws progress bars on stderr

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

try:
    from bench import common
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    import common  # type: ignore[no-redef]

from builder.core.color import rgb_to_lab  # noqa: E402
from builder.core.library import Library  # noqa: E402
from builder.core.query import nearest_buckets  # noqa: E402
from builder.mosaic import (  # noqa: E402
    DEFAULT_MAX_CORRECTION,
    THUMB_PREFIX,
    Layout,
    MosaicOptions,
    ThumbnailCache,
    TileTable,
    correct,
    load_tile_table,
    match,
    measure_fidelity,
    plan_mosaic,
    render_mosaic,
)
from builder.ops.ingest import ingest  # noqa: E402

BLUEMARBLE = REPO / "data" / "bluemarble_5400x2700.jpg"
N_COLOURS = 1_000_000
LONG_SIDE = 40  # cells on the long side of the fidelity table's mosaics
TILE = 16
BUDGETS = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, float("inf"))
GAIN_SHARE = 0.9  # the default budget: the smallest reaching this share of the unbounded gain
BEFORE = "before (--detail 0 --max-correction 0 --no-contrast)"
SKIP_PHOMO = False  # --skip-phomo: it takes minutes a photo


def build_library(root: Path, crops: int, seed: int = 0, cap: int | None = None,
                  sizes: tuple[int, ...] = (64, 96, 128, 192, 256, 384, 512, 768, 1024)) -> None:
    """Real Blue Marble crops of mixed scales through the real ingest pipeline."""
    world = Image.open(BLUEMARBLE).convert("RGB")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="bench_crops_") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        for i in range(crops):
            size = int(rng.choice(sizes))
            x = int(rng.integers(0, world.width - size))
            y = int(rng.integers(0, world.height - size))
            world.crop((x, y, x + size, y + size)).save(folder / f"crop_{i:05d}.jpg", quality=92)
        print(f"  wrote {crops} crops in {time.perf_counter() - started:.1f} s", flush=True)
        with Library.create(root, **({"cap": cap} if cap else {})) as lib:
            report = ingest(lib, [folder], progress=sys.stderr.isatty())
        print(f"  ingest: {report.summary()}", flush=True)


def timed_value(fn) -> tuple[object, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def timed(fn, repeat: int = 1):
    best, value = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value


# ============================================================================ 1. colour queries
def bench_queries(lib: Library, sample: int) -> list:
    rng = np.random.default_rng(1)
    lab = rgb_to_lab(rng.integers(0, 256, (N_COLOURS, 3)))
    counts = lib.bucket_counts()
    t_ours, ours = timed(lambda: nearest_buckets(lib, lab, k=1, counts=counts))
    tree = cKDTree(lib.centroids)
    t_sample, loop = timed(lambda: [tree.query(colour)[1] for colour in lab[:sample]])
    assert np.array_equal(np.array(loop), ours.bucket_ids[:sample, 0]), "batch and loop disagree"
    t_base = t_sample * N_COLOURS / sample
    print(f"\n1. {N_COLOURS:,} LAB colours -> nearest bucket: loop {t_base:.1f} s (extrapolated from {sample:,}), "
          f"one nearest_buckets call {t_ours:.2f} s, ratio {t_base / t_ours:.0f}x")
    return [common.Row("mosaic", f"{N_COLOURS:,} colours -> bucket", f"cKDTree.query loop (x{sample:,}, extrapolated)",
                       t_base, "nearest_buckets batch", t_ours, "s", higher_is_better=False, target=20.0)]


# ============================================================================ 2. fidelity
def photos(quick: bool) -> dict[str, Image.Image]:
    import skimage.data

    out = {"sample_target": Image.open(REPO / "data" / "sample_target.jpg").convert("RGB"),
           "coffee": Image.fromarray(skimage.data.coffee()), "chelsea": Image.fromarray(skimage.data.chelsea()),
           "rocket": Image.fromarray(skimage.data.rocket())}
    return dict(list(out.items())[:2]) if quick else out


def grid_for(img: Image.Image, long_side: int) -> tuple[int, int]:
    if img.width >= img.height:
        return long_side, max(1, int(img.height * long_side / img.width))
    return max(1, int(img.width * long_side / img.height)), long_side


def naive_mosaic(lib: Library, target: Image.Image, cols: int, rows: int, tile: int) -> Image.Image:
    """The per-cell loop: cell mean -> LAB -> brute-force nearest tile mean -> open, resize, paste."""
    records = lib.conn.execute("SELECT id, bucket_id, mean_l, mean_a, mean_b FROM tiles").fetchall()
    tile_lab = np.array([r[2:] for r in records], dtype=np.float64)
    cell_w, cell_h = target.width / cols, target.height / rows
    cell = min(cell_w, cell_h)
    x0, y0 = (target.width - cols * cell) / 2, (target.height - rows * cell) / 2
    arr = np.asarray(target)
    out = Image.new("RGB", (cols * tile, rows * tile))
    for r in range(rows):
        for c in range(cols):
            ys, xs = int(y0 + r * cell), int(x0 + c * cell)
            block = arr[ys:max(ys + 1, int(y0 + (r + 1) * cell)), xs:max(xs + 1, int(x0 + (c + 1) * cell))]
            lab = rgb_to_lab(block.reshape(-1, 3).mean(axis=0))
            best = int(np.argmin(((tile_lab - lab) ** 2).sum(axis=1)))
            with Image.open(lib.tile_path(records[best][1], records[best][0])) as img:
                out.paste(img.convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS), (c * tile, r * tile))
    return out


def phomo_mosaic(table: TileTable, target: Image.Image, box, cols: int, rows: int, tile: int):
    """phomo 1.2's exact assignment (``Mosaic.build``) over whole-pixel distances, or None if absent."""
    if SKIP_PHOMO:
        return None
    try:
        from phomo import Master, Mosaic, Pool
    except ImportError:
        return None
    pool = Pool(table.thumbnails(np.arange(len(table)), tile))
    master = Master.from_image(target.resize((cols * tile, rows * tile), Image.Resampling.LANCZOS, box=box))
    mosaic = Mosaic(master, pool, n_appearances=1)
    return mosaic.build(mosaic.d_matrix(workers=1))


def methods(quick: bool = False) -> dict[str, dict]:
    """Label -> MosaicOptions fields, the first being the code as it was before this work
    (``quick``: the first three and the fair assignment only)."""
    out = {
        BEFORE: {"detail": 0, "max_correction": 0.0, "contrast": False},
        "new default": {},
        "--no-contrast": {"contrast": False},
        "--max-uses 1": {"max_uses": 1},
        "--detail 0 (correction only)": {"detail": 0},
        "--max-correction 0 --no-contrast (detail only)": {"max_correction": 0.0, "contrast": False},
        "--detail 4": {"detail": 4},
        "--detail 16": {"detail": 16},
    }
    if quick:
        return {label: out[label] for label in list(out)[:4]}
    # The constants behind the defaults, each moved alone (set in this process for the row).
    for weight in (0.0, 0.3, 1.0):
        out[f"colour weight {weight:g} (default {match.COLOUR_WEIGHT:g})"] = {"_set": {(match, "COLOUR_WEIGHT"): weight}}
    for low in (0.25, 1.0):
        out[f"texture gain floor {low:g} (default {correct.MIN_GAIN:g})"] = {"_set": {(correct, "MIN_GAIN"): low}}
    for budget in BUDGETS:  # the budget sweep, without contrast so it measures the colour shift alone
        out[f"--no-contrast --max-correction {budget:g}"] = {"max_correction": budget, "contrast": False}
    return out


@contextmanager
def constants(values: dict):
    """Module constants set for the duration of one row, then restored."""
    saved = [(module, name, getattr(module, name)) for module, name in values]
    try:
        for (module, name), value in values.items():
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def bench_fidelity(lib: Library, table: TileTable, quick: bool) -> list:
    pics = photos(quick)
    long_side = 16 if quick else LONG_SIDE
    results: dict[str, dict[str, tuple[float, float, float] | None]] = {}
    print(f"\n2. fidelity (CIEDE2000 at 2x2 a cell, lower is better / SSIM at 4x4, higher) and seconds; "
          f"{long_side} cells on the long side, {TILE}-px tiles, {len(table)} tiles", flush=True)
    for name, img in pics.items():
        cols, rows = grid_for(img, long_side)
        box = Layout(img.width, img.height, MosaicOptions(grid=(cols, rows))).box
        res = results[name] = {}

        def figures(mosaic: Image.Image | None, seconds: float):
            return None if mosaic is None else (*measure_fidelity(img, mosaic, cols, rows, box), seconds)  # noqa: B023

        def ours(options: MosaicOptions) -> Image.Image:
            return render_mosaic(lib, plan_mosaic(lib, img, options, table=table))  # noqa: B023

        res["naive per-cell nearest mean"] = figures(*timed_value(lambda: naive_mosaic(lib, img, cols, rows, TILE)))  # noqa: B023
        for label, fields in methods(quick).items():
            fields = dict(fields)
            with constants(fields.pop("_set", {})):
                options = MosaicOptions(grid=(cols, rows), tile_size=TILE, **fields)
                res[label] = figures(*timed_value(lambda: ours(options)))  # noqa: B023
        res["phomo 1.2 (exact, whole pixels)"] = figures(*timed_value(
            lambda: phomo_mosaic(table, img, box, cols, rows, TILE)))  # noqa: B023
        print(f"   {name}: {cols}x{rows} cells done", flush=True)
    labels = list(next(iter(results.values())))
    width = max(len(label) for label in labels)
    print("   " + f"{'method':<{width}}  " + "  ".join(f"{name:>22}" for name in results))
    for label in labels:
        cells = []
        for name in results:
            value = results[name][label]
            cells.append(("skipped" if SKIP_PHOMO else "absent (pip install phomo)").rjust(22) if value is None else
                         f"{value[0]:5.2f} {value[1]:.3f} {value[2]:6.2f}s".rjust(22))
        print("   " + f"{label:<{width}}  " + "  ".join(cells))
    before, new = BEFORE, "new default"
    wins = all(results[n][new][0] < results[n][before][0] and results[n][new][1] > results[n][before][1] for n in results)
    print(f"   new default beats the code before on both figures on every photo: {'yes' if wins else 'NO'}")
    if not quick:
        choose_budget(results)
    rows = []
    for name in results:
        b, n = results[name][before], results[name][new]
        rows.append(common.Row("mosaic", f"{name}: CIEDE2000", "before", b[0], "new default", n[0], "dE",
                               higher_is_better=False, target=1.0))
        rows.append(common.Row("mosaic", f"{name}: SSIM", "before", b[1], "new default", n[1], "ssim", target=1.0))
        p = results[name]["phomo 1.2 (exact, whole pixels)"]
        if p is not None:
            rows.append(common.Row("mosaic", f"{name}: CIEDE2000 vs phomo", "phomo 1.2", p[0], "new default", n[0],
                                   "dE", higher_is_better=False))
            rows.append(common.Row("mosaic", f"{name}: SSIM vs phomo", "phomo 1.2", p[1], "new default", n[1], "ssim"))
            rows.append(common.Row("mosaic", f"{name}: time vs phomo", "phomo 1.2", p[2], "new default", n[2], "s",
                                   higher_is_better=False))
    return rows


def choose_budget(results: dict) -> None:
    """Print each budget's share of the unbounded budget's CIEDE2000 gain, averaged over photos."""
    def label(budget: float) -> str:
        return f"--no-contrast --max-correction {budget:g}"

    shares = {}
    for budget in BUDGETS:
        per = [(r[label(0.0)][0] - r[label(budget)][0]) / max(1e-9, r[label(0.0)][0] - r[label(float("inf"))][0])
               for r in results.values()]
        shares[budget] = float(np.mean(per))
    pick = next(b for b in BUDGETS if shares[b] >= GAIN_SHARE)
    print("   correction budget -> share of the unbounded CIEDE2000 gain: "
          + ", ".join(f"{b:g}: {s:.0%}" for b, s in shares.items())
          + f"; smallest >= {GAIN_SHARE:.0%}: {pick:g} (default {DEFAULT_MAX_CORRECTION:g})")


# ============================================================================ 3. fair assignment
def subset_table(table: TileTable, n: int, seed: int = 0) -> TileTable:
    keep = np.sort(np.random.default_rng(seed).choice(len(table), size=min(n, len(table)), replace=False))
    return TileTable(table.id_bytes[keep], table.bucket_ids[keep], table.rgb[keep], table.subcells, table.thumbs,
                     table.thumb_rows[keep])


def repeated_table(table: TileTable, n: int, seed: int = 0) -> TileTable:
    """``n`` tiles from the library's, repeated with sub-cell colours jittered by up to 4 levels."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, len(table), n)
    rgb = np.clip(table.rgb[src] + rng.uniform(-4, 4, (n, *table.rgb.shape[1:])), 0, 255)
    ids = np.array([f"{i:08x}-0000-4000-8000-000000000000" for i in range(n)], dtype="S36")
    return TileTable(ids, table.bucket_ids[src], rgb, table.subcells, table.thumbs, table.thumb_rows[src])


def bench_fair(lib: Library, table: TileTable, quick: bool, skip_scale: bool = False) -> list:
    side, n_tiles = (12, 1000) if quick else (50, 5000)
    sub = subset_table(table, n_tiles)
    img = Image.open(REPO / "data" / "sample_target.jpg").convert("RGB")
    greedy = MosaicOptions(grid=(side, side), tile_size=TILE)
    fair = MosaicOptions(grid=(side, side), tile_size=TILE, max_uses=1)

    def run(options):
        plan = plan_mosaic(lib, img, options, table=sub)
        return plan, render_mosaic(lib, plan)

    times = common.interleaved(1 if quick else 3, {"greedy": lambda: common.timed_cpu(lambda: run(greedy)),
                                                   "fair": lambda: common.timed_cpu(lambda: run(fair))})
    t_greedy = float(np.median([t.wall for t, _ in times["greedy"]]))
    t_fair = float(np.median([t.wall for t, _ in times["fair"]]))
    c_greedy = float(np.median([t.cpu for t, _ in times["greedy"]]))
    c_fair = float(np.median([t.cpu for t, _ in times["fair"]]))
    plan, out = times["fair"][0][1]
    f_fair = measure_fidelity(img, out, side, side, plan.layout.box)
    gplan, gout = times["greedy"][0][1]
    f_greedy = measure_fidelity(img, gout, side, side, gplan.layout.box)
    print(f"\n3. fair assignment, {side}x{side} cells, {len(sub)} tiles (plan + render, median of interleaved rounds): "
          f"greedy {t_greedy:.2f} s wall / {c_greedy:.2f} s CPU (most uses {gplan.most_uses}, {f_greedy.summary()}), "
          f"--max-uses 1 {t_fair:.2f} s / {c_fair:.2f} s CPU (most uses {plan.most_uses}, {f_fair.summary()})", flush=True)
    print(f"   --max-uses 1 / greedy: {t_fair / t_greedy:.2f}x wall, {c_fair / c_greedy:.2f}x CPU (target: within 3x)",
          flush=True)
    rows = [common.Row("mosaic", f"--max-uses 1, {side * side} cells, {len(sub)} tiles", "greedy default", t_greedy,
                       "--max-uses 1", t_fair, "s", higher_is_better=False, target=1 / 3,
                       note="target: within 3x of greedy"),
            common.Row("mosaic", f"--max-uses 1, {side * side} cells: CPU", "greedy default", c_greedy,
                       "--max-uses 1", c_fair, "cpu s", higher_is_better=False, target=1 / 3)]
    if not quick and not skip_scale:
        for mode in ("greedy", "fair"):
            m = common.run_measured([sys.executable, __file__, "--library", str(lib.root), "--scale-case", mode])
            line = m["output"].strip().splitlines()[-1] if m["output"].strip() else m["output"]
            print(f"   scale, fresh process, {mode}: {line}; wall {m['seconds']:.1f} s, peak RSS "
                  f"{m['maxrss_mb']:.0f} MB", flush=True)
            rows.append(common.Row("mosaic", f"10,000 cells x 102,030 tiles, {mode}: peak RSS", "-", m["maxrss_mb"],
                                   mode, m["maxrss_mb"], "MB", higher_is_better=False))
    return rows


def scale_case(root: Path, mode: str) -> None:
    """10,000 cells (100x100) on the library's tiles repeated to 102,030: plan only."""
    img = Image.open(REPO / "data" / "sample_target.jpg").convert("RGB")
    with Library.open(root, readonly=True) as lib:
        big = repeated_table(load_tile_table(lib, 2, progress=False), 15 * 6802)
        options = MosaicOptions(grid=(100, 100), tile_size=TILE, max_uses=1 if mode == "fair" else None)
        t, plan = timed(lambda: plan_mosaic(lib, img, options, table=big))
        print(f"{len(big)} tiles, {plan.grid.size} cells: plan {t:.1f} s, most uses {plan.most_uses}, "
              f"{len(np.unique(plan.grid))} distinct")


def run_cpu(argv: list[str], env: dict) -> tuple[common.Timing, common.Measured]:
    """:func:`common.run_measured` with the CPU seconds of the measured process tree alone (not
    this process's own, which samples its memory every 20 ms)."""
    import resource

    def kids() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    cpu0 = kids()
    m = common.run_measured(argv, env=env)
    return common.Timing(m["seconds"], kids() - cpu0), m


# ============================================================================ 4. cold start
def bench_cold(root: Path, work: Path, quick: bool, skip_nocache: bool = False) -> list:
    """Fresh ``python -m builder mosaic`` processes, as users run them: the first mosaic on the
    library as ingest left it (the store cached every thumbnail; the derived sub-cell colour file
    does not exist yet) against the second, in interleaved rounds; wall and CPU time."""
    with Library.open(root, readonly=True) as lib:
        n = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    cache = ThumbnailCache.of(root)
    _pixels, index = cache.load()
    argv = [sys.executable, "-m", "builder", "mosaic", "--library", str(root), str(REPO / "data" / "sample_target.jpg"),
            "--output", str(work / "cold.png")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def first():
        for derived in cache.folder.glob(f"{THUMB_PREFIX}.v*.sub*.npy"):  # what only a mosaic writes
            derived.unlink()
        return run_cpu(argv, env)

    runs = common.interleaved(1 if quick else 3, {"first": first, "second": lambda: run_cpu(argv, env)})
    for _t, m in runs["first"] + runs["second"]:
        if m["returncode"]:
            print(m["output"][-2000:])
    wall = {k: float(np.median([t.wall for t, _m in v])) for k, v in runs.items()}
    cpu = {k: float(np.median([t.cpu for t, _m in v])) for k, v in runs.items()}
    print(f"\n4. no cold start, {n} tiles ({len(index)} cached by the store as they were ingested), fresh processes, "
          f"median of {len(runs['first'])} interleaved rounds: first mosaic {wall['first']:.2f} s wall / "
          f"{cpu['first']:.2f} s CPU, second {wall['second']:.2f} s / {cpu['second']:.2f} s CPU: "
          f"{wall['first'] / wall['second']:.2f}x wall, {cpu['first'] / cpu['second']:.2f}x CPU (target: within 1.5x)",
          flush=True)
    rows = [
        common.Row("mosaic", f"first vs second mosaic, {n} tiles (fresh processes)", "second (warm)",
                   wall["second"], "first (store-made cache)", wall["first"], "s", higher_is_better=False,
                   target=1 / 1.5, note="target: cold within 1.5x of warm"),
        common.Row("mosaic", f"first vs second mosaic, {n} tiles: CPU", "second (warm)", cpu["second"],
                   "first (store-made cache)", cpu["first"], "cpu s", higher_is_better=False, target=1 / 1.5),
    ]
    if skip_nocache:
        return rows
    scratch = work / "nocache" / root.name
    shutil.copytree(root, scratch, ignore=shutil.ignore_patterns(".cache", ".lock"))
    argv_old = [a if a != str(root) else str(scratch) for a in argv]
    old = common.run_measured(argv_old, env=env)
    print(f"   the same first mosaic with no cached thumbnails (every tile decoded, as before): {old['seconds']:.2f} s",
          flush=True)
    shutil.rmtree(scratch.parent, ignore_errors=True)
    rows.append(common.Row("mosaic", f"first mosaic, {n} tiles", "no cache (decode all)", old["seconds"],
                           "store-made cache", wall["first"], "s", higher_is_better=False))
    return rows


def build_cold_library(root: Path) -> None:
    """20,000+ tiles: 24,000 256-px Blue Marble crops with a bucket cap of 1000 (18,875 accepted:
    the common colours fill their buckets), then 4,000 crops with their channels permuted and
    scaled (3,855 more, in colours the Earth lacks): 22,730 tiles."""
    build_library(root, 24000, seed=7, cap=1000, sizes=(256,))
    world = Image.open(BLUEMARBLE).convert("RGB")
    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory(prefix="bench_crops_") as tmp:
        for i in range(4000):
            x, y = int(rng.integers(0, world.width - 256)), int(rng.integers(0, world.height - 256))
            a = np.asarray(world.crop((x, y, x + 256, y + 256)), dtype=np.float32)
            a = a[..., rng.permutation(3)] * rng.uniform(0.6, 1.6, 3) + rng.uniform(-40, 40, 3)
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(f"{tmp}/c{i:05d}.jpg", quality=92)
        with Library.open(root) as lib:
            print(f"  ingest (recoloured crops): {ingest(lib, [Path(tmp)], progress=False).summary()}", flush=True)


# ============================================================================ 5. huge mosaics
def _json_of(output: str) -> dict:
    import json

    try:
        return json.loads(output[output.index("{"):output.rindex("}") + 1])
    except ValueError:
        return {}


def bench_dzi(root: Path, work: Path, cells: int, pyvips_path: str | None = None) -> list:
    """``--format dzi`` of ``cells x cells`` cells of 256 px in a fresh process (wall, CPU, peak
    RSS, stage seconds); the same plan and render streamed into libvips' ``dzsave`` (when
    ``pyvips`` imports, from ``pyvips_path`` if given), and the render alone, to tell the
    writers' own costs apart."""
    out = work / "huge" / "huge.dzi"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "builder", "mosaic", "--library", str(root), str(REPO / "data" / "sample_target.jpg"),
            "--output", str(out), "--grid", f"{cells}x{cells}", "--tile-size", "256", "--json"]
    t, m = run_cpu(argv, env)
    side = cells * 256
    files = sum(1 for _ in out.with_name("huge_files").rglob("*.jpg")) if out.is_file() else 0
    stages = _json_of(m["output"]).get("stages", {})
    print(f"\n5. --format dzi, {cells}x{cells} cells of 256 px ({side:,} px a side), fresh process: {m['seconds']:.1f} s "
          f"wall, {t.cpu:.1f} s CPU, peak RSS {m['maxrss_mb']:.0f} MB, {files:,} pyramid tiles (exit {m['returncode']}); "
          "stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()), flush=True)
    if m["returncode"]:
        print(m["output"][-2000:])
    shutil.rmtree(out.parent, ignore_errors=True)
    rows = [common.Row("mosaic", f"dzi {side:,} px a side: peak RSS", "-", m["maxrss_mb"], "streamed DZI",
                       m["maxrss_mb"], "MB", higher_is_better=False)]
    vips_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pyvips_path, os.environ.get("PYTHONPATH")) if p)}
    probe = subprocess.run([sys.executable, "-c", "import pyvips; print(pyvips.version(0), pyvips.version(1), "
                            "pyvips.version(2))"], env=vips_env, capture_output=True, text=True)
    if probe.returncode:
        print("   pyvips absent (pip install pyvips pyvips-binary; --pyvips-path DIR): libvips' dzsave not compared")
        return rows
    version = probe.stdout.strip().replace(" ", ".")
    stream = [sys.executable, __file__, "--library", str(root), "--stream-case", str(cells)]
    vips_code = ("import sys, pyvips; pyvips.Image.new_from_source(pyvips.Source.new_from_descriptor(0), '', "
                 "access='sequential').dzsave(sys.argv[1], suffix='.jpg[Q=90]', overlap=0, tile_size=256, "
                 "depth='onepixel')")
    quoted = " ".join(shlex.quote(a) for a in stream)
    pipeline = (f"set -o pipefail; {quoted} png | PYTHONPATH={shlex.quote(vips_env['PYTHONPATH'])} "
                f"{shlex.quote(sys.executable)} -c {shlex.quote(vips_code)} {shlex.quote(str(work / 'vips' / 'huge'))}")
    (work / "vips").mkdir(parents=True, exist_ok=True)
    tv, mv = run_cpu(["bash", "-c", pipeline], env)
    vfiles = sum(1 for _ in (work / "vips" / "huge_files").rglob("*.jpg"))
    shutil.rmtree(work / "vips", ignore_errors=True)
    tr, mr = run_cpu([*stream, "null"], env)
    print(f"   the same plan and render streamed into libvips {version} dzsave (uncompressed PNG on a pipe): "
          f"{mv['seconds']:.1f} s wall, {tv.cpu:.1f} s CPU, peak RSS {mv['tree_peak_mb']:.0f} MB (both processes), "
          f"{vfiles:,} tiles (exit {mv['returncode']}); the render alone: {mr['seconds']:.1f} s, {tr.cpu:.1f} s CPU, "
          f"{mr['maxrss_mb']:.0f} MB", flush=True)
    print(f"   pyramid writing alone (minus the render): ours {t.cpu - tr.cpu:.1f} s CPU, libvips {tv.cpu - tr.cpu:.1f} s "
          f"CPU (PNG pipe included); wall {m['seconds']:.1f} s vs {mv['seconds']:.1f} s", flush=True)
    if mv["returncode"]:
        print(mv["output"][-2000:])
    rows += [common.Row("mosaic", f"dzi {side:,} px: time", "render | libvips dzsave", mv["seconds"],
                        "streamed DZI", m["seconds"], "s", higher_is_better=False),
             common.Row("mosaic", f"dzi {side:,} px: CPU", "render | libvips dzsave", tv.cpu,
                        "streamed DZI", t.cpu, "cpu s", higher_is_better=False),
             common.Row("mosaic", f"dzi {side:,} px: peak RSS", "render | libvips dzsave", mv["tree_peak_mb"],
                        "streamed DZI", m["maxrss_mb"], "MB", higher_is_better=False)]
    return rows


def stream_case(root: Path, cells: int, sink: str) -> None:
    """Plan and render the DZI case's mosaic, its bands streamed to stdout as one uncompressed PNG
    (no filter, zlib level 0: libvips reads it sequentially at memory speed), or dropped."""
    import struct
    import zlib

    from builder.mosaic import iter_bands
    from builder.mosaic.pngstream import _png_chunk

    with Library.open(root, readonly=True) as lib:
        plan = plan_mosaic(lib, REPO / "data" / "sample_target.jpg", MosaicOptions(grid=(cells, cells), tile_size=256),
                           progress=False)
        w, h = plan.output_size
        out = sys.stdout.buffer if sink == "png" else None
        z = zlib.compressobj(0)
        if out:
            out.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        for band in iter_bands(lib, plan, progress=False):
            if out:
                rows = np.zeros((len(band), w * 3 + 1), dtype=np.uint8)
                rows[:, 1:] = band.reshape(len(band), -1)
                out.write(_png_chunk(b"IDAT", z.compress(rows.tobytes())))
        if out:
            out.write(_png_chunk(b"IDAT", z.flush()) + _png_chunk(b"IEND", b""))
            out.flush()


# ============================================================================ 6. peers
PEER_SIZES = (16, 32)  # cell sizes compared: output pixels a cell, the input resized to match
PEER_LONG_SIDE = 48  # cells on the long side of the peer comparison
PEER_OVERLAY = 30.0  # percent: metapixel's README calls --cheat 30 "small enough to go unnoticed"
PEER_TILES = 1500  # Blue Marble crops (common.tile_folder) ingested for the peers' tile sets
PEER_SYNTH_USES = 4  # synthesize --max-uses for the real+synthetic set (every empty bucket textured)
PHOMO_WORK_PER_S = 2.5e7  # cells x tiles x pixels phomo's distance matrix gets through a second here
PHOMO_MAX_WORK = 3.5e9  # phomo is left out past this (2-3 minutes; 32-px cells on 6,000 tiles: 17)
PHOMO_SETS = ("real",)  # phomo on the real set only: on the 6,256-tile real+synthetic one it takes 2-17 min a mosaic


def peer_libraries(base: Path, quick: bool) -> dict[str, Path]:
    """The tile sets, cached under ``base``: ``real`` (``common.tile_folder`` crops through a fresh
    ``python -m builder ingest``) and ``real+synthetic`` (a copy after ``synthesize``; left out with
    ``--quick``: synthesizing thousands of buckets takes minutes)."""
    n = 300 if quick else PEER_TILES
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    real = base / f"peers_real_{n}" / "mosaic_library"
    if not (real / "tiles.db").is_file():
        folder = common.tile_folder(n, "png")
        shutil.rmtree(real.parent, ignore_errors=True)
        for argv in (["init"], ["ingest", str(folder)]):
            subprocess.run([sys.executable, "-m", "builder", *argv[:1], "--library", str(real), *argv[1:]],
                           env=env, check=True, capture_output=True)
    out = {"real": real}
    if quick:
        return out
    synth = base / f"peers_synth_{n}" / "mosaic_library"
    if not (synth / "tiles.db").is_file():
        shutil.rmtree(synth.parent, ignore_errors=True)
        shutil.copytree(real.parent, synth.parent, ignore=shutil.ignore_patterns(".lock"))
        print(f"   synthesizing the real+synthetic set at {synth} (minutes) ...", flush=True)
        subprocess.run([sys.executable, "-m", "builder", "synthesize", "--library", str(synth),
                        "--max-uses", str(PEER_SYNTH_USES)], env=env, check=True, capture_output=True)
    out["real+synthetic"] = synth
    return out


def tile_files(root: Path, folder: Path) -> tuple[Path, int]:
    """One flat folder of (hard links to) the library's tile PNGs, real and synthetic alike: what
    phomo's ``Pool.from_dir`` and ``metapixel-prepare`` read."""
    with Library.open(root, readonly=True) as lib:
        rows = lib.conn.execute("SELECT bucket_id, id FROM tiles").fetchall()
        paths = [lib.tile_path(bucket, tile_id) for bucket, tile_id in rows]
    if not folder.is_dir() or sum(1 for _ in folder.iterdir()) != len(paths):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for path in paths:
            try:
                os.link(path, folder / path.name)
            except OSError:
                shutil.copyfile(path, folder / path.name)
    return folder, len(paths)


def peer_input(img: Image.Image, tile: int, folder: Path, name: str) -> tuple[Path, int, int]:
    """The photo cropped to the grid and resized to ``tile`` pixels a cell: the one input file
    every tool gets, so the same grid falls on the same pixels."""
    cols, rows = grid_for(img, PEER_LONG_SIDE)
    box = Layout(img.width, img.height, MosaicOptions(grid=(cols, rows))).box
    path = folder / f"{name}_{tile}.png"
    img.resize((cols * tile, rows * tile), Image.Resampling.LANCZOS, box=box).save(path)
    return path, cols, rows


def phomo_python(phomo_path: str | None) -> dict | None:
    """The environment in which ``import phomo`` works (``--phomo-path``, or as installed), or None."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), phomo_path) if p),
           "TQDM_DISABLE": "1"}
    probe = subprocess.run([sys.executable, "-c", "import phomo"], env=env, capture_output=True)
    return None if probe.returncode else env


def phomo_case(tiles: Path, master: Path, out: Path, tile: int, appearances: int) -> None:
    """phomo 1.2 as its command line runs (``phomo MASTER TILES -S T T -n N -o OUT``: ``Pool.from_dir``,
    ``Master.from_file``, ``d_matrix`` with the default ``norm`` metric, the exact ``build``), with
    the tile loading timed apart; prints ``prepare SECONDS run SECONDS``."""
    from phomo import Master, Mosaic, Pool

    started = time.perf_counter()
    pool = Pool.from_dir(tiles, tile_size=(tile, tile))
    loaded = time.perf_counter()
    mosaic = Mosaic(Master.from_file(master), pool, n_appearances=appearances)
    mosaic.build(mosaic.d_matrix(workers=1)).save(out)
    print(f"prepare {loaded - started:.3f} run {time.perf_counter() - loaded:.3f}")


def run_peer(argv: list[str], out: Path, env: dict, reference: Image.Image, cols: int, rows: int,
             prepare: float = 0.0, parse=None) -> tuple[float, float, float, float] | None:
    """One tool's mosaic in a fresh process: ``(CIEDE2000, SSIM, prepare s, run s)`` of ``out``
    measured against ``reference`` (None when the tool failed; its output's tail is printed)."""
    m = common.run_measured(argv, env=env)
    if m["returncode"] or not out.is_file():
        print(f"   {' '.join(argv[:4])} ... failed: {m['output'][-600:]}", flush=True)
        return None
    with Image.open(out) as made:
        fid = measure_fidelity(reference, made.convert("RGB"), cols, rows)
    out.unlink()
    run_s = m["seconds"]
    if parse:
        prepare, run_s = parse(m["output"])
    return fid.delta_e, fid.ssim, prepare, run_s


def parse_phomo(text: str) -> tuple[float, float]:
    """``(prepare, run)`` seconds from :func:`phomo_case`'s last line."""
    words = text.split()
    return float(words[words.index("prepare") + 1]), float(words[words.index("run") + 1])


def bench_peers(base: Path, work: Path, quick: bool, phomo_path: str | None, sizes: tuple[int, ...],
                sets: tuple[str, ...] | None = None) -> list:
    """The project beside phomo 1.2 and metapixel 1.0.2 on the same tiles, input files and grid,
    every run a fresh process: fidelity of each output (:func:`measure_fidelity` against the
    input file) and wall seconds, each tool's preparation of the tile set apart."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pics = photos(quick)
    if quick:
        pics = dict(list(pics.items())[:1])
        sizes = sizes[:1]
    penv = phomo_python(phomo_path)
    metapixel = shutil.which("metapixel") and shutil.which("metapixel-prepare")
    print(f"\n6. peers: {PEER_LONG_SIDE} cells on the long side, cells of {', '.join(map(str, sizes))} px, "
          f"fresh processes; CIEDE2000 / SSIM / seconds (prepare + run)", flush=True)
    if penv is None:
        print("   phomo absent (pip install phomo; --phomo-path DIR): not compared")
    if not metapixel:
        print("   metapixel absent (apt-get install metapixel): not compared")
    rows_out, table = [], {}
    for set_name, root in peer_libraries(base, quick).items():
        if sets and set_name not in sets:
            continue
        tiles, n_tiles = tile_files(root, work / f"tiles_{set_name}")
        for tile in sizes:
            prepared, t_prepare = work / f"metapixel_{set_name}_{tile}", 0.0
            if metapixel:
                prepared.mkdir(parents=True, exist_ok=True)
                m = common.run_measured(["metapixel-prepare", f"--width={tile}", f"--height={tile}", str(tiles),
                                         str(prepared)])
                t_prepare = m["seconds"]
            for name, img in pics.items():
                master, cols, rows = peer_input(img, tile, work, name)
                reference = Image.open(master).convert("RGB")
                res = table.setdefault((set_name, tile), {}).setdefault(name, {})

                where = (reference, cols, rows)
                ours = [sys.executable, "-m", "builder", "mosaic", "--library", str(root), str(master),
                        "--grid", f"{cols}x{rows}", "--tile-size", str(tile)]
                variants = {"ours (default)": [], "ours --overlay 30": ["--overlay", f"{PEER_OVERLAY:g}"]}
                if set_name != "real":
                    variants["ours --real-only"] = ["--real-only"]
                if n_tiles >= cols * rows:
                    variants["ours --max-uses 1"] = ["--max-uses", "1"]
                for label, extra in variants.items():
                    out = work / "ours.png"
                    res[label] = run_peer([*ours, "--output", str(out), *extra], out, env, *where)
                work_units = cols * rows * n_tiles * tile * tile
                with_phomo = penv is not None and set_name in PHOMO_SETS
                if with_phomo and work_units > PHOMO_MAX_WORK:
                    print(f"   phomo left out for {set_name}, {tile} px, {name}: its dense distance matrix "
                          f"({cols * rows} cells x {n_tiles} tiles x {tile}x{tile} px) would take "
                          f"{work_units / PHOMO_WORK_PER_S / 60:.0f} minutes or more", flush=True)
                elif with_phomo:
                    out = work / "phomo.png"
                    need = -(-cols * rows // n_tiles)
                    res["phomo 1.2 (exact)"] = run_peer([sys.executable, __file__, "--phomo-case", str(tiles),
                                                         str(master), str(out), str(tile), str(need)], out, penv,
                                                        *where, parse=parse_phomo)
                if metapixel:
                    for label, extra in (("metapixel", []), (f"metapixel --cheat {PEER_OVERLAY:g}",
                                                              [f"--cheat={PEER_OVERLAY:g}"])):
                        out = work / "metapixel.png"
                        res[label] = run_peer(["metapixel", f"--width={tile}", f"--height={tile}", "--library",
                                               str(prepared), *extra, "--metapixel", str(master), str(out)], out, env,
                                              *where, prepare=t_prepare)
                print(f"   {set_name} ({n_tiles} tiles), {tile} px, {name} ({cols}x{rows}) done", flush=True)
            shutil.rmtree(prepared, ignore_errors=True)
    for (set_name, tile), by_photo in table.items():
        names = list(by_photo)
        labels = list(dict.fromkeys(label for res in by_photo.values() for label in res))
        width = max(len(label) for label in labels)
        print(f"\n   {set_name}, cells of {tile} px")
        print("   " + f"{'method':<{width}}  " + "  ".join(f"{n:>27}" for n in names))
        for label in labels:
            cells = []
            for n in names:
                v = by_photo[n].get(label)
                cells.append("failed".rjust(27) if v is None else
                             f"{v[0]:5.2f} {v[1]:.3f} {v[2]:5.1f}+{v[3]:5.2f}s".rjust(27))
            print("   " + f"{label:<{width}}  " + "  ".join(cells))
        rows_out += peer_rows(set_name, tile, by_photo)
    return rows_out


def peer_rows(set_name: str, tile: int, by_photo: dict) -> list:
    """Report rows: the default against each peer's best figure, the overlay against metapixel's
    cheat, the default against ``--real-only``."""
    rows = []
    for name, res in by_photo.items():
        ours = res.get("ours (default)")
        if ours is None:
            continue
        case = f"{set_name}, {tile} px, {name}"
        peers = {k: v for k, v in res.items() if v is not None and not k.startswith("ours") and "cheat" not in k}
        for label, v in peers.items():
            rows.append(common.Row("mosaic", f"{case}: CIEDE2000", label, v[0], "default", ours[0], "dE",
                                   higher_is_better=False, target=1.0))
            rows.append(common.Row("mosaic", f"{case}: SSIM", label, v[1], "default", ours[1], "ssim", target=1.0))
            rows.append(common.Row("mosaic", f"{case}: time", label, v[2] + v[3], "default", ours[2] + ours[3], "s",
                                   higher_is_better=False, target=1.0, note="prepare + run"))
        cheat, overlay = res.get(f"metapixel --cheat {PEER_OVERLAY:g}"), res.get("ours --overlay 30")
        if cheat and overlay:
            rows.append(common.Row("mosaic", f"{case}: CIEDE2000 at {PEER_OVERLAY:g}% overlay", "metapixel --cheat",
                                   cheat[0], "--overlay", overlay[0], "dE", higher_is_better=False, target=1.0))
            rows.append(common.Row("mosaic", f"{case}: SSIM at {PEER_OVERLAY:g}% overlay", "metapixel --cheat",
                                   cheat[1], "--overlay", overlay[1], "ssim", target=1.0))
        real = res.get("ours --real-only")
        if real:
            rows.append(common.Row("mosaic", f"{case}: CIEDE2000 vs --real-only", "--real-only", real[0], "default",
                                   ours[0], "dE", higher_is_better=False, target=1.0))
            rows.append(common.Row("mosaic", f"{case}: SSIM vs --real-only", "--real-only", real[1], "default",
                                   ours[1], "ssim", target=1.0))
    return rows


def main() -> int:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--library", default=None, help="bench library (default: a cached one; --quick: a fresh small one)")
    parser.add_argument("--crops", type=int, default=None, help="Blue Marble crops to ingest when building (default 14000)")
    parser.add_argument("--sample", type=int, default=None, help="colours timed in the per-colour loop (default 20000)")
    parser.add_argument("--rebuild", action="store_true", help="delete and rebuild the bench library")
    parser.add_argument("--cold-library", default=None, help="library of 20,000+ tiles for the cold-start case "
                        "(default: a cached one, built from 28,000 256-px crops with a bucket cap of 1000)")
    parser.add_argument("--dzi-cells", type=int, default=None, help="cells a side of the DZI case (default 200)")
    parser.add_argument("--dzi-library", default=None, help="library for the DZI case (default: --library)")
    parser.add_argument("--skip-dzi", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--skip-nocache", action="store_true", help="leave out the first mosaic with no thumbnail "
                        "cache (decodes every tile: minutes at 20,000 tiles)")
    parser.add_argument("--skip-phomo", action="store_true", help="leave phomo out (minutes a photo)")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the 10,000 x 100,000 fair case")
    parser.add_argument("--only", default="queries,fidelity,fair,cold,dzi,peers", help="sections to run")
    parser.add_argument("--phomo-path", default=None, help="folder holding phomo 1.2 (pip install --target DIR "
                        "phomo ...) for the peers section (default: as installed)")
    parser.add_argument("--peer-sizes", default=",".join(map(str, PEER_SIZES)), help="cell sizes of the peers section")
    parser.add_argument("--peer-sets", default=None, help="tile sets of the peers section (real, real+synthetic)")
    parser.add_argument("--phomo-case", nargs=5, help=argparse_hidden())
    parser.add_argument("--scale-case", choices=("greedy", "fair"), help=argparse_hidden())
    parser.add_argument("--stream-case", type=int, help=argparse_hidden())
    parser.add_argument("stream_sink", nargs="?", choices=("png", "null"), help=argparse_hidden())
    parser.add_argument("--pyvips-path", default=None, help="folder holding pyvips (pip install --target DIR pyvips "
                        "pyvips-binary) for the libvips comparison")
    args = parser.parse_args()
    global SKIP_PHOMO
    SKIP_PHOMO = args.skip_phomo
    if args.scale_case:
        scale_case(Path(args.library), args.scale_case)
        return 0
    if args.phomo_case:
        tiles, master, out, tile, appearances = args.phomo_case
        phomo_case(Path(tiles), Path(master), Path(out), int(tile), int(appearances))
        return 0
    if args.stream_case:
        stream_case(Path(args.library), args.stream_case, args.stream_sink or "null")
        return 0
    quick_tmp = tempfile.TemporaryDirectory(prefix="bench_mosaic_quick_") if args.quick else None
    default_root = Path(quick_tmp.name) if quick_tmp else Path(tempfile.gettempdir()) / "mosaic_bench"
    root = Path(args.library or default_root / "mosaic_library")
    args.crops = args.crops or (300 if args.quick else 14000)
    args.sample = args.sample or (2000 if args.quick else 20000)
    sections = set(args.only.split(","))
    if args.rebuild and root.exists():
        shutil.rmtree(root)
    if not (root / "tiles.db").is_file():
        print(f"building the bench library at {root} from {args.crops} Blue Marble crops ...", flush=True)
        build_library(root, args.crops)
    rows = []
    with Library.open(root, readonly=True) as lib, tempfile.TemporaryDirectory(prefix="bench_mosaic_") as tmp:
        work = Path(tmp)
        stats = lib.stats()
        print(f"library {root}: {stats['tiles']} tiles in {stats['buckets_populated']} buckets")
        table = load_tile_table(lib, 2, progress=False)
        if "queries" in sections:
            rows += bench_queries(lib, args.sample)
        if "fidelity" in sections:
            rows += bench_fidelity(lib, table, args.quick)
        if "fair" in sections:
            rows += bench_fair(lib, table, args.quick, args.skip_scale)
        if "cold" in sections and not args.skip_cold:
            cold = root if args.quick else Path(args.cold_library or default_root / "cold20k" / "mosaic_library")
            if not (cold / "tiles.db").is_file():
                print(f"building the cold-start library at {cold} (28,000 256-px crops, cap 1000) ...", flush=True)
                build_cold_library(cold)
            rows += bench_cold(cold, work, args.quick, args.skip_nocache)
        if "dzi" in sections and not args.skip_dzi:
            rows += bench_dzi(Path(args.dzi_library) if args.dzi_library else root, work,
                              args.dzi_cells or (4 if args.quick else 200), args.pyvips_path)
        if "peers" in sections:
            rows += bench_peers(default_root, work, args.quick, args.phomo_path,
                                tuple(int(x) for x in args.peer_sizes.split(",")),
                                tuple(args.peer_sets.split(",")) if args.peer_sets else None)
    common.report(rows)
    if quick_tmp:
        quick_tmp.cleanup()
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
