"""Shared by the query/mosaic/report/demo tests: small real libraries built from Blue Marble crops."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from builder.ingest import ingest
from builder.library import Library
from tests.support.images import grid_crops, varied_crops


def build_library(root: Path, image: Image.Image, n: int = 160, seed: int = 11) -> Path:
    """A library of real tiles at ``root`` (made through the real ingest pipeline); returns root."""
    src = root.parent / f"{root.name}_src"
    src.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(varied_crops(image, n, seed)):
        crop.save(src / f"crop_{i:04d}.png")
    with Library.create(root) as lib:
        ingest(lib, [src], workers=1, progress=False)
    return root


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
