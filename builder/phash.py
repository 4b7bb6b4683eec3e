"""Perceptual hash, bit-identical to ``str(imagehash.phash(img, hash_size=8))``.

imagehash's recipe: ``convert("L")``, ``resize((32, 32), LANCZOS)``, DCT-II along axis 0
then axis 1 in float64, take the top-left 8x8 block (DC term included), bits are
``block > median(block)``, row-major, first bit most significant, 16 hex digits.

The resize and grey conversion are per image (Pillow, in C); the DCT, the median and the
bit packing run over a whole batch at once.  ``scipy.fft.dct`` gives the same floats as
imagehash's ``scipy.fftpack.dct``, which matters: a uniform tile's AC terms are exact zeros
and any other DCT (a matrix multiply, say) turns them into noise and changes the hash.

>>> from PIL import Image
>>> phash(Image.new("RGB", (256, 256), (10, 120, 200)))
'8000000000000000'
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIZE = 8
HIGHFREQ_FACTOR = 4
_SIDE = HASH_SIZE * HIGHFREQ_FACTOR
_WEIGHTS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def phash_pixels(image: Image.Image) -> np.ndarray:
    """The 32x32 greyscale pixels imagehash feeds to its DCT (uint8)."""
    return np.asarray(image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS))


def phash_from_pixels(pixels: np.ndarray) -> list[str]:
    """Hashes of a batch of 32x32 greyscale arrays, shape ``(n, 32, 32)`` or ``(32, 32)``."""
    from scipy.fft import dct  # imported here: ~0.1 s that every CLI command would pay at start-up

    batch = np.asarray(pixels, dtype=np.float64)
    if batch.ndim == 2:
        batch = batch[None]
    coeffs = dct(dct(batch, axis=1), axis=2)[:, :HASH_SIZE, :HASH_SIZE].reshape(len(batch), -1)
    median = np.median(coeffs, axis=1, keepdims=True)
    bits = (coeffs > median).astype(np.uint64)
    values = (bits * _WEIGHTS).sum(axis=1, dtype=np.uint64)
    return [f"{int(v):016x}" for v in values]


def phash(image: Image.Image) -> str:
    """``str(imagehash.phash(image, hash_size=8))`` without the per-call overhead."""
    return phash_from_pixels(phash_pixels(image))[0]


def phash_batch(images: list[Image.Image]) -> list[str]:
    """Hashes of many images; the DCT and median run once over the stack."""
    if not images:
        return []
    return phash_from_pixels(np.stack([phash_pixels(img) for img in images]))


# A tile's "contrast": the standard deviation of the 32x32 greyscale pixels its hash is made
# from (0..255 grey levels).  Below this the hash carries no structure: a uniform tile hashes
# from exact zeros, a near-uniform one (open ocean, ice) from noise and gentle gradients, and
# such tiles share hashes with unrelated tiles.  Measured on the demo library (1,500 earth
# tiles): every pair of tiles of a bucket within 8 bits had a member below 1.3; 21% of the
# tiles are below 2.0.  The near-duplicate radius applies only between tiles at or above it.
MIN_HASH_CONTRAST = 2.0
MAX_RADIUS = 64  # bits in a hash: the largest meaningful --near-duplicate-radius


def contrast(image: Image.Image) -> float:
    """Standard deviation of :func:`phash_pixels` (see :data:`MIN_HASH_CONTRAST`)."""
    return float(phash_pixels(image).std())


def pixels_contrast(pixels: np.ndarray) -> np.ndarray:
    """:func:`contrast` of a batch of 32x32 greyscale arrays, shape ``(n, 32, 32)``."""
    batch = np.asarray(pixels, dtype=np.float64)
    return batch.reshape(len(batch), -1).std(axis=1)


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes.

    >>> hamming("ff00000000000000", "0f00000000000000")
    4
    """
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def is_phash(text: object) -> bool:
    """True for a 16-digit lowercase hex string, the stored form."""
    return isinstance(text, str) and len(text) == 16 and all(c in "0123456789abcdef" for c in text)
