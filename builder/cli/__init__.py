"""``python -m builder COMMAND`` (or ``mosaic-library COMMAND``): a thin argparse layer over the library API.

Each command lives in its own module under ``builder.cli`` with two functions:

- ``register(subparsers)`` adds its parser and returns it;
- ``run(args)`` does the work through the library API and returns a
  :class:`~builder.cli.result.CommandResult`, which :func:`main` prints (``--json``, added here
  to every command, selects JSON) and whose exit code it returns.

Command modules import the heavy modules (NumPy, SciPy, Pillow, ``datasets``...) inside
``run()``, and take the defaults they show in ``--help`` from :mod:`builder.core.layout` and
:mod:`builder.core.defaults`, so ``--help`` and argument errors cost no more than argparse.

Errors the user can cause are :class:`~builder.core.errors.MosaicError`: printed on one line, exit
status 2, no traceback.  Every line printed (results, errors, log warnings) goes through
:func:`builder.core.summary.printable`, so a file name holding a newline or a terminal escape prints
as one escaped line.  A bare ``python -m builder`` prints the command list; a mistyped command
gets the closest one; a reader that stops reading (``query ... | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sqlite3
import sys

from .. import __version__
from ..core.errors import MosaicError
from ..core.summary import printable
from .result import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE

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
        self.exit(EXIT_USAGE, f"error: {printable(self.prog)}: {printable(message)}\n")


class _EscapingFormatter(logging.Formatter):
    """Log messages as one escaped line each: a warning quoting a file name cannot forge a line
    (a traceback that ``-v`` adds below it keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return printable(super().formatMessage(record))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=program_name(), description="Build, check and publish a Mosaic Library.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        qualified = f"{__name__}.{name}"
        # __import__, not importlib.import_module: only the former shows in -X importtime's
        # report, which is how the cost of --help is checked.  A missing module is an error.
        __import__(qualified)
        module = sys.modules[qualified]
        command = module.register(sub)
        command.add_argument("--json", action="store_true",
                             help="print the result as one JSON object instead of text")
        command.set_defaults(run=module.run)
    return parser


def say(line: str, file=None) -> None:
    """Print one line, escaped (:func:`~builder.core.summary.printable`): whatever names it quotes, it
    stays one line."""
    print(printable(line), file=file or sys.stdout, flush=file is sys.stderr)


def unknown_command(argv: list[str]) -> str | None:
    """The one-line error for a command name that is not one (the closest command suggested), or None.

    The command is the first argument that is not an option (the global options take no value).

    >>> unknown_command(["stat", "--json"])
    "invalid choice: 'stat' is not a command; did you mean `stats`?"
    >>> unknown_command(["-v", "query"]) is None
    True
    """
    name = next((arg for arg in argv if not arg.startswith("-")), None)
    if name is None or name in COMMANDS:
        return None
    close = difflib.get_close_matches(name, COMMANDS, n=1, cutoff=0.5)
    hint = f"did you mean `{close[0]}`?" if close else f"the commands are {', '.join(COMMANDS)}"
    return f"invalid choice: {name!r} is not a command; {hint}"


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (``... | head``): stop without a word, as a tool killed
    by SIGPIPE would; stdout is pointed at /dev/null so the interpreter's final flush is quiet too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not [arg for arg in argv if arg not in ("-v", "--verbose")]:
        parser.print_help()  # a bare call: what can I do here?
        return 0
    if "-h" not in argv and "--help" not in argv and "--version" not in argv and (problem := unknown_command(argv)):
        parser.error(problem)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    try:
        try:
            result = args.run(args)
            if args.json:  # json.dumps escapes every control character itself
                print(result.render(as_json=True))
            else:
                for line in result.text():
                    say(line)
            sys.stdout.flush()
            if result.error:
                say(f"error: {result.error}", file=sys.stderr)
            return result.exit_code
        except BrokenPipeError:
            return _quiet_broken_pipe()
        except MosaicError as exc:
            say(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            say("interrupted: work finished so far is saved", file=sys.stderr)
            return EXIT_INTERRUPTED
        except OSError as exc:
            # Disk full, permission denied, read-only folders: the user's environment, not a bug.
            where = f": {exc.filename}" if exc.filename else ""
            say(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
            return EXIT_USAGE
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
                raise  # our SQL is wrong: a bug, keep the traceback
            # "database or disk is full", "disk I/O error", a damaged file: SQLite's view of the same.
            logging.getLogger(__name__).info("sqlite error", exc_info=True)
            damaged = any(word in str(exc) for word in ("malformed", "not a database"))
            hint = ""
            if damaged and getattr(args, "library", None):
                from ..core.db import recover_hint

                hint = recover_hint(args.library)
            say(f"error: SQLite: {exc}{hint}", file=sys.stderr)
            return EXIT_USAGE
    except BrokenPipeError:  # the error line itself met the closed pipe (stderr piped too)
        return _quiet_broken_pipe()
