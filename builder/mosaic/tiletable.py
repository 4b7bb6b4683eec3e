"""The tile table: the tiles a mosaic can use, with their thumbnails and sub-cell colours.

The thumbnails come from the library's :class:`~builder.core.thumbcache.ThumbnailCache`
(``<library>/.cache/``), matched to ``tiles.db`` row by row, spot-checked against re-decoded
tiles and extended with the tiles it lacks (:func:`load_tile_table`); the sub-cell colours are
measured on them and kept in a small derived file beside the cache."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core.color import rgb_to_lab
from ..core.db import has_synthetic_flag, stored_lab
from ..core.errors import LibraryError
from ..core.layout import N_BUCKETS, THUMB_SIZE, is_bucket_id, is_tile_id
from ..core.library import Library
from ..core.scratch import scratch_path
from ..core.thumbcache import (
    CACHE_VERSION,
    KEY,
    THUMB_PREFIX,
    CacheIndex,
    ThumbnailCache,
    cache_dir,
    cache_keys,
    read_thumbs,
    release_pages,
    tile_thumbnail,
)
from .pixels import block_sums
from .target import DEFAULT_SUBCELLS

logger = logging.getLogger(__name__)

SPOT_CHECKS = 3
LAB_CHUNK = 8192  # tiles converted to LAB at once
BLOCK_ROWS = 512  # thumbnails reduced to block means at once (6 MB of pixels)
DEAD_ROWS_KEPT = 1000  # rows of deleted tiles tolerated before the cache is compacted


# ============================================================================ tile features
@dataclass
class TileTable:
    """Tiles a mosaic can use: id, bucket, ``s x s`` sub-cell mean RGB, and the 64-px thumbnail
    thumbs they were measured on (``thumbs[thumb_rows[i]]`` is row ``i``'s thumbnail).

    Everything is held as NumPy arrays, no Python object per tile: about 160 bytes a tile with
    the sub-cell features (ids as 36 ASCII bytes; :attr:`ids` decodes them on demand).
    """

    id_bytes: np.ndarray  # (n,) S36: the tile ids, ASCII
    bucket_ids: np.ndarray  # (n,) int64
    rgb: np.ndarray  # (n, s, s, 3) float32 (exact for 2x2 sub-cells: means of 32x32 8-bit pixels)
    subcells: int
    thumbs: np.ndarray  # (m, 64, 64, 3) uint8, usually a read-only memory map
    thumb_rows: np.ndarray  # (n,) int64
    skipped: int = 0  # rows whose file could not be read
    scratch: object = None  # keeps a temporary cache folder alive (read-only libraries)
    _detail: dict = field(default_factory=dict, repr=False)  # key -> _DetailMemo (memo), filled on use

    def __len__(self) -> int:
        return len(self.id_bytes)

    @property
    def ids(self) -> np.ndarray:
        """``(n,)`` str tile ids: a new array on each access (:meth:`tile_id` for one tile)."""
        return self.id_bytes.astype(str)

    def tile_id(self, row: int) -> str:
        """The id of table row ``row``."""
        return self.id_bytes[int(row)].decode("ascii")

    @cached_property
    def features(self) -> np.ndarray:
        """float32 LAB of every sub-cell, flattened ``(n, s*s*3)``: what cells are matched against."""
        out = np.empty((len(self), self.subcells * self.subcells * 3), dtype=np.float32)
        for lo in range(0, len(self), LAB_CHUNK):  # in chunks: rgb_to_lab's temporaries stay small
            out[lo:lo + LAB_CHUNK] = rgb_to_lab(self.rgb[lo:lo + LAB_CHUNK]).reshape(-1, out.shape[1])
        return out

    @cached_property
    def by_bucket(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(counts, order, starts)``: tiles per bucket, table rows sorted by bucket (stable),
        and where each bucket's rows start in that order."""
        counts = np.bincount(self.bucket_ids, minlength=N_BUCKETS)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return counts, np.argsort(self.bucket_ids, kind="stable"), starts

    def detail_rgb(self, detail: int, rows: np.ndarray) -> np.ndarray:
        """``(k, d, d, 3)`` mean RGB of ``d x d`` blocks of the thumbnails of table ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), detail, detail, 3), dtype=np.float64)
        f = THUMB_SIZE // detail
        for lo in range(0, len(rows), BLOCK_ROWS):
            pixels = read_thumbs(self.thumbs, self.thumb_rows[rows[lo:lo + BLOCK_ROWS]])
            if f * detail == THUMB_SIZE:  # equal blocks: reshapes, much faster than reduceat
                out[lo:lo + BLOCK_ROWS] = block_sums(pixels, f) / (f * f)
            else:
                out[lo:lo + BLOCK_ROWS] = subcell_means(pixels, detail)
        return out

    def detail_lab(self, detail: int, rows: np.ndarray) -> np.ndarray:
        """``(k, d*d*3)`` float32 LAB of :meth:`detail_rgb`, computed once per tile and kept
        (only for the tiles asked for: memory follows the shortlists, not the library)."""
        return self.memo(detail, detail * detail * 3, rows,
                         lambda todo: rgb_to_lab(self.detail_rgb(detail, todo)).reshape(len(todo), -1))

    def memo(self, key, width: int, rows: np.ndarray, compute) -> np.ndarray:
        """``(k, width)`` float32 per-tile values ``compute(rows)`` under ``key``, each tile's computed
        once and kept, for the tiles asked for only."""
        rows = np.asarray(rows, dtype=np.int64)
        memo = self._detail.get(key)
        if memo is None:
            memo = self._detail[key] = _DetailMemo(len(self), width)
        todo = np.unique(rows[memo.slot[rows] < 0])
        if len(todo):
            memo.add(todo, compute(todo))
        return memo.lab[memo.slot[rows]]

    def thumbnails(self, rows: np.ndarray, size: int) -> np.ndarray:
        """``(k, size, size, 3)`` thumbnails of table rows from the thumbs (``size`` <= 64)."""
        pixels = read_thumbs(self.thumbs, self.thumb_rows[np.asarray(rows, dtype=np.int64)])
        if size == THUMB_SIZE:
            return pixels
        if THUMB_SIZE % size == 0:  # box reduction, vectorised
            f = THUMB_SIZE // size
            return ((block_sums(pixels, f) + f * f // 2) // (f * f)).astype(np.uint8)
        return np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.LANCZOS)) for p in pixels])


class _DetailMemo:
    """Rows' computed detail LAB, packed: ``lab[slot[row]]`` (``slot`` -1 until computed)."""

    def __init__(self, n: int, width: int) -> None:
        self.slot = np.full(n, -1, dtype=np.int32)
        self.lab = np.empty((0, width), dtype=np.float32)
        self.used = 0

    def add(self, rows: np.ndarray, lab: np.ndarray) -> None:
        end = self.used + len(rows)
        if end > len(self.lab):  # grow by a quarter: amortised copies, little slack
            grown = np.empty((max(end, len(self.lab) * 5 // 4, 1024), self.lab.shape[1]), dtype=np.float32)
            grown[:self.used] = self.lab[:self.used]
            self.lab = grown
        self.lab[self.used:end] = lab
        self.slot[rows] = np.arange(self.used, end, dtype=np.int32)
        self.used = end


def _block_edges(size: int, parts: int) -> np.ndarray:
    return np.linspace(0, size, parts + 1).round().astype(np.int64)


def subcell_means(pixels: np.ndarray, subcells: int) -> np.ndarray:
    """Mean RGB of ``s x s`` blocks of ``(..., h, w, 3)`` uint8 images (blocks may differ by 1 px)."""
    h, w = pixels.shape[-3], pixels.shape[-2]
    if h == w and h % subcells == 0 and pixels.ndim in (3, 4) and pixels.dtype == np.uint8:  # equal blocks: fast
        f = h // subcells
        batch = pixels if pixels.ndim == 4 else pixels[None]
        sums = block_sums(batch, f) / (f * f)
        return sums if pixels.ndim == 4 else sums[0]
    ys, xs = _block_edges(h, subcells), _block_edges(w, subcells)
    sums = np.add.reduceat(np.add.reduceat(pixels, ys[:-1], axis=-3, dtype=np.uint64), xs[:-1], axis=-2)
    areas = np.diff(ys)[:, None, None] * np.diff(xs)[None, :, None]
    return sums / areas



def _decode_thumbnails(lib: Library, todo: list[tuple[str, int, str]], threads: int | None,
                       progress: bool | None) -> list[np.ndarray | None]:
    show = sys.stderr.isatty() if progress is None else progress
    out: list[np.ndarray | None] = []
    with _pool(threads) as pool, tqdm(total=len(todo), unit="tile", desc="tile thumbnails", disable=not show) as bar:
        for thumb in pool.map(lambda row: tile_thumbnail(lib, row[1], row[0]), todo):
            out.append(thumb)
            bar.update()
    return out


def _writable_folder(folder: Path) -> bool:
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _subcell_rgb(thumbs: np.ndarray, subcells: int, folder: Path | None, generation: str,
                 checked: dict[int, np.ndarray]) -> np.ndarray:
    """Sub-cell mean RGB of every cached row, from its small derived file where that is sane and
    agrees with the freshly decoded spot-check tiles (rows appended since are computed and the
    file extended); else computed from the thumbnails and saved.  The file is named after the
    cache's generation, so rewritten or cut rows never reuse another row's colours.  ``folder``
    None (thumbnails held in memory): computed, not saved."""
    shape = (subcells, subcells, 3)
    n = len(thumbs)
    if folder is None:
        return subcell_means(np.asarray(thumbs), subcells) if n else np.empty((0, *shape), dtype=np.float64)
    path = folder / f"{THUMB_PREFIX}.v{CACHE_VERSION}.{generation or 'none'}.sub{subcells}.npy"
    done = np.empty((0, *shape), dtype=np.float64)
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("ignoring unreadable %s: %s", path, exc)
        else:
            sane = (cached.ndim == 4 and cached.shape[1:] == shape and len(cached) <= n and cached.dtype == np.float64
                    and np.isfinite(cached).all() and cached.min(initial=0) >= 0 and cached.max(initial=0) <= 255)
            if sane and all(r >= len(cached) or np.allclose(subcell_means(t, subcells), cached[r], atol=1e-9)
                            for r, t in checked.items()):
                done = cached
            else:
                logger.warning("ignoring %s: it disagrees with the thumbnails", path)
    if len(done) == n:
        return done
    rgb = np.empty((n, *shape), dtype=np.float64)
    rgb[:len(done)] = done
    for lo in range(len(done), n, BLOCK_ROWS):
        rgb[lo:lo + BLOCK_ROWS] = subcell_means(np.asarray(thumbs[lo:min(n, lo + BLOCK_ROWS)]), subcells)
        release_pages(thumbs)
    part = scratch_path(path)
    try:
        with open(part, "wb") as fh:
            np.save(fh, rgb, allow_pickle=False)
        os.replace(part, path)
        for stale in folder.glob(f"{THUMB_PREFIX}.v{CACHE_VERSION}.*.sub{subcells}.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError as exc:
        part.unlink(missing_ok=True)  # a full disk leaves no scratch file behind
        logger.info("sub-cell colours not cached (%s)", exc)
    return rgb


def _pool(threads: int | None) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, threads or min(4, os.cpu_count() or 1)))


# One tiles.db row a mosaic reads: its LAB lets a load notice a cached thumbnail of another colour.
ROW = np.dtype([("id", "S36"), ("bucket", np.int64), ("phash", "S16"), ("lab", np.float64, 3)])
SQL_CHUNK = 20_000  # tiles.db rows read per fetchmany


def _tile_rows(lib: Library, real_only: bool) -> np.ndarray:
    """Every ``tiles`` row with a tile id and a bucket id, as :data:`ROW` records in id order,
    read in chunks (no Python object kept per row)."""
    real = " WHERE synthetic = 0" if real_only and has_synthetic_flag(lib.conn) else ""
    cursor = lib.conn.execute(f"SELECT id, bucket_id, phash, mean_l, mean_a, mean_b FROM tiles{real} ORDER BY id")
    parts = []
    while chunk := cursor.fetchmany(SQL_CHUNK):
        good = [(tile_id.encode("ascii"), bucket_id, (tile_hash or "").encode("ascii", "replace")[:16], stored_lab(lab))
                for tile_id, bucket_id, tile_hash, *lab in chunk if is_tile_id(tile_id) and is_bucket_id(bucket_id)]
        parts.append(np.array(good, dtype=ROW))
    return np.concatenate(parts) if parts else np.empty(0, ROW)


# A cached thumbnail whose mean colour is further than this (CIE76) from the LAB tiles.db holds for
# its tile is re-decoded and compared before a mosaic uses it.  The box-average thumbnail's mean and
# the 64x64 resize's the LAB was made from differ by at most 0.07 on 1,378 real tiles (median
# 0.016), while two tiles of one bucket are a median 3.3 apart: swapped, random or flat rows of
# another colour show; a suspect that was right costs one decode.
OFF_COLOUR_DE = 1.0


def _mean_rgb(rgb: np.ndarray) -> np.ndarray:
    """``(n, 3)`` mean RGB of whole thumbnails from their ``(n, s, s, 3)`` sub-cell means (area-weighted)."""
    s = rgb.shape[1]
    edges = _block_edges(THUMB_SIZE, s)
    areas = np.outer(np.diff(edges), np.diff(edges)).astype(np.float64)
    return np.einsum("nijc,ij->nc", rgb.astype(np.float64), areas) / areas.sum()


def _replace_off_colour(lib: Library, cache: ThumbnailCache, pixels: np.ndarray, id_bytes: np.ndarray,
                        bucket_ids: np.ndarray, labs: np.ndarray, phashes: np.ndarray, thumb_rows: np.ndarray,
                        rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Table rows whose cached thumbnail is not of their tile's colour are re-decoded; those
    that differ from their tile get the fresh thumbnail (appended to ``cache``, so it wins from
    now on) and their sub-cell colours recomputed.  Returns ``(pixels, thumb_rows)``, updated in
    place with ``rgb``, so a mosaic never draws a tile from a wrong row the cheap check can see."""
    distance = np.linalg.norm(rgb_to_lab(_mean_rgb(rgb)) - labs, axis=1)
    suspects = np.flatnonzero(distance > OFF_COLOUR_DE)  # NaN (no stored LAB) compares False
    wrong: list[tuple[int, np.ndarray]] = []
    for i in suspects.tolist():
        fresh = tile_thumbnail(lib, int(bucket_ids[i]), id_bytes[i].decode("ascii"))
        if fresh is not None and not np.array_equal(fresh, pixels[thumb_rows[i]]):
            wrong.append((i, fresh))
    if not wrong:
        return pixels, thumb_rows
    logger.warning("mosaic cache in %s: %d thumbnails disagree with their tiles; using the tiles "
                   "(`python -m builder verify --repair` checks every row)", cache.folder, len(wrong))
    at = np.array([i for i, _t in wrong])
    fresh = np.stack([t for _i, t in wrong])
    keys = cache_keys(id_bytes[at], phashes[at])
    try:
        cache.append(id_bytes[at].astype(str).tolist(), phashes[at].astype(str).tolist(), fresh)
        reloaded, index = cache.load()
        found = index.rows(keys)  # the appended rows: the last for their keys
    except (OSError, ValueError) as exc:
        logger.warning("could not add the fresh thumbnails to %s (%s); leaving those tiles out", cache.folder, exc)
        reloaded, found = None, np.full(len(at), -1, dtype=np.int64)
    if reloaded is None or (found < 0).any():
        thumb_rows[at] = -1
        return pixels, thumb_rows
    thumb_rows[at] = found
    rgb[at] = subcell_means(fresh, rgb.shape[1]).astype(rgb.dtype)
    return reloaded, thumb_rows


def _held_rows(rows: np.ndarray, held: np.ndarray, sources: np.ndarray,
               pixels: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
    """``(ids, phashes, thumbnails)`` of :data:`ROW` records ``rows[held]`` and their cached
    thumbnails (``sources``: each row's cache row), as :meth:`ThumbnailCache.append` and
    :meth:`ThumbnailCache.rewrite` take them."""
    return (rows["id"][held].astype(str).tolist(), rows["phash"][held].astype(str).tolist(),
            read_thumbs(pixels, sources[held]))


def load_tile_table(lib: Library, subcells: int = DEFAULT_SUBCELLS, threads: int | None = None,
                    progress: bool | None = None, use_cache: bool = True, real_only: bool = False) -> TileTable:
    """Every usable tile (``real_only``: every real one, synthetic tiles left out) with its
    thumbnail and sub-cell colours.

    Thumbnails come from the library's :class:`ThumbnailCache`, matched to ``tiles.db`` row by
    row on ``(id, phash)``: tiles the store did not cache (older libraries, other writers) are
    decoded once and appended, deleted ones ignored (and dropped when they are most of the
    file), and a few cached thumbnails are re-decoded and compared byte for byte, so a cache
    that disagrees with the files is thrown away.  A library folder we cannot write to (or
    ``use_cache=False``) gets a temporary cache instead; so does one whose disk turns out full
    (one warning: the cache is not updated, the mosaic is made all the same), and when the
    temporary folder is full too, the thumbnails are held in memory.
    """
    rows = _tile_rows(lib, real_only)
    if not len(rows):
        raise LibraryError(f"{lib.root} holds no tiles: harvest or ingest some before making a mosaic")
    keys = cache_keys(rows["id"], rows["phash"])
    cache = ThumbnailCache(cache_dir(lib))
    pixels, index = cache.load() if use_cache and cache.folder.is_dir() else (None, CacheIndex(np.empty(0, KEY)))
    writable = use_cache and _writable_folder(cache.folder)
    if writable:
        cache.clean_scratch()  # what killed runs left there: removed before anything is written
    sources = index.rows(keys)
    if pixels is not None:  # rows verify found wrong are used by no mosaic: their tiles are decoded again
        sources[np.isin(sources, cache.bad_rows(cache.identity))] = -1
    reused = np.flatnonzero(sources >= 0)
    checked: dict[int, np.ndarray] = {}  # cache row -> freshly decoded thumbnail
    for i in np.random.default_rng().choice(reused, size=min(SPOT_CHECKS, len(reused)), replace=False):
        tile_id = rows["id"][i].decode("ascii")
        fresh = tile_thumbnail(lib, int(rows["bucket"][i]), tile_id)
        if fresh is None or not np.array_equal(fresh, pixels[sources[i]]):
            logger.warning("mosaic cache in %s disagrees with tile %s: rebuilding it", cache.folder, tile_id)
            sources, pixels, checked = np.full(len(rows), -1, dtype=np.int64), None, {}
            if writable:
                writable = _try_write(cache, lambda: cache.rewrite([], [], np.empty((0, THUMB_SIZE, THUMB_SIZE, 3),
                                                                                    np.uint8)))
            break
        checked[int(sources[i])] = fresh
    held, missing = np.flatnonzero(sources >= 0), np.flatnonzero(sources < 0)
    todo = [(rows["id"][i].decode("ascii"), int(rows["bucket"][i]), rows["phash"][i].decode("ascii")) for i in missing]
    decoded = _decode_thumbnails(lib, todo, threads, progress) if todo else []
    good = [(row, thumb) for row, thumb in zip(todo, decoded) if thumb is not None]
    if writable and pixels is not None and len(pixels) - len(held) > max(DEAD_ROWS_KEPT, len(held)):
        # compaction: dead rows dropped, live ones kept in file order
        compacted = _held_rows(rows, held[np.argsort(sources[held], kind="stable")], sources, pixels)
        if _try_write(cache, lambda: cache.rewrite(*compacted)):
            pixels, index = cache.load()
            sources, checked = index.rows(keys), {}
            held = np.flatnonzero(sources >= 0)
        else:
            writable = False
    if writable:
        def extend() -> None:
            if good:
                cache.append([r[0] for r, _t in good], [r[2] for r, _t in good], np.stack([t for _r, t in good]))

        writable = _try_write(cache, extend)
        if writable and (good or pixels is None):
            pixels, index = cache.load()
    scratch, folder = None, cache.folder
    if not writable:  # a temporary copy of what the library's cache holds for these tiles, plus the decoded ones
        (pixels, index, folder, scratch), checked = _temporary_thumbs(rows, held, sources, pixels, good), {}
    found = index.rows(keys)
    del keys, index, sources, held  # what is no longer needed goes before the colours are read (peak memory)
    keep = np.flatnonzero(found >= 0)
    if not len(keep) or pixels is None:
        raise LibraryError(f"{lib.root}: no tile file could be read; run `python -m builder verify`")
    thumb_rows, skipped = found[keep], len(rows) - len(keep)
    id_bytes, bucket_ids = rows["id"][keep], rows["bucket"][keep]
    labs, phashes = rows["lab"][keep], rows["phash"][keep]
    del rows, found, keep
    all_rgb = _subcell_rgb(pixels, subcells, folder, cache.identity if folder == cache.folder else "", checked)
    rgb = all_rgb[thumb_rows].astype(np.float32)
    del all_rgb
    pixels, thumb_rows = _replace_off_colour(lib, cache, pixels, id_bytes, bucket_ids, labs, phashes, thumb_rows, rgb)
    if (thumb_rows < 0).any():
        usable = thumb_rows >= 0
        skipped += int((~usable).sum())
        id_bytes, bucket_ids, rgb, thumb_rows = id_bytes[usable], bucket_ids[usable], rgb[usable], thumb_rows[usable]
    del labs, phashes
    return TileTable(
        id_bytes=id_bytes,
        bucket_ids=bucket_ids,
        rgb=rgb,
        subcells=subcells,
        thumbs=pixels,
        thumb_rows=thumb_rows,
        skipped=skipped,
        scratch=scratch,
    )


def _try_write(cache: ThumbnailCache, write: Callable[[], object]) -> bool:
    """Run a write to the library's cache; False (and one warning) when the disk refuses it (full,
    read-only, over quota): the mosaic goes on without updating the cache."""
    try:
        write()
    except OSError as exc:
        logger.warning("mosaic thumbnail cache in %s not updated (%s): this mosaic keeps its thumbnails "
                       "aside, and a later one will update the cache", cache.folder, exc.strerror or exc)
        return False
    return True


def _temporary_thumbs(rows: np.ndarray, held: np.ndarray, sources: np.ndarray, pixels: np.ndarray | None,
                      good: list) -> tuple[np.ndarray | None, CacheIndex, Path | None, object]:
    """``(pixels, index, folder, keep-alive)`` of a cache of these tiles outside the library: in a
    temporary folder, or, when that cannot be written either, in memory (``folder`` None)."""
    import tempfile

    ids = [r[0] for r, _t in good]
    phashes = [r[2] for r, _t in good]
    new = np.stack([t for _r, t in good]) if good else np.empty((0, THUMB_SIZE, THUMB_SIZE, 3), np.uint8)
    have = _held_rows(rows, held, sources, pixels) if len(held) and pixels is not None else ([], [], new[:0])
    scratch = None
    try:
        scratch = tempfile.TemporaryDirectory(prefix="mosaic_thumbs_")
        temp = ThumbnailCache(scratch.name)
        if have[0]:
            temp.append(*have)
        if ids:
            temp.append(ids, phashes, new)
        loaded, index = temp.load()
        return loaded, index, temp.folder, scratch
    except OSError as exc:
        if scratch is not None:
            scratch.cleanup()
        logger.info("temporary thumbnail cache not written (%s): thumbnails held in memory", exc)
    every = np.concatenate([have[2], new]) if len(have[2]) or len(new) else None
    keys = cache_keys([*have[0], *ids], [*have[1], *phashes])
    return every, CacheIndex(keys), None, None
