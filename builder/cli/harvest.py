"""``harvest``: sample, fetch, assign and store tiles (a thin layer over :func:`builder.harvest.harvest`)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import SourceUnreachable, UsageError
from ..harvest import (
    DEFAULT_BATCH,
    DEFAULT_PATIENCE,
    DEFAULT_THREADS,
    DEFAULT_ZOOM,
    MAX_ZOOM,
    harvest,
    resolve_plan,
    validate_options,
)
from ..library import Library
from ..sources import SPEC_FORMS, open_source
from . import add_library_option

# Exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
EXIT_SOURCE_DOWN = SourceUnreachable.exit_code  # the source cannot be reached or fails every request


def _int(text: str) -> int:
    """argparse type: any integer; ranges are checked by validate_options with a clearer message."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "harvest", help="sample, fetch, assign and store tiles (resumable, Ctrl-C safe)",
        description="Sample tiles from a plan, fetch them concurrently and store those that fill buckets. "
                    "Stops at --max-tiles accepted, --max-requests, when the plan is exhausted, or after "
                    "--patience batches in a row with nothing accepted. No tile is requested twice, across runs "
                    "(--retry-faults asks again for those that ended in a transient fault). A source that cannot be "
                    "reached (no name resolution, connection refused, every recent request failing) stops the run "
                    f"within seconds with one line and exit status {EXIT_SOURCE_DOWN}, marking no tile as tried; "
                    f"Ctrl-C exits {EXIT_INTERRUPTED} after storing the work in hand.",
    )
    add_library_option(p)
    p.add_argument("--source", default="arcgis", metavar="SPEC", help=f"tile source: {SPEC_FORMS} (default: arcgis)")
    p.add_argument("--phase", choices=("1", "2", "all"), default=None, help="the card's sampling phase (default: 1)")
    p.add_argument("--plan", metavar="FILE", default=None, help="a sampling plan JSON file instead of --phase")
    p.add_argument("--zoom", type=_int, default=DEFAULT_ZOOM, help=f"tile zoom 0..{MAX_ZOOM} (default: {DEFAULT_ZOOM})")
    p.add_argument("--threads", type=_int, default=DEFAULT_THREADS, help=f"fetch threads (default: {DEFAULT_THREADS})")
    p.add_argument("--batch", type=_int, default=DEFAULT_BATCH, help=f"tiles per batch (default: {DEFAULT_BATCH})")
    p.add_argument("--max-tiles", type=_int, default=None, metavar="N", help="stop after this run has accepted N tiles")
    p.add_argument("--max-requests", type=_int, default=None, metavar="N",
                   help="make at most N requests (every HTTP attempt counts, retries included; a tile whose "
                        "retries the cap cut short is left for a later run)")
    p.add_argument("--rate", type=_float, default=None, metavar="R", help="HTTP requests per second at most")
    p.add_argument("--patience", type=_int, default=DEFAULT_PATIENCE, metavar="N",
                   help=f"stop after N batches in a row with nothing accepted (default: {DEFAULT_PATIENCE})")
    p.add_argument("--retry-faults", action="store_true",
                   help="ask again for the tiles earlier runs gave up on after a transient fault (429, 5xx, "
                        "timeout, reset, truncated, empty or non-image body), before sampling new ones; tiles that "
                        "were, or may have been, served are still never asked again")
    p.add_argument("--seed", type=_int, default=None, help="sampling seed (default: random, shown in --json)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    validate_options(zoom=args.zoom, threads=args.threads, batch=args.batch, max_tiles=args.max_tiles,
                     max_requests=args.max_requests, rate=args.rate, patience=args.patience)
    if args.plan is not None and args.phase is not None:
        raise UsageError(f"give --phase {args.phase} or --plan {args.plan}, not both")
    plan = resolve_plan(args.plan if args.plan is not None else args.phase)
    source = open_source(args.source, **({"rate": args.rate} if args.rate else {}))
    down: SourceUnreachable | None = None
    try:
        with Library.open(args.library) as lib:
            try:
                report = harvest(lib, source, plan, zoom=args.zoom, threads=args.threads, batch=args.batch,
                                 max_tiles=args.max_tiles, max_requests=args.max_requests, seed=args.seed,
                                 patience=args.patience, retry_faults=args.retry_faults)
            except SourceUnreachable as exc:
                down, report = exc, exc.report
    finally:
        source.close()
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(f"harvest: {report.summary()}")
    if down is not None:
        print(f"error: {down}", file=sys.stderr)
        return EXIT_SOURCE_DOWN
    return EXIT_INTERRUPTED if report.interrupted else 0
