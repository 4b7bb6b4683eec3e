"""The target picture and the cell grid laid over it: the user's options, ``--grid`` parsing,
the layout (cells, crop box, tile size), opening the input safely and measuring its sub-cell
colours."""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.defaults import (
    DEFAULT_BLEND,
    DEFAULT_CONTRAST,
    DEFAULT_DETAIL,
    DEFAULT_LONG_SIDE_CELLS,
    DEFAULT_MAX_CORRECTION,
    DEFAULT_MIN_TILE,
    DEFAULT_OVERLAY,
    DEFAULT_RADIUS,
    DEFAULT_SUBCELLS,
)
from ..core.errors import ImageRejected, UsageError
from ..core.layout import TILE_SIZE

logger = logging.getLogger(__name__)

MAX_TARGET_BYTES = 256 * 1024 * 1024
MAX_TARGET_PIXELS = 64_000_000  # 8000 x 8000: any camera photo, not a decompression bomb
TARGET_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
MAX_CELLS = 250_000
MAX_SUBCELLS = 8
MAX_STREAM_PIXELS = 600_000_000  # streamed PNG (about 1.8 GB of pixels, never all in memory)
MAX_DZI_PIXELS = 4_000_000_000  # streamed Deep Zoom pyramid: 63,000 px a side, never in memory
# Candidates a cell's cost is computed for: whole nearest buckets until this many tiles, the best this
# many by sub-cell colour kept (32 before the costs saw the correction: 256 finds the tiles whose
# pattern fits, SSIM +0.06 on the bench's photos; bench/README.md).
DEFAULT_MIN_CANDIDATES = 256
DEFAULT_SHORTLIST = 256
MAX_DETAIL = 16


# ============================================================================ options and layout
@dataclass(frozen=True)
class MosaicOptions:
    """What the user controls.  Give ``cell_size`` (target pixels) or ``grid`` (cols, rows).

    ``blend`` and ``max_correction`` shape the colour correction (how far toward the input,
    at most how many CIEDE2000; either 0 turns it off), ``contrast`` the texture gain
    (``max_correction=0, contrast=False`` renders tiles untouched), ``detail`` the finer comparison that
    ranks the shortlist, ``max_uses`` the fair assignment (None: greedy, tiles reused freely
    outside the repetition radius), ``overlay`` the percentage of the input blended over the
    finished mosaic (0: none), ``real_only`` leaves synthetic tiles out, ``threads`` the threads
    that decode thumbnails and render bands (None: up to 4).
    """

    cell_size: int | None = None
    grid: tuple[int, int] | None = None
    tile_size: int | None = None
    no_repeat_radius: int = DEFAULT_RADIUS
    blend: float = DEFAULT_BLEND
    max_correction: float = DEFAULT_MAX_CORRECTION
    contrast: bool = DEFAULT_CONTRAST
    subcells: int = DEFAULT_SUBCELLS
    detail: int = DEFAULT_DETAIL
    max_uses: int | None = None
    min_candidates: int = DEFAULT_MIN_CANDIDATES
    shortlist: int = DEFAULT_SHORTLIST
    threads: int | None = None
    real_only: bool = False  # leave the library's synthetic tiles out of the candidates
    overlay: float = DEFAULT_OVERLAY  # percent of the input blended over the rendered mosaic (0: none)

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
        if not (isinstance(self.max_correction, (int, float)) and self.max_correction >= 0):
            raise UsageError(f"--max-correction must be a CIEDE2000 budget of 0 or more, got {self.max_correction!r}")
        if not isinstance(self.detail, int) or not 0 <= self.detail <= MAX_DETAIL:
            raise UsageError(f"--detail must be within 0..{MAX_DETAIL}, got {self.detail!r}")
        if self.max_uses is not None and (not isinstance(self.max_uses, int) or self.max_uses < 1):
            raise UsageError(f"--max-uses must be at least 1, got {self.max_uses!r}")
        if not isinstance(self.shortlist, int) or self.shortlist < 1:
            raise UsageError(f"shortlist must be a positive integer, got {self.shortlist!r}")
        if not isinstance(self.subcells, int) or not 1 <= self.subcells <= MAX_SUBCELLS:
            raise UsageError(f"--subcells must be within 1..{MAX_SUBCELLS}, got {self.subcells!r}")
        if not (isinstance(self.overlay, (int, float)) and 0.0 <= self.overlay <= 100.0):
            raise UsageError(f"--overlay must be a percentage within 0..100, got {self.overlay!r}")
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

    Pillow's own bomb limit is this process's (``builder.core.decode`` lowers it for tiles), so the
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


def target_samples(img: Image.Image, layout: Layout, sizes: tuple[int, ...],
                   overlay: bool = False) -> dict[int, np.ndarray]:
    """Mean RGB of ``n x n`` samples per cell for every ``n`` in ``sizes``: ``{n: (rows * n, cols * n, 3)}``
    float32, from one decode; with ``overlay``, also ``{0: the cropped picture}`` as a PIL image at
    no more than the output's size (what ``--overlay`` blends over the mosaic).

    JPEGs decode at the smallest scale that keeps two pixels per sample of the finest size (and,
    for the overlay, a pixel per output pixel); the crop box is scaled to whatever size the
    decode produced.
    """
    finest = max(sizes)
    disp_w, disp_h = displayed_size(img)
    per_cell = max(finest * 2, layout.tile if overlay else 0)
    need_w, need_h = layout.cols * per_cell, layout.rows * per_cell
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
    box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    out: dict = {n: np.asarray(img.resize((layout.cols * n, layout.rows * n), Image.Resampling.BOX, box=box),
                               dtype=np.float32) for n in sorted(set(sizes))}
    if overlay:
        width, height = layout.output_size
        scale = min(1.0, width / (box[2] - box[0]))
        out[0] = img.resize((max(1, round((box[2] - box[0]) * scale)), max(1, round((box[3] - box[1]) * scale))),
                            Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC, box=box)
    return out


def target_subcells(img: Image.Image, layout: Layout, subcells: int) -> np.ndarray:
    """Mean RGB of every sub-cell, ``(rows * s, cols * s, 3)`` float32 (see :func:`target_samples`)."""
    return target_samples(img, layout, (subcells,))[subcells]
