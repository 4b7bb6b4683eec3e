"""Mosaic Library builder: harvest, assign, verify and publish colour-bucketed satellite tiles."""

from .core.errors import (
    BadTile,
    CentroidsError,
    ImageRejected,
    LibraryError,
    LibraryLocked,
    MosaicError,
    SourceError,
    TileOutsideLibrary,
    UnsafePath,
    UsageError,
)

__all__ = [
    "BadTile",
    "CentroidsError",
    "ImageRejected",
    "LibraryError",
    "LibraryLocked",
    "MosaicError",
    "SourceError",
    "TileOutsideLibrary",
    "UnsafePath",
    "UsageError",
]
__version__ = "0.1.0"  # the one place: pyproject.toml reads it (dynamic version)
