"""``verify [--repair] [--quick]``: check the database against the files."""

from __future__ import annotations

from .options import add_library_option, add_workers_option
from .result import EXIT_OK, EXIT_PROBLEMS, CommandResult

SHOWN_PROBLEMS = 20  # problems listed in the text output; --json has up to VerifyReport's limit


def register(sub):
    p = sub.add_parser("verify", help="check tiles.db against the files; --repair fixes what is safe")
    add_library_option(p)
    p.add_argument("--repair", action="store_true", help="fix problems (takes the writer lock)")
    p.add_argument("--quick", action="store_true", help="check rows and files exist, do not decode images")
    add_workers_option(p)
    return p


def problem_lines(report) -> list[str]:
    lines = [f"  {p.kind}: {p.tile_id or ''} bucket {p.bucket_id} {p.detail}".rstrip()
             for p in report.problems[:SHOWN_PROBLEMS]]
    if len(report.problems) > SHOWN_PROBLEMS:
        lines.append(f"  ... {len(report.problems) - SHOWN_PROBLEMS} more (use --json)")
    return lines


def run(args) -> CommandResult:
    from ..library import Library
    from ..verify import verify_library

    deep = not args.quick
    with Library.open(args.library, readonly=not args.repair) as lib:
        report = verify_library(lib, deep=deep, repair=args.repair, workers=args.workers)
        if args.repair and report.problems:
            # What is left after the repair decides the exit status.
            after = verify_library(lib, deep=deep, workers=args.workers)
            return CommandResult(report, EXIT_OK if after.ok else EXIT_PROBLEMS, prefix="verify: ",
                                 after=[f"after repair: {after.summary()}"], extra={"after_repair": after})
    return CommandResult(report, EXIT_OK if report.ok else EXIT_PROBLEMS, prefix="verify: ",
                         after=problem_lines(report))
