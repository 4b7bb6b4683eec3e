"""``ingest PATH...``: local images through the assignment pipeline.

Exit status: 0 when every input was stored or refused by the library (duplicate, bucket full),
1 when some inputs were unusable (one line on stderr counts them), 2 on errors.  The text lists
the first rejected inputs with their reasons (unusable ones first), ``--json`` every one.
"""

from __future__ import annotations

from .options import add_library_option, add_near_duplicate_option, add_workers_option
from .result import EXIT_OK, EXIT_PROBLEMS, CommandResult

SHOWN_REJECTIONS = 20  # rejected inputs listed in the text output; --json lists every one


def register(sub):
    p = sub.add_parser("ingest", help="assign local image files/folders into the library")
    add_library_option(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (PNG, JPEG, WebP)")
    p.add_argument("--crop", action="store_true",
                   help="take the centre square of non-square images (default: reject them as not_square)")
    add_workers_option(p)
    add_near_duplicate_option(p)
    return p


def run(args) -> CommandResult:
    from ..core.library import Library
    from ..ops.ingest import ingest

    with Library.open(args.library) as lib:
        report = ingest(lib, args.paths, workers=args.workers, near_duplicate_radius=args.near_duplicate_radius,
                        crop=args.crop)
    unusable = unusable_inputs(report)
    return CommandResult(report, EXIT_PROBLEMS if unusable else EXIT_OK, prefix="ingest: ", error=unusable,
                         after=report.rejection_lines(SHOWN_REJECTIONS))


def unusable_inputs(report) -> str | None:
    """One line naming the inputs that could not be used (corrupt, not an image, too large...).

    Like ``verify``, exit status 1 says "ran, but found problems": a script notices a folder of
    broken files, and every usable tile beside them is stored anyway.
    """
    from ..ops.ingest import LIBRARY_REASONS

    bad = {reason: n for reason, n in sorted(report.rejected.items()) if reason not in LIBRARY_REASONS}
    if not bad:
        return None
    first = next(iter(bad))
    counts = ", ".join(f"{reason} {n}" for reason, n in bad.items())
    return f"{sum(bad.values())} of {report.total} inputs unusable ({counts}); first {first}: {report.examples[first]}"
