"""``python -m builder COMMAND``: a thin argparse layer over the library API.

Each command lives in its own module under ``builder.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed ``args`` and returning an exit code.  Errors the user can cause are
:class:`~builder.errors.MosaicError`: printed on one line, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sqlite3
import sys

from ..errors import MosaicError

# Command modules, in the order ``--help`` lists them.
COMMANDS = (
    "init",
    "ingest",
    "harvest",
    "stats",
    "verify",
    "build",
    "push",
    "restore",
    "query",
    "mosaic",
    "report",
    "demo",
)

DEFAULT_LIBRARY = "mosaic_library"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad values as one line and exit status 2 (its own convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def add_library_option(parser: argparse.ArgumentParser) -> None:
    """Every command takes ``--library DIR``."""
    parser.add_argument(
        "--library",
        default=DEFAULT_LIBRARY,
        metavar="DIR",
        help=f"library folder (default: ./{DEFAULT_LIBRARY})",
    )


def int_at_least(minimum: int):
    """argparse type: an integer no smaller than ``minimum``, else a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # what argparse names in its messages
    return parse


positive_int = int_at_least(1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m builder", description="Build, check and publish a Mosaic Library.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except MosaicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: work finished so far is saved", file=sys.stderr)
        return 130
    except OSError as exc:
        # Disk full, permission denied, read-only folders: the user's environment, not a bug.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
            raise  # our SQL is wrong: a bug, keep the traceback
        # "database or disk is full", "disk I/O error", a damaged file: SQLite's view of the same.
        logging.getLogger(__name__).info("sqlite error", exc_info=True)
        print(f"error: SQLite: {exc}", file=sys.stderr)
        return 2
