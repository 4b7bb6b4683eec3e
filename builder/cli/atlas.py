"""``atlas``: learn where each colour is from a source's overview tiles (a thin layer over
:func:`builder.acquire.atlas.build_atlas` and :func:`builder.acquire.atlas.calibrate`)."""

from __future__ import annotations

from ..core.defaults import DEFAULT_BATCH, DEFAULT_SOURCE, DEFAULT_THREADS, SPEC_FORMS
from ..core.layout import ATLAS_ZOOM_SPAN, DEFAULT_ZOOM, MAX_ZOOM, MIN_ZOOM
from .options import add_library_option, add_threads_option, integer, number
from .result import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOURCE_DOWN, CommandResult


def register(sub):
    p = sub.add_parser(
        "atlas", help="learn where each colour is from the source's overview tiles (for harvest --target)",
        description=f"Fetch the source's overview tiles (zoom - {ATLAS_ZOOM_SPAN}, one pixel per tile, or "
                    "--atlas-zoom for blocks of pixels), predict each zoom-Z tile's bucket from them and keep, per "
                    "bucket, a bounded sample of candidate tiles in tiles.db. Resumable and polite like harvest; a "
                    f"source that cannot be reached exits {EXIT_SOURCE_DOWN}. --calibrate fits the atlas's colours "
                    "to the tiles harvested so far and reports the hit rate before and after.",
    )
    add_library_option(p)
    p.add_argument("--source", default=DEFAULT_SOURCE, metavar="SPEC",
                   help=f"tile source: {SPEC_FORMS} (default: {DEFAULT_SOURCE})")
    p.add_argument("--zoom", type=integer(), default=DEFAULT_ZOOM,
                   help=f"the harvest zoom the atlas predicts, {MIN_ZOOM}..{MAX_ZOOM} (default: {DEFAULT_ZOOM})")
    p.add_argument("--atlas-zoom", type=integer(), default=None, metavar="N",
                   help=f"overview zoom read, from zoom - {ATLAS_ZOOM_SPAN} (the default; 0 below zoom "
                        f"{ATLAS_ZOOM_SPAN}) to zoom; finer means 2**(N - zoom + 8) pixels a side per tile")
    area = p.add_mutually_exclusive_group()
    area.add_argument("--phase", choices=("1", "2", "all"), default=None, help="the card's sampling phase's boxes")
    area.add_argument("--plan", metavar="FILE", default=None, help="a sampling plan JSON file's boxes")
    area.add_argument("--bbox", type=number(), nargs=4, metavar=("W", "S", "E", "N"), default=None,
                      help="one lon/lat box")
    area.add_argument("--world", action="store_true", help="the whole world (the default)")
    add_threads_option(p, "fetch", DEFAULT_THREADS, minimum=None)
    p.add_argument("--batch", type=integer(), default=DEFAULT_BATCH, help=f"tiles per batch (default: {DEFAULT_BATCH})")
    p.add_argument("--max-requests", type=integer(), default=None, metavar="N",
                   help="make at most N requests (every HTTP attempt counts, retries included)")
    p.add_argument("--rate", type=number(), default=None, metavar="R", help="HTTP requests per second at most")
    p.add_argument("--rebuild", action="store_true", help="drop this source and zoom's atlas first and make it again")
    p.add_argument("--calibrate", action="store_true",
                   help="only calibrate: fit the atlas's LAB to the harvested tiles' (affine, least squares), "
                        "report the hit rate before and after (cross-validated), keep the map if it helps")
    return p


def run(args) -> CommandResult:
    from ..acquire.atlas import build_atlas, calibrate, check_zooms, validate_options
    from ..acquire.sources import open_source
    from ..core.errors import SourceUnreachable
    from ..core.library import Library
    from ..core.plans import bbox_plan, resolve_plan

    zoom, atlas_zoom = check_zooms(args.zoom, args.atlas_zoom)
    validate_options(threads=args.threads, batch=args.batch, max_requests=args.max_requests, rate=args.rate)
    if args.calibrate:
        with Library.open(args.library) as lib:
            source = open_source(args.source)
            try:
                name = source.name
            finally:
                source.close()
            result = calibrate(lib, name, zoom, min_tiles=8)
        return CommandResult(_Calibrated(name, zoom, result), prefix="atlas: ")
    if args.bbox is not None:
        plan = bbox_plan(args.bbox)
    elif args.plan is not None or args.phase is not None:
        plan = resolve_plan(args.plan if args.plan is not None else args.phase)
    else:
        plan = None
    source = open_source(args.source, **({"rate": args.rate} if args.rate else {}))
    try:
        with Library.open(args.library) as lib:
            try:
                report = build_atlas(lib, source, plan, zoom, atlas_zoom, threads=args.threads, batch=args.batch,
                                     max_requests=args.max_requests, rebuild=args.rebuild)
            except SourceUnreachable as down:
                return CommandResult(down.report, EXIT_SOURCE_DOWN, prefix="atlas: ", error=str(down))
    finally:
        source.close()
    return CommandResult(report, EXIT_INTERRUPTED if report.interrupted else EXIT_OK, prefix="atlas: ")


class _Calibrated:
    def __init__(self, source: str, zoom: int, result: dict) -> None:
        self.source, self.zoom, self.result = source, zoom, result

    def summary(self) -> str:
        r = self.result
        if "note" in r:
            return f"calibration of {self.source} at zoom {self.zoom} not fitted: {r['note']}"
        return (f"calibration of {self.source} at zoom {self.zoom} on {r['tiles']} tiles: hit rate "
                f"{r['hit_rate_before']:.1%} -> {r['hit_rate_after']:.1%} cross-validated "
                f"({'kept' if r['kept'] else 'not kept: no better'})")

    def as_dict(self) -> dict:
        return {"source": self.source, "zoom": self.zoom, **self.result}
