"""``verify [--repair] [--quick] [--empty-quarantine]``: check the database against the files."""

from __future__ import annotations

from .options import add_library_option, add_workers_option
from .result import EXIT_OK, EXIT_PROBLEMS, CommandResult

SHOWN_PROBLEMS = 20  # problems listed in the text output; --json has up to VerifyReport's limit
SHOWN_QUARANTINE = 20  # quarantine entries listed in the text output


def register(sub):
    p = sub.add_parser("verify", help="check tiles.db against the files; --repair fixes what is safe")
    add_library_option(p)
    p.add_argument("--repair", action="store_true",
                   help="fix problems (takes the writer lock; never deletes a tile file: what cannot be kept "
                        "moves to quarantine/)")
    p.add_argument("--quick", action="store_true",
                   help="check rows and files exist and a sample of the mosaic cache, do not decode every image")
    p.add_argument("--empty-quarantine", action="store_true",
                   help="delete what quarantine/ holds (takes the writer lock; after --repair when both are given)")
    add_workers_option(p)
    return p


def problem_lines(report) -> list[str]:
    lines = [f"  {p.kind}: {p.tile_id or ''} bucket {p.bucket_id} {p.detail}".rstrip()
             for p in report.problems[:SHOWN_PROBLEMS]]
    if len(report.problems) > SHOWN_PROBLEMS:
        lines.append(f"  ... {len(report.problems) - SHOWN_PROBLEMS} more (use --json)")
    return lines


def quarantine_lines(report) -> list[str]:
    """What quarantine/ holds, and how to empty it."""
    if not report.quarantine:
        return []
    lines = [f"  {item.path}: {item.reason}" + (f" ({item.detail})" if item.detail else "")
             for item in report.quarantine[:SHOWN_QUARANTINE]]
    if len(report.quarantine) > SHOWN_QUARANTINE:
        lines.append(f"  ... {len(report.quarantine) - SHOWN_QUARANTINE} more (use --json)")
    lines.append("  (kept for you to look at; `verify --empty-quarantine` deletes them)")
    return lines


def run(args) -> CommandResult:
    from ..core.library import Library
    from ..core.quarantine import empty
    from ..ops.verify import verify_library

    deep = not args.quick
    writer = args.repair or args.empty_quarantine
    with Library.open(args.library, readonly=not writer) as lib:
        report = verify_library(lib, deep=deep, repair=args.repair, workers=args.workers)
        emptied = []
        if args.empty_quarantine:
            count = empty(lib.root)
            report.quarantine = []
            emptied = [f"emptied quarantine/: {count} entries deleted"]
        if args.repair and report.problems:
            # What is left after the repair decides the exit status.  Every file was decoded once
            # above and every change since was made from those facts: rows against files (and a
            # sample of the mosaic cache) is enough, no second decode of the library.
            after = verify_library(lib, deep=False, workers=args.workers)
            return CommandResult(report, EXIT_OK if after.ok else EXIT_PROBLEMS, prefix="verify: ",
                                 after=[*quarantine_lines(report), f"after repair: {after.summary()}",
                                        *problem_lines(after), *emptied],
                                 extra={"after_repair": after})
    return CommandResult(report, EXIT_OK if report.ok else EXIT_PROBLEMS, prefix="verify: ",
                         after=[*problem_lines(report), *quarantine_lines(report), *emptied])
