"""The card's six-step assignment pipeline, batched and spread over a process pool.

Per tile, in the order that makes a rejected tile cheapest:

1. read and decode once (:func:`builder.core.decode.decode_tile`: size, format and dimension
   checks before the full decode);
2. optional ``prefilter`` on the pixels (harvest uses it to drop blank/nodata tiles);
3. 64x64 resize (Pillow's default filter, as the card), mean RGB, LAB, nearest centroid;
4. bucket full?  (indexed ``COUNT(*)`` against the committed library) -> ``bucket_full``;
5. pHash, then a duplicate in the same bucket? -> ``duplicate``;
6. write ``temp/<uuid4>.png``: the source bytes when they already are a 256x256 RGB PNG,
   else a PNG encoded from the decoded pixels.

Steps 1-6 run in worker processes (decode-bound work scales with cores).  The parent then
judges every verdict again against the batch itself (workers only see committed rows; the rules
are :mod:`builder.assign.admission`, synthetic tiles giving way to real ones) and hands the accepted
tiles to the commit protocol (:mod:`builder.core.store`: journal, rename, insert, undo on failure),
which also owns staging (step 6's write) and crash replay.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..core import db, store
from ..core.color import CentroidIndex, rgb_to_lab
from ..core.decode import DecodedTile, decode_tile, encode_png, is_plain_png
from ..core.defaults import DEFAULT_NEAR_DUPLICATE_RADIUS
from ..core.errors import ImageRejected, LibraryError, UsageError
from ..core.layout import DB_NAME, MAX_INPUT_BYTES, TEMP_DIR, THUMB_SIZE, TILE_SIZE
from ..core.library import Library
from ..core.thumbcache import ThumbnailCache
from .admission import BucketState, Rules, admit, is_flat, record
from .phash import MAX_RADIUS, MIN_HASH_CONTRAST, contrast, phash_from_pixels, phash_pixels, pixels_contrast

logger = logging.getLogger(__name__)

# Below this many candidates in a batch the pool's start-up costs more than it saves.
POOL_THRESHOLD = 16
# Candidates a worker analyses together: LAB, the KD-tree query, the bucket counts and the
# pHash DCT run once per chunk instead of once per tile.  A chunk's decoded tiles are held
# until it is done (256 KiB each), so the chunk is kept small.
CHUNK_MAX = 32


@dataclass(frozen=True)
class Candidate:
    """One input tile: raw ``data`` bytes, or a ``path`` the worker reads itself; ``crop``: take a
    non-square image's centre square (``ingest --crop``) instead of rejecting it.  ``decoded``:
    the decoded ``data``, when the process that made the bytes still holds their pixels
    (synthesize: a PNG it just encoded), so they are not decoded again."""

    name: str
    data: bytes | None = None
    path: str | None = None
    provenance: dict | None = None
    crop: bool = False
    decoded: DecodedTile | None = field(default=None, compare=False, repr=False)


class Outcome(NamedTuple):
    """What became of a candidate.  ``reason`` is None for accepted tiles."""

    name: str
    accepted: bool
    reason: str | None
    tile_id: str | None = None
    bucket_id: int | None = None
    phash: str | None = None
    lab: tuple[float, float, float] | None = None
    detail: str = ""
    evicted: tuple[str, ...] = ()  # synthetic tiles that gave way to this (real) one


class Analysis(NamedTuple):
    """A worker's verdict; ``tile_id`` set means ``temp/<tile_id>.png`` was written."""

    reason: str | None
    detail: str = ""
    bucket_id: int | None = None
    lab: tuple[float, float, float] | None = None
    phash: str | None = None
    tile_id: str | None = None
    thumb: bytes | None = None  # 64x64 RGB box reduction of a staged tile, for the mosaic cache
    contrast: float | None = None  # std of the pHash pixels (near-duplicate guard, builder.assign.phash)


_ONES_64 = np.ones(64 * 64)


def mean_rgb_64(image) -> np.ndarray:
    """Mean RGB of the 64x64 resize, exactly ``np.array(img.resize((64, 64))).reshape(-1, 3).mean(0)``.

    The channel sums are a dot product with ones in float64: exact (whole numbers below 2**53,
    so the order of the additions cannot matter) and five times faster than a strided
    ``sum(axis=0)`` over the ``(4096, 3)`` view.
    """
    small = np.frombuffer(image.resize((64, 64)).tobytes(), dtype=np.uint8).reshape(-1, 3)
    return (_ONES_64 @ small.astype(np.float64)) / float(64 * 64)


def check_radius(radius: object) -> None:
    """``--near-duplicate-radius``: an integer within 0..64 (bits of a pHash), else one-line :class:`UsageError`."""
    if not isinstance(radius, int) or isinstance(radius, bool) or not 0 <= radius <= MAX_RADIUS:
        raise UsageError(f"--near-duplicate-radius must be an integer within 0..{MAX_RADIUS}, got {radius!r}")


def is_synthetic(candidate: Candidate) -> bool:
    """A candidate made by ``synthesize`` (its provenance says ``synthetic``): it counts toward
    nothing that would refuse a real tile, and gives way to one."""
    return bool((candidate.provenance or {}).get("synthetic"))


def read_candidate(candidate: Candidate) -> bytes:
    """The candidate's bytes; files are size-checked before they are read."""
    if candidate.data is not None:
        return candidate.data
    try:
        # O_NONBLOCK: opening a FIFO named like an image would otherwise block forever.
        with open(os.open(candidate.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageRejected("not_a_file", candidate.path)
            if info.st_size > MAX_INPUT_BYTES:
                raise ImageRejected("too_large", f"{info.st_size} bytes > {MAX_INPUT_BYTES}")
            # read(MAX_INPUT_BYTES + 1) would allocate 32 MiB per tile before shrinking it.
            data = fh.read(info.st_size + 1)
            if len(data) > info.st_size:  # grew since fstat: keep reading, still bounded
                data += fh.read(MAX_INPUT_BYTES + 1 - len(data))
            return data
    except OSError as exc:  # missing, a folder, no permission, a socket (ENXIO), a symlink loop, EIO
        raise ImageRejected("unreadable", f"{candidate.path}: {exc.strerror or exc}") from None


class Worker:
    """Per-process state: the KD-tree and a read-only view of the committed library."""

    def __init__(self, root: str, centroids: np.ndarray, cap: int, prefilter: Callable | None) -> None:
        self.root = Path(root)
        self.temp = self.root / TEMP_DIR
        self.index = CentroidIndex(centroids, validate=False)
        self.cap = cap
        self.prefilter = prefilter
        self._conn = None

    @property
    def conn(self):
        if self._conn is None:
            self._conn = db.connect(self.root / DB_NAME, readonly=True)
        return self._conn

    def analyse_many(self, candidates: Sequence[Candidate]) -> list[Analysis]:
        """The six steps for a chunk of candidates, cheapest rejection first, one verdict each.

        Per tile: read, decode, prefilter, mean RGB of the 64x64 resize, and (for tiles whose
        bucket has room) the 32x32 pHash pixels: Pillow work that cannot be shared.  Per
        chunk: LAB, the KD-tree query, the bucket counts and the pHash DCT and median, whose
        per-call NumPy overhead would otherwise cost as much as the maths.  Every result is
        bit-identical to the per-tile recipe (see ``rgb_to_lab`` and ``builder.assign.phash``).
        """
        results: list[Analysis | None] = [None] * len(candidates)
        live: list[tuple[int, bytes, DecodedTile]] = []
        means: list[np.ndarray] = []
        for i, candidate in enumerate(candidates):
            try:
                data = read_candidate(candidate)
                decoded = candidate.decoded or decode_tile(data, crop=candidate.crop)
            except ImageRejected as exc:
                results[i] = Analysis(exc.reason, exc.detail)
                continue
            if self.prefilter is not None:
                reason = self.prefilter(np.asarray(decoded.image))
                if reason:
                    results[i] = Analysis(reason)
                    continue
            live.append((i, data, decoded))
            means.append(mean_rgb_64(decoded.image))
        if live:
            labs = rgb_to_lab(np.stack(means))
            bucket_ids, _ = self.index.assign_lab(labs)
            buckets = [int(b) for b in bucket_ids]
            # Committed tiles, one indexed query each: a real tile is refused only by real ones.
            counts = db.bucket_counts(self.conn, set(buckets))
            real_counts = db.bucket_counts(self.conn, set(buckets), real_only=True)
            room = []
            for (i, data, decoded), bucket_id, lab in zip(live, buckets, labs.tolist()):
                lab_t = (lab[0], lab[1], lab[2])
                held = (counts if is_synthetic(candidates[i]) else real_counts).get(bucket_id, 0)
                if held >= self.cap:
                    results[i] = Analysis("bucket_full", "", bucket_id, lab_t)
                else:
                    room.append((i, data, decoded, bucket_id, lab_t))
            if room:
                pixels = np.stack([phash_pixels(decoded.image) for _i, _d, decoded, _b, _l in room])
                hashes = phash_from_pixels(pixels)
                contrasts = pixels_contrast(pixels)
                for (i, data, decoded, bucket_id, lab_t), tile_hash, tile_contrast in zip(room, hashes, contrasts):
                    results[i] = self._dedupe_and_stage(data, decoded, bucket_id, lab_t, tile_hash,
                                                        is_synthetic(candidates[i]))._replace(
                        contrast=float(tile_contrast))
        return results  # type: ignore[return-value]  # every slot is filled above

    def _dedupe_and_stage(self, data: bytes, decoded: DecodedTile, bucket_id: int,
                          lab_t: tuple[float, float, float], tile_hash: str, synthetic: bool = False) -> Analysis:
        """Duplicate check against the committed bucket (a real tile against real tiles only),
        then ``temp/<id>.png`` (PNG passthrough when the source bytes are already a plain
        256x256 RGB PNG)."""
        if self.conn.execute(
            "SELECT 1 FROM tiles WHERE bucket_id = ? AND phash = ?" + ("" if synthetic else " AND synthetic = 0")
            + " LIMIT 1", (bucket_id, tile_hash)
        ).fetchone():
            return Analysis("duplicate", "", bucket_id, lab_t, tile_hash)
        payload = data if decoded.png_passthrough and is_plain_png(data) else encode_png(decoded.image)
        tile_id = store.stage(self.temp, payload)
        # The mosaic cache's thumbnail (layout.THUMB_SIZE): 0.1 ms here spares the first mosaic a
        # 2 ms decode of this tile.
        thumb = decoded.image.reduce(TILE_SIZE // THUMB_SIZE).tobytes()
        return Analysis(None, "resized" if decoded.resized else "", bucket_id, lab_t, tile_hash, tile_id, thumb)


_WORKER: Worker | None = None


class _Pending:
    """A batch handed to the workers: its candidates and the futures of its chunks."""

    def __init__(self, candidates: list[Candidate], futures: list[Future],
                 analyses: list[Analysis] | None = None) -> None:
        self.candidates = candidates
        self.futures = futures
        self.analyses = analyses

    def result(self) -> list[Analysis]:
        if self.analyses is None:
            self.analyses = [an for future in self.futures for an in future.result()]
        return self.analyses

    def discard(self, temp: Path) -> None:
        """Drop an unstored batch: cancel what has not started, delete what workers staged."""
        for future in self.futures:
            future.cancel()
        staged = list(self.analyses or [])
        for future in self.futures:
            if not future.cancelled():
                try:
                    staged += future.result()
                except BaseException:  # noqa: BLE001 - a failed chunk staged nothing to clean
                    continue
        store.unstage(temp, (an.tile_id for an in staged))


def exit_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the process that forked it dies.

    A pool worker blocks on its task pipe forever once its parent is SIGKILLed (it holds
    the pipe's write end itself), and one killed mid-task would write into ``temp/`` after
    the next writer has cleaned it.  Elsewhere this is a no-op.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # parent died before prctl took effect
        os._exit(1)


def keep_freed_memory() -> None:
    """Linux (glibc): keep freed blocks of up to a few megabytes in this process for reuse.

    A worker allocates and frees the same few buffers for every tile (the decoded pixels,
    Pillow's and NumPy's working images, a few hundred KiB each); with glibc's defaults those
    above 128 KiB are mapped and unmapped each time, and every page faulted in again (three
    faults in four of a pool worker on ingest).  Elsewhere this is a no-op.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: map only blocks above 32 MiB
        libc.mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD: give back free heap above 64 MiB
    except (OSError, AttributeError):
        return


def _init_pool_worker(root: str, centroids: np.ndarray, cap: int, prefilter: Callable | None) -> None:
    global _WORKER
    exit_with_parent()
    keep_freed_memory()
    _WORKER = Worker(root, centroids, cap, prefilter)


def _pool_analyse_many(candidates: list[Candidate]) -> list[Analysis]:
    assert _WORKER is not None
    return _WORKER.analyse_many(candidates)


def _preload_worker_modules() -> None:
    """Import what every worker needs before the pool forks, so the forked workers share it
    instead of each importing it again: the PNG decoders and Pillow's format plugins.  (No
    scipy: chunks are small enough for the direct nearest-centroid search, and the pHash needs
    scipy's DCT only for the rare tile whose bits it cannot settle alone, see builder.assign.phash.)"""
    import pyspng  # noqa: F401
    from PIL import Image

    Image.preinit()


def chunked(items: Sequence, size: int) -> list:
    """``items`` cut into consecutive slices of at most ``size``."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def pool_context():
    """``fork``: works from scripts without a ``__main__`` guard, stdin and notebooks alike.

    Forking beside running threads is unsafe, so :class:`Pipeline` starts every worker
    when it is created, before a harvest starts its fetch threads; 3.11's executor launches
    all fork workers at once and never forks again.
    """
    return multiprocessing.get_context("fork")


def _cache_thumbnails(root: Path, stored: list[Analysis]) -> None:
    """Hand a committed batch's thumbnails to the library's thumbnail cache (:mod:`.thumbcache`);
    a failure only costs a mosaic some decoding later."""
    rows = [an for an in stored if an.thumb is not None]
    try:
        ThumbnailCache.of(root).append([an.tile_id for an in rows], [an.phash for an in rows],
                                       np.frombuffer(b"".join(an.thumb for an in rows), dtype=np.uint8))
    except (OSError, ValueError) as exc:
        logger.warning("mosaic thumbnail cache not updated: %s", exc)


class Pipeline:
    """Assign and store batches of candidates into a library opened for writing.

    >>> # with Pipeline(lib) as pipe: outcomes = pipe.process([Candidate("a.png", data=...)])
    """

    def __init__(self, lib: Library, workers: int | None = None, prefilter: Callable | None = None,
                 default_provenance: dict | None = None,
                 near_duplicate_radius: int = DEFAULT_NEAR_DUPLICATE_RADIUS) -> None:
        lib.require_writer("storing tiles")
        check_radius(near_duplicate_radius)
        self.lib = lib
        self.rules = Rules(lib.cap, near_duplicate_radius, MIN_HASH_CONTRAST)
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self.prefilter = prefilter
        self.default_provenance = default_provenance or {}
        self._pool: ProcessPoolExecutor | None = None
        self._inline: Worker | None = None
        if self.workers > 1:
            _preload_worker_modules()  # once here, not once per forked worker
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=pool_context(),
                initializer=_init_pool_worker,
                initargs=(str(lib.root), lib.centroids, lib.cap, prefilter),
            )
            self._pool.submit(int).result()  # start every worker now, before callers start threads
        self.counts = lib.bucket_counts()
        self.real_counts = lib.bucket_counts(real_only=True)
        # --near-duplicate-radius: per bucket touched, its tiles' (id, hash, flat?, synthetic?),
        # read once from the files (contrast is not stored), then kept up to date.
        self._near: dict[int, list[tuple[str, int, bool, bool]]] = {}

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _submit(self, candidates: list[Candidate]) -> _Pending:
        """Start analysing a batch.  In the pool it runs in the background (about four chunks
        per worker: even load, little IPC per tile); inline it is done before returning."""
        if self.default_provenance.get("synthetic"):  # the workers judge a candidate by its own provenance
            candidates = [replace(c, provenance={"synthetic": 1, **(c.provenance or {})}) for c in candidates]
        if self._pool is not None and len(candidates) >= POOL_THRESHOLD:
            size = min(CHUNK_MAX, max(1, -(-len(candidates) // (self.workers * 4))))
            return _Pending(candidates, [self._pool.submit(_pool_analyse_many, part) for part in chunked(candidates, size)])
        if self._inline is None:
            self._inline = Worker(str(self.lib.root), self.lib.centroids, self.lib.cap, self.prefilter)
        analyses = [an for part in chunked(candidates, CHUNK_MAX) for an in self._inline.analyse_many(part)]
        return _Pending(candidates, [], analyses)

    def _analyse_all(self, candidates: Sequence[Candidate]) -> list[Analysis]:
        return self._submit(list(candidates)).result()

    def process(self, candidates: Iterable[Candidate],
                on_commit: Callable | None = None) -> list[Outcome]:
        """Assign, de-duplicate and store one batch; returns an outcome per candidate, in order.

        ``on_commit(conn, outcomes)`` runs inside the batch's transaction, so whatever it
        writes (harvest's ``fetched`` rows) commits together with the tiles.
        """
        candidates = list(candidates)
        return self._decide_and_store(candidates, self._analyse_all(candidates) if candidates else [], on_commit)

    def store_analysed(self, candidates: Sequence[Candidate], analyses: Sequence[Analysis]) -> list[Outcome]:
        """:meth:`process` for a batch analysed (and staged) by a :class:`Worker` elsewhere, such
        as a process that made the tiles: the verdicts are re-checked and stored as usual."""
        if self.default_provenance.get("synthetic"):
            candidates = [replace(c, provenance={"synthetic": 1, **(c.provenance or {})}) for c in candidates]
        return self._decide_and_store(list(candidates), list(analyses), None)

    def process_stream(self, batches: Iterable[Iterable[Candidate]],
                       on_commit: Callable | None = None) -> Iterator[list[Outcome]]:
        """:meth:`process` for a stream of batches, yielding each batch's outcomes in turn.

        The workers analyse batch k+1 while this process stores batch k, so they do not sit
        idle during the renames, inserts and commit.  Correctness does not depend on the
        overlap: a worker's cap and duplicate checks only pre-screen against committed rows,
        and every verdict is re-checked here against the counts and rows of the batches stored
        before it.  Closing the generator early waits for the batch in flight and deletes the
        files its workers staged.
        """
        pending: _Pending | None = None
        try:
            for batch in batches:
                previous, pending = pending, self._submit(list(batch))
                if previous is not None:
                    yield self._decide_and_store(previous.candidates, previous.result(), on_commit)
            if pending is not None:
                current, pending = pending, None
                yield self._decide_and_store(current.candidates, current.result(), on_commit)
        finally:
            if pending is not None:
                pending.discard(self.lib.temp_dir)

    def _near_entries(self, bucket_id: int) -> list[tuple[str, int, bool, bool]]:
        """The bucket's committed tiles for the near-duplicate check (read from their files once)."""
        entries = self._near.get(bucket_id)
        if entries is None:
            entries = []
            for tile_id, tile_hash, synthetic in self.lib.conn.execute(
                    f"SELECT id, phash, {db.select_list(self.lib.conn, ('synthetic',))} FROM tiles WHERE bucket_id = ?",
                    (bucket_id,)):
                try:
                    flat = contrast(decode_tile(self.lib.read_tile(bucket_id, tile_id)).image) < MIN_HASH_CONTRAST
                    value = int(tile_hash, 16)
                except (ImageRejected, LibraryError, TypeError, ValueError):
                    continue  # an unreadable tile is verify's business; it blocks nothing here
                entries.append((tile_id, value, flat, bool(synthetic)))
            self._near[bucket_id] = entries
        return entries

    def _bucket_states(self, analyses: list[Analysis]) -> dict[int, BucketState]:
        """What each bucket the batch may store into holds, as far as its verdicts can ask: the
        pipeline's counts; the committed tiles with one of the batch's pHashes for the bucket (one
        indexed query); every committed synthetic tile when the bucket holds some and may reach
        the cap in this batch (the newest gives way there: a second query); with a radius, the
        near-duplicate entries of its tiles."""
        wanted: dict[int, list[str]] = {}
        for an in analyses:
            if an.reason is None:
                wanted.setdefault(an.bucket_id, []).append(an.phash)
        conn, states = self.lib.conn, {}
        for bucket_id, hashes in wanted.items():
            state = states[bucket_id] = BucketState(int(self.counts[bucket_id]), int(self.real_counts[bucket_id]))
            unique = sorted(set(hashes))
            for tile_id, tile_hash, flag in conn.execute(
                    f"SELECT id, phash, synthetic FROM tiles WHERE bucket_id = ? AND phash IN ({', '.join('?' * len(unique))}) "
                    "ORDER BY rowid DESC", (bucket_id, *unique)):
                state.hashes.add(tile_hash)
                if flag == 0:
                    state.real_hashes.add(tile_hash)
                elif flag == 1:
                    state.synthetic.append((tile_id, tile_hash))
            if state.total > state.real and state.total + len(hashes) >= self.rules.cap:
                state.synthetic = conn.execute("SELECT id, phash FROM tiles WHERE bucket_id = ? AND synthetic = 1 "
                                               "ORDER BY rowid DESC", (bucket_id,)).fetchall()
        if self.rules.near_duplicate_radius > 0:
            for bucket_id in {an.bucket_id for an in analyses if an.reason is None and not is_flat(an.contrast, self.rules)}:
                states[bucket_id].near = [entry[1:] for entry in self._near_entries(bucket_id)]
        return states

    def _decide_and_store(self, candidates: list[Candidate], analyses: list[Analysis],
                          on_commit: Callable | None) -> list[Outcome]:
        """Judge each worker verdict again (:func:`builder.assign.admission.admit`) against its bucket as
        the library and the batch's earlier tiles fill it, then store the accepted tiles, with the
        synthetic tiles that give way to them evicted in the same commit
        (:func:`builder.core.store.commit`'s ``evict``)."""
        outcomes: list[Outcome] = []
        accepted: list[tuple[Candidate, Analysis]] = []
        evict: list[tuple[str, int]] = []
        try:
            states = self._bucket_states(analyses)
            for cand, an in zip(candidates, analyses):
                synthetic = is_synthetic(cand)
                decision = admit(an, synthetic, states.get(an.bucket_id) or BucketState(), self.rules)
                if decision.accepted:
                    record(states[an.bucket_id], an, synthetic, decision, self.rules)
                    evict += [(tile_id, an.bucket_id) for tile_id in decision.evict]
                    accepted.append((cand, an))
                elif an.reason is None:  # staged by the worker, refused here
                    store.unstage(self.lib.temp_dir, [an.tile_id])
                outcomes.append(
                    Outcome(cand.name, decision.accepted, decision.reason, an.tile_id if decision.accepted else None,
                            an.bucket_id, an.phash, an.lab, an.detail, decision.evict)
                )
            store.commit(
                self.lib,
                [store.StagedTile(an.tile_id, an.bucket_id, self._row(cand, an)) for cand, an in accepted],
                (lambda conn: on_commit(conn, outcomes)) if on_commit is not None else None,
                evict=evict,
            )
        except BaseException:
            self.counts = self.lib.bucket_counts()
            self.real_counts = self.lib.bucket_counts(real_only=True)
            self._near.clear()
            store.unstage(self.lib.temp_dir, (an.tile_id for an in analyses))
            raise
        for bucket_id, state in states.items():
            self.counts[bucket_id], self.real_counts[bucket_id] = state.total, state.real
        self._remember(accepted, evict)
        _cache_thumbnails(self.lib.root, [an for _c, an in accepted])
        return outcomes

    def _remember(self, accepted: list[tuple[Candidate, Analysis]], evict: list[tuple[str, int]]) -> None:
        """Keep the near-duplicate entries of buckets already read in step with the commit."""
        gone = {tile_id for tile_id, _b in evict}
        for bucket_id in {b for _t, b in evict}:
            if bucket_id in self._near:
                self._near[bucket_id] = [e for e in self._near[bucket_id] if e[0] not in gone]
        for cand, an in accepted:
            if an.bucket_id in self._near and an.contrast is not None:
                self._near[an.bucket_id].append(
                    (an.tile_id, int(an.phash, 16), an.contrast < MIN_HASH_CONTRAST, is_synthetic(cand)))

    def _row(self, cand: Candidate, an: Analysis) -> tuple:
        prov = {**self.default_provenance, **(cand.provenance or {})}
        prov.setdefault("harvested_at", db.utc_now())
        mean_l, mean_a, mean_b = an.lab
        return db.tile_row({**prov, "id": an.tile_id, "bucket_id": an.bucket_id, "phash": an.phash,
                            "filepath": self.lib.filepath_for(an.bucket_id, an.tile_id),
                            "mean_l": mean_l, "mean_a": mean_a, "mean_b": mean_b})
