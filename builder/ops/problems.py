"""What ``verify`` finds and what ``repair`` did: :class:`Problem` (one finding, by kind; the
kinds are listed in :mod:`builder.ops.verify`) and :class:`VerifyReport`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from ..core import quarantine
from ..core.summary import format_counts, plural

SHOWN_QUARANTINE = 1000  # quarantine entries kept in the report (all are counted)


class Problem(NamedTuple):
    kind: str
    tile_id: str | None
    bucket_id: int | None
    detail: str = ""


@dataclass
class VerifyReport:
    rows: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: Counter = field(default_factory=Counter)
    adopted: int = 0  # files without a row given their row back by repair (ids kept)
    quarantined: Counter = field(default_factory=Counter)  # entries repair moved to quarantine/, by reason
    quarantine: list[quarantine.Item] = field(default_factory=list)  # what quarantine/ holds now
    thumbnails_checked: int = 0

    @property
    def counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        found = format_counts(self.counts) or "no problems"
        line = f"checked {plural(self.rows, 'row')} and {plural(self.files, 'file')}: {found}"
        if self.repaired:
            line += "; repaired: " + format_counts(self.repaired)
        if self.adopted:
            line += f"; adopted {plural(self.adopted, 'file')} without a row"
        if self.quarantined:
            line += "; moved to quarantine/: " + format_counts(self.quarantined)
        if self.quarantine:
            line += f"; quarantine/ holds {quarantine.summary(self.quarantine)}"
        return line

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "files": self.files,
            "problems": dict(self.counts),
            "repaired": dict(self.repaired),
            "adopted": self.adopted,
            "quarantined": dict(self.quarantined),
            "quarantine": [item._asdict() for item in self.quarantine[:SHOWN_QUARANTINE]],
            "quarantine_entries": len(self.quarantine),
            "thumbnails_checked": self.thumbnails_checked,
            "details": [p._asdict() for p in self.problems[:1000]],
        }
