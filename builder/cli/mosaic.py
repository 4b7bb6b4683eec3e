"""``mosaic INPUT --output OUT.png|OUT.dzi``: a photomosaic of any picture from the library's tiles."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..core.defaults import (
    DEFAULT_BLEND,
    DEFAULT_CONTRAST,
    DEFAULT_DETAIL,
    DEFAULT_LONG_SIDE_CELLS,
    DEFAULT_MAX_CORRECTION,
    DEFAULT_MIN_TILE,
    DEFAULT_OVERLAY,
    DEFAULT_RADIUS,
    DEFAULT_SUBCELLS,
    DZI_FORMATS,
    OUTPUT_FORMATS,
)
from ..core.layout import TILE_SIZE
from .options import add_library_option, add_threads_option, integer, number
from .result import CommandResult


def _grid(text: str) -> tuple[int, int]:
    from ..core.errors import UsageError
    from ..mosaic import parse_grid  # only when --grid is given: --help stays light

    try:
        return parse_grid(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub):
    p = sub.add_parser("mosaic", help="photomosaic of an image from the library's tiles")
    add_library_option(p)
    p.add_argument("input", metavar="INPUT", help="picture to redraw (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    p.add_argument("--output", required=True, metavar="OUT.png|OUT.dzi",
                   help="PNG file, or Deep Zoom pyramid (OUT.dzi, OUT_files/, OUT.html viewer) to write")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                   help="png or dzi (default: from the --output name)")
    p.add_argument("--dzi-image", choices=DZI_FORMATS, default=DZI_FORMATS[0],
                   help=f"pyramid tile format (default {DZI_FORMATS[0]})")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--cell-size", type=integer(1), metavar="PX", help="cell size in input pixels")
    size.add_argument("--grid", type=_grid, metavar="COLSxROWS",
                      help=f"number of cells (default: {DEFAULT_LONG_SIDE_CELLS} on the long side)")
    p.add_argument("--tile-size", type=integer(1), metavar="PX",
                   help=f"tile size in the output, 1..{TILE_SIZE} (default: the cell size, at least {DEFAULT_MIN_TILE})")
    p.add_argument("--no-repeat-radius", type=integer(0), default=DEFAULT_RADIUS, metavar="R",
                   help=f"no tile twice within R cells (default {DEFAULT_RADIUS}; 0 allows repeats)")
    p.add_argument("--max-uses", type=integer(1), default=None, metavar="N",
                   help="use each tile at most N times (fair assignment; default: no limit)")
    p.add_argument("--max-correction", type=number(0), default=DEFAULT_MAX_CORRECTION, metavar="DE",
                   help=f"shift a tile's colours by at most DE CIEDE2000 toward the input's (default "
                        f"{DEFAULT_MAX_CORRECTION:g}; 0 = off)")
    p.add_argument("--blend", type=number(0, 1), default=DEFAULT_BLEND, metavar="ALPHA",
                   help=f"fraction of the way toward the input's colours, within --max-correction (0..1, default "
                        f"{DEFAULT_BLEND:g})")
    p.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=DEFAULT_CONTRAST,
                   help="scale each tile's texture by how well it draws its cell's (least squares, 0.5x..2x; "
                        "default: on)")
    p.add_argument("--overlay", type=number(0, 100), default=DEFAULT_OVERLAY, metavar="PERCENT",
                   help="blend this percentage of the input over the finished mosaic (0..100, default "
                        f"{DEFAULT_OVERLAY:g}: the tiles alone); the summary states it")
    p.add_argument("--detail", type=integer(0), default=DEFAULT_DETAIL, metavar="D",
                   help=f"rank candidates on DxD samples of the tile and the cell (default {DEFAULT_DETAIL}; "
                        "0 = sub-cell colours only)")
    p.add_argument("--subcells", type=integer(1), default=DEFAULT_SUBCELLS, metavar="N",
                   help=f"match NxN colour layout inside each cell (default {DEFAULT_SUBCELLS})")
    p.add_argument("--real-only", action="store_true",
                   help="use real tiles only, leaving out the synthetic ones `synthesize` made (default: use them; "
                        "the summary says how many cells did)")
    add_threads_option(p, "tile decoding", None, shown="up to 4")
    return p


def run(args) -> CommandResult:
    from ..core.library import Library
    from ..mosaic import MosaicOptions, mosaic_file

    # Every option the parser has is the MosaicOptions field of the same name (the rest keep their defaults).
    given = vars(args)
    options = MosaicOptions(**{f.name: given[f.name] for f in fields(MosaicOptions) if f.name in given}).validate()
    with Library.open(args.library, readonly=True) as lib:
        return CommandResult(mosaic_file(lib, args.input, args.output, options, fmt=args.format,
                                         dzi_image=args.dzi_image))
