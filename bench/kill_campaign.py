"""Long SIGKILL campaigns against real ``ingest``, ``harvest``, ``verify --repair`` and ``recover``
runs; prints the figures.

The CI test (``tests/test_crash.py``) is the short form of the same campaigns.  Here the
defaults are 100 ingest kills, 50 harvest kills (about 2.5 and 1.5 minutes on 2 cores), 30
repair kills and 20 recover kills::

    python bench/kill_campaign.py                 # 100 + 50 + 30 + 20 kills
    python bench/kill_campaign.py --ingest-kills 300 --harvest-kills 0 --keep /tmp/wreck
    python bench/kill_campaign.py --quick         # 5 + 3 + 2 + 2 kills and 4 mosaic kills a format, a smoke run
    python bench/kill_campaign.py --ingest-kills 0 --harvest-kills 0 --repair-kills 0 --recover-kills 0 --mosaic-kills 0  # burn only
    python bench/kill_campaign.py --ingest-kills 0 --harvest-kills 0 --burn-kills 0 --mosaic-kills 0   # repair and recover only
    python bench/kill_campaign.py --ingest-kills 0 --harvest-kills 0 --burn-kills 0 --repair-kills 0 --recover-kills 0 --mosaic-kills 40
    python bench/kill_campaign.py --ingest-kills 0 --harvest-kills 0 --burn-kills 0 --repair-kills 0 --recover-kills 0 --mosaic-kills 0 --restore-kills 30

Every kill takes down the writer's whole process group (CLI and process pool) at a moment
drawn from four triggers (random delay, workers mid-batch, journal on disk, right after a
commit); after each one the library is checked: no row without its file, nothing committed
before the kill lost, ``temp/`` emptied by the next open, files == rows, no bucket over the
cap, no phash twice in a bucket, ``verify`` clean, and for harvest ``fetched`` agreeing with
``tiles`` and no tile served twice by the loopback server.  The exit status is 1 if any
invariant broke or any tile was lost.

Maintenance (``--repair-kills``, default 30; ``--recover-kills``, default 20), on a library of
``--maintenance-tiles`` (320) tiles: ``verify --repair`` of 300 wrong-bucket rows killed with its
journal on disk, while it links files into their buckets, right after a batch's commit, or at a
random moment, run again after each kill until it completes, then 300 more rows misfiled; and
``recover`` of a damaged ``tiles.db`` (truncated, one page overwritten, or not SQLite) with the
library's release, killed while it rebuilds in ``temp/``, rebuilt and not swapped in, swapped in
and repairing, or at random, run again until it completes, then damaged again.  After each kill
no tile may be without a file and, once a writer opened the library, files == rows; after each
completed run the ids (and, for recover, the provenance) equal the start's.  Printed: kills by
moment, tiles before and after, tiles lost.

The restore scenario (``--restore-kills``, default 10: each of the ten points of
``tests/support/campaigns/restore.py`` once; more cycle through them): ``python -m builder restore`` of a
staging folder (160 real tiles with a fetch ledger, 40 synthetic) SIGKILLed at a point found by
polling the file system, then run again to the end; printed: kills, tiles before and after each
rerun, tiles lost, and any rerun that failed or differs from the source.

The burn scenario (``--burn-kills``, default 3) measures what kills cost a plan: a zoom-7
harvest of both phases (751 candidate tiles), SIGKILLed right after each run's first commit,
then run to the end, against the ``earth`` source and the loopback server (50 ms a tile);
printed: claims left after the kills, claims left for good at the end (requests that were on
the wire at a kill), tiles tried and stored.

The mosaic scenario (``--mosaic-kills``, default 20 per format) kills ``mosaic`` runs writing a
PNG and a Deep Zoom output over an earlier output, at moments found by polling the output folder
(mid-stream, the staged pyramid complete, right after the swap, a random delay), and follows
every kill with a run to completion (``tests/support/campaigns/mosaic.py``).  Printed per format: kills,
how often the old or the new output was found whole, how often a kill fell inside the Deep Zoom
installation (no descriptor, finished by the next run), and the scratch left after the next runs
(must be 0), tiles lost 0 (a mosaic run writes no tile).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.campaigns.crash import (  # noqa: E402
    Figures,
    build_library,
    burn_scenario,
    deep_verify,
    harvest_campaign,
    ingest_campaign,
    make_tile_pool,
    recover_campaign,
    repair_campaign,
)
from tests.support.cli import cli_env  # noqa: E402
from tests.support.tileserver import TileServer, bluemarble_tile, distinct_tile  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ingest-kills", type=int, default=100)
    p.add_argument("--harvest-kills", type=int, default=50)
    p.add_argument("--burn-kills", type=int, default=3, help="kills of the zoom-7 burn scenario (0: skip it)")
    p.add_argument("--mosaic-kills", type=int, default=20, help="kills of mosaic runs, per output format (0: skip)")
    p.add_argument("--repair-kills", type=int, default=30, help="kills of verify --repair (0: skip it)")
    p.add_argument("--recover-kills", type=int, default=20, help="kills of recover (0: skip it)")
    p.add_argument("--maintenance-tiles", type=int, default=320, help="tiles of the repair/recover library")
    p.add_argument("--restore-kills", type=int, default=10, help="restore kills (the ten points, cycled; 0: skip)")
    p.add_argument("--pool", type=int, default=4000, help="distinct input tiles for the ingest campaign")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", metavar="DIR", default=None, help="work in DIR and keep the libraries")
    p.add_argument("--quick", action="store_true", help="5 + 3 kills: a smoke run")
    p.add_argument("-v", "--verbose", action="store_true", help="print every round")
    args = p.parse_args(argv)
    if args.quick:
        args.ingest_kills, args.harvest_kills, args.pool = 5, 3, 600
        args.burn_kills = min(args.burn_kills, 1)
        args.mosaic_kills = min(args.mosaic_kills, 4)
        args.repair_kills, args.recover_kills = min(args.repair_kills, 2), min(args.recover_kills, 2)
        args.restore_kills = min(args.restore_kills, 3)
    return args


def run(args: argparse.Namespace, work: Path) -> list[Figures]:
    progress = print if args.verbose else None
    results = []
    if args.ingest_kills > 0:
        pool = make_tile_pool(work / "pool", args.pool, seed=args.seed)
        root = work / "ingest" / "mosaic_library"
        root.parent.mkdir(parents=True)
        figures = ingest_campaign(root, pool, kills=args.ingest_kills, seed=args.seed, min_mid_batch=1,
                                  max_rounds=args.ingest_kills * 4, progress=progress)
        problem = deep_verify(root)
        if problem:
            figures.violations.append(f"deep verify at the end: {problem}")
        results.append(figures)
        print(figures.summary(), flush=True)
    if args.harvest_kills > 0:
        root = work / "harvest" / "mosaic_library"
        root.parent.mkdir(parents=True)
        with TileServer(distinct_tile, lifetime=3600) as server:
            figures = harvest_campaign(
                root, server.tile_template, kills=args.harvest_kills, seed=args.seed,
                served_twice=lambda: sum(1 for n in server.ok_counts().values() if n > 1),
                max_rounds=args.harvest_kills * 4, progress=progress,
            )
            served = sum(server.ok_counts().values())
        problem = deep_verify(root)
        if problem:
            figures.violations.append(f"deep verify at the end: {problem}")
        results.append(figures)
        print(figures.summary() + f"; {served} tiles served by the loopback server", flush=True)
    if args.repair_kills > 0 or args.recover_kills > 0:
        results += run_maintenance_campaigns(args, work / "maintenance", progress)
    if args.burn_kills > 0:
        run_burn_scenario(args.burn_kills, work / "burn")
    if args.mosaic_kills > 0:
        results.extend(run_mosaic_scenario(args.mosaic_kills, work / "mosaic", args.seed, progress))
    if args.restore_kills > 0:
        results.append(run_restore_campaign(args.restore_kills, work / "restore", progress))
    return results


def run_maintenance_campaigns(args: argparse.Namespace, work: Path, progress) -> list[Figures]:
    """``verify --repair`` then ``recover`` campaigns on one library (see the module docstring)."""
    root = work / "mosaic_library"
    root.parent.mkdir(parents=True)
    build_library(root, args.maintenance_tiles, seed=args.seed)
    results = []
    if args.repair_kills > 0:
        figures = repair_campaign(root, kills=args.repair_kills, misfiled=min(300, args.maintenance_tiles - 10),
                                  seed=args.seed, progress=progress)
        results.append(figures)
        print(figures.summary(), flush=True)
    if args.recover_kills > 0:
        release = work / "release"
        subprocess.run([sys.executable, "-m", "builder", "build", "--library", str(root), "--output", str(release)],
                       env=cli_env(), cwd=REPO, check=True, capture_output=True)
        figures = recover_campaign(root, kills=args.recover_kills, release=release, seed=args.seed, progress=progress)
        results.append(figures)
        print(figures.summary(), flush=True)
    return results


def run_restore_campaign(kills: int, work: Path, progress=None) -> Figures:
    """Kill ``restore`` at the campaign's points (cycled ``kills`` times); print and return the figures."""
    from PIL import Image

    from builder.publish import build_staging
    from tests.support.campaigns.restore import POINTS, library_state, restore_campaign
    from tests.support.libraries import build_mixed_library
    from tests.support.paths import BLUEMARBLE

    work.mkdir(parents=True)
    image = Image.open(BLUEMARBLE).convert("RGB")
    root = build_mixed_library(work / "source" / "mosaic_library", image, n_ingest=120, n_harvest=40, synthetic=40,
                               every=100)
    staging = build_staging(root, work / "staging", max_shard_size="1MB").output
    expected = library_state(root)
    real = sum(1 for row in expected["rows"].values() if row[-2] == 0)
    names = list(POINTS)
    points = [names[i % len(names)] for i in range(kills)]
    found = restore_campaign(staging, expected, work / "rounds", points, real=real, progress=progress)
    print(found.summary(), flush=True)
    return Figures(writer="restore", rounds=len(points), kills=found.kills, tiles_lost=found.lost,
                   rows=len(expected["rows"]), violations=list(found.violations))


def run_burn_scenario(kills: int, work: Path) -> None:
    """Print what ``kills`` kills right after a first commit cost a zoom-7 plan, per source."""
    work.mkdir(parents=True)
    found = {"earth": burn_scenario(work / "earth" / "mosaic_library", "earth", kills=kills)}
    with TileServer(bluemarble_tile, delay=0.05, lifetime=3600) as server:
        found["loopback"] = burn_scenario(work / "loopback" / "mosaic_library", server.tile_template, kills=kills)
        found["loopback"]["served_twice"] = sum(1 for n in server.ok_counts().values() if n > 1)
    for source, figures in found.items():
        twice = f", served twice {figures['served_twice']}" if "served_twice" in figures else ""
        print(f"burn scenario, {kills} kills, {source}: {figures['claimed_after_kills']} claimed after the kills, "
              f"{figures['claimed_at_end']} claimed for good, {figures['tried']} tiles tried, "
              f"{figures['stored']} stored{twice}", flush=True)


# ---------------------------------------------------------------------------- mosaic outputs


def run_mosaic_scenario(kills: int, work: Path, seed: int, progress=None) -> list[Figures]:
    """Kill ``kills`` PNG and ``kills`` Deep Zoom mosaic runs over earlier outputs; print the figures."""
    from PIL import Image

    from builder.core.layout import EARTH_IMAGE
    from tests.support.campaigns.mosaic import mosaic_campaign
    from tests.support.libraries import build_earth_library

    library = build_earth_library(work / "mosaic_library", Image.open(EARTH_IMAGE).convert("RGB"), n=160, seed=11)
    results = []
    for name in ("mosaic.png", "mosaic.dzi"):
        found = mosaic_campaign(library, work / "out" / name, kills, seed=seed, progress=progress)
        print(found.summary() + ", tiles lost 0", flush=True)
        results.append(Figures(writer=f"mosaic {found.fmt}", kills=found.kills, violations=found.violations))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=False)
        results = run(args, work)
    else:
        work = Path(tempfile.mkdtemp(prefix="kill_campaign_"))
        try:
            results = run(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    kills = sum(f.kills for f in results)
    lost = sum(f.tiles_lost for f in results)
    violations = [v for f in results for v in f.violations]
    print(f"total: {kills} kills survived, {lost} tiles lost, {len(violations)} violations")
    for v in violations[:20]:
        print(f"  {v}")
    return 1 if violations or lost else 0


if __name__ == "__main__":
    sys.exit(main())
