"""One exception hierarchy for the whole builder.

Every error a user can cause (bad input, a damaged library, a failing server) is a
:class:`MosaicError`; the CLI prints ``str(error)`` on one line and exits non-zero.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MosaicError(Exception):
    """Base class of every error the builder raises on purpose."""


class LibraryError(MosaicError):
    """The on-disk library is missing, damaged or in use."""


class LibraryLocked(LibraryError):
    """Another process holds the library's writer lock."""


class CentroidsError(LibraryError):
    """``centroids.npy`` is missing, malformed, or does not match the library."""


class UnsafePath(LibraryError):
    """A path or id taken from data would escape the library."""


class BadTile(LibraryError):
    """A tile's file is missing, unreadable or not what a stored tile must be.

    Names the tile id, the file and the problem, so one line tells a user which row to look
    at (``verify --repair`` drops such rows).  Picklable: it crosses process pools.
    """

    def __init__(self, tile_id: str, path: object, problem: str) -> None:
        self.tile_id, self.path, self.problem = tile_id, str(path), problem
        super().__init__(f"tile {tile_id}: {problem}: {path}")

    def __reduce__(self):  # the default passes only ``args`` (the message) back to __init__
        return (type(self), (self.tile_id, self.path, self.problem))


class TileOutsideLibrary(BadTile, UnsafePath):
    """A tile's bucket folder resolves outside the library (a planted symlink): never read."""


class ImageRejected(MosaicError):
    """An input image cannot become a tile. ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class SourceError(MosaicError):
    """A tile source cannot be opened or answered with something unusable."""


class SourceUnreachable(SourceError):
    """A run's tile source cannot be reached (no name resolution, connection refused) or
    fails every request: the run stopped, and no tile was marked as tried for it.

    ``report``, when set, is what the run did before it stopped (a
    :class:`~builder.acquire.harvest.HarvestReport`); the CLI exits with ``EXIT_SOURCE_DOWN``.
    """

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class UsageError(MosaicError):
    """A command-line value is out of range or inconsistent."""
