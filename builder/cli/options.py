"""What the commands' parsers share: number parsing, ``--library`` and the meaning of the pool options.

The value parsers are argparse ``type=`` callables.  A bad value becomes argparse's own
one-line error naming the option and the value, exit status 2::

    error: python -m builder ingest: argument --workers: must be at least 1, got 0
    error: python -m builder harvest: argument --rate: not a number: 'fast'

Pool options mean the same in every command: ``--workers N`` is worker *processes* (ingest,
harvest and verify analyse tiles on a process pool; the demo passes it on to them), ``--threads
N`` is threads (harvest's fetch threads, the tile decoding of report and mosaic).  ``build``
and ``push`` keep the contract's ``--num-proc`` for their processes.  The library API names them alike:
``workers=`` is processes (``ingest``, ``verify_library``, ``Pipeline``...), ``threads=`` is threads
(``MosaicOptions``, ``render_report``, ``load_tile_table``, ``harvest``).

>>> integer(1)("3"), number(0, 1)("0.25")
(3, 0.25)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable

from ..acquire.options import NEAR_DUPLICATE_HELP
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

    Options whose range a library function already checks (``builder.acquire.options.HarvestOptions``,
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

    ``shown`` describes a ``None`` default; ``minimum=None`` leaves the range to the library.
    """
    parser.add_argument("--threads", type=integer(minimum), default=default, metavar="N",
                        help=f"{what} threads (default: {default if shown is None else shown})")


def add_near_duplicate_option(p: argparse.ArgumentParser) -> None:
    """``--near-duplicate-radius R`` (ingest, harvest, synthesize); its range is the library's check."""
    p.add_argument("--near-duplicate-radius", type=integer(), default=DEFAULT_NEAR_DUPLICATE_RADIUS, metavar="R",
                   help=NEAR_DUPLICATE_HELP)


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per field of the options dataclass ``cls`` whose metadata puts it on the
    command line (:func:`builder.acquire.options.option`): flag, help, metavar and choices from the
    metadata, the default from the field, the parser from the annotation (``bool``: a switch;
    ``int``/``float``: :func:`integer`/:func:`number`, the range left to the dataclass's own
    check; a tuple of floats: that many numbers).  Fields of one ``group`` are mutually exclusive."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli"):
            continue
        target = parser
        if meta["group"] is not None:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
        kind = _plain(hints[f.name])
        kwargs: dict = {"default": f.default, "help": meta["help"], "dest": f.name}
        if kind is bool:
            kwargs["action"] = "store_true"
        else:
            if typing.get_origin(kind) is tuple:
                kwargs["nargs"] = len(typing.get_args(kind))
                kind = typing.get_args(kind)[0]
            if kind is int:
                kwargs["type"] = integer(meta["minimum"])
            elif kind is float:
                kwargs["type"] = number()
            for key in ("metavar", "choices"):
                if meta[key] is not None:
                    kwargs[key] = meta[key]
        target.add_argument(meta["flag"], **kwargs)


def options_from(cls: type, args: argparse.Namespace, **extra):
    """The options dataclass ``cls`` made (and so validated) from parsed ``args``: every field on
    the command line, plus ``extra``; a list (``nargs``) becomes a tuple."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.metadata.get("cli")}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values, **extra)


def _plain(annotation):
    """``X`` of ``X | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner
    return annotation
