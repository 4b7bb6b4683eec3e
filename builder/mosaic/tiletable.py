"""The tile table and its cache: the append-only 64-px :class:`ThumbnailCache` in
``<library>/.cache/`` (filled by the store as tiles are committed, matched, spot-checked and
extended by the mosaic) and the tiles' sub-cell colours measured on it."""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..color import rgb_to_lab
from ..db import table_columns
from ..decode import decode_tile
from ..errors import BadTile, ImageRejected, LibraryError
from ..layout import CACHE_DIR, N_BUCKETS, THUMB_SIZE, TILE_SIZE, is_bucket_id, is_tile_id
from ..library import Library
from ..scratch import dead_scratch, scratch_path
from .pixels import block_sums
from .target import DEFAULT_SUBCELLS

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: append-only keys + pixels files (1 was one rewritten .npy and an index)
THUMB_BYTES = THUMB_SIZE * THUMB_SIZE * 3
THUMB_PREFIX = "mosaic_thumbs64"
KEY = np.dtype([("id", "S36"), ("phash", "S16")])  # one row's key in the keys file
KEY_BYTES = np.dtype(f"S{KEY.itemsize}")  # a key as one byte string: sorts and compares as (id, phash)
LOCK_NAME = ".mosaic_thumbs.lock"
SPOT_CHECKS = 3
LAB_CHUNK = 8192  # tiles converted to LAB at once
BLOCK_ROWS = 512  # thumbnails reduced to block means at once (6 MB of pixels)
THUMB_READ_ROWS = 128  # thumbnails read between page releases: ~8 MB of mapped pages at most
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


def read_thumbs(thumbs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``thumbs[rows]`` as an in-memory array, read from a memory-mapped file
    :data:`THUMB_READ_ROWS` rows at a time with the mapping's pages dropped in between: each row
    read at random faults in the kernel's whole fault-around window (64 KB, five rows' worth)
    around it, so one fancy index of k rows would hold ~5k thumbnails' pages in the process."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), *thumbs.shape[1:]), dtype=thumbs.dtype)
    for lo in range(0, len(rows), THUMB_READ_ROWS):
        out[lo:lo + THUMB_READ_ROWS] = thumbs[rows[lo:lo + THUMB_READ_ROWS]]
        release_pages(thumbs)
    return out


def release_pages(thumbs: np.ndarray) -> None:
    """Drop the pages of a memory-mapped thumbnail file from this process (``MADV_DONTNEED``:
    they stay in the page cache and come back on the next read), so reading every tile's
    thumbnail block by block does not leave 12 KB a tile in the process's memory.  A no-op for
    an in-memory array."""
    mapped = getattr(thumbs, "_mmap", None)  # numpy.memmap's mapping
    if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


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


def _read_tile(lib: Library, bucket_id: int, tile_id: str) -> Image.Image:
    """Read a stored tile safely (``lib.read_tile``) and decode it with the same decoder as everything else."""
    return decode_tile(lib.read_tile(int(bucket_id), str(tile_id))).image


def thumbnail(image: Image.Image) -> np.ndarray:
    """The 64-px thumbnail of a decoded 256-px tile: the exact 4x4 box average, as cached."""
    return np.asarray(image.reduce(TILE_SIZE // THUMB_SIZE))


def tile_thumbnail(lib: Library, bucket_id: int, tile_id: str) -> np.ndarray | None:
    """A tile's 64-px thumbnail (:func:`thumbnail`), or None if its file is unusable."""
    try:
        return thumbnail(_read_tile(lib, bucket_id, tile_id))
    except (BadTile, ImageRejected) as exc:
        logger.warning("tile %s in bucket %s unusable for mosaics: %s", tile_id, bucket_id, exc)
        return None


def cache_dir(lib: Library) -> Path:
    return lib.root / CACHE_DIR


# ============================================================================ the append-only cache
def cache_keys(ids: Sequence, phashes: Sequence) -> np.ndarray:
    """:data:`KEY` records of ``(id, phash)`` pairs (str or ASCII bytes, sequences or arrays)."""
    keys = np.empty(len(ids), dtype=KEY)
    for name, values in (("id", ids), ("phash", phashes)):
        values = values if isinstance(values, np.ndarray) and values.dtype.kind == "S" else \
            [v.encode("ascii", "replace") if isinstance(v, str) else (v or b"") for v in values]
        keys[name] = values
    return keys


class CacheIndex(Mapping):
    """``(id, phash) -> row`` of a cache's keys file as one sorted NumPy array (60 bytes a row,
    no Python object per row); the last row written for a key wins.

    :meth:`rows` looks many keys up at once; as a ``Mapping`` of ``(id, phash)`` str pairs it
    holds the rows whose id is a tile id.

    >>> index = CacheIndex(cache_keys(["0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a"] * 2, ["c3a1", "c3a1"]))
    >>> index[("0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a", "c3a1")], len(index)
    (1, 1)
    """

    def __init__(self, keys: np.ndarray) -> None:
        flat = np.ascontiguousarray(keys, dtype=KEY).view(KEY_BYTES)
        order = np.argsort(flat, kind="stable")  # equal keys keep their row order: the last is the newest
        flat = flat[order]
        last = np.ones(len(flat), dtype=bool)
        last[:-1] = flat[1:] != flat[:-1]
        self._keys, self._rows = flat[last], order[last]
        self.size = len(keys)  # rows in the file, dead and repeated ones included

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """``(k,)`` int64 cache rows of :data:`KEY` records ``keys``, -1 where the cache has none."""
        flat = np.ascontiguousarray(keys, dtype=KEY).view(KEY_BYTES)
        if not len(self._keys):
            return np.full(len(flat), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._keys, flat), len(self._keys) - 1)
        return np.where(self._keys[at] == flat, self._rows[at], -1).astype(np.int64)

    def row(self, tile_id: str, tile_hash: str) -> int:
        """The cache row of one ``(id, phash)``, -1 where the cache has none."""
        return int(self.rows(cache_keys([tile_id], [tile_hash]))[0])

    def __getitem__(self, key: tuple[str, str]) -> int:
        row = self.row(*key)
        if row < 0 or not is_tile_id(key[0]):
            raise KeyError(key)
        return row

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for flat in self._keys.tolist():
            record = np.frombuffer(flat.ljust(KEY.itemsize, b"\0"), dtype=KEY)[0]
            tile_id = record["id"].decode("ascii", "replace")
            if is_tile_id(tile_id):
                yield tile_id, record["phash"].decode("ascii", "replace")

    def __len__(self) -> int:
        return sum(1 for _key in self)


class ThumbnailCache:
    """The 64-px thumbnails of a library's tiles: two append-only files in ``<library>/.cache/``.

    ``mosaic_thumbs64.v2.keys`` holds one :data:`KEY` record (tile id, pHash) per row and
    ``mosaic_thumbs64.v2.pixels`` the row's 64x64x3 pixels, in the same order.  The store
    appends a committed batch's thumbnails (:meth:`append`, from the images its workers already
    decoded), so the first mosaic on a library reads them instead of decoding every tile; a
    mosaic appends the few it had to decode itself.  Rows count only when both files hold them
    whole: a crash mid-append leaves a torn tail that the next append cuts off.  Appends and
    rewrites take an exclusive ``flock`` on the cache's lock file, loads a shared one, so a
    load never sees a half-rewritten cache.  Being derived data, it is matched to ``tiles.db``
    on ``(id, phash)`` and spot-checked against re-decoded tiles on every load.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.generation_path = self.folder / f"{THUMB_PREFIX}.v{CACHE_VERSION}.generation"
        self.identity = ""  # generation of the rows last loaded: names the derived sub-cell files
        self.keys_path = self.folder / f"{THUMB_PREFIX}.v{CACHE_VERSION}.keys"
        self.pixels_path = self.folder / f"{THUMB_PREFIX}.v{CACHE_VERSION}.pixels"

    @classmethod
    def of(cls, root: str | os.PathLike) -> ThumbnailCache:
        """The cache of the library at ``root``."""
        return cls(Path(root) / CACHE_DIR)

    @contextmanager
    def _lock(self, kind: int):
        """``flock`` on the cache's lock file; a reader of a folder it cannot write (no lock file
        can be made) reads unlocked, as only a writer of that folder could change it."""
        try:
            if kind == fcntl.LOCK_EX:
                self.folder.mkdir(exist_ok=True)
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            if kind == fcntl.LOCK_EX:
                raise
            yield
            return
        try:
            fcntl.flock(fd, kind)
            yield
        finally:
            os.close(fd)

    def _generation(self) -> str:
        try:
            token = self.generation_path.read_text().strip()
        except OSError:
            return ""
        return token if re.fullmatch(r"[0-9a-f]{16}", token) else ""

    def _new_generation(self) -> None:
        """Rows were rewritten or cut: what was derived from the old ones no longer applies."""
        part = scratch_path(self.generation_path)
        try:
            part.write_text(os.urandom(8).hex())
            os.replace(part, self.generation_path)
        except OSError:
            part.unlink(missing_ok=True)  # a full disk leaves no empty scratch file behind
            raise

    def clean_scratch(self) -> int:
        """Remove the scratch files killed runs left in the cache folder (every file there is
        derived data of this cache); returns how many."""
        removed = 0
        for leftover in dead_scratch(self.folder):
            if leftover.path.is_file() and not leftover.path.is_symlink():
                try:
                    leftover.path.unlink()
                    removed += 1
                except OSError:
                    continue
        return removed

    def _rows_on_disk(self) -> int:
        try:
            return min(self.keys_path.stat().st_size // KEY.itemsize, self.pixels_path.stat().st_size // THUMB_BYTES)
        except FileNotFoundError:
            return 0

    def append(self, ids: Sequence[str], phashes: Sequence[str], thumbs: np.ndarray) -> int:
        """Add ``(id, phash, 64x64x3 uint8 thumbnail)`` rows; returns how many were written.

        The store calls this after a batch commits (a failure here must not undo the batch: it
        only costs the next mosaic some decoding).
        """
        if not len(ids):
            return 0
        thumbs = np.ascontiguousarray(thumbs, dtype=np.uint8)
        if thumbs.size != len(ids) * THUMB_BYTES or len(phashes) != len(ids) or not all(is_tile_id(i) for i in ids):
            raise ValueError(f"append needs as many uuid4 ids, pHashes and {THUMB_SIZE}x{THUMB_SIZE} RGB thumbnails")
        keys = cache_keys(ids, [str(h or "") for h in phashes])
        with self._lock(fcntl.LOCK_EX):
            rows = self._rows_on_disk()
            whole = [path.stat().st_size // size if path.exists() else 0
                     for path, size in ((self.pixels_path, THUMB_BYTES), (self.keys_path, KEY.itemsize))]
            if max(whole) > rows or not self._generation():  # whole rows cut (not only a torn tail)
                self._new_generation()
            with open(self.pixels_path, "ab") as px, open(self.keys_path, "ab") as kf:
                px.truncate(rows * THUMB_BYTES)  # cut a torn tail left by a crash
                kf.truncate(rows * KEY.itemsize)
                try:
                    px.write(thumbs.tobytes())
                    px.flush()
                    kf.write(keys.tobytes())  # keys last: a row exists once its key does
                    kf.flush()
                except OSError:  # a full disk: give back what was written of these rows
                    for fh, size in ((px, THUMB_BYTES), (kf, KEY.itemsize)):
                        try:
                            fh.truncate(rows * size)
                        except OSError:
                            pass
                    raise
        return len(ids)

    @contextmanager
    def shared(self):
        """Hold the cache's shared lock: no rewrite can happen meanwhile (appends wait too)."""
        with self._lock(fcntl.LOCK_SH):
            yield

    def read_keys(self) -> CacheIndex:
        """The whole rows' keys as a :class:`CacheIndex`; call it holding :meth:`shared`."""
        rows = self._rows_on_disk()
        return CacheIndex(np.fromfile(self.keys_path, dtype=KEY, count=rows) if rows else np.empty(0, KEY))

    def load(self) -> tuple[np.ndarray | None, CacheIndex]:
        """The pixels as a read-only ``(n, 64, 64, 3)`` memory map and the rows' :class:`CacheIndex`;
        ``(None, empty index)`` when empty or unreadable."""
        try:
            with self.shared():
                index = self.read_keys()
                if not index.size:
                    return None, index
                pixels = np.memmap(self.pixels_path, dtype=np.uint8, mode="r",
                                   shape=(index.size, THUMB_SIZE, THUMB_SIZE, 3))
                self.identity = self._generation()
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable mosaic cache in %s: %s", self.folder, exc)
            return None, CacheIndex(np.empty(0, KEY))
        return pixels, index

    def _bad_path(self, generation: str) -> Path:
        return self.folder / f"{THUMB_PREFIX}.v{CACHE_VERSION}.{generation or 'none'}.bad.npy"

    def bad_rows(self, generation: str | None = None) -> np.ndarray:
        """Sorted int64 cache rows ``verify`` found to disagree with their tiles (:meth:`mark_bad`),
        for ``generation`` (default: the current one); empty when none or unreadable."""
        path = self._bad_path(self._generation() if generation is None else generation)
        try:
            rows = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return np.empty(0, dtype=np.int64)
        return np.unique(rows.astype(np.int64)) if rows.ndim == 1 and rows.dtype.kind in "iu" else np.empty(0, np.int64)

    def mark_bad(self, rows: Sequence[int]) -> None:
        """Record cache rows that disagree with their tiles, so that no mosaic uses them: a load
        treats them as not cached (the tile is decoded and its thumbnail appended, which then
        wins).  A read-only ``verify`` leaves this mark; ``verify --repair`` appends the right rows."""
        with self._lock(fcntl.LOCK_EX):
            generation = self._generation()
            path = self._bad_path(generation)
            rows = np.union1d(self.bad_rows(generation), np.asarray(rows, dtype=np.int64))
            part = path.with_name(f".{path.name}.{os.getpid()}.part")
            with open(part, "wb") as fh:
                np.save(fh, rows, allow_pickle=False)
            os.replace(part, path)
            for stale in self.folder.glob(f"{THUMB_PREFIX}.v{CACHE_VERSION}.*.bad.npy"):
                if stale != path:
                    stale.unlink(missing_ok=True)

    def rewrite(self, ids: Sequence[str], phashes: Sequence[str], thumbs: np.ndarray) -> None:
        """Replace the whole cache by these rows (drops dead rows; empties a cache found wrong)."""
        with self._lock(fcntl.LOCK_EX):
            for path in (self.keys_path, self.pixels_path):
                path.unlink(missing_ok=True)
            self._new_generation()
        if len(ids):
            self.append(ids, phashes, thumbs)


def _decode_thumbnails(lib: Library, todo: list[tuple[str, int, str]], workers: int | None,
                       progress: bool | None) -> list[np.ndarray | None]:
    show = sys.stderr.isatty() if progress is None else progress
    out: list[np.ndarray | None] = []
    with _pool(workers) as pool, tqdm(total=len(todo), unit="tile", desc="tile thumbnails", disable=not show) as bar:
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


def _pool(workers: int | None) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, workers or min(4, os.cpu_count() or 1)))


# One tiles.db row a mosaic reads: its LAB lets a load notice a cached thumbnail of another colour.
ROW = np.dtype([("id", "S36"), ("bucket", np.int64), ("phash", "S16"), ("lab", np.float64, 3)])
SQL_CHUNK = 20_000  # tiles.db rows read per fetchmany


def _tile_rows(lib: Library, real_only: bool) -> np.ndarray:
    """Every ``tiles`` row with a tile id and a bucket id, as :data:`ROW` records in id order,
    read in chunks (no Python object kept per row)."""
    real = " WHERE synthetic = 0" if real_only and "synthetic" in table_columns(lib.conn, "tiles") else ""
    cursor = lib.conn.execute(f"SELECT id, bucket_id, phash, mean_l, mean_a, mean_b FROM tiles{real} ORDER BY id")
    parts = []
    while chunk := cursor.fetchmany(SQL_CHUNK):
        good = [(tile_id.encode("ascii"), bucket_id, (tile_hash or "").encode("ascii", "replace")[:16], _lab(lab))
                for tile_id, bucket_id, tile_hash, *lab in chunk if is_tile_id(tile_id) and is_bucket_id(bucket_id)]
        parts.append(np.array(good, dtype=ROW))
    return np.concatenate(parts) if parts else np.empty(0, ROW)


def _lab(values: Sequence) -> tuple[float, float, float]:
    """A row's stored LAB as floats; NaN where it is not a number (no colour check for that row)."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return out[0], out[1], out[2]


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


def load_tile_table(lib: Library, subcells: int = DEFAULT_SUBCELLS, workers: int | None = None,
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
    decoded = _decode_thumbnails(lib, todo, workers, progress) if todo else []
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
