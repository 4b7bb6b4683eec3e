"""``build [--output DIR] [--num-proc N] [--skip-bad]``: write the Hub-ready staging folder."""

from __future__ import annotations

from .options import add_library_option, integer
from .result import CommandResult


def register(sub):
    p = sub.add_parser("build", help="write the Hub-ready staging folder (Parquet shards, card, tiles.db, centroids)")
    add_library_option(p)
    p.add_argument("--output", metavar="DIR", default=None, help="staging folder (default: <library parent>/staging)")
    # --num-proc (not --workers) is the CLI contract's name, as in datasets' own num_proc.
    p.add_argument("--num-proc", type=integer(1), default=1, metavar="N", help="processes writing shards (default 1)")
    p.add_argument("--skip-bad", action="store_true", help="skip tiles whose PNG is missing or unreadable (logged)")
    return p


def run(args) -> CommandResult:
    from ..publish import build_staging

    return CommandResult(build_staging(args.library, args.output, num_proc=args.num_proc, skip_bad=args.skip_bad))
