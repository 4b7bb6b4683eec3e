"""``mosaic INPUT --output OUT.png``: a photomosaic of any picture from the library's tiles."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..library import Library
from ..mosaic import DEFAULT_RADIUS, DEFAULT_SUBCELLS, MosaicOptions, mosaic_file, parse_grid
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


def register(sub) -> None:
    p = sub.add_parser("mosaic", help="photomosaic of an image from the library's tiles")
    add_library_option(p)
    p.add_argument("input", metavar="INPUT", help="picture to redraw (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    p.add_argument("--output", required=True, metavar="OUT.png", help="PNG file to write")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--cell-size", type=positive_int, metavar="PX", help="cell size in input pixels")
    size.add_argument("--grid", type=_grid, metavar="COLSxROWS", help="number of cells (default: 64 on the long side)")
    p.add_argument("--tile-size", type=positive_int, metavar="PX",
                   help="tile size in the output, 1..256 (default: the cell size, at least 32)")
    p.add_argument("--no-repeat-radius", type=int_at_least(0), default=DEFAULT_RADIUS, metavar="R",
                   help=f"no tile twice within R cells (default {DEFAULT_RADIUS}; 0 allows repeats)")
    p.add_argument("--blend", type=_fraction, default=0.0, metavar="ALPHA",
                   help="shift tile colours this fraction toward the input's (0..1, default 0)")
    p.add_argument("--subcells", type=positive_int, default=DEFAULT_SUBCELLS, metavar="N",
                   help=f"match NxN colour layout inside each cell (default {DEFAULT_SUBCELLS})")
    p.add_argument("--workers", type=positive_int, default=None, help="tile decoding threads")
    p.set_defaults(func=run)


def run(args) -> int:
    options = MosaicOptions(
        cell_size=args.cell_size,
        grid=args.grid,
        tile_size=args.tile_size,
        no_repeat_radius=args.no_repeat_radius,
        blend=args.blend,
        subcells=args.subcells,
        workers=args.workers,
    ).validate()
    with Library.open(args.library, readonly=True) as lib:
        result = mosaic_file(lib, args.input, args.output, options)
    print(result.summary())
    return 0
