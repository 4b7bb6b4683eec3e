"""``init``: create the library layout and its centroids."""

from __future__ import annotations

from ..library import DEFAULT_CAP, Library
from . import add_library_option


def register(sub) -> None:
    p = sub.add_parser("init", help="create the library layout and centroids.npy")
    add_library_option(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--centroids", metavar="FILE", help="import this centroids.npy (validated) instead of the shipped one")
    group.add_argument("--seed", type=int, metavar="N", help="regenerate centroids with the card's recipe and this seed (~30 s)")
    p.add_argument("--cap", type=int, default=DEFAULT_CAP, help=f"tiles per bucket (default {DEFAULT_CAP})")
    p.set_defaults(func=run)


def run(args) -> int:
    with Library.create(args.library, centroids=args.centroids, seed=args.seed, cap=args.cap) as lib:
        origin = args.centroids or (f"seed {args.seed}" if args.seed is not None else "shipped data/centroids.npy (seed 0)")
        print(f"initialised {lib.root} with {len(lib.centroids)} centroids from {origin}, cap {lib.cap}")
    return 0
