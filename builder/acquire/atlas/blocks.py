"""One overview tile into candidate blocks: each block is one tile at the harvest zoom, with the LAB
of its mean colour, its bucket and the random key that decides whether its bucket's sample keeps it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...core.color import CentroidIndex, rgb_to_lab
from ...core.decode import decode_tile
from ...core.errors import ImageRejected
from ...core.layout import TILE_SIZE
from ..sources import is_blank_tile
from .geometry import block_size


class Blocks:
    """The usable blocks of overview tiles: candidate tile x/y at the harvest zoom, mean RGB's
    LAB, bucket and sampling key (arrays of equal length)."""

    def __init__(self, x, y, lab, bucket, key) -> None:
        self.x, self.y, self.lab, self.bucket, self.key = x, y, lab, bucket, key

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def concat(cls, parts: Sequence[Blocks]) -> Blocks:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0, np.int64),
                       np.zeros(0))
        return cls(*(np.concatenate([getattr(p, a) for p in parts]) for a in ("x", "y", "lab", "bucket", "key")))


def fold_tile(data: bytes, ref: tuple[int, int, int], zoom: int, index: CentroidIndex) -> tuple[str | None, Blocks | None]:
    """One fetched overview tile: ``(None, its blocks)``, or the reason it gives none (``blank``,
    or the decoder's rejection)."""
    try:
        rgb = np.asarray(decode_tile(data).image)
    except ImageRejected as exc:
        return exc.reason, None
    if is_flat_fill(rgb):
        return "blank", None
    return None, tile_blocks(rgb, ref, zoom, index)


def is_flat_fill(rgb: np.ndarray) -> bool:
    """A placeholder or nodata fill: 90% of the pixels one exact colour (not merely smooth)."""
    return is_blank_tile(rgb, std_threshold=0.0)


# Blocks per overview tile from which the colours are deduplicated before the LAB conversion and
# the KD-tree query: an overview tile of real imagery holds 65,536 one-pixel blocks but only about
# a fifth as many distinct colours, and the query is most of the cost of folding a tile in.
DEDUPE_MIN_BLOCKS = 1024


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` in half the time (one stable argsort)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.empty(len(values), dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(values), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse


def tile_blocks(rgb: np.ndarray, ref: tuple[int, int, int], zoom: int, index: CentroidIndex) -> Blocks:
    """Every block of an overview tile ``ref = (atlas_zoom, x, y)`` that holds no nodata pixel.

    One vectorised pass: integer block sums, then the LAB and the bucket of each *distinct*
    block colour (the same floats and buckets as block by block: a block's mean is its integer
    sum over the block's pixels, and equal sums give equal LAB and bucket).
    """
    az, ax, ay = ref
    b = block_size(zoom, az)
    n = TILE_SIZE // b
    arr = np.asarray(rgb, dtype=np.uint8)[:TILE_SIZE, :TILE_SIZE, :3]
    wide = arr.astype(np.int64)
    packed = (wide[..., 0] << 32) | (wide[..., 1] << 16) | wide[..., 2]
    bad = (packed == 0) | (packed == 0xFF00FF00FF)  # pure black or pure white: nodata
    if b == 1:
        rows, cols = np.nonzero(~bad)
        block_sums, packed = wide[rows, cols], packed[rows, cols]
    else:
        bad_block = bad.reshape(n, b, n, b).any(axis=(1, 3))
        rows, cols = np.nonzero(~bad_block)
        block_sums = wide.reshape(n, b, n, b, 3).sum(axis=(1, 3))[rows, cols]
        packed = (block_sums[:, 0] << 32) | (block_sums[:, 1] << 16) | block_sums[:, 2]
    if len(block_sums) >= DEDUPE_MIN_BLOCKS:  # b <= 16 here, so a sum fits in 16 bits a channel
        distinct, inverse = _distinct(packed)
        colours = np.stack([distinct >> 32, (distinct >> 16) & 0xFFFF, distinct & 0xFFFF], axis=-1)
    else:
        colours, inverse = block_sums, np.arange(len(block_sums))
    mean = colours / float(b * b)
    lab = rgb_to_lab(mean) if len(mean) else np.zeros((0, 3))
    bucket = index.assign_lab(lab)[0] if len(lab) else np.zeros(0, np.int64)
    keys = np.random.default_rng([az, ax, ay, zoom]).random(n * n).reshape(n, n)[rows, cols]
    return Blocks(ax * n + cols.astype(np.int64), ay * n + rows.astype(np.int64), lab[inverse], bucket[inverse], keys)
