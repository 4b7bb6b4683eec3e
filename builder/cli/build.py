"""``build [--output DIR] [--num-proc N] [--skip-bad]``: write the Hub-ready staging folder."""

from __future__ import annotations

from . import add_library_option, positive_int


def register(sub) -> None:
    p = sub.add_parser("build", help="write the Hub-ready staging folder (Parquet shards, card, tiles.db, centroids)")
    add_library_option(p)
    p.add_argument("--output", metavar="DIR", default=None, help="staging folder (default: <library parent>/staging)")
    p.add_argument("--num-proc", type=positive_int, default=1, metavar="N", help="processes writing shards (default 1)")
    p.add_argument("--skip-bad", action="store_true", help="skip tiles whose PNG is missing or unreadable (logged)")
    p.set_defaults(func=run)


def run(args) -> int:
    # imported here, not at module level: the CLI imports every command module at start
    from ..publish import build_staging

    report = build_staging(args.library, args.output, num_proc=args.num_proc, skip_bad=args.skip_bad)
    print(report.summary())
    return 0
