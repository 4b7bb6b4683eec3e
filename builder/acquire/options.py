"""What a fetch run (``harvest``, ``atlas``) is asked to do: one frozen dataclass per command,
validated once, when it is made.

:class:`FetchOptions` holds what both share, :class:`HarvestOptions` and :class:`AtlasOptions`
add their own.  Each field carries its command-line form in its metadata (:func:`option`: the
flag, help, metavar, choices), so ``python -m builder harvest --help`` and the parser are
derived from the fields (``builder.cli.options.add_options``) and nothing lists them twice.
A bad value raises a one-line :class:`~builder.core.errors.UsageError` naming the option and the
value, with one wording for the CLI and notebooks; ``dataclasses.replace`` re-runs the checks, so
a derived copy is valid too.  Standard library only: ``--help`` reads this module.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

from ..core.defaults import (
    DEFAULT_BATCH,
    DEFAULT_NEAR_DUPLICATE_RADIUS,
    DEFAULT_PATIENCE,
    DEFAULT_SOURCE,
    DEFAULT_THREADS,
    SPEC_FORMS,
    TARGETS,
)
from ..core.errors import UsageError
from ..core.layout import ATLAS_SAMPLE_PER_BUCKET, ATLAS_ZOOM_SPAN, DEFAULT_ZOOM, MAX_ZOOM, MIN_ZOOM

PHASES = ("1", "2", "all")  # --phase: the card's sampling phases (builder.core.plans.resolve_plan)
# --near-duplicate-radius, in every command that has it (ingest, harvest, synthesize).
NEAR_DUPLICATE_HELP = ("tiles of a bucket whose 64-bit pHashes differ in at most R bits are duplicates "
                       f"(default: {DEFAULT_NEAR_DUPLICATE_RADIUS}, identical hashes only; flat, low-contrast "
                       "tiles are held to identical hashes whatever R)")


def option(default: Any, flag: str, help: str, *, metavar: str | tuple[str, ...] | None = None,  # noqa: A002
           choices: tuple[str, ...] | None = None, minimum: int | None = None, group: str | None = None,
           cli: bool = True) -> Any:
    """A dataclass field with its command-line form: ``flag``, ``help``, ``metavar``, ``choices``;
    ``minimum`` is a bound argparse checks itself (``--workers``, as every command's); fields of
    one ``group`` are mutually exclusive on the command line; ``cli=False`` keeps a field off it."""
    meta = {"flag": flag, "help": help, "metavar": metavar, "choices": choices, "minimum": minimum,
            "group": group, "cli": cli}
    return field(default=default, metadata=meta)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # NumPy's integers too


def check_zoom(zoom: object) -> None:
    if not _is_int(zoom) or not MIN_ZOOM <= zoom <= MAX_ZOOM:  # type: ignore[operator]
        raise UsageError(f"--zoom {zoom!r} is out of range: zoom must be an integer from {MIN_ZOOM} to {MAX_ZOOM}")


def check_at_least_one(flag: str, value: object, *, optional: bool = False) -> None:
    """An integer >= 1 (or None when ``optional``: no limit)."""
    if optional and value is None:
        return
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        tail = " (or left out for no limit)" if optional else ""
        raise UsageError(f"{flag} must be an integer >= 1{tail}, got {value!r}")


def check_rate(rate: object) -> None:
    if rate is None:
        return
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0 or rate == float("inf"):
        raise UsageError(f"--rate must be a number of requests per second > 0, got {rate!r}")


def default_atlas_zoom(zoom: int) -> int:
    """``zoom - 8`` (one overview pixel per tile), or 0 below zoom 8."""
    return max(MIN_ZOOM, zoom - ATLAS_ZOOM_SPAN)


@dataclass(frozen=True)
class FetchOptions:
    """What harvest and the atlas share: the source, the zoom, the threads, the batch size and
    the politeness limits."""

    source: str = option(DEFAULT_SOURCE, "--source", f"tile source: {SPEC_FORMS} (default: {DEFAULT_SOURCE})",
                         metavar="SPEC")
    zoom: int = option(DEFAULT_ZOOM, "--zoom", f"tile zoom {MIN_ZOOM}..{MAX_ZOOM} (default: {DEFAULT_ZOOM})")
    threads: int = option(DEFAULT_THREADS, "--threads", f"fetch threads (default: {DEFAULT_THREADS})", metavar="N")
    batch: int = option(DEFAULT_BATCH, "--batch", f"tiles per batch (default: {DEFAULT_BATCH})")
    max_requests: int | None = option(
        None, "--max-requests", "make at most N requests (every HTTP attempt counts, retries included; a tile "
        "whose retries the cap cut short is left for a later run)", metavar="N")
    rate: float | None = option(None, "--rate", "HTTP requests per second at most", metavar="R")

    def __post_init__(self) -> None:
        check_zoom(self.zoom)
        check_at_least_one("--threads", self.threads)
        check_at_least_one("--batch", self.batch)
        check_at_least_one("--max-requests", self.max_requests, optional=True)
        check_rate(self.rate)

    @property
    def source_options(self) -> dict:
        """What ``open_source`` takes besides the spec."""
        return {"rate": self.rate} if self.rate else {}


@dataclass(frozen=True)
class HarvestOptions(FetchOptions):
    """``harvest``'s options (see :func:`builder.acquire.harvest.harvest`)."""

    phase: str | None = option(None, "--phase", "the card's sampling phase (default: 1)", choices=PHASES)
    plan: str | None = option(None, "--plan", "a sampling plan JSON file instead of --phase", metavar="FILE")
    workers: int | None = option(None, "--workers", "worker processes (default: one per CPU)", metavar="N",
                                 minimum=1)
    max_tiles: int | None = option(None, "--max-tiles", "stop after this run has accepted N tiles", metavar="N")
    patience: int = option(DEFAULT_PATIENCE, "--patience",
                           f"stop after N batches in a row with nothing accepted (default: {DEFAULT_PATIENCE})",
                           metavar="N")
    retry_faults: bool = option(
        False, "--retry-faults", "ask again for the tiles earlier runs gave up on after a transient fault (429, "
        "5xx, timeout, reset, truncated, empty or non-image body), before sampling new ones; tiles that were, or may "
        "have been, served are still never asked again")
    target: str | None = option(
        None, "--target", "draw tiles from the library's colour atlas of this source and zoom (see `atlas`) instead "
        "of a plan, weighted by how many tiles each bucket still needs: 'empty' aims at buckets with no tile, "
        "'underfilled' at buckets below the cap; never a tile already tried", choices=TARGETS)
    seed: int | None = option(None, "--seed", "sampling seed (default: random, shown in --json)")
    near_duplicate_radius: int = option(DEFAULT_NEAR_DUPLICATE_RADIUS, "--near-duplicate-radius",
                                        NEAR_DUPLICATE_HELP, metavar="R")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least_one("--max-tiles", self.max_tiles, optional=True)
        check_at_least_one("--patience", self.patience)
        if self.plan is not None and self.phase is not None:
            raise UsageError(f"give --phase {self.phase} or --plan {self.plan}, not both")
        if self.target is not None:
            if self.target not in TARGETS:
                raise UsageError(f"--target {self.target!r}: use one of {', '.join(TARGETS)}")
            if self.plan is not None or self.phase is not None:
                raise UsageError(f"--target {self.target} draws its tiles from the atlas: give it without --phase "
                                 "or --plan")

    @property
    def plan_spec(self) -> str | None:
        """The plan file or the phase (None: phase 1), for :func:`builder.core.plans.resolve_plan`."""
        return self.plan if self.plan is not None else self.phase


@dataclass(frozen=True)
class AtlasOptions(FetchOptions):
    """``atlas``'s options (see :func:`builder.acquire.atlas.build_atlas`); one area at most of
    ``phase``, ``plan``, ``bbox``, ``world`` (the default)."""

    zoom: int = option(DEFAULT_ZOOM, "--zoom",
                       f"the harvest zoom the atlas predicts, {MIN_ZOOM}..{MAX_ZOOM} (default: {DEFAULT_ZOOM})")
    max_requests: int | None = option(
        None, "--max-requests", "make at most N requests (every HTTP attempt counts, retries included)", metavar="N")
    atlas_zoom: int | None = option(
        None, "--atlas-zoom", f"overview zoom read, from zoom - {ATLAS_ZOOM_SPAN} (the default; 0 below zoom "
        f"{ATLAS_ZOOM_SPAN}) to zoom; finer means 2**(N - zoom + 8) pixels a side per tile", metavar="N")
    phase: str | None = option(None, "--phase", "the card's sampling phase's boxes", choices=PHASES, group="area")
    plan: str | None = option(None, "--plan", "a sampling plan JSON file's boxes", metavar="FILE", group="area")
    bbox: tuple[float, float, float, float] | None = option(None, "--bbox", "one lon/lat box",
                                                            metavar=("W", "S", "E", "N"), group="area")
    world: bool = option(False, "--world", "the whole world (the default)", group="area")
    rebuild: bool = option(False, "--rebuild", "drop this source and zoom's atlas first and make it again")
    seed: int = option(0, "--seed", "", cli=False)
    sample_size: int = option(ATLAS_SAMPLE_PER_BUCKET, "--sample-size", "", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        low = default_atlas_zoom(self.zoom)
        if self.atlas_zoom is not None and (not _is_int(self.atlas_zoom) or not low <= self.atlas_zoom <= self.zoom):
            raise UsageError(f"--atlas-zoom {self.atlas_zoom!r} must be an integer from {low} (zoom - 8, at least 0) "
                             f"to the harvest zoom {self.zoom}")
        given = [flag for flag, value in (("--phase", self.phase), ("--plan", self.plan), ("--bbox", self.bbox),
                                          ("--world", self.world or None)) if value is not None]
        if len(given) > 1:
            raise UsageError(f"give one area at most, not {' and '.join(given)}")

    @property
    def overview_zoom(self) -> int:
        """The overview zoom read: ``atlas_zoom``, or zoom - 8 (at least 0)."""
        return default_atlas_zoom(self.zoom) if self.atlas_zoom is None else self.atlas_zoom
