"""``recover [--release DIR]``: rebuild a damaged ``tiles.db`` from the bucket folders."""

from __future__ import annotations

from .options import add_library_option, add_workers_option
from .result import CommandResult


def register(sub):
    p = sub.add_parser("recover", help="rebuild a damaged tiles.db from the bucket folders (ids kept; the damaged "
                                       "file is set aside, never overwritten)")
    add_library_option(p)
    p.add_argument("--release", metavar="DIR", default=None,
                   help="a staging folder or downloaded release of this library: provenance, synthetic flags, "
                        "the fetch ledger and meta for the tiles it knows")
    add_workers_option(p)
    return p


def run(args) -> CommandResult:
    from ..recover import recover_library

    return CommandResult(recover_library(args.library, release=args.release, workers=args.workers))
