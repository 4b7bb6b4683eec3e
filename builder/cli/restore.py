"""``restore SOURCE | --hub USER/NAME [--revision REV] [--buckets B[,B...]]``: recreate a library from a release."""

from __future__ import annotations

from .options import add_library_option
from .result import CommandResult


def register(sub):
    p = sub.add_parser("restore", help="recreate bucket folders, tiles.db and centroids.npy from a release "
                                       "(checked whole first; resumable after a crash)")
    add_library_option(p)
    p.add_argument("source", metavar="SOURCE", nargs="?", default=None,
                   help="staging folder or downloaded Hub repo (data/*.parquet ...); or use --hub")
    p.add_argument("--hub", metavar="USER/NAME", default=None, help="restore from this Hub dataset repo")
    p.add_argument("--revision", metavar="REV", default=None, help="with --hub: branch, tag or commit (default main)")
    p.add_argument("--buckets", metavar="B[,B...]", default=None,
                   help="only these buckets' tiles (real and synthetic, and the real tiles their synthetic ones "
                        "were made from), fetching only their images and their row groups' small columns")
    p.add_argument("--centroids", metavar="FILE", default=None, help="centroids.npy if SOURCE has none")
    return p


def run(args) -> CommandResult:
    from ..core.errors import UsageError

    if (args.source is None) == (args.hub is None):
        raise UsageError("restore needs a SOURCE folder or --hub USER/NAME (one of them)")
    if args.hub is not None:
        if args.centroids:
            raise UsageError("--centroids is for a SOURCE folder without one; a Hub release ships its own")
        from ..publish.remote import restore_from_hub

        return CommandResult(restore_from_hub(args.hub, args.library, revision=args.revision, buckets=args.buckets))
    if args.revision:
        raise UsageError("--revision is for --hub")
    from ..publish import restore_library
    from ..publish.remote import parse_bucket_list

    return CommandResult(restore_library(args.source, args.library, centroids=args.centroids,
                                         buckets=parse_bucket_list(args.buckets)))
