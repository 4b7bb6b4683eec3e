"""``demo [--output DIR]``: init, harvest (embedded imagery), verify, build, report and mosaic, offline."""

from __future__ import annotations

from ..demo import DEFAULT_MAX_TILES, DEFAULT_OUTPUT, DEFAULT_SEED, DEFAULT_ZOOM, run_demo
from . import positive_int


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole job offline on the embedded imagery")
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR", help=f"where everything goes (default: ./{DEFAULT_OUTPUT})")
    p.add_argument("--library", default=None, metavar="DIR", help="library folder (default: OUTPUT/mosaic_library)")
    p.add_argument("--max-tiles", type=positive_int, default=DEFAULT_MAX_TILES, metavar="N",
                   help=f"harvest until the library holds N tiles (default {DEFAULT_MAX_TILES})")
    p.add_argument("--zoom", type=int, default=DEFAULT_ZOOM, help=f"tile zoom of the embedded imagery (default {DEFAULT_ZOOM})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"sampling seed (default {DEFAULT_SEED})")
    p.add_argument("--workers", type=positive_int, default=None, help="processes/threads for the heavy steps")
    p.set_defaults(func=run)


def run(args) -> int:
    result = run_demo(args.output, max_tiles=args.max_tiles, zoom=args.zoom, seed=args.seed, workers=args.workers,
                      library=args.library)
    print(result.summary())
    return 0
