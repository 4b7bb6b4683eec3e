"""The tile table and its cache: the 64-px thumbnail cache in ``<library>/.cache/`` (load,
validate, spot-check, rewrite) and the tiles' sub-cell colours measured on it."""

from __future__ import annotations

import logging
import os
import re
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..color import N_BUCKETS, rgb_to_lab
from ..decode import TILE_SIZE, decode_tile
from ..errors import ImageRejected, LibraryError
from ..library import Library, is_tile_id
from .target import DEFAULT_SUBCELLS

logger = logging.getLogger(__name__)

CACHE_DIR = ".cache"
CACHE_VERSION = 1
THUMB_SIZE = 64  # thumbnails kept in the cache: 12 KB a tile, about a tenth of its PNG
THUMB_PREFIX = "mosaic_thumbs64"
SPOT_CHECKS = 3


# ============================================================================ tile features
@dataclass
class TileTable:
    """Tiles a mosaic can use: id, bucket, ``s x s`` sub-cell mean RGB, and the 64-px thumbnail
    thumbs they were measured on (``thumbs[thumb_rows[i]]`` is row ``i``'s thumbnail)."""

    ids: np.ndarray  # (n,) str
    bucket_ids: np.ndarray  # (n,) int64
    rgb: np.ndarray  # (n, s, s, 3) float64
    subcells: int
    thumbs: np.ndarray  # (m, 64, 64, 3) uint8, usually a read-only memory map
    thumb_rows: np.ndarray  # (n,) int64
    skipped: int = 0  # rows whose file could not be read
    scratch: object = None  # keeps a temporary cache folder alive (read-only libraries)

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def features(self) -> np.ndarray:
        """LAB of every sub-cell, flattened ``(n, s*s*3)``: what cells are matched against."""
        return rgb_to_lab(self.rgb).reshape(len(self.ids), -1)

    def detail_rgb(self, detail: int, rows: np.ndarray) -> np.ndarray:
        """``(k, d, d, 3)`` mean RGB of ``d x d`` blocks of the thumbnails of table ``rows``."""
        out = np.empty((len(rows), detail, detail, 3), dtype=np.float64)
        for lo in range(0, len(rows), 2048):
            out[lo:lo + 2048] = subcell_means(self.thumbnails(rows[lo:lo + 2048], THUMB_SIZE), detail)
        return out

    def thumbnails(self, rows: np.ndarray, size: int) -> np.ndarray:
        """``(k, size, size, 3)`` thumbnails of table rows from the thumbs (``size`` <= 64)."""
        pixels = np.asarray(self.thumbs[self.thumb_rows[np.asarray(rows, dtype=np.int64)]])
        if size == THUMB_SIZE:
            return pixels
        if THUMB_SIZE % size == 0:  # box reduction, vectorised
            f = THUMB_SIZE // size
            sums = pixels.reshape(len(pixels), size, f, size, f, 3).sum(axis=(2, 4), dtype=np.uint32)
            return ((sums + f * f // 2) // (f * f)).astype(np.uint8)
        return np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.LANCZOS)) for p in pixels])


def _block_edges(size: int, parts: int) -> np.ndarray:
    return np.linspace(0, size, parts + 1).round().astype(np.int64)


def subcell_means(pixels: np.ndarray, subcells: int) -> np.ndarray:
    """Mean RGB of ``s x s`` blocks of ``(..., h, w, 3)`` uint8 images (blocks may differ by 1 px)."""
    h, w = pixels.shape[-3], pixels.shape[-2]
    ys, xs = _block_edges(h, subcells), _block_edges(w, subcells)
    sums = np.add.reduceat(np.add.reduceat(pixels, ys[:-1], axis=-3, dtype=np.uint64), xs[:-1], axis=-2)
    areas = np.diff(ys)[:, None, None] * np.diff(xs)[None, :, None]
    return sums / areas


def _read_tile(lib: Library, bucket_id: int, tile_id: str) -> Image.Image:
    """Decode a stored tile through the same safe decoder as everything else."""
    path = lib.tile_path(int(bucket_id), str(tile_id))
    with open(path, "rb") as fh:
        return decode_tile(fh.read()).image


def tile_thumbnail(lib: Library, bucket_id: int, tile_id: str) -> np.ndarray | None:
    """A tile's 64-px thumbnail (exact 4x4 box average), or None if its file is unusable."""
    try:
        return np.asarray(_read_tile(lib, bucket_id, tile_id).reduce(TILE_SIZE // THUMB_SIZE))
    except (OSError, ImageRejected) as exc:
        logger.warning("tile %s in bucket %s unusable for mosaics: %s", tile_id, bucket_id, exc)
        return None


def cache_dir(lib: Library) -> Path:
    return lib.root / CACHE_DIR


def _index_path(folder: Path) -> Path:
    return folder / f"{THUMB_PREFIX}_index.npz"


def _load_thumbs(folder: Path) -> tuple[dict[tuple[str, str], int], np.ndarray | None, str]:
    """``{(id, phash): row}`` and the memory-mapped thumbnails, or ``({}, None)`` unless all is sane.

    The index names the thumbnail file it describes (a random token), so an index never points
    at a thumbnail file written by another run; shapes, dtypes and ids are checked, nothing unpickled.
    """
    index = _index_path(folder)
    if not index.is_file():
        return {}, None, ""
    try:
        with np.load(index, allow_pickle=False) as npz:
            version, ids, hashes, ok, name = (int(npz["version"]), npz["ids"], npz["phash"], npz["ok"],
                                              str(npz["thumbs"]))
        if not re.fullmatch(rf"{THUMB_PREFIX}\.[0-9a-f]{{16}}\.npy", name):
            raise ValueError(f"bad thumbnail file name {name!r}")
        thumbs = np.load(folder / name, mmap_mode="r", allow_pickle=False)
        sane = (
            version == CACHE_VERSION
            and ids.ndim == 1 and ids.dtype.kind == "U" and hashes.shape == ids.shape and hashes.dtype.kind == "U"
            and ok.shape == ids.shape and ok.dtype == np.bool_
            and thumbs.dtype == np.uint8 and thumbs.shape == (len(ids), THUMB_SIZE, THUMB_SIZE, 3)
            and all(is_tile_id(i) for i in ids.tolist())
        )
    except (OSError, ValueError, KeyError, TypeError, zlib.error, EOFError) as exc:
        logger.warning("ignoring unreadable mosaic cache in %s: %s", folder, exc)
        return {}, None, ""
    if not sane:
        logger.warning("ignoring malformed mosaic cache in %s", folder)
        return {}, None, ""
    keys = {(i, h): r for r, (i, h, good) in enumerate(zip(ids.tolist(), hashes.tolist(), ok.tolist())) if good}
    return keys, thumbs, name


def _writable_folder(folder: Path) -> bool:
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _write_thumbs(folder: Path, rows: list[tuple[str, int, str]], sources: list[int | None], old: np.ndarray | None,
                 lib: Library, workers: int | None, progress: bool | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Write a new thumbnail file (reused rows copied, others decoded) and its index; returns (thumbs, ok, name)."""
    token = os.urandom(8).hex()
    name = f"{THUMB_PREFIX}.{token}.npy"
    part = folder / f".{name}.part"
    n = len(rows)
    thumbs = np.lib.format.open_memmap(part, mode="w+", dtype=np.uint8, shape=(n, THUMB_SIZE, THUMB_SIZE, 3))
    ok = np.ones(n, dtype=bool)
    try:
        reused = np.array([i for i, src in enumerate(sources) if src is not None], dtype=np.int64)
        if len(reused) and old is not None:
            src = np.array([sources[i] for i in reused], dtype=np.int64)
            for lo in range(0, len(reused), 4096):
                thumbs[reused[lo:lo + 4096]] = old[src[lo:lo + 4096]]
        todo = [i for i, src in enumerate(sources) if src is None]
        show = sys.stderr.isatty() if progress is None else progress
        with _pool(workers) as pool, tqdm(total=len(todo), unit="tile", desc="tile thumbnails", disable=not show) as bar:
            jobs = pool.map(lambda i: tile_thumbnail(lib, rows[i][1], rows[i][0]), todo)
            for i, thumb in zip(todo, jobs):
                if thumb is None:
                    ok[i] = False
                else:
                    thumbs[i] = thumb
                bar.update()
        thumbs.flush()
        del thumbs
        os.replace(part, folder / name)
        index_part = folder / f".{THUMB_PREFIX}_index.{token}.part"
        with open(index_part, "wb") as fh:
            np.savez(fh, version=np.array(CACHE_VERSION), thumbs=np.array(name),
                     ids=np.array([r[0] for r in rows], dtype="U36"), phash=np.array([r[2] for r in rows], dtype=str),
                     ok=ok)
        os.replace(index_part, _index_path(folder))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    for stale in folder.glob(f"{THUMB_PREFIX}.*.npy"):
        if not stale.name.startswith(f"{THUMB_PREFIX}.{token}."):  # older thumbnail files and their feature files
            stale.unlink(missing_ok=True)
    return np.load(folder / name, mmap_mode="r", allow_pickle=False), ok, name


def _subcell_rgb(thumbs: np.ndarray, subcells: int, path: Path, checked: dict[int, np.ndarray]) -> np.ndarray:
    """Sub-cell mean RGB of every cached row, from its small derived file when that is sane and
    agrees with the freshly decoded spot-check tiles; else computed from the thumbnails and saved."""
    shape = (len(thumbs), subcells, subcells, 3)
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("ignoring unreadable %s: %s", path, exc)
        else:
            sane = (cached.shape == shape and cached.dtype == np.float64 and np.isfinite(cached).all()
                    and cached.min(initial=0) >= 0 and cached.max(initial=0) <= 255)
            if sane and all(np.allclose(subcell_means(t, subcells), cached[r], atol=1e-9) for r, t in checked.items()):
                return cached
            logger.warning("ignoring %s: it disagrees with the thumbnails", path)
    rgb = np.empty(shape, dtype=np.float64)
    for lo in range(0, len(thumbs), 2048):
        rgb[lo:lo + 2048] = subcell_means(np.asarray(thumbs[lo:lo + 2048]), subcells)
    try:
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        with open(part, "wb") as fh:
            np.save(fh, rgb, allow_pickle=False)
        os.replace(part, path)
    except OSError as exc:
        logger.info("sub-cell colours not cached (%s)", exc)
    return rgb


def _pool(workers: int | None) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, workers or min(4, os.cpu_count() or 1)))


def load_tile_table(lib: Library, subcells: int = DEFAULT_SUBCELLS, workers: int | None = None,
                    progress: bool | None = None, use_cache: bool = True) -> TileTable:
    """Every usable tile with its thumbnail and sub-cell colours.

    The thumbnail cache lives in ``<library>/.cache/`` and is matched to ``tiles.db`` row by
    row on ``(id, phash)``: unchanged tiles are reused, new ones decoded, deleted ones dropped,
    and a few reused thumbnails are re-decoded and compared byte for byte, so a cache that
    disagrees with the files is thrown away.  A library folder we cannot write to (or
    ``use_cache=False``) gets a temporary cache instead.
    """
    import tempfile

    rows = [
        (tile_id, bucket_id, tile_hash or "")
        for tile_id, bucket_id, tile_hash in lib.conn.execute("SELECT id, bucket_id, phash FROM tiles ORDER BY id")
        if is_tile_id(tile_id) and isinstance(bucket_id, int) and 0 <= bucket_id < N_BUCKETS
    ]
    if not rows:
        raise LibraryError(f"{lib.root} holds no tiles: harvest or ingest some before making a mosaic")
    folder, scratch = cache_dir(lib), None
    keys, old, name = _load_thumbs(folder) if use_cache else ({}, None, "")
    if not (use_cache and _writable_folder(folder)):
        scratch = tempfile.TemporaryDirectory(prefix="mosaic_thumbs_")
        folder = Path(scratch.name)
    sources = [keys.get((tid, h)) for tid, _b, h in rows]
    reused = [i for i, src in enumerate(sources) if src is not None]
    checked: dict[int, np.ndarray] = {}  # thumbs row -> freshly decoded thumbnail
    if reused and old is not None:
        rng = np.random.default_rng()
        for i in rng.choice(reused, size=min(SPOT_CHECKS, len(reused)), replace=False):
            tid, bucket_id, _h = rows[i]
            fresh = tile_thumbnail(lib, bucket_id, tid)
            if fresh is None or not np.array_equal(fresh, old[sources[i]]):
                logger.warning("mosaic cache in %s disagrees with tile %s: rebuilding it", folder, tid)
                sources, old, checked = [None] * len(rows), None, {}
                break
            checked[int(sources[i])] = fresh
    unchanged = old is not None and len(old) == len(rows) and sources == list(range(len(rows)))
    if unchanged and scratch is None:
        thumbs, ok = old, np.ones(len(rows), dtype=bool)
    else:
        thumbs, ok, name = _write_thumbs(folder, rows, sources, old, lib, workers, progress)
        checked = {}
    keep = np.flatnonzero(ok)
    if not len(keep):
        raise LibraryError(f"{lib.root}: no tile file could be read; run `python -m builder verify`")
    rgb = _subcell_rgb(thumbs, subcells, folder / name.replace(".npy", f".sub{subcells}.npy"), checked)[keep]
    return TileTable(
        ids=np.array([rows[i][0] for i in keep]),
        bucket_ids=np.array([rows[i][1] for i in keep], dtype=np.int64),
        rgb=rgb,
        subcells=subcells,
        thumbs=thumbs,
        thumb_rows=keep,
        skipped=int((~ok).sum()),
        scratch=scratch,
    )
