"""Colour coverage: ``atlas`` + ``harvest --target empty`` against ``harvest --phase all``, by hand:
``python bench/coverage.py`` (``--quick``: a 200-tile library, a 120-request budget, earth only).

Both arms start from copies of the same library and spend the same request budget, the
atlas's own requests counted in it: the aimed arm runs ``atlas --world`` at ``--zoom`` (with
``--atlas-zoom``) and then ``harvest --target empty --max-requests <budget - atlas requests>``;
the blind arm runs ``harvest --phase all --max-requests <budget>``.  Starting libraries:

- *mature*: the demo's library (``earth``, both phases, zooms 6-8 until 1,500 tiles, seed 0),
  built once and cached under ``--cache`` (default ``/tmp/mosaic_bench_coverage``);
- *fresh*: an empty library.

Sources: ``earth`` (in process); ``http``, a loopback HTTP server (:class:`tests.support.tileserver.TileServer`
in its own process) serving the very tiles ``earth`` renders; and ``crops`` (``--sources``
only), the same server's default Blue Marble crops: lon/lat boxes rather than Mercator ones,
so within a zoom-2 overview tile the rows are off by up to ~8 zoom-8 tiles from where its
zoom-8 tiles are, a source whose overview does not match its tiles (the zoom-8 tiles
themselves equal earth's).

Printed: new buckets per arm (target: aimed >= 5x blind), hit rate (aimed tiles that landed
in their predicted bucket), new buckets per 1,000 requests, and for the aimed arm the share of
the buckets its atlas calls reachable that are populated afterwards (target on ``earth``: 90%).
"""

from __future__ import annotations

import multiprocessing
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from bench import common
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    import common  # type: ignore[no-redef]

from builder.acquire.atlas import build_atlas  # noqa: E402
from builder.acquire.harvest import harvest  # noqa: E402
from builder.core.library import Library  # noqa: E402
from builder.core.stats import per_thousand, reachable_buckets  # noqa: E402
from tests.support.tileserver import TileServer, bluemarble_tile  # noqa: E402

DEFAULT_CACHE = Path("/tmp/mosaic_bench_coverage")
THREADS = 8


def earth_tiles():
    from builder.acquire.sources.earth import EarthSource

    source = EarthSource()
    return lambda z, x, y: source.fetch(z, x, y)


def serve(kind: str, conn) -> None:
    """Server process: report the template, serve until told to stop."""
    tiles = earth_tiles() if kind == "http" else bluemarble_tile
    with TileServer(tiles, lifetime=7200) as server:
        conn.send(server.tile_template)
        conn.recv()


def mature_library(cache: Path, tiles: int) -> Path:
    """The demo's harvest (earth, phases 1+2, zooms 6..8 until ``tiles``, seed 0), cached."""
    root = cache / f"demo_{tiles}" / "mosaic_library"
    done = root.parent / "done"
    if done.is_file():
        return root
    shutil.rmtree(root.parent, ignore_errors=True)
    root.parent.mkdir(parents=True)
    with Library.create(root) as lib:
        have = 0
        for z in (6, 7, 8):
            if have >= tiles:
                break
            rep = harvest(lib, "earth", plan="all", zoom=z, threads=4, batch=100, max_tiles=tiles - have, seed=0,
                          progress=False)
            have = int(lib.bucket_counts().sum())
            common.log(f"mature library, zoom {z}: {rep.summary()}")
    done.write_text("ok\n")
    return root


def copy_library(src: Path | None, dest: Path) -> Path:
    shutil.rmtree(dest.parent, ignore_errors=True)
    dest.parent.mkdir(parents=True)
    if src is None:
        Library.create(dest).close()
    else:
        shutil.copytree(src, dest)
    return dest


def populated(lib: Library):
    return lib.bucket_counts() > 0


def aimed_arm(root: Path, spec: str, zoom: int, atlas_zoom: int, budget: int, seed: int) -> dict:
    with Library.open(root) as lib:
        before = populated(lib)
        atlas = build_atlas(lib, spec, None, zoom, atlas_zoom, threads=THREADS, max_requests=budget, progress=False)
        common.log(f"  atlas: {atlas.summary()}")
        left = budget - atlas.requests
        rep = harvest(lib, spec, zoom=zoom, target="empty", max_requests=left, seed=seed, threads=THREADS,
                      progress=False) if left > 0 else None
        if rep is not None:
            common.log(f"  harvest --target empty: {rep.summary()}")
        after = populated(lib)
        seen = reachable_buckets(lib.conn)
    requests = atlas.requests + (rep.requests if rep else 0)
    reach = int(seen.sum())
    reach_empty = int((seen & ~before).sum())
    return {"new": int((after & ~before).sum()), "requests": requests, "atlas_requests": atlas.requests,
            "hit_rate": rep.hit_rate if rep else 0.0, "aimed": rep.aimed if rep else 0,
            "reachable": reach, "reachable_populated": int((seen & after).sum()),
            "reachable_empty_before": reach_empty, "reachable_empty_filled": int((seen & after & ~before).sum())}


def blind_arm(root: Path, spec: str, zoom: int, budget: int, seed: int) -> dict:
    with Library.open(root) as lib:
        before = populated(lib)
        rep = harvest(lib, spec, plan="all", zoom=zoom, max_requests=budget, seed=seed, threads=THREADS,
                      progress=False)
        common.log(f"  harvest --phase all: {rep.summary()}")
        after = populated(lib)
    return {"new": int((after & ~before).sum()), "requests": rep.requests}


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--zoom", type=int, default=8, help="harvest zoom (default 8)")
    parser.add_argument("--atlas-zoom", type=int, default=3, help="overview zoom (default 3: 8x8 px a zoom-8 tile)")
    parser.add_argument("--budget", type=int, default=None, help="requests per arm (default 600; quick 120)")
    parser.add_argument("--tiles", type=int, default=None, help="tiles of the mature library (default 1500)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sources", default=None,
                        help="comma list of earth, http, crops (default earth,http; quick: earth)")
    args = parser.parse_args()
    cache = DEFAULT_CACHE if args.cache == common.DEFAULT_CACHE else args.cache
    budget = args.budget or (120 if args.quick else 600)
    tiles = args.tiles or (200 if args.quick else 1500)
    sources = (args.sources or ("earth" if args.quick else "earth,http")).split(",")
    mature = mature_library(cache, tiles)
    work = cache / "runs"
    servers = []
    specs = {"earth": "earth"}
    for kind in ("http", "crops"):
        if kind in sources:
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=serve, args=(kind, child), daemon=True)
            proc.start()
            specs[kind] = parent.recv()
            servers.append((proc, parent))
    rows, lines = [], []
    try:
        for name in sources:
            spec = specs[name]
            for start, src in (("mature", mature), ("fresh", None)):
                common.log(f"{name}, {start} library, budget {budget}")
                a = aimed_arm(copy_library(src, work / "aimed" / "mosaic_library"), spec, args.zoom, args.atlas_zoom,
                              budget, args.seed)
                b = blind_arm(copy_library(src, work / "blind" / "mosaic_library"), spec, args.zoom, budget, args.seed)
                case = f"{name} {start} z{args.zoom}"
                rows.append(common.Row("coverage", f"{case} new buckets", "harvest --phase all", b["new"],
                                       "atlas + --target empty", a["new"], "buckets",
                                       target=5.0 if start == "mature" else None,
                                       note=f"{a['requests']} vs {b['requests']} requests "
                                            f"({a['atlas_requests']} atlas)"))
                rows.append(common.Row("coverage", f"{case} per 1,000 req", "harvest --phase all",
                                       per_thousand(b["new"], b["requests"]), "atlas + --target empty",
                                       per_thousand(a["new"], a["requests"]), "buckets/1k"))
                share = a["reachable_populated"] / a["reachable"] if a["reachable"] else 0.0
                filled = (a["reachable_empty_filled"] / a["reachable_empty_before"]
                          if a["reachable_empty_before"] else 0.0)
                lines.append(f"{case}: hit rate {a['hit_rate']:.1%} of {a['aimed']} aimed tiles; reachable "
                             f"{a['reachable']}, populated after {a['reachable_populated']} ({share:.1%}); reachable "
                             f"but empty before {a['reachable_empty_before']}, filled {a['reachable_empty_filled']} "
                             f"({filled:.1%})")
                if name == "earth" and start == "fresh":
                    rows.append(common.Row("coverage", f"{case} reachable populated", "target share", 0.9,
                                           "aimed: share of reachable", share, "share", target=1.0))
    finally:
        for proc, parent in servers:
            parent.send("stop")
            proc.join(10)
    common.report(rows, f"colour coverage, {common.machine_note()}")
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
