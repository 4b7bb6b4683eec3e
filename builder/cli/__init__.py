"""``python -m builder COMMAND`` (or ``mosaic-library COMMAND``): a thin argparse layer over the library API.

Each command lives in its own module under ``builder.cli`` with two functions:

- ``register(subparsers)`` adds its parser and returns it;
- ``run(args)`` does the work through the library API and returns a
  :class:`~builder.cli.result.CommandResult`, which :func:`main` prints (``--json``, added here
  to every command, selects JSON) and whose exit code it returns.

Command modules import the heavy modules (NumPy, SciPy, Pillow, ``datasets``...) inside
``run()``, and take the defaults they show in ``--help`` from :mod:`builder.layout` and
:mod:`builder.defaults`, so ``--help`` and argument errors cost no more than argparse.

Errors the user can cause are :class:`~builder.errors.MosaicError`: printed on one line, exit
status 2, no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys

from .. import __version__
from ..errors import MosaicError
from .result import EXIT_INTERRUPTED, EXIT_USAGE

# Command modules, in the order ``--help`` lists them.
COMMANDS = (
    "init",
    "ingest",
    "harvest",
    "atlas",
    "synthesize",
    "stats",
    "verify",
    "recover",
    "build",
    "push",
    "restore",
    "query",
    "mosaic",
    "report",
    "demo",
)

# The console script pyproject.toml installs: ``mosaic-library COMMAND`` is ``python -m builder COMMAND``.
CONSOLE_SCRIPT = "mosaic-library"


def program_name() -> str:
    """How the user called us, for usage lines and errors: the console script or ``python -m builder``."""
    return CONSOLE_SCRIPT if sys.argv and os.path.basename(sys.argv[0]) == CONSOLE_SCRIPT else "python -m builder"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad values as one line and exit status 2 (its own convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=program_name(), description="Build, check and publish a Mosaic Library.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        qualified = f"{__name__}.{name}"
        try:
            # __import__, not importlib.import_module: only the former shows in -X importtime's
            # report, which is how the cost of --help is checked.
            __import__(qualified)
        except ModuleNotFoundError as exc:
            if exc.name == qualified:
                continue  # command not built yet
            raise
        module = sys.modules[qualified]
        command = module.register(sub)
        command.add_argument("--json", action="store_true",
                             help="print the result as one JSON object instead of text")
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.run(args)
        print(result.render(as_json=args.json))
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
        return result.exit_code
    except MosaicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: work finished so far is saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        # Disk full, permission denied, read-only folders: the user's environment, not a bug.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USAGE
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
            raise  # our SQL is wrong: a bug, keep the traceback
        # "database or disk is full", "disk I/O error", a damaged file: SQLite's view of the same.
        logging.getLogger(__name__).info("sqlite error", exc_info=True)
        damaged = any(word in str(exc) for word in ("malformed", "not a database"))
        hint = ""
        if damaged and getattr(args, "library", None):
            from ..db import recover_hint

            hint = recover_hint(args.library)
        print(f"error: SQLite: {exc}{hint}", file=sys.stderr)
        return EXIT_USAGE
