"""What a stored tile really holds: every fact ``verify`` and ``repair`` check, from one decode.

:func:`inspect_tiles` reads each tile safely, decodes it once and takes from that decode its PNG
validity, its LAB (the card's 64x64 mean), its pHash and its thumbnail, compared with the one the
library's thumbnail cache holds; the LAB and pHash DCT of a chunk are computed together.  Many
tiles go through a process pool (:func:`inspect_pool`, :func:`inspect_stream`,
:func:`inspect_all`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import numpy as np

from ..assign.phash import phash_from_pixels, phash_pixels
from ..assign.pipeline import mean_rgb_64, pool_context
from ..core.color import rgb_to_lab
from ..core.decode import decode_tile
from ..core.errors import BadTile, ImageRejected
from ..core.layout import THUMB_SIZE, TILE_SIZE
from ..core.thumbcache import release_pages, thumbnail
from ..core.tilefiles import TileFiles, check_png


class FileFacts(NamedTuple):
    """What a tile file really holds, and whether the mosaic's cached thumbnail of it agrees."""

    error: str | None
    lab: tuple[float, float, float] | None = None
    phash: str | None = None
    thumb_ok: bool | None = None  # None: no cached thumbnail compared
    thumb: bytes | None = None  # the tile's thumbnail, when the cached one disagrees (repair writes it)


def inspect_tiles(files: TileFiles, jobs: Sequence[tuple[int, str, int]], thumbs: np.ndarray | None = None) -> list[FileFacts]:
    """Read each stored tile safely (:meth:`TileFiles.read`), decode it once, and take every fact
    the checks need from that one decode: PNG validity, LAB (64x64 mean RGB), pHash, and the
    thumbnail, compared with row ``cache_row`` of ``thumbs`` (the mosaic cache's pixels) when
    that is not -1.  ``jobs``: ``(bucket, id, cache_row)``.

    LAB and the pHash DCT run once over the chunk (bit-identical to one tile at a time).
    ``error`` is :data:`~builder.core.tilefiles.MISSING` for a file that is not there, else the
    problem :class:`~builder.core.errors.BadTile` or the decoder gave.
    """
    out: list[FileFacts | None] = [None] * len(jobs)
    live: list[tuple[int, bool | None, bytes | None]] = []
    means, grey = [], []
    for k, (bucket_id, tile_id, cache_row) in enumerate(jobs):
        try:
            data = files.read(bucket_id, tile_id)
            tile = decode_tile(data)
        except BadTile as exc:
            out[k] = FileFacts(exc.problem)
            continue
        except ImageRejected as exc:
            out[k] = FileFacts(str(exc))
            continue
        if not tile.png_passthrough:  # decode_tile's verdict: a PNG, RGB, 256x256, no transparency
            out[k] = FileFacts(check_png(data) or f"not a {TILE_SIZE}x{TILE_SIZE} RGB PNG")
            continue
        means.append(mean_rgb_64(tile.image))
        grey.append(phash_pixels(tile.image))
        thumb_ok, thumb = None, None
        if thumbs is not None and 0 <= cache_row < len(thumbs):
            fresh = thumbnail(tile.image)
            thumb_ok = bool(np.array_equal(fresh, thumbs[cache_row]))
            thumb = None if thumb_ok else fresh.tobytes()
        live.append((k, thumb_ok, thumb))
    if thumbs is not None:
        release_pages(thumbs)
    if live:
        labs = rgb_to_lab(np.stack(means)).tolist()
        hashes = phash_from_pixels(np.stack(grey))
        for (k, thumb_ok, thumb), lab, tile_hash in zip(live, labs, hashes):
            out[k] = FileFacts(None, (lab[0], lab[1], lab[2]), tile_hash, thumb_ok, thumb)
    return out  # type: ignore[return-value]  # every slot is filled above


def inspect_tile(files: TileFiles, bucket_id: int, tile_id: str) -> FileFacts:
    """:func:`inspect_tiles` for one tile, without the thumbnail check."""
    return inspect_tiles(files, [(bucket_id, tile_id, -1)])[0]


# A pool worker's reader (each bucket folder checked once per run) and its view of the cache.
_FILES: TileFiles | None = None
_THUMBS: tuple[str, int] | None = None
_THUMBS_MAP: np.ndarray | None = None


def _init_inspect_worker(files: TileFiles, thumbs: tuple[str, int] | None = None) -> None:
    global _FILES, _THUMBS, _THUMBS_MAP
    _FILES, _THUMBS, _THUMBS_MAP = files, thumbs, None


def _worker_thumbs() -> np.ndarray | None:
    """The cache's pixels, memory-mapped once per worker (a map does not cross processes)."""
    global _THUMBS_MAP
    if _THUMBS is not None and _THUMBS_MAP is None:
        path, rows = _THUMBS
        try:
            _THUMBS_MAP = np.memmap(path, dtype=np.uint8, mode="r", shape=(rows, THUMB_SIZE, THUMB_SIZE, 3))
        except (OSError, ValueError):
            return None
    return _THUMBS_MAP


def inspect_pool(files: TileFiles, workers: int, thumbs: tuple[str, int] | None = None) -> ProcessPoolExecutor:
    """A process pool whose workers run :func:`inspect_chunk`, each with ``files`` and its own
    memory map of the cache's pixels (``thumbs``: the pixels file and its rows, or None)."""
    return ProcessPoolExecutor(workers, mp_context=pool_context(), initializer=_init_inspect_worker,
                               initargs=(files, thumbs))


def inspect_chunk(jobs: list[tuple[int, str, int]]) -> list[FileFacts]:
    """:func:`inspect_tiles` in a worker of :func:`inspect_pool`."""
    assert _FILES is not None
    return inspect_tiles(_FILES, jobs, _worker_thumbs())


INSPECT_CHUNK = 64  # tiles a worker inspects together (their LAB and pHash DCT computed at once)


def inspect_stream(files: TileFiles, jobs: Iterable[tuple[int, str, int]], workers: int | None = None
                   ) -> Iterator[tuple[tuple[int, str, int], FileFacts]]:
    """``(job, facts)`` of :func:`inspect_tiles` for a stream of ``(bucket, id, -1)`` jobs, in
    order, on a process pool (a few chunks in flight: memory stays flat in the number of jobs)."""
    n_workers = workers or os.cpu_count() or 1
    chunks = _chunks(jobs, INSPECT_CHUNK)
    if n_workers <= 1:
        for chunk in chunks:
            yield from zip(chunk, inspect_tiles(files, chunk))
        return
    with inspect_pool(files, n_workers) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(inspect_chunk, chunk)))
            if len(pending) >= 4 * n_workers:
                done, future = pending.popleft()
                yield from zip(done, future.result())
        while pending:
            done, future = pending.popleft()
            yield from zip(done, future.result())


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def inspect_all(files: TileFiles, jobs: Sequence[tuple[int, str, int]], workers: int | None = None) -> list[FileFacts]:
    """:func:`inspect_tiles` over many tiles (a process pool when there are more than a chunk)."""
    if len(jobs) <= INSPECT_CHUNK:
        return inspect_tiles(files, jobs)
    return [facts for _job, facts in inspect_stream(files, jobs, workers)]
