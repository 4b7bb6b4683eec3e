"""The dataset card's recipe, literally, as the reference the pipeline is checked against."""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from scipy.spatial import cKDTree
from skimage.color import rgb2lab


def card_recipe(image: Path | str | Image.Image, centroids: np.ndarray) -> tuple[int, np.ndarray, str]:
    """The card's steps 1-3 and 5 for one tile (a file or a decoded image): PIL 64x64 resize,
    mean, ``skimage`` rgb2lab, ``cKDTree`` nearest centroid, ``imagehash.phash``.
    Returns ``(bucket, lab, phash)``."""
    img = image if isinstance(image, Image.Image) else Image.open(image)
    img = img.convert("RGB")
    mean = np.array(img.resize((64, 64))).reshape(-1, 3).mean(0)
    lab = rgb2lab((mean / 255.0).reshape(1, 1, 3)).reshape(3)
    _dist, bucket = cKDTree(centroids).query(lab)
    return int(bucket), lab, str(imagehash.phash(img, hash_size=8))
