"""What a tile's fetch can end as: the ledger's statuses (built and parsed here only), a claim
and its prior fault, a fetch result and the status it is recorded with."""

from __future__ import annotations

from typing import NamedTuple

from ..sources import TRANSIENT_KINDS
from ..tiles import TileRef

# --- statuses ---------------------------------------------------------------------------------

CLAIMED = "claimed"
ACCEPTED = "accepted"
NO_TILE = "none"
UNUSED = "unused"
REJECTED = "rejected"  # prefix: rejected:<reason>
FAULT = "fault"  # prefix: fault:<kind>
OUTCOMES = (CLAIMED, ACCEPTED, REJECTED, FAULT, NO_TILE, UNUSED)


def rejected(reason: str) -> str:
    """``rejected:<reason>``, the status of a tile the pipeline refused."""
    return f"{REJECTED}:{reason}"


def fault(kind: str) -> str:
    """``fault:<kind>``, the status of a tile the source gave up on."""
    return f"{FAULT}:{kind}"


class Status(NamedTuple):
    """A parsed status: ``outcome`` (one of :data:`OUTCOMES`) and, for rejections and faults,
    the reason or fault kind."""

    outcome: str
    detail: str = ""


def parse_status(text: str) -> Status:
    """Split a ``fetched.status`` value; raises ValueError for anything this module never writes.

    >>> parse_status("rejected:bucket_full"), parse_status("none")
    (Status(outcome='rejected', detail='bucket_full'), Status(outcome='none', detail=''))
    """
    outcome, sep, detail = text.partition(":")
    if outcome in (REJECTED, FAULT) and sep and detail:
        return Status(outcome, detail)
    if not sep and outcome in (CLAIMED, ACCEPTED, NO_TILE, UNUSED):
        return Status(outcome)
    raise ValueError(f"not a fetched status: {text!r}")


def is_transient(status: str) -> bool:
    """True for ``fault:<kind>`` with a transient kind: asking again later may work."""
    outcome, _, kind = status.partition(":")
    return outcome == FAULT and kind in TRANSIENT_KINDS


# Sorted: a stable SQL parameter list.
TRANSIENT_STATUSES = tuple(sorted(fault(kind) for kind in TRANSIENT_KINDS))

# --- values -----------------------------------------------------------------------------------



class Prior(NamedTuple):
    """The row a retried tile had before it was claimed again: restored if the claim is released."""

    status: str
    tried_at: str | None


class Claim(NamedTuple):
    """A tile a run takes: where it is, and (``--retry-faults``) the fault row it replaces."""

    ref: TileRef
    prior: Prior | None = None


class FetchResult(NamedTuple):
    """One tile's answer: bytes, no tile (``data`` None, ``fault`` None), or a fault kind.

    ``started`` False means no request for it went out, or its attempts were cut short (the
    run stopped, its request budget was spent, the source was found down): the claim is
    released, since the tile was never answered.
    """

    ref: TileRef
    data: bytes | None = None
    fault: str | None = None
    detail: str = ""
    at: str = ""
    started: bool = True


def answer_status(result: FetchResult) -> str | None:
    """The status an answer settles to without the pipeline: ``fault:<kind>`` or ``none``; None
    for image bytes (the pipeline decides) and for results never answered."""
    if not result.started:
        return None
    if result.fault is not None:
        return fault(result.fault)
    return NO_TILE if result.data is None else None


class TransientRow(NamedTuple):
    """A tile recorded with a transient fault (:meth:`FetchLedger.transient`)."""

    x: int
    y: int
    status: str
    region: str | None
    tried_at: str | None
