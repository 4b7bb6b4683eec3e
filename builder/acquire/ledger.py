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
write); :meth:`FetchLedger.recover`, at the start of the next run of that source, reads
them: a claim with no ``R`` record was never asked for and is released; one with an answer
is settled from the log (a no-tile or fault answer at once, image bytes by the next run's
pipeline, so a tile fetched before a kill is stored, not lost); only a claim with an ``R`` and
no answer, a request that was on the wire, stays ``claimed`` for good.  So a kill costs at most
the requests in flight, and no tile is ever asked for twice.  Sources whose fetch costs no
server a request (``source.remote`` False: ``earth``, MBTiles, folders) write no ``R``/``A``
records: their unsettled claims are all released and read again later.  A ``claimed`` row that
no log lists (a library from before these logs, a restored one) is left alone.  The logs are not
fsynced: they survive a killed process, not a power cut.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..core import db
from ..core.errors import LibraryError, UnsafePath
from ..core.layout import INFLIGHT_DIR, MAX_TILE_BYTES
from .sources import TRANSIENT_KINDS
from .tiles import TileKey, TileRef

logger = logging.getLogger(__name__)

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


@dataclass
class Recovery:
    """What :meth:`FetchLedger.recover` found in the in-flight logs of killed runs.

    ``released``: claims never asked for, deleted (or given their fault back); ``settled``:
    no-tile and fault answers recorded from the logs; ``images``: image answers the caller must
    store (then :meth:`FetchLedger.settle` each of ``logs``); ``lost``: requests that were on the
    wire at the kill, left ``claimed``.
    """

    released: int = 0
    settled: int = 0
    lost: int = 0
    images: list[FetchResult] = field(default_factory=list)
    logs: list[BatchLog] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"released": self.released, "settled": self.settled, "replayed": len(self.images), "lost": self.lost}


# --- the in-flight log of one batch -------------------------------------------------------------

LOG_MAGIC = b"MOSAIC-INFLIGHT 1 "
_LOG_NAME = re.compile(r"^(?P<table>[a-z_][a-z0-9_]*)-\d+-\d+\.log$")
# The header lists a batch's claims; a batch of 100,000 tiles is about 8 MB of it.
MAX_HEADER_BYTES = 64 * 2**20
_RECORD_LINE_BYTES = 256
ANSWER_IMAGE = "image"
ANSWER_RELEASED = "released"
_sequence = 0
_sequence_lock = threading.Lock()


def _next_name(table: str) -> str:
    """``<table>-<ns>-<n>.log``: in creation order when sorted, unique for the one writer."""
    global _sequence
    with _sequence_lock:
        _sequence += 1
        return f"{table}-{time.time_ns()}-{_sequence}.log"


class BatchLog:
    """The in-flight log of one batch (see the module doc); thread-safe appends."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd
        self._lock = threading.Lock()

    @classmethod
    def create(cls, folder: Path, table: str, source: str, claims: Sequence[Claim]) -> BatchLog:
        """Write the header (the claims) in one ``os.write`` and keep the file open for records."""
        path = folder / _next_name(table)
        header = {
            "table": table,
            "source": source,
            "claims": [[c.ref.z, c.ref.x, c.ref.y, c.ref.region, c.ref.lon, c.ref.lat,
                        *(c.prior if c.prior else (None, None))] for c in claims],
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        log = cls(path, fd)
        try:
            log._write(LOG_MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n")
        except BaseException:
            log.remove()
            raise
        return log

    def requested(self, ref: TileRef) -> None:
        """Before the tile's first request: from now on a kill leaves it claimed (it may be served)."""
        self._write(b"R %d %d %d\n" % (ref.z, ref.x, ref.y))

    def answered(self, result: FetchResult) -> None:
        """What the source said about the tile (or that it was released after all)."""
        if not result.started:
            status, body = ANSWER_RELEASED, b""
        elif result.fault is not None:
            status, body = fault(result.fault), result.detail.encode("utf-8", "replace")[:1000]
        elif result.data is None:
            status, body = NO_TILE, b""
        else:
            status, body = ANSWER_IMAGE, bytes(result.data)
        ref = result.ref
        head = b"A %d %d %d %d %s %s\n" % (ref.z, ref.x, ref.y, len(body), (result.at or "-").encode(), status.encode())
        self._write(head + body)

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise LibraryError(f"{self.path}: in-flight log already closed")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def remove(self) -> None:
        """Close and delete: the batch is settled (or its claim never committed)."""
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class LogContents(NamedTuple):
    """A parsed in-flight log: its header and the records that were written completely."""

    table: str
    source: str
    claims: dict[TileKey, Claim]
    requested: set[TileKey]
    answers: dict[TileKey, FetchResult]


def read_batch_log(path: Path) -> LogContents | None:
    """Parse an in-flight log; None when its header is incomplete or not one (the claim it
    announces never committed: the header is written before the claim's transaction).

    Records are read until the first incomplete one: a kill can cut a large write short, and
    whatever follows a cut record was never written.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        line = fh.readline(MAX_HEADER_BYTES)
        if not line.startswith(LOG_MAGIC) or not line.endswith(b"\n"):
            return None
        try:
            header = json.loads(line[len(LOG_MAGIC):])
            claims = {}
            for z, x, y, region, lon, lat, prior_status, prior_at in header["claims"]:
                ref = TileRef(int(z), int(x), int(y), region, float(lon), float(lat))
                claims[ref.key] = Claim(ref, Prior(prior_status, prior_at) if prior_status else None)
            table, source = str(header["table"]), str(header["source"])
        except (ValueError, KeyError, TypeError):
            return None
        requested: set[TileKey] = set()
        answers: dict[TileKey, FetchResult] = {}
        while True:
            line = fh.readline(_RECORD_LINE_BYTES)
            if not line.endswith(b"\n"):
                break
            parts = line.split()
            try:
                key = (int(parts[1]), int(parts[2]), int(parts[3]))
                if parts[0] == b"R" and len(parts) == 4:
                    requested.add(key)
                    continue
                if parts[0] != b"A" or len(parts) != 7:
                    break
                length, at, status = int(parts[4]), parts[5].decode(), parts[6].decode()
            except (ValueError, IndexError, UnicodeDecodeError):
                break
            if not 0 <= length <= MAX_TILE_BYTES:
                break
            body = fh.read(length)
            if len(body) != length or key not in claims:
                break
            ref = claims[key].ref
            at = "" if at == "-" else at
            if status == ANSWER_IMAGE:
                answers[key] = FetchResult(ref, body, None, "", at)
            elif status == NO_TILE:
                answers[key] = FetchResult(ref, None, None, "", at)
            elif status == ANSWER_RELEASED:
                answers[key] = FetchResult(ref, started=False)
            elif status.startswith(FAULT + ":"):
                answers[key] = FetchResult(ref, None, status.partition(":")[2], body.decode("utf-8", "replace"), at)
            else:
                break
    return LogContents(table, source, claims, requested, answers)


# --- the ledger -------------------------------------------------------------------------------

LEDGER_COLUMNS = ("source", "z", "x", "y", "status", "region", "tried_at")


class FetchLedger:
    """The books of one source in one ledger table of a library opened for writing.

    ``root``: the library folder (its ``inflight/`` holds the in-flight logs); ``conn``: its
    writer connection; ``stored_in``: a table whose ``(source, z, x, y)`` rows also count as
    known (``tiles`` for harvest: a stored tile is never asked for again, whatever ``fetched``
    says), or None.  Every method runs on the thread that owns ``conn``, except the
    :class:`BatchLog` appends.
    """

    def __init__(self, root: Path, conn: sqlite3.Connection, source: str, *, table: str = "fetched",
                 stored_in: str | None = "tiles") -> None:
        db.check_ledger_table_name(table)
        if stored_in is not None:
            db.check_ledger_table_name(stored_in)
        missing = [c for c in LEDGER_COLUMNS if c not in db.table_columns(conn, table)]
        if missing:
            raise LibraryError(f"{root}: table {table!r} lacks the ledger columns {missing}")
        self.root = Path(root)
        self.conn = conn
        self.source = source
        self.table = table
        self.stored_in = stored_in
        self._priors: dict[TileKey, Prior] = {}  # claimed retries of this session, by key

    # -- what is known -----------------------------------------------------------------------

    def known(self, zoom: int) -> set[TileKey]:
        """Every z/x/y of this source at ``zoom`` with a row (any status), or stored."""
        done = {(zoom, x, y) for x, y in self.conn.execute(
            f"SELECT x, y FROM {self.table} WHERE source = ? AND z = ?", (self.source, zoom))}
        if self.stored_in is not None:
            done.update((zoom, x, y) for x, y in self.conn.execute(
                f"SELECT x, y FROM {self.stored_in} WHERE source = ? AND z = ?", (self.source, zoom)))
        return done

    def transient(self, zoom: int) -> list[TransientRow]:
        """This source's tiles at ``zoom`` recorded with a transient fault, oldest first, without
        the ones stored after all (however their row came to say otherwise)."""
        marks = ", ".join("?" * len(TRANSIENT_STATUSES))
        rows = [TransientRow(*r) for r in self.conn.execute(
            f"SELECT x, y, status, region, tried_at FROM {self.table} WHERE source = ? AND z = ? "
            f"AND status IN ({marks}) ORDER BY rowid", (self.source, zoom, *TRANSIENT_STATUSES))]
        if rows and self.stored_in is not None:
            stored = set(self.conn.execute(
                f"SELECT x, y FROM {self.stored_in} WHERE source = ? AND z = ?", (self.source, zoom)))
            rows = [r for r in rows if (r.x, r.y) not in stored]
        return rows

    def prior(self, key: TileKey) -> Prior | None:
        """The fault row a claimed retry replaced (None for a fresh claim)."""
        return self._priors.get(key)

    # -- a batch's life ------------------------------------------------------------------------

    def inflight_dir(self) -> Path:
        folder = self.root / INFLIGHT_DIR
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise UnsafePath(f"{folder} is a symlink or not a folder: refusing to write through it; "
                             "replace it with an empty folder")
        folder.mkdir(exist_ok=True)
        return folder

    def claim(self, claims: Sequence[Claim], predicted: dict[TileKey, int] | None = None) -> BatchLog:
        """Log the batch, then mark it claimed and commit (new rows; retries: fault rows updated
        in place, guarded by the status they had).  ``predicted``: the bucket the colour atlas
        predicted for some of the tiles (``fetched`` only), written in the same transaction.
        Returns the batch's in-flight log."""
        log = BatchLog.create(self.inflight_dir(), self.table, self.source, claims)
        now = db.utc_now()
        fresh = [c.ref for c in claims if c.prior is None]
        again = [c for c in claims if c.prior is not None]
        try:
            with self.conn:
                self.conn.executemany(
                    f"INSERT INTO {self.table} (source, z, x, y, status, region, tried_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(self.source, r.z, r.x, r.y, CLAIMED, r.region, now) for r in fresh])
                if again:
                    cur = self.conn.executemany(
                        f"UPDATE {self.table} SET status = ?, region = ?, tried_at = ? "
                        "WHERE source = ? AND z = ? AND x = ? AND y = ? AND status = ?",
                        [(CLAIMED, c.ref.region, now, self.source, c.ref.z, c.ref.x, c.ref.y, c.prior.status)
                         for c in again])
                    if cur.rowcount != len(again):
                        raise LibraryError(f"{self.root / 'tiles.db'}: {len(again) - cur.rowcount} of {len(again)} "
                                           "faulted tiles changed status while this run held the lock; not retrying")
                if predicted:
                    self.set_predicted(self.conn, [(c.ref, predicted[c.ref.key]) for c in claims
                                                   if c.ref.key in predicted])
        except BaseException:
            log.remove()
            raise
        self._priors.update((c.ref.key, c.prior) for c in again)
        return log

    def record(self, conn: sqlite3.Connection, rows: Iterable[tuple[TileRef, str, str]]) -> None:
        """Final statuses ``(ref, status, tried_at)``, inside the caller's transaction."""
        rows = list(rows)
        conn.executemany(
            f"UPDATE {self.table} SET status = ?, tried_at = ? WHERE source = ? AND z = ? AND x = ? AND y = ?",
            [(status, at, self.source, r.z, r.x, r.y) for r, status, at in rows])
        for r, _status, _at in rows:
            self._priors.pop(r.key, None)

    def release(self, conn: sqlite3.Connection, refs: Iterable[TileRef]) -> None:
        """Undo claims whose tile was never answered, inside the caller's transaction: the row
        goes, or a retried tile gets back the fault it had (and stays retryable)."""
        fresh, again = [], []
        for r in refs:
            prior = self._priors.pop(r.key, None)
            (again if prior else fresh).append((r, prior))
        conn.executemany(
            f"DELETE FROM {self.table} WHERE source = ? AND z = ? AND x = ? AND y = ? AND status = ?",
            [(self.source, r.z, r.x, r.y, CLAIMED) for r, _ in fresh])
        conn.executemany(
            f"UPDATE {self.table} SET status = ?, tried_at = ? WHERE source = ? AND z = ? AND x = ? AND y = ? "
            "AND status = ?",
            [(p.status, p.tried_at, self.source, r.z, r.x, r.y, CLAIMED) for r, p in again])

    def retract(self, conn: sqlite3.Connection, rows: Iterable[tuple[TileRef, str, Prior | None]]) -> None:
        """Take back statuses recorded by this run, ``(ref, status written, prior row)``, inside the
        caller's transaction: the row goes, or a retried tile gets back the fault it had.  Guarded
        by the status written, so a row changed since is left alone."""
        rows = list(rows)
        conn.executemany(
            f"DELETE FROM {self.table} WHERE source = ? AND z = ? AND x = ? AND y = ? AND status = ?",
            [(self.source, r.z, r.x, r.y, status) for r, status, prior in rows if prior is None])
        conn.executemany(
            f"UPDATE {self.table} SET status = ?, tried_at = ? WHERE source = ? AND z = ? AND x = ? AND y = ? "
            "AND status = ?",
            [(prior.status, prior.tried_at, self.source, r.z, r.x, r.y, status) for r, status, prior in rows if prior])

    def set_predicted(self, conn: sqlite3.Connection, rows: Iterable[tuple[TileRef, int]]) -> None:
        """The bucket the colour atlas predicted for each claimed tile ``(ref, bucket)``, inside the
        caller's transaction (``fetched`` only: the table with the outcome columns)."""
        conn.executemany(
            f"UPDATE {self.table} SET predicted_bucket = ? WHERE source = ? AND z = ? AND x = ? AND y = ?",
            [(int(b), self.source, r.z, r.x, r.y) for r, b in rows])

    def record_outcomes(self, conn: sqlite3.Connection,
                        rows: Iterable[tuple[TileRef, int, tuple[float, float, float]]]) -> None:
        """Where each decoded tile's colour landed ``(ref, bucket, lab)``, inside the caller's
        transaction (``fetched`` only)."""
        conn.executemany(
            f"UPDATE {self.table} SET bucket_id = ?, mean_l = ?, mean_a = ?, mean_b = ? "
            "WHERE source = ? AND z = ? AND x = ? AND y = ?",
            [(int(b), float(lab[0]), float(lab[1]), float(lab[2]), self.source, r.z, r.x, r.y) for r, b, lab in rows])

    def settle(self, log: BatchLog) -> None:
        """The batch's outcome is committed: its in-flight log goes."""
        log.remove()

    # -- after a crash -----------------------------------------------------------------------

    def recover_inflight(self) -> Recovery:
        """Resolve the in-flight logs a killed run of this source left (see the module doc).

        Run it before :meth:`known`.  Claims never asked for are released and no-tile or fault
        answers recorded, in one transaction; image answers come back in ``images`` (their
        claims registered here, so :meth:`record` and :meth:`release` treat them as this run's),
        to be stored by the caller, who then settles ``logs``.  Logs of other sources are left
        for a run of theirs.
        """
        found = Recovery()
        folder = self.root / INFLIGHT_DIR
        if not folder.is_dir() or folder.is_symlink():
            return found
        releases: list[TileRef] = []
        settled: list[tuple[TileRef, str, str]] = []
        done: list[Path] = []
        for path in sorted(folder.iterdir()):
            match = _LOG_NAME.match(path.name)
            if match is None or match["table"] != self.table or path.is_symlink() or not path.is_file():
                continue
            contents = read_batch_log(path)
            if contents is None:
                done.append(path)  # a header cut short: its claim never committed
                continue
            if contents.table != self.table or contents.source != self.source:
                continue
            still = self._still_claimed(contents.claims)
            images = []
            for key in still:
                claim = contents.claims[key]
                answer = contents.answers.get(key)
                if claim.prior is not None:
                    self._priors[key] = claim.prior
                if answer is None and key in contents.requested:
                    found.lost += 1
                elif answer is None or not answer.started:
                    releases.append(claim.ref)
                elif (status := answer_status(answer)) is not None:
                    settled.append((claim.ref, status, answer.at))
                else:
                    images.append(answer)
            if images:
                found.images.extend(images)
                found.logs.append(BatchLog(path, None))
            else:
                done.append(path)
        if releases or settled:
            with self.conn:
                self.release(self.conn, releases)
                self.record(self.conn, settled)
        for path in done:
            path.unlink(missing_ok=True)
        found.released, found.settled = len(releases), len(settled)
        if releases or settled or found.lost or found.images:
            logger.info("recovered the in-flight logs of %s: %s", self.source, found.as_dict())
        return found

    def _still_claimed(self, claims: dict[TileKey, Claim]) -> list[TileKey]:
        """The keys among ``claims`` whose row still says ``claimed`` (the rest were settled)."""
        out = []
        for key in claims:
            row = self.conn.execute(
                f"SELECT status FROM {self.table} WHERE source = ? AND z = ? AND x = ? AND y = ?",
                (self.source, *key)).fetchone()
            if row is not None and row[0] == CLAIMED:
                out.append(key)
        return out
