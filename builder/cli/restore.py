"""``restore SOURCE``: recreate a library from a staging folder or a downloaded release."""

from __future__ import annotations

from . import add_library_option


def register(sub) -> None:
    p = sub.add_parser("restore", help="recreate bucket folders, tiles.db and centroids.npy from a release")
    add_library_option(p)
    p.add_argument("source", metavar="SOURCE", help="staging folder or downloaded Hub repo (data/*.parquet ...)")
    p.add_argument("--centroids", metavar="FILE", default=None, help="centroids.npy if SOURCE has none")
    p.set_defaults(func=run)


def run(args) -> int:
    # imported here, not at module level: the CLI imports every command module at start
    from ..publish import restore_library

    report = restore_library(args.source, args.library, centroids=args.centroids)
    print(report.summary())
    return 0
