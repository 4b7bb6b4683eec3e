"""Box sums of pixel arrays, the one reduction the thumbnails, the fidelity samples and the
pyramid levels all need, written so numpy reduces along contiguous memory."""

from __future__ import annotations

import numpy as np


def block_sums(pixels: np.ndarray, f: int) -> np.ndarray:
    """Sums of ``f x f`` blocks of ``(n, h, w, c)`` uint8 images (sides divisible by ``f``) as
    ``(n, h/f, w/f, c)`` uint32: rows first along the contiguous axis, then columns, which is
    several times faster than one ``sum(axis=(2, 4))`` over the strided 6-d view (7x on 64-px
    thumbnails)."""
    n, h, w, c = pixels.shape
    rows = pixels.reshape(n, h // f, f, w * c).sum(axis=2, dtype=np.uint16 if f <= 257 else np.uint32)
    return rows.reshape(n, h // f, w // f, f, c).sum(axis=3, dtype=np.uint32)
