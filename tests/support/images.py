"""Real imagery cut into tiles, and image files as bytes (encoded, or written by hand to be hostile)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def real_crops(image: Image.Image, n: int, seed: int = 0, size: int = 256) -> list[Image.Image]:
    """``n`` deterministic ``size``-pixel crops of real imagery at random places."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        x = int(rng.integers(0, image.width - size))
        y = int(rng.integers(0, image.height - size))
        crops.append(image.crop((x, y, x + size, y + size)))
    return crops


def varied_crops(image: Image.Image, n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` square crops of real imagery at random places and scales (64..512 px, resized to 256).

    Mixed scales give smooth and detailed tiles, so buckets hold tiles that differ inside even
    when their mean colour is alike: what sub-cell matching needs to be tested against.
    """
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        size = int(rng.choice([64, 128, 256, 512]))
        x = int(rng.integers(0, image.width - size))
        y = int(rng.integers(0, image.height - size))
        crop = image.crop((x, y, x + size, y + size))
        crops.append(crop if size == 256 else crop.resize((256, 256), Image.Resampling.LANCZOS))
    return crops


def grid_crops(image: Image.Image, cols: int, rows: int) -> list[Image.Image]:
    """The picture cut into ``cols x rows`` equal crops, raster order: tiles a mosaic of it can
    be made of exactly (each crop is its own cell)."""
    w, h = image.width // cols, image.height // rows
    return [image.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)) for r in range(rows) for c in range(cols)]


def png_bytes(img: Image.Image | np.ndarray) -> bytes:
    """``img`` (a PIL image, or an (h, w, 3) array of 0..255 values) as a PNG file's bytes."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img.astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def one_bucket_pngs(image: Image.Image, n: int) -> list[bytes]:
    """Up to 8 PNGs of one mean colour (one bucket) with distinct perceptual hashes: a real crop
    of ``image`` turned by quarter turns, then mirrored."""
    crop = real_crops(image, 1, seed=41)[0]
    turns = [crop.rotate(90 * k) for k in range(4)]
    return [png_bytes(img) for img in (turns + [t.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for t in turns])[:n]]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(rgb: np.ndarray) -> bytes:
    """A PNG of an (h, w, 3) uint8 array with stored (level 0) deflate blocks: ~1 ms a tile.

    Pillow's encoder spends most of its time filtering; a kill campaign needs a thousand distinct
    tiles per session, not small files.
    """
    h, w, _ = rgb.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(rgb).reshape(h, w * 3)], axis=1)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 0))
            + png_chunk(b"IEND", b""))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels with almost no pixel data: a
    decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + png_chunk(b"IEND", b""))
