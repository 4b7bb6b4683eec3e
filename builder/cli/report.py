"""``report [--output DIR]``: coverage figures, bucket contact sheets and an HTML gallery."""

from __future__ import annotations

from ..library import Library
from ..report import render_report
from . import add_library_option, positive_int

DEFAULT_OUTPUT = "mosaic_report"


def register(sub) -> None:
    p = sub.add_parser("report", help="coverage plots, bucket contact sheets and an HTML gallery")
    add_library_option(p)
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR",
                   help=f"report folder (default: ./{DEFAULT_OUTPUT}); open DIR/index.html in a browser")
    p.add_argument("--workers", type=positive_int, default=None, help="tile decoding threads")
    p.set_defaults(func=run)


def run(args) -> int:
    with Library.open(args.library, readonly=True) as lib:
        result = render_report(lib, args.output, workers=args.workers)
    print(result.summary())
    return 0
