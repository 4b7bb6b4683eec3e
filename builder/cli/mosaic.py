"""``mosaic INPUT --output OUT.png``: a photomosaic of any picture from the library's tiles."""

from __future__ import annotations

import argparse

from ..defaults import DEFAULT_LONG_SIDE_CELLS, DEFAULT_MIN_TILE, DEFAULT_RADIUS, DEFAULT_SUBCELLS
from ..layout import TILE_SIZE
from .options import add_library_option, add_threads_option, integer, number
from .result import CommandResult


def _grid(text: str) -> tuple[int, int]:
    from ..errors import UsageError
    from ..mosaic import parse_grid  # only when --grid is given: --help stays light

    try:
        return parse_grid(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub):
    p = sub.add_parser("mosaic", help="photomosaic of an image from the library's tiles")
    add_library_option(p)
    p.add_argument("input", metavar="INPUT", help="picture to redraw (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    p.add_argument("--output", required=True, metavar="OUT.png", help="PNG file to write")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--cell-size", type=integer(1), metavar="PX", help="cell size in input pixels")
    size.add_argument("--grid", type=_grid, metavar="COLSxROWS",
                      help=f"number of cells (default: {DEFAULT_LONG_SIDE_CELLS} on the long side)")
    p.add_argument("--tile-size", type=integer(1), metavar="PX",
                   help=f"tile size in the output, 1..{TILE_SIZE} (default: the cell size, at least {DEFAULT_MIN_TILE})")
    p.add_argument("--no-repeat-radius", type=integer(0), default=DEFAULT_RADIUS, metavar="R",
                   help=f"no tile twice within R cells (default {DEFAULT_RADIUS}; 0 allows repeats)")
    p.add_argument("--blend", type=number(0, 1), default=0.0, metavar="ALPHA",
                   help="shift tile colours this fraction toward the input's (0..1, default 0)")
    p.add_argument("--subcells", type=integer(1), default=DEFAULT_SUBCELLS, metavar="N",
                   help=f"match NxN colour layout inside each cell (default {DEFAULT_SUBCELLS})")
    add_threads_option(p, "tile decoding", None, shown="up to 4")
    return p


def run(args) -> CommandResult:
    from ..library import Library
    from ..mosaic import MosaicOptions, mosaic_file

    options = MosaicOptions(
        cell_size=args.cell_size,
        grid=args.grid,
        tile_size=args.tile_size,
        no_repeat_radius=args.no_repeat_radius,
        blend=args.blend,
        subcells=args.subcells,
        workers=args.threads,  # MosaicOptions.workers: tile-decoding threads
    ).validate()
    with Library.open(args.library, readonly=True) as lib:
        return CommandResult(mosaic_file(lib, args.input, args.output, options))
