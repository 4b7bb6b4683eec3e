"""Photomosaics: any picture redrawn with the library's tiles.

How a mosaic is made, and why:

1. **Target.**  The input is opened with decode-like safety (byte and pixel limits checked
   from the header before any decode; unknown formats rejected as :class:`ImageRejected`).
   Only its ``s x s`` sub-cell colours are needed, so a JPEG is decoded at a reduced scale
   (``draft``) and the sub-cell means come from one box-filtered resize.
2. **Tile thumbnails and features.**  Every tile is decoded once per library into a 64-px
   thumbnail atlas (an uncompressed, memory-mapped ``.npy`` in ``<library>/.cache/``, about a
   tenth of the tiles' PNG size).  It is a derived file: matched row by row on ``(id, phash)``
   against the current ``tiles.db`` (new tiles added, deleted ones dropped), validated on
   load (no pickles, shapes, ids), spot-checked against re-decoded tiles, and rebuilt when
   anything disagrees.  The ``s x s`` sub-cell mean colours are computed from it per run.
3. **Candidates.**  A cell's mean LAB picks buckets through a KD-tree over the *populated*
   centroids: its own bucket when that holds tiles, else the nearest populated ones (the
   fallback).  Whole buckets are taken, nearest first, until there are at least
   ``min_candidates`` tiles (and enough to honour the repetition radius).  All of this is
   vectorised over cells.
4. **Choice.**  Candidates are ranked by the distance between the cell's and the tile's
   sub-cell LAB vectors (texture and colour layout, not only the mean).  Only the repetition
   constraint needs a loop over cells: in raster order each cell takes its best candidate not
   used by any already placed cell within ``no_repeat_radius`` (Chebyshev distance), which
   makes the constraint hold for every pair of cells.
5. **Rendering.**  Output rows are produced one band of cells at a time; every used tile is
   fetched once (a slice of the atlas for tile sizes up to 64 px; above that its PNG is
   decoded, on threads, since Pillow releases the GIL while inflating), kept at tile-size
   resolution only from the first to the last row that uses it, and gathered into the band
   with one fancy-indexing operation.  ``blend`` shifts each tile's sub-cell mean colours that
   fraction of the way to the target's (bilinearly interpolated), which keeps the tile's
   texture while the picture reads better.  :func:`write_mosaic` streams the bands into a PNG,
   so the whole output never has to be in memory.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import struct
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ..color import N_BUCKETS, rgb_to_lab
from ..decode import TILE_SIZE, decode_tile
from ..errors import ImageRejected, LibraryError, UsageError
from ..library import Library, is_tile_id
from ..query import PopulatedIndex

logger = logging.getLogger(__name__)

MAX_TARGET_BYTES = 256 * 1024 * 1024
MAX_TARGET_PIXELS = 64_000_000  # 8000 x 8000: any camera photo, not a decompression bomb
TARGET_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
MAX_CELLS = 250_000
MAX_SUBCELLS = 8
MAX_STREAM_PIXELS = 600_000_000  # streamed PNG (about 1.8 GB of pixels, never all in memory)
MAX_IMAGE_PIXELS = 150_000_000  # a returned PIL image lives in memory: 450 MB
DEFAULT_LONG_SIDE_CELLS = 64
DEFAULT_MIN_TILE = 32
DEFAULT_RADIUS = 2
DEFAULT_SUBCELLS = 2
DEFAULT_MIN_CANDIDATES = 32
CACHE_DIR = ".cache"
CACHE_VERSION = 1
ATLAS_SIZE = 64  # thumbnails kept in the cache: 12 KB a tile, about a tenth of its PNG
ATLAS_PREFIX = "mosaic_thumbs64"
SPOT_CHECKS = 3
_CHUNK_BYTES = 32 * 1024 * 1024  # temporaries per vectorised step over cells


# ============================================================================ options and plan
@dataclass(frozen=True)
class MosaicOptions:
    """What the user controls.  Give ``cell_size`` (target pixels) or ``grid`` (cols, rows)."""

    cell_size: int | None = None
    grid: tuple[int, int] | None = None
    tile_size: int | None = None
    no_repeat_radius: int = DEFAULT_RADIUS
    blend: float = 0.0
    subcells: int = DEFAULT_SUBCELLS
    min_candidates: int = DEFAULT_MIN_CANDIDATES
    workers: int | None = None

    def validate(self) -> MosaicOptions:
        if self.cell_size is not None and self.grid is not None:
            raise UsageError("give --cell-size or --grid, not both")
        if self.cell_size is not None and (not isinstance(self.cell_size, int) or self.cell_size < 1):
            raise UsageError(f"--cell-size must be a positive integer, got {self.cell_size!r}")
        if self.grid is not None and (len(self.grid) != 2 or min(self.grid) < 1):
            raise UsageError(f"--grid must be COLSxROWS with both at least 1, got {self.grid!r}")
        if self.tile_size is not None and not 1 <= self.tile_size <= TILE_SIZE:
            raise UsageError(f"--tile-size must be within 1..{TILE_SIZE}, got {self.tile_size!r}")
        if not isinstance(self.no_repeat_radius, int) or self.no_repeat_radius < 0:
            raise UsageError(f"--no-repeat-radius must be 0 or more, got {self.no_repeat_radius!r}")
        if not (isinstance(self.blend, (int, float)) and 0.0 <= self.blend <= 1.0):
            raise UsageError(f"--blend must be within 0..1, got {self.blend!r}")
        if not isinstance(self.subcells, int) or not 1 <= self.subcells <= MAX_SUBCELLS:
            raise UsageError(f"--subcells must be within 1..{MAX_SUBCELLS}, got {self.subcells!r}")
        if not isinstance(self.min_candidates, int) or self.min_candidates < 1:
            raise UsageError(f"min_candidates must be a positive integer, got {self.min_candidates!r}")
        return self


def parse_grid(text: str) -> tuple[int, int]:
    """``"48x32"`` -> ``(48, 32)`` (columns, rows)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match:
        raise UsageError(f"--grid must look like COLSxROWS (e.g. 48x32), got {text!r}")
    cols, rows = int(match.group(1)), int(match.group(2))
    if cols < 1 or rows < 1:
        raise UsageError(f"--grid needs at least 1 column and 1 row, got {text!r}")
    return cols, rows


class Layout:
    """Where the cells lie in the target and how big the output is."""

    def __init__(self, width: int, height: int, options: MosaicOptions) -> None:
        if options.cell_size is not None:
            cell = float(options.cell_size)
            cols, rows = width // options.cell_size, height // options.cell_size
            if cols < 1 or rows < 1:
                raise UsageError(f"--cell-size {options.cell_size} is larger than the {width}x{height} image")
        else:
            if options.grid is not None:
                cols, rows = options.grid
            elif width >= height:
                cols = DEFAULT_LONG_SIDE_CELLS
                rows = max(1, int(height * cols / width))
            else:
                rows = DEFAULT_LONG_SIDE_CELLS
                cols = max(1, int(width * rows / height))
            cell = min(width / cols, height / rows)
        if cols * rows > MAX_CELLS:
            raise UsageError(f"{cols}x{rows} = {cols * rows} cells is more than {MAX_CELLS}: use larger cells")
        self.cols, self.rows, self.cell = int(cols), int(rows), cell
        # Centre the cells; the few pixels left over at the edges are cropped.
        x0, y0 = (width - cols * cell) / 2, (height - rows * cell) / 2
        self.box = (x0, y0, x0 + cols * cell, y0 + rows * cell)
        self.tile = options.tile_size or int(min(TILE_SIZE, max(DEFAULT_MIN_TILE, round(cell))))

    @property
    def output_size(self) -> tuple[int, int]:
        return self.cols * self.tile, self.rows * self.tile


# ============================================================================ target image
def _sniff_target(path: Path) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UsageError(f"no such input image: {path}") from None
    if not path.is_file():
        raise ImageRejected("not_a_file", str(path))
    if info.st_size == 0:
        raise ImageRejected("empty", f"{path}: 0 bytes")
    if info.st_size > MAX_TARGET_BYTES:
        raise ImageRejected("too_large", f"{path}: {info.st_size} bytes > {MAX_TARGET_BYTES}")


def open_target(source: str | os.PathLike | Image.Image) -> Image.Image:
    """Open an input picture lazily, with the checks that must come before decoding.

    Pillow's own bomb limit is this process's (``builder.decode`` lowers it for tiles), so the
    header is read with our larger target limit and every size is checked here explicitly.
    """
    if isinstance(source, Image.Image):
        if source.width * source.height > MAX_TARGET_PIXELS:
            raise ImageRejected("too_large", f"{source.width}x{source.height} exceeds {MAX_TARGET_PIXELS} pixels")
        return source
    path = Path(source)
    _sniff_target(path)
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_TARGET_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path, formats=TARGET_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected("not_image", f"{path}: not a {'/'.join(TARGET_FORMATS)} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_large", f"{path}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("corrupt", f"{path}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    width, height = img.size
    if width < 1 or height < 1 or width * height > MAX_TARGET_PIXELS:
        img.close()
        raise ImageRejected("too_large", f"{path}: {width}x{height} exceeds {MAX_TARGET_PIXELS} pixels")
    return img


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not stop a mosaic
        return 1


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """Size as the picture is meant to be seen (EXIF orientations 5-8 swap the sides)."""
    width, height = img.size
    return (height, width) if _orientation(img) in (5, 6, 7, 8) else (width, height)


def target_subcells(img: Image.Image, layout: Layout, subcells: int) -> np.ndarray:
    """Mean RGB of every sub-cell, ``(rows * s, cols * s, 3)`` float32, vectorised.

    JPEGs decode at the smallest scale that keeps two pixels per sub-cell; the crop box is
    scaled to whatever size the decode produced.
    """
    disp_w, disp_h = displayed_size(img)
    need_w, need_h = layout.cols * subcells * 2, layout.rows * subcells * 2
    crop_w, crop_h = layout.box[2] - layout.box[0], layout.box[3] - layout.box[1]
    factor = min(1.0, max(need_w / crop_w, need_h / crop_h))
    try:
        if img.format == "JPEG" and factor < 0.5:
            img.draft("RGB", (math.ceil(img.width * factor), math.ceil(img.height * factor)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected("corrupt", str(exc)) from None
    sx, sy = img.width / disp_w, img.height / disp_h
    x0, y0, x1, y1 = layout.box
    small = img.resize(
        (layout.cols * subcells, layout.rows * subcells), Image.Resampling.BOX, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    )
    return np.asarray(small, dtype=np.float32)


# ============================================================================ tile features
@dataclass
class TileTable:
    """Tiles a mosaic can use: id, bucket, ``s x s`` sub-cell mean RGB, and the 64-px thumbnail
    atlas they were measured on (``atlas[atlas_rows[i]]`` is row ``i``'s thumbnail)."""

    ids: np.ndarray  # (n,) str
    bucket_ids: np.ndarray  # (n,) int64
    rgb: np.ndarray  # (n, s, s, 3) float64
    subcells: int
    atlas: np.ndarray  # (m, 64, 64, 3) uint8, usually a read-only memory map
    atlas_rows: np.ndarray  # (n,) int64
    skipped: int = 0  # rows whose file could not be read
    scratch: object = None  # keeps a temporary atlas folder alive (read-only libraries)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def features(self) -> np.ndarray:
        """LAB of every sub-cell, flattened ``(n, s*s*3)``: what cells are matched against."""
        return rgb_to_lab(self.rgb).reshape(len(self.ids), -1)

    def thumbnails(self, rows: np.ndarray, size: int) -> np.ndarray:
        """``(k, size, size, 3)`` thumbnails of table rows from the atlas (``size`` <= 64)."""
        pixels = np.asarray(self.atlas[self.atlas_rows[np.asarray(rows, dtype=np.int64)]])
        if size == ATLAS_SIZE:
            return pixels
        if ATLAS_SIZE % size == 0:  # box reduction, vectorised
            f = ATLAS_SIZE // size
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


def atlas_thumbnail(lib: Library, bucket_id: int, tile_id: str) -> np.ndarray | None:
    """A tile's 64-px thumbnail (exact 4x4 box average), or None if its file is unusable."""
    try:
        return np.asarray(_read_tile(lib, bucket_id, tile_id).reduce(TILE_SIZE // ATLAS_SIZE))
    except (OSError, ImageRejected) as exc:
        logger.warning("tile %s in bucket %s unusable for mosaics: %s", tile_id, bucket_id, exc)
        return None


def cache_dir(lib: Library) -> Path:
    return lib.root / CACHE_DIR


def _index_path(folder: Path) -> Path:
    return folder / f"{ATLAS_PREFIX}_index.npz"


def _load_atlas(folder: Path) -> tuple[dict[tuple[str, str], int], np.ndarray | None, str]:
    """``{(id, phash): row}`` and the memory-mapped atlas, or ``({}, None)`` unless all is sane.

    The index names the atlas file it describes (a random token), so an index never points
    at an atlas written by another run; shapes, dtypes and ids are checked, nothing unpickled.
    """
    index = _index_path(folder)
    if not index.is_file():
        return {}, None, ""
    try:
        with np.load(index, allow_pickle=False) as npz:
            version, ids, hashes, ok, name = (int(npz["version"]), npz["ids"], npz["phash"], npz["ok"],
                                              str(npz["atlas"]))
        if not re.fullmatch(rf"{ATLAS_PREFIX}\.[0-9a-f]{{16}}\.npy", name):
            raise ValueError(f"bad atlas name {name!r}")
        atlas = np.load(folder / name, mmap_mode="r", allow_pickle=False)
        sane = (
            version == CACHE_VERSION
            and ids.ndim == 1 and ids.dtype.kind == "U" and hashes.shape == ids.shape and hashes.dtype.kind == "U"
            and ok.shape == ids.shape and ok.dtype == np.bool_
            and atlas.dtype == np.uint8 and atlas.shape == (len(ids), ATLAS_SIZE, ATLAS_SIZE, 3)
            and all(is_tile_id(i) for i in ids.tolist())
        )
    except (OSError, ValueError, KeyError, TypeError, zlib.error, EOFError) as exc:
        logger.warning("ignoring unreadable mosaic cache in %s: %s", folder, exc)
        return {}, None, ""
    if not sane:
        logger.warning("ignoring malformed mosaic cache in %s", folder)
        return {}, None, ""
    keys = {(i, h): r for r, (i, h, good) in enumerate(zip(ids.tolist(), hashes.tolist(), ok.tolist())) if good}
    return keys, atlas, name


def _writable_folder(folder: Path) -> bool:
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _write_atlas(folder: Path, rows: list[tuple[str, int, str]], sources: list[int | None], old: np.ndarray | None,
                 lib: Library, workers: int | None, progress: bool | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Write a new atlas (reused rows copied, others decoded) and its index; returns (atlas, ok, name)."""
    token = os.urandom(8).hex()
    name = f"{ATLAS_PREFIX}.{token}.npy"
    part = folder / f".{name}.part"
    n = len(rows)
    atlas = np.lib.format.open_memmap(part, mode="w+", dtype=np.uint8, shape=(n, ATLAS_SIZE, ATLAS_SIZE, 3))
    ok = np.ones(n, dtype=bool)
    try:
        reused = np.array([i for i, src in enumerate(sources) if src is not None], dtype=np.int64)
        if len(reused) and old is not None:
            src = np.array([sources[i] for i in reused], dtype=np.int64)
            for lo in range(0, len(reused), 4096):
                atlas[reused[lo:lo + 4096]] = old[src[lo:lo + 4096]]
        todo = [i for i, src in enumerate(sources) if src is None]
        show = sys.stderr.isatty() if progress is None else progress
        with _pool(workers) as pool, tqdm(total=len(todo), unit="tile", desc="tile thumbnails", disable=not show) as bar:
            jobs = pool.map(lambda i: atlas_thumbnail(lib, rows[i][1], rows[i][0]), todo)
            for i, thumb in zip(todo, jobs):
                if thumb is None:
                    ok[i] = False
                else:
                    atlas[i] = thumb
                bar.update()
        atlas.flush()
        del atlas
        os.replace(part, folder / name)
        index_part = folder / f".{ATLAS_PREFIX}_index.{token}.part"
        with open(index_part, "wb") as fh:
            np.savez(fh, version=np.array(CACHE_VERSION), atlas=np.array(name),
                     ids=np.array([r[0] for r in rows], dtype="U36"), phash=np.array([r[2] for r in rows], dtype=str),
                     ok=ok)
        os.replace(index_part, _index_path(folder))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    for stale in folder.glob(f"{ATLAS_PREFIX}.*.npy"):
        if not stale.name.startswith(f"{ATLAS_PREFIX}.{token}."):  # older atlases and their feature files
            stale.unlink(missing_ok=True)
    return np.load(folder / name, mmap_mode="r", allow_pickle=False), ok, name


def _subcell_rgb(atlas: np.ndarray, subcells: int, path: Path, checked: dict[int, np.ndarray]) -> np.ndarray:
    """Sub-cell mean RGB of every atlas row, from its small derived file when that is sane and
    agrees with the freshly decoded spot-check tiles; else computed from the atlas and saved."""
    shape = (len(atlas), subcells, subcells, 3)
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
            logger.warning("ignoring %s: it disagrees with the atlas", path)
    rgb = np.empty(shape, dtype=np.float64)
    for lo in range(0, len(atlas), 2048):
        rgb[lo:lo + 2048] = subcell_means(np.asarray(atlas[lo:lo + 2048]), subcells)
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

    The thumbnail atlas lives in ``<library>/.cache/`` and is matched to ``tiles.db`` row by
    row on ``(id, phash)``: unchanged tiles are reused, new ones decoded, deleted ones dropped,
    and a few reused thumbnails are re-decoded and compared byte for byte, so a cache that
    disagrees with the files is thrown away.  A library folder we cannot write to (or
    ``use_cache=False``) gets a temporary atlas instead.
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
    keys, old, name = _load_atlas(folder) if use_cache else ({}, None, "")
    if not (use_cache and _writable_folder(folder)):
        scratch = tempfile.TemporaryDirectory(prefix="mosaic_atlas_")
        folder = Path(scratch.name)
    sources = [keys.get((tid, h)) for tid, _b, h in rows]
    reused = [i for i, src in enumerate(sources) if src is not None]
    checked: dict[int, np.ndarray] = {}  # atlas row -> freshly decoded thumbnail
    if reused and old is not None:
        rng = np.random.default_rng()
        for i in rng.choice(reused, size=min(SPOT_CHECKS, len(reused)), replace=False):
            tid, bucket_id, _h = rows[i]
            fresh = atlas_thumbnail(lib, bucket_id, tid)
            if fresh is None or not np.array_equal(fresh, old[sources[i]]):
                logger.warning("mosaic cache in %s disagrees with tile %s: rebuilding it", folder, tid)
                sources, old, checked = [None] * len(rows), None, {}
                break
            checked[int(sources[i])] = fresh
    unchanged = old is not None and len(old) == len(rows) and sources == list(range(len(rows)))
    if unchanged and scratch is None:
        atlas, ok = old, np.ones(len(rows), dtype=bool)
    else:
        atlas, ok, name = _write_atlas(folder, rows, sources, old, lib, workers, progress)
        checked = {}
    keep = np.flatnonzero(ok)
    if not len(keep):
        raise LibraryError(f"{lib.root}: no tile file could be read; run `python -m builder verify`")
    rgb = _subcell_rgb(atlas, subcells, folder / name.replace(".npy", f".sub{subcells}.npy"), checked)[keep]
    return TileTable(
        ids=np.array([rows[i][0] for i in keep]),
        bucket_ids=np.array([rows[i][1] for i in keep], dtype=np.int64),
        rgb=rgb,
        subcells=subcells,
        atlas=atlas,
        atlas_rows=keep,
        skipped=int((~ok).sum()),
        scratch=scratch,
    )


# ============================================================================ matching
def required_tiles(radius: int) -> int:
    """Distinct tiles needed so a cell always has a free one: the already placed cells of its
    window (rows above and the cells to its left) plus one."""
    return 2 * radius * (radius + 1) + 1


def _chunk(bytes_per_cell: int) -> int:
    """Cells per vectorised step so that one step's temporaries stay near :data:`_CHUNK_BYTES`."""
    return max(16, _CHUNK_BYTES // max(1, bytes_per_cell))


def candidate_tiles(table: TileTable, index: PopulatedIndex, cell_lab: np.ndarray, minimum: int) -> np.ndarray:
    """Tiles of each cell's nearest populated buckets, whole buckets until ``minimum`` tiles.

    Returns ``(cells, width)`` table row indices padded with -1.  Vectorised: bucket slots
    are mapped to positions with cumulative counts, never a loop over cells.
    """
    counts = np.bincount(table.bucket_ids, minlength=N_BUCKETS)
    order = np.argsort(table.bucket_ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    minimum = min(minimum, len(table))
    # Enough buckets for any cell: the smallest populated buckets together reach ``minimum``.
    smallest = np.cumsum(np.sort(counts[counts > 0]))
    k = int(min(len(smallest), np.searchsorted(smallest, minimum) + 1))
    near = index.query(cell_lab, k)
    bucket_ids, bucket_counts = near.bucket_ids, near.counts
    cum = np.cumsum(bucket_counts, axis=1)
    before = cum - bucket_counts
    included = before < minimum
    n_cand = np.where(included, cum, 0).max(axis=1)
    width = int(n_cand.max())
    out = np.full((len(cell_lab), width), -1, dtype=np.int64)
    pos = np.arange(width)
    chunk = _chunk(width * k)
    for lo in range(0, len(cell_lab), chunk):
        sl = slice(lo, lo + chunk)
        slot = (pos[None, :, None] >= cum[sl][:, None, :]).sum(axis=2)  # which bucket each position falls in
        slot = np.minimum(slot, k - 1)
        rows = np.arange(slot.shape[0])[:, None]
        bucket = bucket_ids[sl][rows, slot]
        offset = pos[None, :] - before[sl][rows, slot]
        valid = pos[None, :] < n_cand[sl][:, None]
        tiles = order[np.clip(starts[bucket] + offset, 0, len(order) - 1)]
        out[sl] = np.where(valid, tiles, -1)
    return out


def rank_candidates(features: np.ndarray, cell_features: np.ndarray, candidates: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` best candidates per cell by sub-cell LAB distance, best first (-1 = none)."""
    keep = min(keep, candidates.shape[1])
    ranked = np.full((len(candidates), keep), -1, dtype=np.int64)
    chunk = _chunk(candidates.shape[1] * features.shape[1] * 8)
    for lo in range(0, len(candidates), chunk):
        sl = slice(lo, lo + chunk)
        cand = candidates[sl]
        diff = features[np.maximum(cand, 0)] - cell_features[sl][:, None, :]
        dist = np.einsum("ijk,ijk->ij", diff, diff)
        dist[cand < 0] = np.inf
        if keep < cand.shape[1]:
            part = np.argpartition(dist, keep - 1, axis=1)[:, :keep]
        else:
            part = np.broadcast_to(np.arange(cand.shape[1]), cand.shape)
        best = np.take_along_axis(part, np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable"), axis=1)
        chosen = np.take_along_axis(cand, best, axis=1)
        ranked[sl] = np.where(np.isfinite(np.take_along_axis(dist, best, axis=1)), chosen, -1)
    return ranked


def place_tiles(ranked: np.ndarray, rows: int, cols: int, radius: int) -> np.ndarray:
    """The repetition constraint, the one per-cell loop: no tile twice within ``radius`` cells."""
    if radius == 0:
        return ranked[:, 0].reshape(rows, cols).copy()
    grid = np.full((rows, cols), -1, dtype=np.int64)
    choices = ranked.tolist()
    for r in range(rows):
        top = max(0, r - radius)
        for c in range(cols):
            used = set(grid[top:r + 1, max(0, c - radius):c + radius + 1].ravel().tolist())
            for tile in choices[r * cols + c]:
                if tile not in used and tile >= 0:
                    grid[r, c] = tile
                    break
            else:  # cannot happen when the candidate lists are long enough; kept as a guard
                raise LibraryError(f"no tile left for cell ({r}, {c}) within radius {radius}")
    return grid


# ============================================================================ plan
@dataclass
class MosaicPlan:
    """Which tile goes where, and what the render needs."""

    layout: Layout
    table: TileTable
    grid: np.ndarray  # (rows, cols) indices into ``table``
    target_rgb: np.ndarray  # (rows*s, cols*s, 3) float32 sub-cell colours of the target
    options: MosaicOptions
    fallback_cells: int  # cells whose own bucket is empty
    seconds: dict = field(default_factory=dict)

    @property
    def tile_ids(self) -> np.ndarray:
        """``(rows, cols)`` tile ids: what tests and callers inspect."""
        return self.table.ids[self.grid]

    @property
    def bucket_grid(self) -> np.ndarray:
        return self.table.bucket_ids[self.grid]

    @property
    def output_size(self) -> tuple[int, int]:
        return self.layout.output_size


def plan_mosaic(lib: Library, target: str | os.PathLike | Image.Image, options: MosaicOptions | None = None,
                progress: bool | None = None, table: TileTable | None = None) -> MosaicPlan:
    """Lay out the cells of ``target`` and choose a tile for each.

    Tile files are read only to build, extend or spot-check the thumbnail atlas.
    """
    options = (options or MosaicOptions()).validate()
    started = time.perf_counter()
    img = open_target(target)
    try:
        layout = Layout(*displayed_size(img), options)
        if layout.output_size[0] * layout.output_size[1] > MAX_STREAM_PIXELS:
            raise UsageError(f"output would be {layout.output_size[0]}x{layout.output_size[1]} pixels: use a smaller "
                             "--tile-size or larger cells")
        s = options.subcells
        target_rgb = target_subcells(img, layout, s)
    finally:
        if img is not target:  # opened here from a path: release the file
            img.close()
    t_target = time.perf_counter()
    table = table if table is not None and table.subcells == s else load_tile_table(lib, s, options.workers, progress)
    t_table = time.perf_counter()
    need = required_tiles(options.no_repeat_radius)
    if need > len(table):
        raise UsageError(f"--no-repeat-radius {options.no_repeat_radius} needs at least {need} tiles, the library "
                         f"has {len(table)}: use a smaller radius")
    rows, cols = layout.rows, layout.cols
    sub = target_rgb.astype(np.float64).reshape(rows, s, cols, s, 3)
    cell_lab = rgb_to_lab(sub.mean(axis=(1, 3)).reshape(-1, 3))
    cell_features = rgb_to_lab(sub.transpose(0, 2, 1, 3, 4)).reshape(rows * cols, -1)
    counts = np.bincount(table.bucket_ids, minlength=N_BUCKETS)
    index = PopulatedIndex(lib.centroids, counts)
    own_bucket = lib.index.assign_lab(cell_lab)[0]
    fallback = int((counts[own_bucket] == 0).sum())
    candidates = candidate_tiles(table, index, cell_lab, max(options.min_candidates, need))
    ranked = rank_candidates(table.features, cell_features, candidates, need)
    grid = place_tiles(ranked, rows, cols, options.no_repeat_radius)
    done = time.perf_counter()
    seconds = {"target": t_target - started, "tiles": t_table - t_target, "match": done - t_table}
    return MosaicPlan(layout, table, grid, target_rgb, options, fallback, seconds)


# ============================================================================ rendering
def load_thumbnail(lib: Library, bucket_id: int, tile_id: str, size: int) -> np.ndarray:
    """A tile at ``size`` pixels: integer box reduction first (cheap), Lanczos for the rest."""
    img = _read_tile(lib, bucket_id, tile_id)
    factor = TILE_SIZE // size
    if factor > 1:
        img = img.reduce(factor)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def _interp_axis(n_out: int, n_in: int, band_start: int, band_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation indices/weights for output samples ``band_start .. +band_len`` of an
    ``n_in`` -> ``n_out`` upsampling (pixel centres aligned, edges clamped)."""
    pos = (np.arange(band_start, band_start + band_len) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def _blend_shift(plan: MosaicPlan, diff: np.ndarray, row: int) -> np.ndarray:
    """The colour shift for band ``row`` at output resolution ``(T, cols*T, 3)``."""
    tile = plan.layout.tile
    h_in, w_in = diff.shape[:2]
    y0, y1, wy = _interp_axis(plan.layout.rows * tile, h_in, row * tile, tile)
    x0, x1, wx = _interp_axis(plan.layout.cols * tile, w_in, 0, plan.layout.cols * tile)
    vert = diff[y0] * (1 - wy)[:, None, None] + diff[y1] * wy[:, None, None]
    return vert[:, x0] * (1 - wx)[None, :, None] + vert[:, x1] * wx[None, :, None]


def iter_bands(lib: Library, plan: MosaicPlan, progress: bool | None = None) -> Iterator[np.ndarray]:
    """Yield the output one band of cells at a time, ``(T, cols*T, 3)`` uint8.

    Each used tile is fetched once, when the first band needs it (from the thumbnail atlas
    for tiles up to 64 px, else decoded from its PNG), and its slot is reused after the last
    band that uses it, so memory is bounded by the tiles alive at once.
    """
    layout, grid = plan.layout, plan.grid
    tile, rows, cols = layout.tile, layout.rows, layout.cols
    used, inverse = np.unique(grid, return_inverse=True)
    local = inverse.reshape(rows, cols)
    row_of = np.repeat(np.arange(rows), cols)
    first = np.full(len(used), rows, dtype=np.int64)
    last = np.full(len(used), -1, dtype=np.int64)
    np.minimum.at(first, local.ravel(), row_of)
    np.maximum.at(last, local.ravel(), row_of)
    alive = np.zeros(rows + 1, dtype=np.int64)
    np.add.at(alive, first, 1)
    np.add.at(alive, last + 1, -1)
    slots = np.empty((int(np.cumsum(alive).max()), tile, tile, 3), dtype=np.uint8)
    slot_of = np.full(len(used), -1, dtype=np.int64)
    free = list(range(len(slots)))[::-1]
    blend = float(plan.options.blend)
    diff = None
    if blend > 0:
        s = plan.table.subcells
        tiles_rgb = plan.table.rgb[grid].transpose(0, 2, 1, 3, 4).reshape(rows * s, cols * s, 3)
        diff = (plan.target_rgb - tiles_rgb).astype(np.float32) * blend
    starts_by_row = [np.flatnonzero(first == r) for r in range(rows)]
    ends_by_row = [np.flatnonzero(last == r) for r in range(rows)]
    show = sys.stderr.isatty() if progress is None else progress
    table = plan.table
    with _pool(plan.options.workers) as pool, tqdm(total=rows, unit="row", desc="mosaic", disable=not show) as bar:
        for r in range(rows):
            new = starts_by_row[r]
            if len(new):
                targets = np.array([free.pop() for _ in new], dtype=np.int64)
                slot_of[new] = targets
                if tile <= ATLAS_SIZE:  # from the thumbnail atlas: no PNG decoded at all
                    slots[targets] = table.thumbnails(used[new], tile)
                else:
                    jobs = [(int(table.bucket_ids[used[i]]), str(table.ids[used[i]])) for i in new]
                    for slot, pixels in zip(targets, pool.map(lambda job: load_thumbnail(lib, *job, tile), jobs)):
                        slots[slot] = pixels
            band = slots[slot_of[local[r]]]  # (cols, T, T, 3)
            band = band.transpose(1, 0, 2, 3).reshape(tile, cols * tile, 3)
            if diff is not None:
                band = np.clip(band + _blend_shift(plan, diff, r), 0, 255).round().astype(np.uint8)
            yield band
            for i in ends_by_row[r]:
                free.append(int(slot_of[i]))
            bar.update()


def render_mosaic(lib: Library, plan: MosaicPlan, progress: bool | None = None) -> Image.Image:
    """The whole mosaic as a PIL image (bounded by :data:`MAX_IMAGE_PIXELS`)."""
    width, height = plan.output_size
    if width * height > MAX_IMAGE_PIXELS:
        raise UsageError(f"a {width}x{height} mosaic is too large to hold in memory: write it with write_mosaic")
    out = np.empty((height, width, 3), dtype=np.uint8)
    tile = plan.layout.tile
    for r, band in enumerate(iter_bands(lib, plan, progress)):
        out[r * tile:(r + 1) * tile] = band
    return Image.fromarray(out, "RGB")


def make_mosaic(lib: Library, target: str | os.PathLike | Image.Image, options: MosaicOptions | None = None,
                progress: bool | None = None) -> Image.Image:
    """Photomosaic of ``target`` from ``lib``'s tiles, as a PIL image."""
    return render_mosaic(lib, plan_mosaic(lib, target, options, progress), progress)


# ============================================================================ streamed PNG
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PngStreamWriter:
    """Write an RGB PNG band by band (``Sub`` filter, zlib level 6) to ``path`` atomically."""

    def __init__(self, path: Path, width: int, height: int, level: int = 6) -> None:
        self.path, self.width, self.height = Path(path), width, height
        self.part = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")
        self.fh: io.BufferedWriter | None = open(self.part, "wb")
        self.z = zlib.compressobj(level)
        self.rows = 0
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        self.fh.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr))

    def write(self, rows: np.ndarray) -> None:
        assert self.fh is not None and rows.dtype == np.uint8 and rows.shape[1:] == (self.width, 3)
        flat = rows.reshape(len(rows), -1)
        filtered = np.empty((len(rows), flat.shape[1] + 1), dtype=np.uint8)
        filtered[:, 0] = 1  # Sub: each byte minus the byte one pixel to the left (mod 256)
        filtered[:, 1:4] = flat[:, :3]
        np.subtract(flat[:, 3:], flat[:, :-3], out=filtered[:, 4:])
        data = self.z.compress(filtered.tobytes())
        if data:
            self.fh.write(_png_chunk(b"IDAT", data))
        self.rows += len(rows)

    def close(self) -> None:
        assert self.fh is not None
        if self.rows != self.height:
            raise ValueError(f"PNG has {self.rows} rows written, {self.height} declared")
        self.fh.write(_png_chunk(b"IDAT", self.z.flush()) + _png_chunk(b"IEND", b""))
        self.fh.close()
        self.fh = None
        os.replace(self.part, self.path)

    def abort(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        self.part.unlink(missing_ok=True)


def check_output_path(lib: Library, output: str | os.PathLike) -> Path:
    out = Path(output)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--output must be a .png file, got {str(output)!r}")
    resolved = out.resolve()
    if resolved == lib.root.resolve() or lib.root.resolve() in resolved.parents:
        raise UsageError(f"--output {output} is inside the library {lib.root}: write it elsewhere")
    if out.is_dir():
        raise UsageError(f"--output {output} is a folder")
    return out


def write_mosaic(lib: Library, plan: MosaicPlan, output: str | os.PathLike, progress: bool | None = None) -> Path:
    """Stream the mosaic into a PNG file band by band; returns its path."""
    out = check_output_path(lib, output)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = PngStreamWriter(out, *plan.output_size)
    try:
        for band in iter_bands(lib, plan, progress):
            writer.write(band)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return out


@dataclass
class MosaicResult:
    output: Path
    plan: MosaicPlan
    seconds: float

    def summary(self) -> str:
        p = self.plan
        w, h = p.output_size
        buckets = len(np.unique(p.bucket_grid))
        return (
            f"mosaic {self.output}: {w}x{h} px, {p.layout.cols}x{p.layout.rows} cells of {p.layout.tile} px, "
            f"{len(np.unique(p.grid))} distinct tiles from {buckets} buckets, "
            f"{p.fallback_cells} cells fell back to a nearby populated bucket, {self.seconds:.1f} s"
        )


def mosaic_file(lib: Library, target: str | os.PathLike | Image.Image, output: str | os.PathLike,
                options: MosaicOptions | None = None, progress: bool | None = None) -> MosaicResult:
    """Plan and write a mosaic PNG: what the CLI and the demo call."""
    started = time.perf_counter()
    check_output_path(lib, output)
    plan = plan_mosaic(lib, target, options, progress)
    path = write_mosaic(lib, plan, output, progress)
    return MosaicResult(path, plan, time.perf_counter() - started)
