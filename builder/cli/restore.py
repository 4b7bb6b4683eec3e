"""``restore SOURCE``: recreate a library from a staging folder or a downloaded release."""

from __future__ import annotations

from .options import add_library_option
from .result import CommandResult


def register(sub):
    p = sub.add_parser("restore", help="recreate bucket folders, tiles.db and centroids.npy from a release")
    add_library_option(p)
    p.add_argument("source", metavar="SOURCE", help="staging folder or downloaded Hub repo (data/*.parquet ...)")
    p.add_argument("--centroids", metavar="FILE", default=None, help="centroids.npy if SOURCE has none")
    return p


def run(args) -> CommandResult:
    from ..publish import restore_library

    return CommandResult(restore_library(args.source, args.library, centroids=args.centroids))
