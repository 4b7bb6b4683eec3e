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

    ``exit_code`` is the CLI's exit status for it (README: exit codes); ``report``, when set,
    is what the run did before it stopped (a :class:`~builder.harvest.HarvestReport`).
    """

    exit_code = 3

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class UsageError(MosaicError):
    """A command-line value is out of range or inconsistent."""
