"""``harvest``: sample, fetch, assign and store tiles (a thin layer over :func:`builder.acquire.harvest.harvest`)."""

from __future__ import annotations

from ..core.defaults import DEFAULT_BATCH, DEFAULT_PATIENCE, DEFAULT_SOURCE, DEFAULT_THREADS, SPEC_FORMS, TARGETS
from ..core.layout import DEFAULT_ZOOM, MAX_ZOOM, MIN_ZOOM
from .options import (
    add_library_option,
    add_near_duplicate_option,
    add_threads_option,
    add_workers_option,
    integer,
    number,
)
from .result import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOURCE_DOWN, CommandResult


def register(sub):
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
    # Numbers are parsed here and their ranges checked by builder.acquire.options.validate_options, so the
    # command line and a notebook get the same message.
    p.add_argument("--source", default=DEFAULT_SOURCE, metavar="SPEC",
                   help=f"tile source: {SPEC_FORMS} (default: {DEFAULT_SOURCE})")
    p.add_argument("--phase", choices=("1", "2", "all"), default=None, help="the card's sampling phase (default: 1)")
    p.add_argument("--plan", metavar="FILE", default=None, help="a sampling plan JSON file instead of --phase")
    p.add_argument("--zoom", type=integer(), default=DEFAULT_ZOOM,
                   help=f"tile zoom {MIN_ZOOM}..{MAX_ZOOM} (default: {DEFAULT_ZOOM})")
    add_threads_option(p, "fetch", DEFAULT_THREADS, minimum=None)
    add_workers_option(p)
    p.add_argument("--batch", type=integer(), default=DEFAULT_BATCH, help=f"tiles per batch (default: {DEFAULT_BATCH})")
    p.add_argument("--max-tiles", type=integer(), default=None, metavar="N", help="stop after this run has accepted N tiles")
    p.add_argument("--max-requests", type=integer(), default=None, metavar="N",
                   help="make at most N requests (every HTTP attempt counts, retries included; a tile whose "
                        "retries the cap cut short is left for a later run)")
    p.add_argument("--rate", type=number(), default=None, metavar="R", help="HTTP requests per second at most")
    p.add_argument("--patience", type=integer(), default=DEFAULT_PATIENCE, metavar="N",
                   help=f"stop after N batches in a row with nothing accepted (default: {DEFAULT_PATIENCE})")
    p.add_argument("--retry-faults", action="store_true",
                   help="ask again for the tiles earlier runs gave up on after a transient fault (429, 5xx, "
                        "timeout, reset, truncated, empty or non-image body), before sampling new ones; tiles that "
                        "were, or may have been, served are still never asked again")
    p.add_argument("--target", choices=TARGETS, default=None,
                   help="draw tiles from the library's colour atlas of this source and zoom (see `atlas`) instead of "
                        "a plan, weighted by how many tiles each bucket still needs: 'empty' aims at buckets with no "
                        "tile, 'underfilled' at buckets below the cap; never a tile already tried")
    p.add_argument("--seed", type=integer(), default=None, help="sampling seed (default: random, shown in --json)")
    add_near_duplicate_option(p)
    return p


def run(args) -> CommandResult:
    from ..acquire.harvest import harvest
    from ..acquire.options import validate_options
    from ..acquire.sources import open_source
    from ..core.errors import SourceUnreachable, UsageError
    from ..core.library import Library
    from ..core.plans import resolve_plan

    validate_options(zoom=args.zoom, threads=args.threads, batch=args.batch, max_tiles=args.max_tiles,
                     max_requests=args.max_requests, rate=args.rate, patience=args.patience)
    if args.plan is not None and args.phase is not None:
        raise UsageError(f"give --phase {args.phase} or --plan {args.plan}, not both")
    if args.target is not None and (args.plan is not None or args.phase is not None):
        raise UsageError(f"--target {args.target} draws its tiles from the atlas: give it without --phase or --plan")
    plan = None if args.target is not None else resolve_plan(args.plan if args.plan is not None else args.phase)
    source = open_source(args.source, **({"rate": args.rate} if args.rate else {}))
    try:
        with Library.open(args.library) as lib:
            try:
                report = harvest(lib, source, plan, zoom=args.zoom, threads=args.threads, batch=args.batch,
                                 max_tiles=args.max_tiles, max_requests=args.max_requests, seed=args.seed,
                                 patience=args.patience, retry_faults=args.retry_faults, workers=args.workers,
                                 target=args.target,
                                 near_duplicate_radius=args.near_duplicate_radius)
            except SourceUnreachable as down:  # the run's summary still prints, then the one error line
                return CommandResult(down.report, EXIT_SOURCE_DOWN, prefix="harvest: ", error=str(down))
    finally:
        source.close()
    return CommandResult(report, EXIT_INTERRUPTED if report.interrupted else EXIT_OK, prefix="harvest: ")
