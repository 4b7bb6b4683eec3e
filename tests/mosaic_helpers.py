"""Shared by the query/mosaic/report/demo tests: small real libraries built from Blue Marble crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from builder.ingest import ingest
from builder.library import Library


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


def build_library(root: Path, image: Image.Image, n: int = 160, seed: int = 11) -> Path:
    """A library of real tiles at ``root`` (made through the real ingest pipeline); returns root."""
    src = root.parent / f"{root.name}_src"
    src.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(varied_crops(image, n, seed)):
        crop.save(src / f"crop_{i:04d}.png")
    with Library.create(root) as lib:
        ingest(lib, [src], workers=1, progress=False)
    return root
