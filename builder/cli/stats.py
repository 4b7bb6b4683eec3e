"""``stats``: tiles, buckets populated and full, yield per region."""

from __future__ import annotations

import json

from ..library import Library
from . import add_library_option


def register(sub) -> None:
    p = sub.add_parser("stats", help="tiles, buckets populated/full, per-region yield")
    add_library_option(p)
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    with Library.open(args.library, readonly=True) as lib:
        stats = lib.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(
        f"{stats['tiles']} tiles in {stats['buckets_populated']}/{stats['buckets_total']} buckets "
        f"({stats['coverage']:.1%}), {stats['buckets_full']} full at cap {stats['cap']}"
    )
    for region, n in stats["by_region"].items():
        tried = sum(stats["fetched_by_region"].get(region, {}).values())
        yield_text = f", {n / tried:.1%} of {tried} fetched" if tried else ""
        print(f"  {region}: {n} tiles{yield_text}")
    return 0
