"""A streamed Deep Zoom (DZI) writer and its offline viewer page.

A mosaic of 200x200 cells of 256-px tiles is 51,200 px a side (7.9 GB of pixels): no viewer
opens such a PNG.  Deep Zoom cuts it into a pyramid of small tiles that a browser fetches as
it pans and zooms::

    OUT.dzi                    XML: size, tile size, format
    OUT_files/<level>/<col>_<row>.jpg   level L = full size, each level below half the one above
    OUT.html                   OpenSeadragon viewer, its script inlined: opens from disk, offline

The pyramid is built as rows arrive: every level keeps at most one row of DZI tiles (plus an
odd row waiting for its pair), cuts and writes each full row of tiles, and hands 2x2 box
averages of its rows to the level below.  Memory is about twice one row of full-size tiles
whatever the height; nothing is read back.  The pyramid, the viewer and the descriptor are
written into a hidden sibling folder and installed when complete (:mod:`.outfiles`: a reader
never finds a descriptor without its pyramid, and a killed run's scratch is cleaned by the next).

>>> levels(51_200, 51_200)[-1], len(levels(51_200, 51_200))
((51200, 51200), 17)
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.defaults import DZI_FORMATS
from ..core.scratch import scratch_path
from .outfiles import install_dzi

DZI_TILE = 256  # pixels a side of a pyramid tile (no overlap)
JPEG_QUALITY = 90
PNG_LEVEL = 1  # zlib level of PNG pyramid tiles: photo tiles gain a few % from 6 at 3-4x the time
ENCODERS = 2  # threads encoding a row of pyramid tiles (Pillow releases the GIL while encoding)
VIEWER_JS = Path(__file__).resolve().parent / "viewer" / "openseadragon.min.js"


def levels(width: int, height: int) -> list[tuple[int, int]]:
    """``(width, height)`` of every level, level 0 (1x1) first: each halves the next, rounding up."""
    sizes = [(width, height)]
    for _ in range(math.ceil(math.log2(max(width, height, 1)))):
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes[::-1]


def dzi_xml(width: int, height: int, fmt: str, tile: int = DZI_TILE) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" Overlap="0" TileSize="{tile}">'
            f'<Size Width="{width}" Height="{height}"/></Image>\n')


def _halve_pairs(pairs: np.ndarray) -> np.ndarray:
    """2x2 box average: ``(n, k, w, 3)`` uint8 (``k`` = 2 rows, or 1 for a last odd row) ->
    ``(n, ceil(w/2), 3)``; an odd last column is paired with itself, as DZI rounds sizes up."""
    n, k, w, _ = pairs.shape
    acc = pairs.sum(axis=1, dtype=np.uint16)
    if w % 2:
        acc = np.concatenate([acc, acc[:, -1:]], axis=1)
    acc = acc.reshape(n, (w + 1) // 2, 6)  # a pixel pair's six channel values side by side
    acc = acc[:, :, :3] + acc[:, :, 3:]
    acc += k
    acc //= 2 * k
    return acc.astype(np.uint8)


class _Level:
    def __init__(self, number: int, width: int, height: int, folder: Path) -> None:
        self.number, self.width, self.height, self.folder = number, width, height, folder
        self.rows: list[np.ndarray] = []  # pending rows of this level, fewer than a tile row
        self.held = 0
        self.tile_row = 0
        self.odd: np.ndarray | None = None  # a row waiting for its pair before going down
        folder.mkdir(parents=True)


class DziWriter:
    """Write a Deep Zoom pyramid of a ``width x height`` image from bands of rows, top to bottom."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fmt: str = "jpg",
                 quality: int = JPEG_QUALITY, title: str = "mosaic") -> None:
        if fmt not in DZI_FORMATS:
            raise ValueError(f"DZI tiles are {'/'.join(DZI_FORMATS)}, not {fmt!r}")
        self.path = Path(path)
        self.width, self.height, self.fmt, self.quality, self.title = width, height, fmt, quality, title
        self.stem = self.path.stem
        self.part = scratch_path(self.path)
        shutil.rmtree(self.part, ignore_errors=True)
        files = self.part / f"{self.stem}_files"
        self.levels = [_Level(i, w, h, files / str(i)) for i, (w, h) in enumerate(levels(width, height))]
        self.received = 0
        self.tiles_written = 0
        self._pool = ThreadPoolExecutor(ENCODERS)

    # ------------------------------------------------------------------ streaming
    def write(self, rows: np.ndarray) -> None:
        assert rows.dtype == np.uint8 and rows.shape[1:] == (self.width, 3), rows.shape
        self.received += len(rows)
        self._feed(len(self.levels) - 1, rows)

    def _feed(self, number: int, rows: np.ndarray) -> None:
        level = self.levels[number]
        if not len(rows):
            return
        level.rows.append(rows)
        level.held += len(rows)
        while level.held >= DZI_TILE:
            block = np.concatenate(level.rows, axis=0)
            self._cut(level, block[:DZI_TILE])
            rest = block[DZI_TILE:]
            level.rows, level.held = ([rest] if len(rest) else []), len(rest)
        if number == 0:
            return
        if level.odd is not None:
            rows = np.concatenate([level.odd, rows], axis=0)
            level.odd = None
        pairs = len(rows) // 2 * 2
        if pairs < len(rows):
            level.odd = rows[pairs:].copy()
        if pairs:
            pair = rows[:pairs].reshape(pairs // 2, 2, self.levels[number].width, 3)
            self._feed(number - 1, _halve_pairs(pair))

    def _save(self, level: _Level, block: np.ndarray, col: int, row: int) -> None:
        img = Image.fromarray(np.ascontiguousarray(block[:, col * DZI_TILE:(col + 1) * DZI_TILE]), "RGB")
        name = level.folder / f"{col}_{row}.{self.fmt}"
        if self.fmt == "jpg":
            img.save(name, "JPEG", quality=self.quality)
        else:
            img.save(name, "PNG", compress_level=PNG_LEVEL)

    def _cut(self, level: _Level, block: np.ndarray) -> None:
        """Write one row of pyramid tiles from ``block`` (at most DZI_TILE rows of the level), each
        tile encoded once, on :data:`ENCODERS` threads."""
        n = math.ceil(level.width / DZI_TILE)
        row = level.tile_row
        if n > 1:
            list(self._pool.map(lambda col: self._save(level, block, col, row), range(n)))
        else:
            self._save(level, block, 0, row)
        self.tiles_written += n
        level.tile_row += 1

    # ------------------------------------------------------------------ finishing
    def close(self) -> Path:
        if self.received != self.height:
            raise ValueError(f"DZI has {self.received} rows written, {self.height} declared")
        for number in range(len(self.levels) - 1, -1, -1):
            level = self.levels[number]
            if level.odd is not None and number > 0:
                odd, level.odd = level.odd, None
                self._feed(number - 1, _halve_pairs(odd[None]))
            if level.held:
                self._cut(level, np.concatenate(level.rows, axis=0))
                level.rows, level.held = [], 0
        self._pool.shutdown()
        (self.part / f"{self.stem}.html").write_text(viewer_html(self.stem, self.width, self.height, self.fmt,
                                                                 self.title), encoding="utf-8")
        # The descriptor last: in the scratch folder its presence says the staged output is complete.
        descriptor = self.part / self.path.name
        staged = scratch_path(descriptor)
        staged.write_text(dzi_xml(self.width, self.height, self.fmt))
        os.replace(staged, descriptor)
        install_dzi(self.part, self.path)
        return self.path

    def abort(self) -> None:
        self._pool.shutdown()
        shutil.rmtree(self.part, ignore_errors=True)


def viewer_html(stem: str, width: int, height: int, fmt: str, title: str = "mosaic") -> str:
    """A page that shows ``<stem>_files`` with OpenSeadragon, its script inlined: opened from disk
    it needs no server and no network (the pyramid's description is inlined too, as browsers
    refuse to fetch the ``.dzi`` from ``file://``)."""
    source = {"Image": {"xmlns": "http://schemas.microsoft.com/deepzoom/2008", "Url": f"{stem}_files/",
                        "Format": fmt, "Overlap": "0", "TileSize": str(DZI_TILE),
                        "Size": {"Width": str(width), "Height": str(height)}}}
    script = VIEWER_JS.read_text(encoding="utf-8").replace("</script", "<\\/script")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>html, body {{ margin: 0; height: 100%; background: #111; }} #viewer {{ width: 100%; height: 100%; }}</style>
</head><body><div id="viewer"></div>
<script>{script}</script>
<script>
OpenSeadragon({{
  id: "viewer", tileSources: {json.dumps(source)}, drawer: "canvas", showNavigationControl: false,
  showNavigator: true, maxZoomPixelRatio: 2, visibilityRatio: 0.5, crossOriginPolicy: false
}});
</script>
<!-- OpenSeadragon {VIEWER_JS.name}: BSD-3-Clause, see builder/mosaic/viewer/OPENSEADRAGON_LICENSE.txt -->
</body></html>
"""
