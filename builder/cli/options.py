"""What the commands' parsers share: number parsing, ``--library`` and the meaning of the pool options.

The value parsers are argparse ``type=`` callables.  A bad value becomes argparse's own
one-line error naming the option and the value, exit status 2::

    error: python -m builder ingest: argument --workers: must be at least 1, got 0
    error: python -m builder harvest: argument --rate: not a number: 'fast'

Pool options mean the same in every command: ``--workers N`` is worker *processes* (ingest,
harvest and verify analyse tiles on a process pool; the demo passes it on to them), ``--threads
N`` is threads (harvest's fetch threads, the tile decoding of report and mosaic).  ``build``
and ``push`` keep the contract's ``--num-proc`` for their processes.

>>> integer(1)("3"), number(0, 1)("0.25")
(3, 0.25)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..core.defaults import DEFAULT_NEAR_DUPLICATE_RADIUS

DEFAULT_LIBRARY = "mosaic_library"


def _bounded(convert: Callable[[str], float], what: str, minimum, maximum) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        # Written as "not below / not above" so that NaN, which fails every comparison, fails a bound.
        if (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
            return value
        if minimum is not None and maximum is not None:
            raise argparse.ArgumentTypeError(f"must be within {minimum}..{maximum}, got {text}")
        if minimum is not None:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text}")

    return parse


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer, optionally within bounds (inclusive).

    Options whose range a library function already checks (``builder.acquire.options.validate_options``,
    ``Library.create``'s seed and cap) take ``integer()`` and leave the range to it, so a
    notebook and the command line get the same message.

    >>> integer(0)("-1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be at least 0, got -1
    """
    return _bounded(int, "an integer", minimum, maximum)


def number(minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """argparse type: a decimal number, optionally within bounds (inclusive; NaN is within none).

    Unbounded, it takes anything ``float`` does, ``nan`` and ``inf`` included, and leaves them
    to the library's own check (harvest's ``--rate``).
    """
    return _bounded(float, "a number", minimum, maximum)


def add_library_option(parser: argparse.ArgumentParser) -> None:
    """Every command takes ``--library DIR``."""
    parser.add_argument(
        "--library",
        default=DEFAULT_LIBRARY,
        metavar="DIR",
        help=f"library folder (default: ./{DEFAULT_LIBRARY})",
    )


def add_workers_option(parser: argparse.ArgumentParser, default: str = "one per CPU") -> None:
    """``--workers N``: worker processes, in every command that has it."""
    parser.add_argument("--workers", type=integer(1), default=None, metavar="N",
                        help=f"worker processes (default: {default})")


def add_threads_option(parser: argparse.ArgumentParser, what: str, default: int | None, shown: str | None = None,
                       minimum: int | None = 1) -> None:
    """``--threads N``: threads, in every command that has it; ``what`` says what they do.

    ``shown`` describes a ``None`` default; ``minimum=None`` leaves the range to the library
    (``builder.acquire.options.validate_options``).
    """
    parser.add_argument("--threads", type=integer(minimum), default=default, metavar="N",
                        help=f"{what} threads (default: {default if shown is None else shown})")


def add_near_duplicate_option(p: argparse.ArgumentParser) -> None:
    """``--near-duplicate-radius R`` (ingest, harvest, synthesize); its range is the library's check."""
    p.add_argument("--near-duplicate-radius", type=integer(), default=DEFAULT_NEAR_DUPLICATE_RADIUS, metavar="R",
                   help="tiles of a bucket whose 64-bit pHashes differ in at most R bits are duplicates "
                        f"(default: {DEFAULT_NEAR_DUPLICATE_RADIUS}, identical hashes only; flat, low-contrast "
                        "tiles are held to identical hashes whatever R)")
