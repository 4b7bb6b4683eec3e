"""Full ``verify``: CPU per tile, fresh processes (issue 22: each tile decoded once for all its checks).

A full verify checks every tile's PNG validity, its LAB (mean of the 64x64 resize), its pHash and
its thumbnail in the mosaic cache.  Every case is a fresh process (its whole tree's user + system
CPU, pool workers included, divided by the tiles), the cases interleaved round after round, the
median shown; wall time is printed beside it, but on a shared machine CPU is the figure to read.

    python bench/verify.py                     # 1,500 real-imagery PNG tiles, 3 rounds
    python bench/verify.py --repo ../main      # also another checkout's verify, for a before/after
    python bench/verify.py --quick             # smoke run

Baselines, measured in the same run, on the same library:

* ``a decode per check``: the four checks one after another, each on its own decode of the file
  (what a script running them separately costs);
* ``decode floor``: reading and decoding every tile once, nothing else;
* with ``--repo DIR``: ``python -m builder verify`` (and ``verify --repair``) of that checkout.

``verify --repair`` runs on the library with one row damaged (its ``filepath``), so it repairs,
then checks again: the figure is per tile for the whole command.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common  # noqa: E402

# The checks as a script would run them one after another: each decodes the tile again.
PER_CHECK = r"""
import sqlite3, sys
from pathlib import Path
import numpy as np
from builder.assign.pipeline import mean_rgb_64
from builder.core.color import rgb_to_lab
from builder.core.decode import decode_tile
from builder.core.thumbcache import ThumbnailCache, cache_keys, thumbnail
from builder.assign.phash import phash
root = Path(sys.argv[1])
rows = sqlite3.connect(root / "tiles.db").execute("SELECT id, bucket_id, phash FROM tiles").fetchall()
pixels, index = ThumbnailCache.of(root).load()
cached = index.rows(cache_keys([r[0] for r in rows], [r[2] for r in rows]))
for (tile_id, bucket, _h), row in zip(rows, cached):
    path = root / f"bucket_{bucket:04d}" / f"{tile_id}.png"
    decode_tile(path.read_bytes())                                                # PNG validity
    rgb_to_lab(mean_rgb_64(decode_tile(path.read_bytes()).image))                 # LAB
    phash(decode_tile(path.read_bytes()).image)                                   # pHash
    np.array_equal(thumbnail(decode_tile(path.read_bytes()).image), pixels[row])  # cached thumbnail
"""

DECODE_ONLY = r"""
import sqlite3, sys
from pathlib import Path
from builder.core.decode import decode_tile
root = Path(sys.argv[1])
for tile_id, bucket in sqlite3.connect(root / "tiles.db").execute("SELECT id, bucket_id FROM tiles"):
    decode_tile((root / f"bucket_{bucket:04d}" / f"{tile_id}.png").read_bytes())
"""


def parse_args(argv: list[str] | None = None):
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1500, help="tiles in the library")
    p.add_argument("--workers", type=int, default=2, help="verify's --workers (default 2: one per core here)")
    p.add_argument("--repo", type=Path, default=None, help="another checkout whose verify is measured too")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats = min(args.n, 60), 1
    args.repeats = args.repeats or 3
    return args


def env_for(repo: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(repo)}


def make_library(work: Path, n: int, cache: Path) -> Path:
    """A library of ``n`` real-imagery PNG tiles, made by fresh ``init`` and ``ingest`` processes."""
    root = work / "mosaic_library"
    folder = common.tile_folder(n, "png", cache=cache)
    for argv in (["init", "--library", str(root)], ["ingest", "--library", str(root), str(folder)]):
        done = common.run_measured([sys.executable, "-m", "builder", *argv], env=env_for(REPO), cwd=str(REPO))
        if done["returncode"] != 0:
            raise SystemExit(f"{argv[0]} failed: {done['output'][-2000:]}")
    return root


def damage_one_row(root: Path) -> None:
    """One row's ``filepath`` wrong: ``verify --repair`` has something to repair, and checks again."""
    conn = sqlite3.connect(root / "tiles.db")
    with conn:
        conn.execute("UPDATE tiles SET filepath = 'elsewhere' WHERE rowid = (SELECT MIN(rowid) FROM tiles)")
    conn.close()


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    common.log(common.machine_note())
    with tempfile.TemporaryDirectory(prefix="bench_verify_") as tmp:
        root = make_library(Path(tmp), args.n, args.cache)
        tiles = sqlite3.connect(root / "tiles.db").execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        here = env_for(REPO)

        def builder(repo: Path, *extra: str):
            def step():
                if "--repair" in extra:
                    damage_one_row(root)
                # cwd too: ``python -m`` finds a package in the current folder before PYTHONPATH
                done = common.run_measured([sys.executable, "-m", "builder", "verify", "--library", str(root),
                                            "--workers", str(args.workers), *extra], env=env_for(repo), cwd=str(repo))
                if done["returncode"] != 0:
                    raise SystemExit(f"verify {' '.join(extra)} failed: {done['output'][-2000:]}")
                return done
            return step

        def script(code: str):
            return lambda: common.run_measured([sys.executable, "-c", code, str(root)], env=here, cwd=str(REPO))

        steps = {
            "a decode per check": script(PER_CHECK),
            "decode floor": script(DECODE_ONLY),
            "verify": builder(REPO),
            "verify --repair": builder(REPO, "--repair"),
        }
        if args.repo is not None:
            steps["repo verify"] = builder(args.repo)
            steps["repo verify --repair"] = builder(args.repo, "--repair")
        results = common.interleaved(args.repeats, steps)

    def per_tile(name: str) -> tuple[float, float]:
        """Median CPU ms per tile, and its spread."""
        values = [r["cpu_seconds"] * 1000 / tiles for r in results[name]]
        median = statistics.median(values)
        return median, (max(values) - min(values)) / median if median else 0.0

    def wall(name: str) -> float:
        return statistics.median(r["seconds"] for r in results[name])

    rows = []
    project, spread = per_tile("verify")
    repair, repair_spread = per_tile("verify --repair")
    for baseline in ("a decode per check", "decode floor"):
        base, base_spread = per_tile(baseline)
        rows.append(common.Row("verify", f"full verify: cpu per tile vs {baseline}", baseline, base,
                               f"verify w={args.workers}", project, "cpu ms", higher_is_better=False,
                               repeats=args.repeats, spread=max(spread, base_spread),
                               note=f"{tiles} tiles; wall {wall(baseline):.1f} s vs {wall('verify'):.1f} s"))
    if args.repo is not None:
        for case, mine, theirs, noise in (("full verify", project, "repo verify", spread),
                                          ("verify --repair (1 bad row)", repair, "repo verify --repair", repair_spread)):
            base, base_spread = per_tile(theirs)
            rows.append(common.Row("verify", f"{case}: cpu per tile", f"{args.repo.name} {theirs[5:]}", base,
                                   f"verify{theirs[11:]}", mine, "cpu ms", higher_is_better=False,
                                   repeats=args.repeats, spread=max(noise, base_spread),
                                   note=f"wall {wall(theirs):.1f} s vs {wall(theirs[5:]):.1f} s"))
    else:
        base, base_spread = per_tile("a decode per check")
        rows.append(common.Row("verify", "verify --repair (1 bad row): cpu per tile", "a decode per check", base,
                               f"verify --repair w={args.workers}", repair, "cpu ms", higher_is_better=False,
                               repeats=args.repeats, spread=max(repair_spread, base_spread)))
    common.report(rows, title=f"verify: {tiles} tiles, fresh processes ({common.machine_note()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
