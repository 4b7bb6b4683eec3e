"""The fetch ledger: which tiles of a source were claimed, asked for, answered and settled.

The ``fetched`` table (its DDL is in :mod:`builder.core.db`) holds one row per ``(source, z, x, y)``
that a harvest has tried, so that no tile is ever asked for twice, across runs and crashes.
A :class:`FetchLedger` is the only code that reads or writes it; another table with the same
columns (``source, z, x, y, status, region, tried_at``, key ``(source, z, x, y)``) can keep
the same books for another purpose (``FetchLedger(..., table=...)``).

Statuses (built and parsed here only, see :func:`parse_status`):

=====================  ======================================================================
``claimed``            a run took the tile; it may have been asked for; its outcome is not
                       stored (a run in progress, or a request that was on the wire at a kill)
``accepted``           stored in ``tiles``
``rejected:<reason>``  fetched and refused by the pipeline (``rejected:blank``,
                       ``rejected:bucket_full``, ``rejected:duplicate``, ...)
``fault:<kind>``       the source gave up (``fault:http_503``, ``fault:timeout``,
                       ``fault:bad_size``, ...); *transient* kinds
                       (:data:`~builder.acquire.sources.TRANSIENT_KINDS`) may be asked again
                       (:meth:`FetchLedger.transient`, ``harvest --retry-faults``)
``none``               no tile there (404, a known placeholder)
``unused``             fetched after the run's tile target was met; never stored
=====================  ======================================================================

One batch's life (the fetch engine and harvest do the steps in this order):

1. :meth:`~FetchLedger.claim` writes the batch's **in-flight log** (below), then inserts its
   rows as ``claimed`` (a ``--retry-faults`` tile: its fault row goes back to ``claimed``)
   and commits;
2. a fetch thread calls :meth:`BatchLog.requested` before a tile's first request, and
   :meth:`BatchLog.answered` with what the source said (bytes, no tile, or the fault);
3. :meth:`~FetchLedger.record` (final statuses) and :meth:`~FetchLedger.release` (claims whose
   request never went out: the row is deleted, or a retried tile gets its fault back) run in
   the transaction that stores the batch's tiles (the pipeline's ``on_commit``);
4. :meth:`~FetchLedger.settle` deletes the in-flight log.

**In-flight logs** (``<library>/inflight/<table>-<time>-<n>.log``, not in ``temp/``, which every
writer empties when it opens the library): one append-only file per batch not yet settled.
The first line names the table and source and lists the batch's claims (with the fault row a
retried tile had); then one record per event, each a single ``os.write``::

    R z x y\\n                        the tile's first request is about to go out
    A z x y length at status\\n<body>   its answer: status "image" (body = the bytes), "none",
                                     "fault:<kind>" (body = the detail), or "released"

A process killed with SIGKILL leaves them as they were (the kernel has every completed
write); :meth:`FetchLedger.recover_inflight`, at the start of the next run of that source, reads
them: a claim with no ``R`` record was never asked for and is released; one with an answer
is settled from the log (a no-tile or fault answer at once, image bytes by the next run's
pipeline, so a tile fetched before a kill is stored, not lost); only a claim with an ``R`` and
no answer, a request that was on the wire, stays ``claimed`` for good.  So a kill costs at most
the requests in flight, and no tile is ever asked for twice.  Sources whose fetch costs no
server a request (``source.remote`` False: ``earth``, MBTiles, folders) write no ``R``/``A``
records: their unsettled claims are all released and read again later.  A ``claimed`` row that
no log lists (a library from before these logs, a restored one) is left alone.  The logs are not
fsynced: they survive a killed process, not a power cut.

The package: ``records`` (statuses, claims, results), ``inflight`` (the log format),
``table`` (:class:`FetchLedger`, :class:`Recovery`); this module re-exports their names.
"""

from __future__ import annotations

from .inflight import ANSWER_IMAGE, ANSWER_RELEASED, LOG_MAGIC, BatchLog, LogContents, read_batch_log
from .records import (
    ACCEPTED,
    CLAIMED,
    FAULT,
    NO_TILE,
    OUTCOMES,
    REJECTED,
    TRANSIENT_STATUSES,
    UNUSED,
    Claim,
    FetchResult,
    Prior,
    Status,
    TransientRow,
    answer_status,
    fault,
    is_transient,
    parse_status,
    rejected,
)
from .table import LEDGER_COLUMNS, FetchLedger, Recovery

__all__ = [
    "ACCEPTED", "ANSWER_IMAGE", "ANSWER_RELEASED", "CLAIMED", "FAULT", "LEDGER_COLUMNS", "LOG_MAGIC", "NO_TILE",
    "OUTCOMES", "REJECTED", "TRANSIENT_STATUSES", "UNUSED", "BatchLog", "Claim", "FetchLedger", "FetchResult",
    "LogContents", "Prior", "Recovery", "Status", "TransientRow", "answer_status", "fault", "is_transient",
    "parse_status", "read_batch_log", "rejected",
]
