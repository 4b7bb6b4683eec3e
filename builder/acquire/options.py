"""The checks of what a fetch run (``harvest``, ``atlas``) is asked to do, shared by both.

One wording for the CLI and notebooks: a bad value raises a one-line
:class:`~builder.core.errors.UsageError` naming the option and the value.  Standard library only.
"""

from __future__ import annotations

import numbers

from ..core.defaults import DEFAULT_PATIENCE
from ..core.errors import UsageError
from ..core.layout import MAX_ZOOM, MIN_ZOOM


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # NumPy's integers too


def validate_options(*, zoom: int, threads: int, batch: int, max_tiles: int | None = None,
                     max_requests: int | None = None, rate: float | None = None,
                     patience: int = DEFAULT_PATIENCE) -> None:
    """Raise a one-line UsageError for the first bad value (the CLI and notebooks alike)."""
    if not _is_int(zoom) or not MIN_ZOOM <= zoom <= MAX_ZOOM:
        raise UsageError(f"--zoom {zoom!r} is out of range: zoom must be an integer from {MIN_ZOOM} to {MAX_ZOOM}")
    for name, value in (("--threads", threads), ("--batch", batch), ("--patience", patience)):
        if not _is_int(value) or value < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in (("--max-tiles", max_tiles), ("--max-requests", max_requests)):
        if value is not None and (not _is_int(value) or value < 1):
            raise UsageError(f"{name} must be an integer >= 1 (or left out for no limit), got {value!r}")
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0 or rate == float("inf"):
            raise UsageError(f"--rate must be a number of requests per second > 0, got {rate!r}")
