"""pHash is bit-identical to imagehash.phash(img, hash_size=8) on real and synthetic tiles."""

import imagehash
import numpy as np
from PIL import Image

from builder.assign.phash import hamming, is_phash, phash, phash_batch
from tests.support.images import real_crops


def test_matches_imagehash_on_real_imagery(bluemarble):
    crops = real_crops(bluemarble, 200, seed=11)
    ref = [str(imagehash.phash(c, hash_size=8)) for c in crops]
    assert phash_batch(crops) == ref
    assert [phash(c) for c in crops[:20]] == ref[:20]


def test_matches_imagehash_on_flat_and_gradient_tiles():
    tiles = [Image.new("RGB", (256, 256), colour) for colour in [(0, 0, 0), (255, 255, 255), (12, 80, 160)]]
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    tiles.append(Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], -1)))
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    tiles.append(Image.fromarray(noise))
    assert phash_batch(tiles) == [str(imagehash.phash(t, hash_size=8)) for t in tiles]


def test_helpers():
    assert is_phash("0123456789abcdef") and not is_phash("0123") and not is_phash(None)
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
