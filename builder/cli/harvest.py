"""``harvest``: sample, fetch, assign and store tiles (a thin layer over :func:`builder.acquire.harvest.harvest`)."""

from __future__ import annotations

from ..acquire.options import HarvestOptions
from .options import add_library_option, add_options, options_from
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
    # Numbers are parsed here and checked by HarvestOptions, so the command line and a notebook
    # get the same message.
    add_options(p, HarvestOptions)
    return p


def run(args) -> CommandResult:
    from ..acquire.harvest import run_harvest
    from ..acquire.sources import open_source
    from ..core.errors import SourceUnreachable
    from ..core.library import Library
    from ..core.plans import resolve_plan

    options = options_from(HarvestOptions, args)
    plan = None if options.target is not None else resolve_plan(options.plan_spec)
    source = open_source(options.source, **options.source_options)
    try:
        with Library.open(args.library) as lib:
            try:
                report = run_harvest(lib, options, source=source, plan=plan)
            except SourceUnreachable as down:  # the run's summary still prints, then the one error line
                return CommandResult(down.report, EXIT_SOURCE_DOWN, prefix="harvest: ", error=str(down))
    finally:
        source.close()
    return CommandResult(report, EXIT_INTERRUPTED if report.interrupted else EXIT_OK, prefix="harvest: ")
