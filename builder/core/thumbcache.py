"""The library's thumbnail cache: the 64-px thumbnail of every tile, in ``<library>/.cache/``.

Two append-only files (:class:`ThumbnailCache`): the keys (tile id, pHash) and the pixels, row
for row.  The store's pipeline appends a committed batch's thumbnails (decoded by its workers
anyway), a mosaic reads them instead of decoding every tile (and appends what it had to decode),
the report draws contact sheets from them, ``verify`` compares them with their tiles and marks
wrong rows (:meth:`ThumbnailCache.mark_bad`), ``repair`` appends the right ones.  It is derived
data: matched to ``tiles.db`` on ``(id, phash)`` (:class:`CacheIndex`, :func:`cache_keys`).
Thumbnails are the exact 4x4 box average of a tile (:func:`thumbnail`), read from the memory
map a few rows at a time with the pages released (:func:`read_thumbs`, :func:`release_pages`).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from .decode import decode_tile
from .errors import BadTile, ImageRejected
from .layout import CACHE_DIR, THUMB_SIZE, TILE_SIZE, is_tile_id
from .library import Library
from .scratch import dead_scratch, scratch_path

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: append-only keys + pixels files (1 was one rewritten .npy and an index)
THUMB_BYTES = THUMB_SIZE * THUMB_SIZE * 3
THUMB_PREFIX = "mosaic_thumbs64"
KEY = np.dtype([("id", "S36"), ("phash", "S16")])  # one row's key in the keys file
KEY_BYTES = np.dtype(f"S{KEY.itemsize}")  # a key as one byte string: sorts and compares as (id, phash)
LOCK_NAME = ".mosaic_thumbs.lock"
THUMB_READ_ROWS = 128  # thumbnails read between page releases: ~8 MB of mapped pages at most


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
