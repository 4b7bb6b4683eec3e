"""``ingest PATH...``: local images through the assignment pipeline.

Exit status: 0 when every input was stored or refused by the library (duplicate, bucket full),
1 when some inputs were unusable (one line on stderr names them), 2 on errors.
"""

from __future__ import annotations

import json
import sys

from ..library import Library
from . import add_library_option, positive_int


def register(sub) -> None:
    p = sub.add_parser("ingest", help="assign local image files/folders into the library")
    add_library_option(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (PNG, JPEG, WebP)")
    p.add_argument("--workers", type=positive_int, default=None, help="decode processes (default: CPU count)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..ingest import ingest

    with Library.open(args.library) as lib:
        report = ingest(lib, args.paths, workers=args.workers)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(f"ingest: {report.summary()}")
    unusable = unusable_inputs(report)
    if unusable:
        print(f"error: {unusable}", file=sys.stderr)
        return 1
    return 0


# Rejections that are the library's choice, not a fault of the input.
LIBRARY_REASONS = frozenset({"duplicate", "bucket_full"})


def unusable_inputs(report) -> str | None:
    """One line naming the inputs that could not be used (corrupt, not an image, too large...).

    Like ``verify``, exit status 1 says "ran, but found problems": a script notices a folder of
    broken files, and every usable tile beside them is stored anyway.
    """
    bad = {reason: n for reason, n in sorted(report.rejected.items()) if reason not in LIBRARY_REASONS}
    if not bad:
        return None
    first = next(iter(bad))
    counts = ", ".join(f"{reason} {n}" for reason, n in bad.items())
    return f"{sum(bad.values())} of {report.total} inputs unusable ({counts}); first {first}: {report.examples[first]}"
