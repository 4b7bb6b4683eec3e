"""``report [--output DIR]``: coverage figures, bucket contact sheets and an HTML gallery."""

from __future__ import annotations

from .options import add_library_option, add_threads_option
from .result import CommandResult

DEFAULT_OUTPUT = "mosaic_report"


def register(sub):
    p = sub.add_parser("report", help="coverage plots, bucket contact sheets and an HTML gallery")
    add_library_option(p)
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR",
                   help=f"report folder (default: ./{DEFAULT_OUTPUT}); open DIR/index.html in a browser")
    add_threads_option(p, "tile decoding", None, shown="up to 4")
    return p


def run(args) -> CommandResult:
    from ..core.library import Library
    from ..ops.report import render_report

    with Library.open(args.library, readonly=True) as lib:
        # render_report's ``workers`` are its tile-decoding threads.
        return CommandResult(render_report(lib, args.output, threads=args.threads))
