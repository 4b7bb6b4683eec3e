"""Perceptual hash, bit-identical to ``str(imagehash.phash(img, hash_size=8))``.

imagehash's recipe: ``convert("L")``, ``resize((32, 32), LANCZOS)``, DCT-II along axis 0
then axis 1 in float64, take the top-left 8x8 block (DC term included), bits are
``block > median(block)``, row-major, first bit most significant, 16 hex digits.

The resize and grey conversion are per image (Pillow, in C); the DCT, the median and the
bit packing run over a whole batch at once.  ``scipy.fft.dct`` gives the same floats as
imagehash's ``scipy.fftpack.dct``, which matters: a uniform tile's AC terms are exact zeros
and any other DCT (a matrix multiply, say) turns them into noise and changes the hash.

So the 8x8 block is first computed as two small matrix products (no scipy import: ~0.2 s of
every fresh ``ingest``), and kept only where every coefficient is farther than
:data:`EXACT_MARGIN` from the median: both DCTs are within ~1e-8 of the exact values (the
coefficients are at most ~1e6 and each is a sum of 1,024 float64 products), so beyond that
margin each bit ``coefficient > median`` is the same whichever DCT made it.  The other tiles
(uniform ones, whose AC terms tie at zero, and any near tie) are hashed with scipy's DCT.

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


# The unnormalised DCT-II rows scipy computes (``2 cos(pi k (2n + 1) / 2N)``), the first 8 of 32.
_DCT_ROWS = 2.0 * np.cos(np.pi * np.arange(HASH_SIZE)[:, None] * (2 * np.arange(_SIDE)[None, :] + 1) / (2 * _SIDE))
# Distance from the median beyond which a coefficient's bit cannot depend on which DCT made it
# (both are within ~1e-8 of the exact value; see the module docstring).
EXACT_MARGIN = 1e-4


def _bits(coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hash values of ``(n, 64)`` coefficient rows, and each row's smallest distance to its median."""
    median = np.median(coeffs, axis=1, keepdims=True)
    bits = (coeffs > median).astype(np.uint64)
    return (bits * _WEIGHTS).sum(axis=1, dtype=np.uint64), np.abs(coeffs - median).min(axis=1)


def phash_from_pixels(pixels: np.ndarray) -> list[str]:
    """Hashes of a batch of 32x32 greyscale arrays, shape ``(n, 32, 32)`` or ``(32, 32)``."""
    batch = np.asarray(pixels, dtype=np.float64)
    if batch.ndim == 2:
        batch = batch[None]
    block = _DCT_ROWS @ batch @ _DCT_ROWS.T
    values, margin = _bits(block.reshape(len(batch), -1))
    unsure = np.flatnonzero(margin <= EXACT_MARGIN)
    if len(unsure):
        from scipy.fft import dct  # imported here: ~0.2 s that most commands never need

        exact = dct(dct(batch[unsure], axis=1), axis=2)[:, :HASH_SIZE, :HASH_SIZE]
        values[unsure] = _bits(exact.reshape(len(unsure), -1))[0]
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
