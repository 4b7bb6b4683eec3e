"""The report protocol between a command and :func:`builder.cli.main`.

Every command's ``run(args)`` returns a :class:`CommandResult`; ``main`` prints it, as text or,
with ``--json``, as one JSON object, and exits with its ``exit_code``.  So ``--json`` works the
same way for every command; a command prints no result itself (only progress: bars, the demo's steps).

A result wraps the library's own report (``IngestReport``, ``VerifyReport``, ``BuildReport``...),
anything with ``summary() -> str`` (the one-line summary).  Its JSON is the report's
``as_dict()`` when it has one, else its fields (a NamedTuple or a dataclass) made JSON-safe by
:func:`jsonable`.

Exit codes are the ``EXIT_*`` constants below (the README's "Exit codes" paragraph).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any, Protocol

EXIT_OK = 0
EXIT_PROBLEMS = 1  # ran, and found problems: verify's findings, ingest's unusable inputs
EXIT_USAGE = 2  # bad input or a refused operation: one line on stderr
EXIT_SOURCE_DOWN = 3  # harvest/atlas: the tile source cannot be reached or fails every request
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it); work finished so far is kept
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (`| head`): 128 + SIGPIPE, quietly, as other tools


class Summarised(Protocol):
    def summary(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """What a command did, for ``main`` to print.

    - ``report``: the library's report (has ``summary()``; ``as_dict()`` or plain fields);
    - ``exit_code``: see the module doc;
    - ``prefix``: put before the summary line (``"verify: "``);
    - ``before`` / ``after``: further human-readable lines around the summary (a build that
      ``push`` ran first, ``verify``'s list of problems, ``query``'s tiles); ``--json`` leaves
      them out, since the JSON holds the same facts;
    - ``extra``: keys added to the JSON object (``verify --repair``'s ``after_repair``);
    - ``error``: one line for stderr in both modes, after ``error: `` (``ingest``'s unusable
      inputs, with exit status 1).
    """

    report: Summarised
    exit_code: int = EXIT_OK
    prefix: str = ""
    before: Sequence[str] = ()
    after: Sequence[str] = ()
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None

    def summary(self) -> str:
        """The one-line summary."""
        return self.prefix + self.report.summary()

    def as_dict(self) -> dict:
        """The whole result, JSON-safe."""
        data = jsonable(self.report)
        if not isinstance(data, dict):
            raise TypeError(f"{type(self.report).__name__} does not give a JSON object")
        return {**data, **jsonable(dict(self.extra))}

    def text(self) -> list[str]:
        """What a person reads: the summary line with the lines around it."""
        return [*self.before, self.summary(), *self.after]

    def render(self, as_json: bool) -> str:
        return json.dumps(self.as_dict(), indent=2) if as_json else "\n".join(self.text())


def jsonable(value: Any) -> Any:
    """``value`` as JSON types: ``as_dict()`` when it has one, NamedTuple and dataclass fields,
    paths as strings, mappings with string keys, sequences as lists, NumPy scalars as numbers.

    Anything else (a NumPy array, an image) raises TypeError: a report must say what it means
    rather than dump its internals.

    >>> from pathlib import Path
    >>> from typing import NamedTuple
    >>> class Built(NamedTuple):
    ...     output: Path
    ...     rows: int
    >>> jsonable(Built(Path("staging"), 3))
    {'output': 'staging', 'rows': 3}
    """
    if hasattr(value, "as_dict"):
        return jsonable(value.as_dict())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {name: jsonable(item) for name, item in zip(value._fields, value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # a NumPy scalar
        return value.item()
    raise TypeError(f"cannot report a {type(value).__name__} as JSON")
