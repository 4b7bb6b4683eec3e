"""Admission: whether an analysed tile enters its bucket, and which synthetic tiles give way to it.

The pipeline's workers judge each tile against the committed library as it was when they looked;
the parent then judges every verdict again, in order, against what the bucket holds: its
committed tiles and those accepted earlier in the same batch.  The rules, in that order:

1. a worker's refusal stands (unreadable, blank, ``bucket_full``, ``duplicate``...);
2. the cap: a synthetic tile counts every tile of its bucket, a real one only the real tiles
   (synthetic tiles never refuse a real one) -> ``bucket_full``;
3. a duplicate: the same pHash in the bucket (for a real tile, among the real tiles only), or,
   with a near-duplicate radius, a pHash within the radius of a tile's, neither of them flat
   (:data:`builder.assign.phash.MIN_HASH_CONTRAST`: flat tiles are held to identical hashes) -> ``duplicate``;
4. a real tile: a committed synthetic tile with the same pHash gives way; else, at the cap, the
   newest committed synthetic tile does; else (the bucket is full with real tiles and synthetic
   tiles of this very batch) -> ``bucket_full``.

Pure: no SQL, no files.  :class:`builder.assign.pipeline.Pipeline` reads a :class:`BucketState` for each
bucket a batch touches, asks :func:`admit` for each verdict, keeps the state in step with
:func:`record`, and does the rest itself (unstaging the refused, the commit with its evictions,
the thumbnail cache).

>>> rules = Rules(cap=2)
>>> bucket = BucketState(total=2, real=1, hashes={"a", "b"}, real_hashes={"a"}, synthetic=[("s1", "b")])
>>> admit(Verdict(None, "a"), False, bucket, rules)  # the same pHash as a real tile
Decision(reason='duplicate', evict=())
>>> admit(Verdict(None, "b"), False, bucket, rules)  # a real tile: its synthetic twin gives way
Decision(reason=None, evict=('s1',))
>>> admit(Verdict(None, "c"), True, bucket, rules)  # a synthetic tile counts every tile
Decision(reason='bucket_full', evict=())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

BUCKET_FULL = "bucket_full"
DUPLICATE = "duplicate"


class Verdict(NamedTuple):
    """What admission reads of a worker's analysis (:class:`builder.assign.pipeline.Analysis` has these
    fields too): its own refusal, the tile's pHash and the contrast of its pHash pixels."""

    reason: str | None
    phash: str | None = None
    contrast: float | None = None


class Rules(NamedTuple):
    """The library's cap and the run's ``--near-duplicate-radius``; ``min_contrast``: below it a
    tile is flat and its pHash says too little for the radius."""

    cap: int
    near_duplicate_radius: int = 0
    min_contrast: float = 0.0


class Decision(NamedTuple):
    """``reason`` None: accepted, and the synthetic tiles in ``evict`` give way to it."""

    reason: str | None
    evict: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.reason is None


@dataclass
class BucketState:
    """One bucket as a batch sees it: the committed tiles, then those accepted in the batch.

    The sets need hold only the pHashes the batch's verdicts ask about (the pipeline reads no
    more); ``hashes`` keeps the pHash of a synthetic tile evicted in this batch (its row goes with
    the batch's commit).  ``synthetic``: committed synthetic tiles not yet evicted, newest first
    (tiles of this batch are not evicted by it); every one of them when the bucket may reach the
    cap, else at least those with a verdict's pHash.  ``near`` is read only with a radius.
    """

    total: int = 0  # tiles held, real and synthetic
    real: int = 0  # real tiles held
    hashes: set[str] = field(default_factory=set)  # pHashes of every tile
    real_hashes: set[str] = field(default_factory=set)  # pHashes of the real tiles
    synthetic: list[tuple[str, str]] = field(default_factory=list)  # committed (id, pHash), newest first
    near: list[tuple[int, bool, bool]] = field(default_factory=list)  # (pHash as int, flat?, synthetic?)


def is_flat(contrast: float | None, rules: Rules) -> bool:
    """A tile whose pHash pixels are too even for the near-duplicate radius (no contrast known: flat)."""
    return contrast is None or contrast < rules.min_contrast


def near_duplicate(tile_hash: str, contrast: float | None, synthetic: bool, bucket: BucketState, rules: Rules) -> bool:
    """Within the radius of a tile of the bucket (a real tile: of a real one), neither of them flat."""
    if rules.near_duplicate_radius <= 0 or is_flat(contrast, rules):
        return False
    value = int(tile_hash, 16)
    return any(not flat and (synthetic or not other_synthetic) and (value ^ other).bit_count() <= rules.near_duplicate_radius
               for other, flat, other_synthetic in bucket.near)


def admit(verdict: Verdict, synthetic: bool, bucket: BucketState, rules: Rules) -> Decision:
    """The rules of the module docstring, in order, for one verdict (``synthetic``: the tile was
    made by ``synthesize``) against what its bucket holds."""
    if verdict.reason is not None:
        return Decision(verdict.reason)
    if (bucket.total if synthetic else bucket.real) >= rules.cap:
        return Decision(BUCKET_FULL)
    if verdict.phash in (bucket.hashes if synthetic else bucket.real_hashes) or near_duplicate(
            verdict.phash, verdict.contrast, synthetic, bucket, rules):
        return Decision(DUPLICATE)
    if synthetic:
        return Decision(None)
    twin = next((tile_id for tile_id, tile_hash in bucket.synthetic if tile_hash == verdict.phash), None)
    if twin is not None:
        return Decision(None, (twin,))
    if bucket.total >= rules.cap:
        if not bucket.synthetic:
            return Decision(BUCKET_FULL)
        return Decision(None, (bucket.synthetic[0][0],))
    return Decision(None)


def record(bucket: BucketState, verdict: Verdict, synthetic: bool, decision: Decision, rules: Rules) -> None:
    """Bring ``bucket`` in step with an accepted tile (and its evictions) for the next verdict."""
    if not decision.accepted:
        return
    bucket.hashes.add(verdict.phash)
    if not synthetic:
        bucket.real_hashes.add(verdict.phash)
        bucket.real += 1
    bucket.total += 1 - len(decision.evict)
    if decision.evict:
        bucket.synthetic = [entry for entry in bucket.synthetic if entry[0] not in decision.evict]
    if rules.near_duplicate_radius > 0 and verdict.contrast is not None:
        bucket.near.append((int(verdict.phash, 16), is_flat(verdict.contrast, rules), synthetic))
