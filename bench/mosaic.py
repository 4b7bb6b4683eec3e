"""Benchmark: batched colour queries and photomosaics against straightforward loops.

    /path/to/python bench/mosaic.py [--library DIR] [--crops N] [--sample N]

1. **1,000,000 LAB colours -> nearest bucket.**  Ours: one ``nearest_buckets`` call (one
   KD-tree query for the whole batch).  Baseline: the card's recipe per colour,
   ``cKDTree(centroids).query(colour)`` in a Python loop, timed on ``--sample`` colours and
   extrapolated linearly to 1,000,000 (the loop's cost per colour is constant); the answers
   of the sample are checked to be identical.
2. **2048x2048 target, 64x64-pixel cells (32x32 cells), 64-pixel tiles, 2048x2048 output.**
   Baseline: a straightforward per-cell loop: mean colour of the cell's pixels -> LAB ->
   brute-force nearest tile over every tile's stored LAB (``mean_l, mean_a, mean_b``), then
   open that tile, resize it and paste it.  Ours: :func:`builder.mosaic.make_mosaic` with its
   defaults (2x2 sub-cell matching, no-repeat radius 2: more work per cell than the
   baseline), warm (thumbnail atlas cached, as for every mosaic after the first) and cold
   (cache deleted: every tile in the library decoded once into the atlas).  Both produce the image
   in memory; writing the PNG is timed separately.

The library is built once (if ``--library`` does not hold one) from real Blue Marble crops
through ``builder.ingest.ingest``: crops of 64..1024 px at random places, saved as JPEG and ingested,
so buckets fill with real, de-duplicated tiles.  Timings are wall-clock on this machine;
nothing here runs as a test.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

try:
    from bench import common
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    import common  # type: ignore[no-redef]

from builder.color import rgb_to_lab  # noqa: E402
from builder.ingest import ingest  # noqa: E402
from builder.library import Library  # noqa: E402
from builder.mosaic import (  # noqa: E402
    MosaicOptions,
    cache_dir,
    make_mosaic,
    plan_mosaic,
    write_mosaic,
)
from builder.query import nearest_buckets  # noqa: E402

BLUEMARBLE = REPO / "data" / "bluemarble_5400x2700.jpg"
N_COLOURS = 1_000_000
TARGET_SIDE = 2048
CELL = 64


def build_library(root: Path, crops: int, seed: int = 0) -> None:
    """Real Blue Marble crops of mixed scales through the real ingest pipeline."""
    world = Image.open(BLUEMARBLE).convert("RGB")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="bench_crops_") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        for i in range(crops):
            size = int(rng.choice([64, 96, 128, 192, 256, 384, 512, 768, 1024]))
            x = int(rng.integers(0, world.width - size))
            y = int(rng.integers(0, world.height - size))
            crop = world.crop((x, y, x + size, y + size))
            crop.save(folder / f"crop_{i:05d}.jpg", quality=92)
        print(f"  wrote {crops} crops in {time.perf_counter() - started:.1f} s", flush=True)
        with Library.create(root) as lib:
            report = ingest(lib, [folder], progress=sys.stderr.isatty())
        print(f"  ingest: {report.summary()}", flush=True)


def bench_queries(lib: Library, sample: int) -> list:
    rng = np.random.default_rng(1)
    lab = rgb_to_lab(rng.integers(0, 256, (N_COLOURS, 3)))
    counts = lib.bucket_counts()
    started = time.perf_counter()
    ours = nearest_buckets(lib, lab, k=1, counts=counts)
    t_ours = time.perf_counter() - started

    tree = cKDTree(lib.centroids)
    started = time.perf_counter()
    loop = [tree.query(colour)[1] for colour in lab[:sample]]
    t_sample = time.perf_counter() - started
    assert np.array_equal(np.array(loop), ours.bucket_ids[:sample, 0]), "batch and loop disagree"
    t_base = t_sample * N_COLOURS / sample
    print(f"\n1. {N_COLOURS:,} LAB colours -> nearest bucket")
    print(f"   baseline (per-colour cKDTree.query loop): {t_sample:.2f} s for {sample:,} colours, "
          f"extrapolated to {N_COLOURS:,}: {t_base:.1f} s")
    print(f"   ours (one nearest_buckets call):          {t_ours:.2f} s")
    print(f"   ratio: {t_base / t_ours:.0f}x")
    return [common.Row("mosaic", f"{N_COLOURS:,} colours -> bucket", f"cKDTree.query loop (x{sample:,}, extrapolated)",
                       t_base, "nearest_buckets batch", t_ours, "s", higher_is_better=False, target=20.0)]


def baseline_mosaic(lib: Library, target: Image.Image, cell: int, tile: int) -> Image.Image:
    """The straightforward per-cell loop (see the module docstring)."""
    rows = lib.conn.execute("SELECT id, bucket_id, mean_l, mean_a, mean_b FROM tiles").fetchall()
    tile_lab = np.array([r[2:] for r in rows], dtype=np.float64)
    arr = np.asarray(target)
    cols_n, rows_n = target.width // cell, target.height // cell
    out = Image.new("RGB", (cols_n * tile, rows_n * tile))
    for r in range(rows_n):
        for c in range(cols_n):
            block = arr[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
            lab = rgb_to_lab(block.reshape(-1, 3).mean(axis=0))
            best = int(np.argmin(((tile_lab - lab) ** 2).sum(axis=1)))
            tile_id, bucket_id = rows[best][0], rows[best][1]
            with Image.open(lib.tile_path(bucket_id, tile_id)) as img:
                out.paste(img.convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS), (c * tile, r * tile))
    return out


def timed(fn, repeat: int = 1):
    best, value = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value


def bench_mosaic(lib: Library, work: Path) -> list:
    world = Image.open(BLUEMARBLE).convert("RGB")
    target = world.crop((1700, 300, 1700 + TARGET_SIDE, 300 + TARGET_SIDE))  # Europe, Africa, Atlantic
    options = MosaicOptions(cell_size=CELL, tile_size=CELL)
    print(f"\n2. {TARGET_SIDE}x{TARGET_SIDE} target, {CELL}x{CELL}-px cells "
          f"({TARGET_SIDE // CELL}x{TARGET_SIDE // CELL} cells), {CELL}-px tiles")

    t_base, base_img = timed(lambda: baseline_mosaic(lib, target, CELL, CELL))
    print(f"   baseline (per-cell loop: mean, brute-force nearest tile, open/resize/paste): {t_base:.2f} s")

    shutil.rmtree(cache_dir(lib), ignore_errors=True)
    t_cold, _ = timed(lambda: make_mosaic(lib, target, options, progress=False))
    t_warm, img = timed(lambda: make_mosaic(lib, target, options, progress=False), repeat=3)
    t_plan, plan = timed(lambda: plan_mosaic(lib, target, options, progress=False), repeat=3)
    t_write, _ = timed(lambda: write_mosaic(lib, plan, work / "bench_mosaic.png", progress=False))
    assert img.size == base_img.size == (TARGET_SIDE, TARGET_SIDE)
    print(f"   ours, cold (thumbnail atlas rebuilt: every tile decoded once): {t_cold:.2f} s  "
          f"ratio {t_base / t_cold:.1f}x")
    print(f"   ours, warm (atlas valid; {len(np.unique(plan.grid))} distinct tiles, none decoded): {t_warm:.2f} s  "
          f"ratio {t_base / t_warm:.1f}x")
    print(f"     of which planning (target, features from cache, matching): {t_plan:.3f} s "
          f"({', '.join(f'{k} {v:.3f}' for k, v in plan.seconds.items())})")
    print(f"   streamed PNG write of the same plan: {t_write:.2f} s")

    # Matching alone: the baseline's loop without tile loading, against our planning.
    rows = lib.conn.execute("SELECT mean_l, mean_a, mean_b FROM tiles").fetchall()
    tile_lab = np.array(rows, dtype=np.float64)
    arr = np.asarray(target)

    def match_loop():
        out = []
        for r in range(TARGET_SIDE // CELL):
            for c in range(TARGET_SIDE // CELL):
                lab = rgb_to_lab(arr[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL].reshape(-1, 3).mean(axis=0))
                out.append(int(np.argmin(((tile_lab - lab) ** 2).sum(axis=1))))
        return out

    t_match, _ = timed(match_loop)
    print(f"   matching only: baseline loop {t_match:.3f} s, ours (plan, warm) {t_plan:.3f} s, "
          f"ratio {t_match / t_plan:.1f}x")
    case = f"{TARGET_SIDE}px target, {CELL}px cells"
    loop = "per-cell loop (mean, brute force, open/paste)"
    return [
        common.Row("mosaic", f"{case}, warm cache", loop, t_base, "make_mosaic", t_warm, "s",
                   higher_is_better=False, target=20.0),
        common.Row("mosaic", f"{case}, cold (first mosaic)", loop, t_base, "make_mosaic", t_cold, "s",
                   higher_is_better=False, note="cold: every library tile decoded once into the thumbnail cache"),
        common.Row("mosaic", f"{case}, matching only", "per-cell match loop", t_match, "plan_mosaic", t_plan, "s",
                   higher_is_better=False),
    ]


def main() -> int:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--library", default=None, help="bench library (default: a cached one; --quick: a fresh small one)")
    parser.add_argument("--crops", type=int, default=None, help="Blue Marble crops to ingest when building (default 14000)")
    parser.add_argument("--sample", type=int, default=None, help="colours timed in the per-colour loop (default 20000)")
    parser.add_argument("--rebuild", action="store_true", help="delete and rebuild the bench library")
    args = parser.parse_args()
    quick_tmp = tempfile.TemporaryDirectory(prefix="bench_mosaic_quick_") if args.quick else None
    default_root = Path(quick_tmp.name) if quick_tmp else Path(tempfile.gettempdir()) / "mosaic_bench"
    root = Path(args.library or default_root / "mosaic_library")
    args.crops = args.crops or (300 if args.quick else 14000)
    args.sample = args.sample or (2000 if args.quick else 20000)
    if args.rebuild and root.exists():
        shutil.rmtree(root)
    if not (root / "tiles.db").is_file():
        print(f"building the bench library at {root} from {args.crops} Blue Marble crops ...", flush=True)
        build_library(root, args.crops)
    with Library.open(root, readonly=True) as lib:
        stats = lib.stats()
        print(f"library {root}: {stats['tiles']} tiles in {stats['buckets_populated']} buckets")
        rows = bench_queries(lib, args.sample)
        with tempfile.TemporaryDirectory(prefix="bench_mosaic_") as tmp:
            rows += bench_mosaic(lib, Path(tmp))
    common.report(rows)
    if quick_tmp:
        quick_tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
