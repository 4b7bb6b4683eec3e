"""The in-flight log of one batch (``<library>/inflight/<table>-<time>-<n>.log``): its file
format, how a fetch thread appends to it, and how the next run reads what a killed one left."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ...core.errors import LibraryError
from ...core.layout import MAX_TILE_BYTES
from ..tiles import TileKey, TileRef
from .records import FAULT, NO_TILE, Claim, FetchResult, Prior, fault

# --- the in-flight log of one batch -------------------------------------------------------------

LOG_MAGIC = b"MOSAIC-INFLIGHT 1 "
LOG_NAME = re.compile(r"^(?P<table>[a-z_][a-z0-9_]*)-\d+-\d+\.log$")
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
