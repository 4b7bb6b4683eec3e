"""``ingest PATH...``: local image files and folders through the assignment pipeline.

From a notebook::

    from builder.ops.ingest import ingest
    from builder.core.library import Library

    with Library.open("mosaic_library") as lib:
        report = ingest(lib, ["tiles/"])      # IngestReport: accepted, rejected by reason
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from ..assign.pipeline import POOL_THRESHOLD, Candidate, Pipeline, check_radius, chunked
from ..core.defaults import DEFAULT_NEAR_DUPLICATE_RADIUS
from ..core.errors import UsageError
from ..core.library import Library
from ..core.summary import format_counts, plural

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
BATCH = 256


class Rejection(NamedTuple):
    """One input that did not become a tile: its name, the reason tag and the detail."""

    path: str
    reason: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.reason}: {self.path}" + (f" ({self.detail})" if self.detail else "")


# Rejections that are the library's choice (the input is a usable image), not a fault of the input.
LIBRARY_REASONS = frozenset({"duplicate", "bucket_full"})


@dataclass
class IngestReport:
    """What an ingest did: accepted count, rejections by reason, and every rejected input."""

    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason -> first input name rejected for it
    seconds: float = 0.0
    evicted: int = 0  # synthetic tiles that gave way to accepted (real) ones
    rejections: list[Rejection] = field(default_factory=list)  # every rejected input, in input order

    @property
    def total(self) -> int:
        return self.accepted + sum(self.rejected.values())

    def summary(self) -> str:
        reasons = format_counts(self.rejected) or "none"
        rate = f", {self.total / self.seconds:.0f} tiles/s" if self.seconds > 0 else ""
        evicted = f", {plural(self.evicted, 'synthetic tile')} gave way" if self.evicted else ""
        return f"{self.accepted} accepted, {sum(self.rejected.values())} rejected ({reasons}){evicted}{rate}"

    def rejection_lines(self, shown: int) -> list[str]:
        """The first ``shown`` rejected inputs, one line each (unusable ones before the library's
        duplicates and full buckets), and how many more there are."""
        ordered = sorted(self.rejections, key=lambda r: r.reason in LIBRARY_REASONS)  # stable: input order kept
        lines = [f"  rejected {r.line()}" for r in ordered[:shown]]
        if len(ordered) > shown:
            lines.append(f"  ... and {len(ordered) - shown} more rejected (--json lists every one)")
        return lines

    def as_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "examples": self.examples,
            "rejected_files": [r._asdict() for r in self.rejections],
            "evicted": self.evicted,
            "seconds": round(self.seconds, 3),
        }


def iter_image_files(paths: Iterable[str | os.PathLike], skip: Path | None = None) -> Iterator[Path]:
    """Files named on the command line as given, and image files found under folders (sorted).

    ``skip`` is the library itself: ingesting a library into itself is refused silently
    per file rather than re-adding its own tiles.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                here = Path(dirpath)
                if skip is not None and (here == skip or skip in here.parents):
                    dirnames[:] = []
                    continue
                for name in sorted(filenames):
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        yield here / name
        elif path.exists():
            yield path
        else:
            raise UsageError(f"no such file or folder: {raw}")


def ingest(lib: Library, paths: Iterable[str | os.PathLike], workers: int | None = None,
           progress: bool | None = None, batch: int = BATCH,
           near_duplicate_radius: int = DEFAULT_NEAR_DUPLICATE_RADIUS, crop: bool = False) -> IngestReport:
    """Run every image under ``paths`` through the assignment pipeline into ``lib`` (opened for writing).

    ``workers``: decode processes (default: CPU count; one for a handful of files);
    ``progress``: a tqdm bar (default: when stderr is a terminal).  Returns counts of accepted
    and rejected tiles, every rejected input with its reason, and the first input rejected for
    each reason.  ``near_duplicate_radius``: pHash bits within which two tiles of a bucket are
    duplicates (:class:`~builder.assign.pipeline.Pipeline`).  ``crop``: a non-square image gives its centre
    square instead of being rejected as ``not_square``.
    """
    check_radius(near_duplicate_radius)
    lib.require_writer("ingest")
    paths = list(paths)
    if not paths:
        raise UsageError("ingest needs at least one file or folder")
    files = list(iter_image_files(paths, skip=lib.root.resolve()))
    report = IngestReport()
    started = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    provenance = {"source": "ingest"}
    if len(files) < 2 * POOL_THRESHOLD:
        workers = 1  # a pool costs more than it saves on a handful of files
    chunks = chunked(files, batch)
    with Pipeline(lib, workers=workers, default_provenance=provenance, near_duplicate_radius=near_duplicate_radius) as pipe, tqdm(
        total=len(files), unit="tile", disable=not show, desc="ingest"
    ) as bar, closing(  # the workers analyse the next batch while this one is stored
        pipe.process_stream([Candidate(name=str(p), path=str(p), crop=crop) for p in chunk] for chunk in chunks)
    ) as stream:
        for chunk, outcomes in zip(chunks, stream):
            for out in outcomes:
                if out.accepted:
                    report.accepted += 1
                    report.evicted += len(out.evicted)
                else:
                    report.rejected[out.reason] += 1
                    report.rejections.append(Rejection(out.name, out.reason, out.detail))
                    report.examples.setdefault(out.reason, f"{out.name}" + (f" ({out.detail})" if out.detail else ""))
                    logger.info("rejected %s: %s %s", out.name, out.reason, out.detail)
            bar.update(len(chunk))
            bar.set_postfix(accepted=report.accepted, rejected=sum(report.rejected.values()))
    report.seconds = time.perf_counter() - started
    return report
