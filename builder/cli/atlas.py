"""``atlas``: learn where each colour is from a source's overview tiles (a thin layer over
:func:`builder.acquire.atlas.build_atlas` and :func:`builder.acquire.atlas.calibrate`)."""

from __future__ import annotations

from ..acquire.options import AtlasOptions
from ..core.layout import ATLAS_ZOOM_SPAN
from .options import add_library_option, add_options, options_from
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
    add_options(p, AtlasOptions)
    p.add_argument("--calibrate", action="store_true",
                   help="only calibrate: fit the atlas's LAB to the harvested tiles' (affine, least squares), "
                        "report the hit rate before and after (cross-validated), keep the map if it helps")
    return p


def run(args) -> CommandResult:
    from ..acquire.atlas import area_plan, calibrate, run_atlas
    from ..acquire.sources import open_source
    from ..core.errors import SourceUnreachable
    from ..core.library import Library

    options = options_from(AtlasOptions, args)
    if args.calibrate:
        with Library.open(args.library) as lib:
            source = open_source(options.source)
            try:
                name = source.name
            finally:
                source.close()
            result = calibrate(lib, name, options.zoom, min_tiles=8)
        return CommandResult(_Calibrated(name, options.zoom, result), prefix="atlas: ")
    plan = area_plan(options)
    source = open_source(options.source, **options.source_options)
    try:
        with Library.open(args.library) as lib:
            try:
                report = run_atlas(lib, options, source=source, plan=plan)
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
