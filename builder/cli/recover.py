"""``recover [--release DIR]``: rebuild a damaged ``tiles.db`` from the bucket folders."""

from __future__ import annotations

from pathlib import Path

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


def release_shards(release: str | Path) -> list[tuple[Path, bool]]:
    """``(shard, synthetic?)`` of a release folder's Parquet files, found as ``restore`` finds
    them; none when it holds none (recover then says what the folder lacks)."""
    from ..core.errors import UsageError
    from ..publish.restore import find_parquet, find_synthetic_parquet

    release = Path(release)
    try:
        real = find_parquet(release)
    except UsageError:
        real = []
    return [(path, False) for path in real] + [(path, True) for path in find_synthetic_parquet(release)]


def run(args) -> CommandResult:
    from ..ops.recover import recover_library

    shards = release_shards(args.release) if args.release is not None else []
    return CommandResult(recover_library(args.library, release=args.release, workers=args.workers,
                                         release_shards=shards))
