"""``demo [--output DIR]``: init, harvest (embedded imagery), synthesize, verify, build, report and mosaic, offline."""

from __future__ import annotations

import argparse
import sys

from ..core.summary import printable
from .options import add_threads_option, add_workers_option, integer
from .result import CommandResult
from .workflow import DEFAULT_MAX_TILES, DEFAULT_OUTPUT, DEFAULT_SEED, DEFAULT_ZOOM, MAX_DEMO_ZOOM, run_demo


def register(sub):
    p = sub.add_parser("demo", help="the whole job offline on the embedded imagery")
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR", help=f"where everything goes (default: ./{DEFAULT_OUTPUT})")
    p.add_argument("--library", default=None, metavar="DIR", help="library folder (default: OUTPUT/mosaic_library)")
    p.add_argument("--max-tiles", type=integer(1), default=DEFAULT_MAX_TILES, metavar="N",
                   help=f"harvest until the library holds N tiles (default {DEFAULT_MAX_TILES})")
    # The zoom's range is run_demo's to check (one message for notebooks too).
    p.add_argument("--zoom", type=integer(), default=DEFAULT_ZOOM,
                   help=f"tile zoom of the embedded imagery, 2..{MAX_DEMO_ZOOM} (default {DEFAULT_ZOOM})")
    p.add_argument("--seed", type=integer(), default=DEFAULT_SEED, help=f"sampling seed (default {DEFAULT_SEED})")
    add_workers_option(p, default="one per CPU; for the harvest's assignment and verify")
    add_threads_option(p, "tile decoding (report, mosaic)", None, shown="up to 4")
    p.add_argument("--synthesize", action=argparse.BooleanOptionalAction, default=True,
                   help="fill the empty buckets with flagged synthetic tiles and compare the mosaic with a "
                        "real-only one (default: on; about 40 ms a bucket)")
    return p


def run(args) -> CommandResult:
    from . import program_name

    # With --json, stdout holds only the JSON object: the step lines go to stderr.  Each line is
    # flushed as it comes (a log file or a pipe sees every step when it happens) and escaped.
    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(printable(line), file=stream, flush=True)

    result = run_demo(args.output, max_tiles=args.max_tiles, zoom=args.zoom, seed=args.seed, workers=args.workers,
                      threads=args.threads, library=args.library, say=say,
                      synthesize=args.synthesize)
    return CommandResult(result, after=result.next_lines(program_name()))
