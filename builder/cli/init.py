"""``init``: create the library layout and its centroids."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..core.layout import DEFAULT_CAP
from .options import add_library_option, integer
from .result import CommandResult


class InitReport(NamedTuple):
    library: Path
    centroids: int  # how many (the number of buckets)
    origin: str  # where they came from: a file, a seed, or the shipped data
    cap: int

    def summary(self) -> str:
        return f"initialised {self.library} with {self.centroids} centroids from {self.origin}, cap {self.cap}"


def register(sub):
    p = sub.add_parser("init", help="create the library layout and centroids.npy")
    add_library_option(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--centroids", metavar="FILE", help="import this centroids.npy (validated) instead of the shipped one")
    # Ranges of --seed and --cap are Library.create's to check (one message for notebooks too).
    group.add_argument("--seed", type=integer(), metavar="N", help="regenerate centroids with the card's recipe and this seed (~30 s)")
    p.add_argument("--cap", type=integer(), default=DEFAULT_CAP, metavar="N", help=f"tiles per bucket (default {DEFAULT_CAP})")
    return p


def run(args) -> CommandResult:
    from ..core.library import Library

    with Library.create(args.library, centroids=args.centroids, seed=args.seed, cap=args.cap) as lib:
        origin = args.centroids or (f"seed {args.seed}" if args.seed is not None else "shipped data/centroids.npy (seed 0)")
        return CommandResult(InitReport(lib.root, len(lib.centroids), origin, lib.cap))
