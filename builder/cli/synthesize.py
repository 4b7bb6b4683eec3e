"""``synthesize``: flagged synthetic tiles for the buckets without a real tile (:func:`builder.ops.synthesize.synthesize`)."""

from __future__ import annotations

from ..core.defaults import DEFAULT_MAX_USES, DEFAULT_PER_BUCKET, DEFAULT_SYNTH_SEED
from .options import add_library_option, add_near_duplicate_option, add_workers_option, integer
from .result import CommandResult


def register(sub):
    p = sub.add_parser(
        "synthesize", help="flagged synthetic tiles (colour transfer) for buckets without a real tile",
        description="For every bucket that holds no real tile, make tiles by colour transfer from real tiles of the "
                    "nearest populated colours, keeping their texture, checked to land in their bucket by the card's "
                    "recipe. They are flagged (synthetic = 1, derived_from = the source tile), kept out of the "
                    "dataset's default config, and give way to real tiles. Running it again tops up.",
    )
    add_library_option(p)
    p.add_argument("--per-bucket", type=integer(), default=DEFAULT_PER_BUCKET, metavar="N",
                   help=f"synthetic tiles wanted in each bucket without a real tile (default: {DEFAULT_PER_BUCKET})")
    p.add_argument("--max-uses", type=integer(), default=DEFAULT_MAX_USES, metavar="K",
                   help="at most K synthetic tiles from one real tile (default: as many as needed for every empty "
                        "bucket to get a textured tile, spread evenly over the textured real tiles); buckets left "
                        "without a usable source get a flat one-colour tile")
    add_workers_option(p)
    add_near_duplicate_option(p)
    p.add_argument("--seed", type=integer(), default=DEFAULT_SYNTH_SEED,
                   help=f"which of the nearest sources each bucket gets (default: {DEFAULT_SYNTH_SEED})")
    return p


def run(args) -> CommandResult:
    from ..core.library import Library
    from ..ops.synthesize import synthesize

    with Library.open(args.library) as lib:
        report = synthesize(lib, per_bucket=args.per_bucket, max_uses=args.max_uses,
                            near_duplicate_radius=args.near_duplicate_radius, seed=args.seed,
                            workers=args.workers)
    return CommandResult(report, prefix="synthesize: ")
