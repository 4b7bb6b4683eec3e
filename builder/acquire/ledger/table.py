"""The ledger table's books: :class:`FetchLedger` (claim, record, release, settle, what is known,
the retryable faults) and :class:`Recovery`, what it found in a killed run's in-flight logs."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...core import db
from ...core.errors import LibraryError, UnsafePath
from ...core.layout import INFLIGHT_DIR
from ..tiles import TileKey, TileRef
from .inflight import LOG_NAME, BatchLog, read_batch_log
from .records import CLAIMED, TRANSIENT_STATUSES, Claim, FetchResult, Prior, TransientRow, answer_status

logger = logging.getLogger(__name__)


@dataclass
class Recovery:
    """What :meth:`FetchLedger.recover_inflight` found in the in-flight logs of killed runs.

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
            match = LOG_NAME.match(path.name)
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
