"""Per-bucket contact sheets: every tile of a bucket as a 64-px thumbnail (from the library's
thumbnail cache when it holds them), synthetic ones badged, named by a hash of the bucket's ids
so an unchanged bucket is not drawn again."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw

from ...core.decode import PNG_ZLIB_STRATEGY, decode_tile
from ...core.errors import BadTile, ImageRejected
from ...core.layout import THUMB_SIZE, TILE_SIZE, bucket_name
from ...core.library import Library
from ...core.scratch import scratch_path
from ...core.thumbcache import ThumbnailCache
from .canvas import SYNTHETIC_COLOUR, font

logger = logging.getLogger(__name__)

SHEET_VERSION = 2  # bump when the sheet layout changes: old sheets then get redrawn
SHEET_THUMB = 64
SHEET_GAP = 2
# Synthetic tiles wear a badge on their contact-sheet thumbnail: a corner with an "S".
BADGE_SIZE = 20
BADGE_COLOUR = SYNTHETIC_COLOUR


def _thumbnail(lib: Library, bucket_id: int, tile_id: str) -> Image.Image | None:
    try:
        img = decode_tile(lib.read_tile(bucket_id, tile_id)).image
    except (BadTile, ImageRejected) as exc:
        logger.warning("tile %s of bucket %s left out of its contact sheet: %s", tile_id, bucket_id, exc)
        return None
    return img.reduce(TILE_SIZE // SHEET_THUMB)


class StoredThumbnails:
    """The 64-px thumbnails the store keeps for mosaics (``builder.core.thumbcache``), looked up by
    ``(id, phash)``: the same 4x4 box reduction :func:`_thumbnail` makes, without decoding the tile.

    Only the keys are read into memory, as the cache's own :class:`~builder.core.thumbcache.CacheIndex`
    (60 bytes a tile, no Python object per tile); each thumbnail is read from the pixels file when
    drawn (``os.pread``: no memory map, whose touched pages would count in the report's memory).
    A tile the cache lacks, or holds under another pHash, is decoded as before.  Unusable cache:
    every tile is decoded.
    """

    def __init__(self, lib: Library) -> None:
        self.index = None
        self.fd: int | None = None
        if SHEET_THUMB != THUMB_SIZE:
            return
        cache = ThumbnailCache.of(lib.root)
        try:
            with cache.shared():
                index = cache.read_keys()
                if not index.size:
                    return
                self.fd = os.open(cache.pixels_path, os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, ValueError) as exc:
            logger.warning("contact sheets decode every tile: thumbnail cache unreadable (%s)", exc)
            return
        self.index = index

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def get(self, tile_id: str, tile_hash: str | None) -> Image.Image | None:
        if self.index is None or not isinstance(tile_id, str) or not isinstance(tile_hash, str):
            return None
        row = self.index.row(tile_id, tile_hash)
        if row < 0:
            return None
        size = THUMB_SIZE * THUMB_SIZE * 3
        data = os.pread(self.fd, size, row * size)  # rows are appended whole
        return Image.frombytes("RGB", (THUMB_SIZE, THUMB_SIZE), data) if len(data) == size else None


def sheet_name(bucket_id: int, tile_ids: list[str], synthetic: frozenset[str] | set[str] = frozenset()) -> str:
    """``bucket_0042_<hash>.png``: the hash of the tile ids (and which are synthetic) makes unchanged
    sheets reusable."""
    key = f"v{SHEET_VERSION} {SHEET_THUMB} {SHEET_GAP}\n" + "\n".join(
        f"synthetic {i}" if i in synthetic else i for i in tile_ids)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{bucket_name(bucket_id)}_{digest}.png"


def badge(thumb: Image.Image) -> Image.Image:
    """``thumb`` with the synthetic badge in its top-left corner (a copy)."""
    marked = thumb.copy()
    draw = ImageDraw.Draw(marked)
    draw.polygon([(0, 0), (BADGE_SIZE, 0), (0, BADGE_SIZE)], fill=BADGE_COLOUR)
    draw.text((2, 0), "S", fill=(255, 255, 255), font=font(10))
    return marked


def render_sheet(lib: Library, bucket_id: int, tile_ids: list[str], path: Path,
                 synthetic: frozenset[str] | set[str] = frozenset(), hashes: list[str] | None = None,
                 stored: StoredThumbnails | None = None) -> Path:
    """A near-square grid of the bucket's tile thumbnails (missing files leave a dark gap; synthetic
    tiles wear :func:`badge`).

    With ``stored`` and the tiles' ``hashes``, thumbnails of tiles whose file is there come from
    the store's cache where it holds them; the sheet is the same image either way.
    """
    cols = max(1, math.ceil(math.sqrt(len(tile_ids))))
    rows = max(1, math.ceil(len(tile_ids) / cols))
    step = SHEET_THUMB + SHEET_GAP
    sheet = Image.new("RGB", (cols * step + SHEET_GAP, rows * step + SHEET_GAP), (24, 24, 24))
    for i, tile_id in enumerate(tile_ids):
        thumb = None
        if stored is not None and hashes is not None and lib.tile_path(bucket_id, tile_id).is_file():
            thumb = stored.get(tile_id, hashes[i])  # a tile whose file is gone still leaves a gap
        if thumb is None:
            thumb = _thumbnail(lib, bucket_id, tile_id)
        if thumb is not None:
            if tile_id in synthetic:
                thumb = badge(thumb)
            sheet.paste(thumb, (SHEET_GAP + (i % cols) * step, SHEET_GAP + (i // cols) * step))
    part = scratch_path(path)
    sheet.save(part, format="PNG", compress_type=PNG_ZLIB_STRATEGY)  # lossless; ~3x faster than the default
    os.replace(part, path)
    return path


