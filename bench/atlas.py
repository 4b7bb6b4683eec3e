"""Atlas benchmark: the CPU of folding one overview tile in, and the ``atlas`` command as users run it.

(a) the fold of ``--tiles`` real overview tiles (the ``earth`` source's zoom-7 tiles for a zoom-15
    atlas: 65,536 one-pixel blocks each), CPU per tile in this process: the per-block code it
    replaced (every block's LAB and KD-tree query, every bucket recounted: the reference of
    ``tests/test_atlas.py``) against :func:`builder.acquire.atlas.tile_blocks` and
    :meth:`builder.acquire.atlas.SampleStore.add`, interleaved, medians; the kept samples must be the
    same; target (issue 22): at most 20 ms a tile;
(b) a fresh ``python -m builder atlas --source earth --zoom 15 --atlas-zoom 7 --bbox ...``: wall,
    CPU of the process tree per overview tile (rendering the earth tiles included: the source's
    cost) and cores kept busy.

Run: ``python bench/atlas.py`` (64 tiles, 3 rounds, about a minute), ``--quick`` for a smoke run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from bench import common
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    import common  # type: ignore[no-redef]

from builder.acquire.atlas import SampleStore, tile_blocks  # noqa: E402
from builder.acquire.sources import open_source  # noqa: E402
from builder.core import db  # noqa: E402  (common put the repo on sys.path)
from builder.core.color import CentroidIndex  # noqa: E402
from builder.core.layout import ATLAS_SAMPLE_PER_BUCKET, SHIPPED_CENTROIDS  # noqa: E402
from tests.support.atlas_reference import per_block_tile_blocks, per_bucket_add  # noqa: E402

BENCH = "atlas"
TARGET_MS = 20.0
ZOOM, ATLAS_ZOOM = 15, 7
BBOX = ("-10", "0", "30", "30")  # 180 zoom-7 overview tiles of earth


def fold_run(rgbs, refs, index, root: Path, reference: bool) -> tuple[float, list]:
    """CPU seconds of folding every tile in (one transaction a tile), and the samples kept."""
    path = root / ("reference.db" if reference else "project.db")
    for leftover in root.glob(path.name + "*"):
        leftover.unlink()
    conn = db.connect(path)
    db.create_schema(conn)
    db.create_atlas_tables(conn)
    store = SampleStore(conn, "earth", ZOOM, ATLAS_SAMPLE_PER_BUCKET, None, index)
    start = time.process_time()
    for rgb, ref in zip(rgbs, refs):
        blocks = (per_block_tile_blocks if reference else tile_blocks)(rgb, ref, ZOOM, index)
        with conn:
            (per_bucket_add(store, blocks) if reference else store.add(blocks))
    seconds = time.process_time() - start
    rows = conn.execute("SELECT x, y, bucket_id, key FROM atlas_sample ORDER BY x, y").fetchall()
    conn.close()
    return seconds, rows


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=None, help="overview tiles folded in (a) (default 64, quick 4)")
    args = parser.parse_args(argv)
    n = args.tiles or (4 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 3)
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="atlas_", dir=args.cache))
    earth = open_source("earth")
    refs = [(ATLAS_ZOOM, 56 + i % 16, 40 + i // 16) for i in range(n)]
    rgbs = [earth.render(*ref) for ref in refs]
    index = CentroidIndex(np.load(SHIPPED_CENTROIDS, allow_pickle=False))
    index.tree  # noqa: B018 - built before timing, as the atlas run does
    kept: dict[str, list] = {}

    def step(reference: bool):
        def run() -> float:
            seconds, rows = fold_run(rgbs, refs, index, work, reference)
            kept["reference" if reference else "project"] = rows
            return seconds / n * 1e3
        return run

    try:
        common.log(f"atlas fold: {n} earth overview tiles (zoom {ATLAS_ZOOM} for zoom {ZOOM}), x{repeats}")
        runs = common.interleaved(repeats, {"reference": step(True), "project": step(False)})
        ref_ms, new_ms = common.samples(runs["reference"]), common.samples(runs["project"])
        same = kept["reference"] == kept["project"]
        rows = [
            common.Row(BENCH, "fold per overview tile (65,536 blocks)", "per-block code", ref_ms.median,
                       "tile_blocks + SampleStore.add", new_ms.median, "cpu ms", higher_is_better=False,
                       note=f"{len(kept['project'])} samples kept, {'identical to' if same else 'DIFFERENT from'} "
                            "the per-block code's", repeats=repeats, spread=max(ref_ms.spread, new_ms.spread)),
            common.Row(BENCH, "fold per overview tile vs target", "issue 22 target", TARGET_MS,
                       "tile_blocks + SampleStore.add", new_ms.median, "cpu ms", higher_is_better=False, target=1.0,
                       repeats=repeats, spread=new_ms.spread),
        ]
        if not args.quick:
            rows.append(command_row(work, repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common.report(rows, title=f"atlas ({common.machine_note()})")
    return 0


def command_row(work: Path, repeats: int):
    """(b): fresh ``atlas`` commands on a new library each, medians."""
    env = {**os.environ, "PYTHONPATH": str(common.REPO), "TQDM_DISABLE": "1"}
    walls, cpus = common.Samples(), common.Samples()
    for i in range(repeats):
        root = work / f"cmd_{i}" / "mosaic_library"
        common.run_measured([sys.executable, "-m", "builder", "init", "--library", str(root)], env=env)
        measured = common.run_measured([sys.executable, "-m", "builder", "atlas", "--library", str(root),
                                        "--source", "earth", "--zoom", str(ZOOM), "--atlas-zoom", str(ATLAS_ZOOM),
                                        "--bbox", *BBOX], env=env)
        if measured["returncode"] != 0:
            raise RuntimeError(f"atlas failed: {measured['output'][-2000:]}")
        walls.add(measured["seconds"])
        cpus.add(measured["cpu_seconds"])
        shutil.rmtree(root.parent)
    tiles = 180
    return common.Row(BENCH, f"atlas command, {tiles} overview tiles: cores busy", "one core", 1.0,
                      "python -m builder atlas", cpus.median / walls.median, "cores",
                      note=(f"wall {walls.median:.1f} s, CPU {cpus.median:.1f} s of the process tree: "
                            f"{1e3 * cpus.median / tiles:.0f} ms a tile, rendering the earth tiles included"),
                      repeats=repeats, spread=max(walls.spread, cpus.spread))


if __name__ == "__main__":
    raise SystemExit(main())
