"""Mosaic Library builder: harvest, assign, verify and publish colour-bucketed satellite tiles."""

from .errors import (
    CentroidsError,
    ImageRejected,
    LibraryError,
    LibraryLocked,
    MosaicError,
    SourceError,
    UnsafePath,
    UsageError,
)

__all__ = [
    "CentroidsError",
    "ImageRejected",
    "LibraryError",
    "LibraryLocked",
    "MosaicError",
    "SourceError",
    "UnsafePath",
    "UsageError",
]
__version__ = "0.1.0"  # the one place: pyproject.toml reads it (dynamic version)
