"""``mosaic INPUT --output OUT.png|OUT.dzi``: a photomosaic of any picture from the library's tiles."""

from __future__ import annotations

import argparse
import json

from ..errors import UsageError
from ..library import Library
from ..mosaic import (
    DEFAULT_BLEND,
    DEFAULT_CONTRAST,
    DEFAULT_DETAIL,
    DEFAULT_MAX_CORRECTION,
    DEFAULT_RADIUS,
    DEFAULT_SUBCELLS,
    DZI_FORMATS,
    OUTPUT_FORMATS,
    MosaicOptions,
    mosaic_file,
    parse_grid,
)
from . import add_library_option, int_at_least, positive_int


def _grid(text: str) -> tuple[int, int]:
    try:
        return parse_grid(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {text}")
    return value


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a CIEDE2000 budget of 0 or more, got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser("mosaic", help="photomosaic of an image from the library's tiles")
    add_library_option(p)
    p.add_argument("input", metavar="INPUT", help="picture to redraw (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    p.add_argument("--output", required=True, metavar="OUT.png|OUT.dzi",
                   help="PNG file, or Deep Zoom pyramid (OUT.dzi, OUT_files/, OUT.html viewer) to write")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                   help="png or dzi (default: from the --output name)")
    p.add_argument("--dzi-image", choices=DZI_FORMATS, default="jpg", help="pyramid tile format (default jpg)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--cell-size", type=positive_int, metavar="PX", help="cell size in input pixels")
    size.add_argument("--grid", type=_grid, metavar="COLSxROWS", help="number of cells (default: 64 on the long side)")
    p.add_argument("--tile-size", type=positive_int, metavar="PX",
                   help="tile size in the output, 1..256 (default: the cell size, at least 32)")
    p.add_argument("--no-repeat-radius", type=int_at_least(0), default=DEFAULT_RADIUS, metavar="R",
                   help=f"no tile twice within R cells (default {DEFAULT_RADIUS}; 0 allows repeats)")
    p.add_argument("--max-uses", type=positive_int, default=None, metavar="N",
                   help="use each tile at most N times (fair assignment; default: no limit)")
    p.add_argument("--max-correction", type=_budget, default=DEFAULT_MAX_CORRECTION, metavar="DE",
                   help=f"shift a tile's colours by at most DE CIEDE2000 toward the input's (default "
                        f"{DEFAULT_MAX_CORRECTION:g}; 0 = off)")
    p.add_argument("--blend", type=_fraction, default=DEFAULT_BLEND, metavar="ALPHA",
                   help=f"fraction of the way toward the input's colours, within --max-correction (0..1, default "
                        f"{DEFAULT_BLEND:g})")
    p.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=DEFAULT_CONTRAST,
                   help="scale each tile's contrast toward its cell's, at most 2x either way (default: on)")
    p.add_argument("--detail", type=int_at_least(0), default=DEFAULT_DETAIL, metavar="D",
                   help=f"rank candidates on DxD samples of the tile and the cell (default {DEFAULT_DETAIL}; "
                        "0 = sub-cell colours only)")
    p.add_argument("--subcells", type=positive_int, default=DEFAULT_SUBCELLS, metavar="N",
                   help=f"match NxN colour layout inside each cell (default {DEFAULT_SUBCELLS})")
    p.add_argument("--workers", type=positive_int, default=None, help="tile decoding threads")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    options = MosaicOptions(
        cell_size=args.cell_size,
        grid=args.grid,
        tile_size=args.tile_size,
        no_repeat_radius=args.no_repeat_radius,
        blend=args.blend,
        max_correction=args.max_correction,
        contrast=args.contrast,
        detail=args.detail,
        max_uses=args.max_uses,
        subcells=args.subcells,
        workers=args.workers,
    ).validate()
    with Library.open(args.library, readonly=True) as lib:
        result = mosaic_file(lib, args.input, args.output, options, fmt=args.format, dzi_image=args.dzi_image)
    print(json.dumps(result.as_dict()) if args.json else result.summary())
    return 0
