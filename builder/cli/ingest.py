"""``ingest PATH...``: local images through the assignment pipeline."""

from __future__ import annotations

import json

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
    with Library.open(args.library) as lib:
        report = lib.ingest(args.paths, workers=args.workers)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(f"ingest: {report.summary()}")
    return 0
