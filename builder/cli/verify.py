"""``verify [--repair]``: check the database against the files."""

from __future__ import annotations

import json

from ..library import Library
from ..verify import verify_library
from . import add_library_option


def register(sub) -> None:
    p = sub.add_parser("verify", help="check tiles.db against the files; --repair fixes what is safe")
    add_library_option(p)
    p.add_argument("--repair", action="store_true", help="fix problems (takes the writer lock)")
    p.add_argument("--quick", action="store_true", help="check rows and files exist, do not decode images")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    with Library.open(args.library, readonly=not args.repair) as lib:
        report = verify_library(lib, deep=not args.quick, repair=args.repair)
        if args.repair and report.problems:
            after = verify_library(lib, deep=not args.quick)
            print(f"verify: {report.summary()}")
            print(f"after repair: {after.summary()}")
            return 0 if after.ok else 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"verify: {report.summary()}")
        for p in report.problems[:20]:
            print(f"  {p.kind}: {p.tile_id or ''} bucket {p.bucket_id} {p.detail}".rstrip())
        if len(report.problems) > 20:
            print(f"  ... {len(report.problems) - 20} more (use --json)")
    return 0 if report.ok else 1
