"""Ingest benchmark: the project's pipeline against the card's recipe and the decode floor.

Real-imagery tiles (textured Blue Marble crops, see :mod:`bench.common`), as PNG and as JPEG,
go into an empty library with the shipped centroids, in several ways:

(a) ``card``: the dataset card's recipe literally, one tile at a time, single process: PIL open,
    64x64 resize, mean, ``skimage.color.rgb2lab``, ``cKDTree.query``, cap check,
    ``imagehash.phash``, duplicate check, ``img.save`` of the PNG, one INSERT + commit per tile;
(b) ``pipeline``: ``Library.create`` + ``lib.ingest(folder, workers=2)`` (and ``workers=1``);
(c) ``floor``: open and fully decode each tile, nothing else, single process;
(d) ``reject``: the same tiles again into the library of (b) with every bucket full (cap set
    to 1 after the first pass), i.e. the cheapest path a tile can take through the pipeline.

Targets (issue 6): (b) >= 5x (a) on PNG input; (b) >= 85% of twice (c)'s per-core rate on the
2-core machine (the pipeline bound by decoding); (d) close to the decode floor (same 85%).

Run: ``python bench/ingest.py`` (3000 tiles, 3 repeats, a few minutes; the first run also
generates and caches the tiles), ``--quick`` for a smoke run.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

try:
    from bench import common
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path, the repo is not (yet)
    import common  # type: ignore[no-redef]

from builder import db  # noqa: E402  (common put the repo on sys.path)
from builder.library import SHIPPED_CENTROIDS, Library  # noqa: E402

BENCH = "ingest"
CARD_CAP = 100


# ---------------------------------------------------------------------------------------------
# (a) the card's recipe, literally
# ---------------------------------------------------------------------------------------------


def card_recipe_ingest(paths: list[Path], root: Path, centroids: np.ndarray) -> Counter:
    """The card's six steps for each tile in turn; returns the stored ``(bucket_id, phash)`` rows.

    Same schema and pragmas as the project (``builder.db``), so only the per-tile way of
    working differs.  The KD-tree is built once, as the card's harvester would.
    """
    import imagehash
    from PIL import Image
    from scipy.spatial import cKDTree
    from skimage.color import rgb2lab

    root.mkdir(parents=True)
    temp = root / "temp"
    temp.mkdir()
    conn = db.connect(root / "tiles.db")
    db.create_schema(conn)
    tree = cKDTree(centroids)
    stored: Counter = Counter()
    try:
        for path in paths:
            img = Image.open(path).convert("RGB")
            mean = np.array(img.resize((64, 64))).reshape(-1, 3).mean(0)  # 1-2. resize, mean
            lab = rgb2lab((mean / 255.0).reshape(1, 1, 3)).reshape(3)
            _dist, bucket = tree.query(lab)  # 3. nearest centroid
            bucket = int(bucket)
            (count,) = conn.execute("SELECT COUNT(*) FROM tiles WHERE bucket_id = ?", (bucket,)).fetchone()
            if count >= CARD_CAP:  # 4. bucket full
                continue
            tile_hash = str(imagehash.phash(img, hash_size=8))  # 5. pHash, duplicate check
            if conn.execute(
                "SELECT 1 FROM tiles WHERE bucket_id = ? AND phash = ? LIMIT 1", (bucket, tile_hash)
            ).fetchone():
                continue
            tile_id = str(uuid.uuid4())  # 6. save, atomic move, insert + commit
            folder = root / f"bucket_{bucket:04d}"
            folder.mkdir(exist_ok=True)
            staged = temp / f"{tile_id}.png"
            img.save(staged)
            os.replace(staged, folder / f"{tile_id}.png")
            conn.execute(
                "INSERT INTO tiles (id, bucket_id, filepath, phash, mean_l, mean_a, mean_b) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tile_id, bucket, f"{root.name}/bucket_{bucket:04d}/{tile_id}.png", tile_hash, *map(float, lab)),
            )
            conn.commit()
            stored[(bucket, tile_hash)] += 1
    finally:
        conn.close()
    return stored


# ---------------------------------------------------------------------------------------------
# (b) the pipeline, (c) the decode floor, (d) the reject path
# ---------------------------------------------------------------------------------------------


def pipeline_ingest(folder: Path, root: Path, workers: int) -> tuple[float, Counter, int]:
    """``Library.create`` + ``lib.ingest``: seconds, stored rows, accepted count."""
    seconds, report = common.timed(lambda: _create_and_ingest(folder, root, workers))
    with Library.open(root, readonly=True) as lib:
        stored = Counter(lib.conn.execute("SELECT bucket_id, phash FROM tiles").fetchall())
    return seconds, stored, report.accepted


def _create_and_ingest(folder: Path, root: Path, workers: int):
    with Library.create(root) as lib:
        return lib.ingest([folder], workers=workers, progress=False)


def decode_floor(paths: list[Path]) -> float:
    """Open and fully decode every tile in this process; nothing else."""
    from PIL import Image

    def run():
        for path in paths:
            with Image.open(path) as img:
                img.load()

    seconds, _ = common.timed(run)
    return seconds


def fill_every_bucket(root: Path) -> None:
    """Set the library's cap to 1: every bucket that holds a tile is now full."""
    conn = sqlite3.connect(root / "tiles.db")
    try:
        with conn:
            db.set_meta(conn, "cap", "1")
    finally:
        conn.close()


def reject_ingest(folder: Path, root: Path, workers: int) -> float:
    """Ingest ``folder`` again into the (full) library at ``root``; every tile must bounce."""

    def run():
        with Library.open(root) as lib:
            return lib.ingest([folder], workers=workers, progress=False)

    seconds, report = common.timed(run)
    if report.accepted or set(report.rejected) - {"bucket_full"}:
        raise RuntimeError(f"reject pass should only see full buckets, got {report.summary()}")
    return seconds


# ---------------------------------------------------------------------------------------------
# The bench
# ---------------------------------------------------------------------------------------------


def bench_format(fmt: str, n: int, repeats: int, cache: Path, work: Path, workers: int) -> list[common.Row]:
    folder = common.tile_folder(n, fmt, cache=cache)
    paths = common.tile_paths(folder)
    centroids = np.load(SHIPPED_CENTROIDS, allow_pickle=False)
    label = fmt.upper()
    state = {"round": 0, "card_rows": None, "pipe_rows": None, "accepted": None}

    def fresh(name: str) -> Path:
        return work / f"{fmt}_{name}_{state['round']}_{uuid.uuid4().hex[:6]}" / "mosaic_library"

    def step_card() -> float:
        root = fresh("card")
        seconds, stored = common.timed(lambda: card_recipe_ingest(paths, root, centroids))
        state["card_rows"] = stored
        shutil.rmtree(root.parent)
        return n / seconds

    def step_pipe() -> float:
        root = fresh("pipe")
        seconds, stored, accepted = pipeline_ingest(folder, root, workers)
        state["pipe_rows"], state["accepted"] = stored, accepted
        fill_every_bucket(root)
        state["full_root"] = root
        return n / seconds

    def step_reject() -> float:
        root = state.pop("full_root")
        seconds = reject_ingest(folder, root, workers)
        shutil.rmtree(root.parent)
        return n / seconds

    def step_pipe1() -> float:
        root = fresh("pipe1")
        seconds, _stored, _acc = pipeline_ingest(folder, root, 1)
        shutil.rmtree(root.parent)
        return n / seconds

    def step_floor() -> float:
        state["round"] += 1
        return n / decode_floor(paths)

    common.log(f"ingest {label}: {n} tiles, {repeats} rounds of card / pipeline w={workers} / reject / w=1 / floor")
    with common._Heartbeat(f"ingest {label}"):
        s = common.interleaved(repeats, {
            "floor": step_floor, "card": step_card, "pipe": step_pipe, "reject": step_reject, "pipe1": step_pipe1,
        })
    same = state["card_rows"] == state["pipe_rows"]
    accepted = state["accepted"]
    agree = (f"{accepted}/{n} accepted; stored (bucket, phash) rows "
             f"{'identical to' if same else 'DIFFER from'} the card recipe's")
    if not same:
        common.log(f"WARNING {label}: pipeline and card recipe stored different rows")
    floor2 = 2 * s["floor"].median
    kw = {"repeats": repeats}
    return [
        common.Row(BENCH, f"{label} accept: pipeline vs card", "card recipe 1 proc", s["card"].median,
                   f"ingest w={workers}", s["pipe"].median, "tiles/s", target=5.0 if fmt == "png" else None,
                   note=agree, spread=max(s["card"].spread, s["pipe"].spread), **kw),
        common.Row(BENCH, f"{label} accept: pipeline vs 2x floor", "2 x decode 1 proc", floor2,
                   f"ingest w={workers}", s["pipe"].median, "tiles/s", target=0.85,
                   spread=max(s["floor"].spread, s["pipe"].spread), **kw),
        common.Row(BENCH, f"{label} accept: 1 worker vs floor", "decode 1 proc", s["floor"].median,
                   "ingest w=1", s["pipe1"].median, "tiles/s",
                   spread=max(s["floor"].spread, s["pipe1"].spread), **kw),
        common.Row(BENCH, f"{label} reject (all full) vs 2x floor", "2 x decode 1 proc", floor2,
                   f"ingest w={workers}", s["reject"].median, "tiles/s", target=0.85,
                   spread=max(s["floor"].spread, s["reject"].spread), **kw),
    ]


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="tiles per format (default 3000, quick 48)")
    parser.add_argument("--formats", default="png,jpg", help="comma-separated: png,jpg")
    parser.add_argument("--workers", type=int, default=2, help="pipeline workers (default 2, the machine's cores)")
    args = parser.parse_args(argv)
    n = args.n or (48 if args.quick else 3000)
    repeats = args.repeats or (1 if args.quick else 3)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ingest_", dir=args.cache))
    rows: list[common.Row] = []
    try:
        for fmt in formats:
            rows += bench_format(fmt, n, repeats, args.cache, work, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common.report(rows, title=f"ingest: {n} tiles per format, median of {repeats} ({common.machine_note()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
