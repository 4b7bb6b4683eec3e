"""Shared by the query/mosaic/report/demo tests: small real libraries built from Blue Marble crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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


def grid_crops(image: Image.Image, cols: int, rows: int) -> list[Image.Image]:
    """The picture cut into ``cols x rows`` equal crops, raster order: tiles a mosaic of it can
    be made of exactly (each crop is its own cell)."""
    w, h = image.width // cols, image.height // rows
    return [image.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)) for r in range(rows) for c in range(cols)]


def build_crops_library(root: Path, image: Image.Image, cols: int, rows: int) -> Path:
    """A library whose tiles are the ``cols x rows`` crops of ``image`` (resized to 256 px by ingest)."""
    src = root.parent / f"{root.name}_src"
    src.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(grid_crops(image, cols, rows)):
        crop.save(src / f"crop_{i:04d}.png")
    with Library.create(root) as lib:
        ingest(lib, [src], workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def earth_library(tmp_path_factory, bluemarble) -> Path:
    """One read-only library of 160 real Blue Marble tiles shared by the mosaic test modules
    (import this fixture into a module to use it; copy the folder before changing anything)."""
    return build_library(tmp_path_factory.mktemp("earth") / "mosaic_library", bluemarble, n=160, seed=11)
