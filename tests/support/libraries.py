"""Real libraries built from recipes: Blue Marble crops stored through the project's own pipeline
(``Library.create`` + ``builder.ops.ingest.ingest``, and ``Pipeline`` with provenance), so every row,
hash and file is what a real library holds.

Each ``build_*`` recipe is a plain function ``(root, image, **params) -> root``; the
``library_factory`` fixture (tests/conftest.py) builds each recipe once per test session and
hands out the same read-only folder.  :func:`copy_library` makes a private copy to change.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from builder.assign.pipeline import Candidate, Pipeline
from builder.core.library import Library
from builder.ops.ingest import ingest
from tests.support.images import grid_crops, png_bytes, real_crops, varied_crops


def library_from_crops(root: Path, crops: Sequence[Image.Image]) -> Path:
    """A library at ``root`` holding ``crops`` (written as PNG files beside it, then ingested)."""
    src = root.parent / f"{root.name}_src"
    src.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(crops):
        crop.save(src / f"crop_{i:04d}.png")
    with Library.create(root) as lib:
        ingest(lib, [src], workers=1, progress=False)
    return root


def build_earth_library(root: Path, image: Image.Image, n: int = 160, seed: int = 11) -> Path:
    """``n`` real tiles of mixed scales (:func:`tests.support.images.varied_crops`)."""
    return library_from_crops(root, varied_crops(image, n, seed))


def build_grid_library(root: Path, image: Image.Image, cols: int, rows: int) -> Path:
    """The ``cols x rows`` crops of ``image`` (resized to 256 px by ingest): a mosaic of ``image``
    can be made of them exactly."""
    return library_from_crops(root, grid_crops(image, cols, rows))


def build_published_library(root: Path, image: Image.Image, n_ingest: int = 40, n_harvest: int = 16,
                            seed: int = 3) -> Path:
    """A library with ``n_ingest`` ingested crops (source 'ingest') and ``n_harvest`` crops
    stored with full provenance (source 'earth', z/x/y, lon/lat, region) plus ``fetched`` rows."""
    crops = real_crops(image, n_ingest + n_harvest, seed=seed)
    folder = root.parent / f"{root.name}_inputs"
    folder.mkdir(parents=True)
    for i, crop in enumerate(crops[:n_ingest]):
        crop.save(folder / f"crop_{i:03d}.png")
    with Library.create(root) as lib:
        ingest(lib, [folder], workers=1, progress=False)
        candidates = [
            Candidate(
                name=f"6/{10 + i}/{20 + i}",
                data=png_bytes(crop),
                provenance={
                    "source": "earth",
                    "z": 6,
                    "x": 10 + i,
                    "y": 20 + i,
                    "lon": -50.0 + i,
                    "lat": 10.5 - i,
                    "region": "Desert (Sahara)" if i % 2 else "Forest (Amazon/Congo)",
                },
            )
            for i, crop in enumerate(crops[n_ingest:])
        ]

        def record_fetched(conn, outcomes):
            conn.executemany(
                "INSERT INTO fetched (source, z, x, y, status, region, tried_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        "earth",
                        c.provenance["z"],
                        c.provenance["x"],
                        c.provenance["y"],
                        "stored" if o.accepted else (o.reason or "rejected"),
                        c.provenance["region"],
                        "2024-05-01T00:00:00Z",
                    )
                    for c, o in zip(candidates, outcomes)
                ],
            )

        with Pipeline(lib, workers=1) as pipe:
            pipe.process(candidates, on_commit=record_fetched)
    return root


def build_mixed_library(root: Path, image: Image.Image, n_ingest: int, n_harvest: int, synthetic: int,
                        every: int) -> Path:
    """:func:`build_published_library`, then synthetic tiles (two uses per source) for ``synthetic``
    empty buckets, every ``every``-th of them."""
    from builder.ops.synthesize import synthesize

    build_published_library(root, image, n_ingest=n_ingest, n_harvest=n_harvest)
    with Library.open(root) as lib:
        empty = [int(b) for b in np.flatnonzero(lib.bucket_counts() == 0)]
        made = synthesize(lib, max_uses=2, buckets=empty[::every][:synthetic], progress=False).made
    assert made == synthetic, f"{made} synthetic tiles made for {synthetic} empty buckets"
    return root


def copy_library(src: Path, dst: Path, link_tiles: bool = False) -> Path:
    """A private copy of the library at ``src``.  ``link_tiles``: tile files are hard links (cheap),
    for writers that rename and link names but never write into a tile (repair, recover), not for
    tests that damage or rewrite files."""
    if link_tiles:
        shutil.copytree(src, dst, copy_function=lambda s, d: os.link(s, d) if s.endswith(".png") else shutil.copy2(s, d))
    else:
        shutil.copytree(src, dst)
    return dst
