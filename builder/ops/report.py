"""Coverage report: figures of the colour space, per-bucket contact sheets and an HTML gallery.

Drawn with Pillow and NumPy only (no plotting dependency): the figures are simple enough,
and a release build should not pull a plotting stack.  Everything is rendered 2x and
downsampled for anti-aliasing.

* :func:`render_figures` ``(lib, out_dir) -> {name: Path}``: the PNG figures alone, for the
  dataset card (``builder.publish``) as much as for the gallery:
  ``centroids_ab`` (the 5,000 centroids on the a*/b* plane, each in its own colour: solid
  discs sized by tile count for populated buckets, hollow rings for empty ones),
  ``centroids_l`` (the same on a hue angle / L plane), ``region_yield`` (tiles kept and tiles
  fetched per region) and ``bucket_fill`` (how full the populated buckets are).
* :func:`render_report` adds ``sheets/`` (one contact sheet per populated bucket, its tiles'
  thumbnails) and ``index.html``, which opens from disk: relative links only, no network,
  buckets sorted by hue (a small inline script re-sorts by lightness or count).

Contact sheets are named after a hash of the bucket's tile ids, so a second report on a grown
library redraws only the buckets that changed, and stale sheets are removed.
"""

from __future__ import annotations

import hashlib
import html
import logging
import math
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ..core import db
from ..core.color import lab_to_rgb
from ..core.decode import PNG_ZLIB_STRATEGY, decode_tile
from ..core.errors import BadTile, ImageRejected, UsageError
from ..core.layout import N_BUCKETS, THUMB_SIZE, TILE_SIZE, bucket_name, is_bucket_id
from ..core.library import Library
from ..core.scratch import dead_scratch, scratch_path
from ..core.stats import reachable_buckets
from ..core.summary import plural
from ..core.thumbcache import ThumbnailCache

logger = logging.getLogger(__name__)

SCALE = 2  # supersampling factor
AB_LIMIT = 115.0  # a*, b* axis range: covers every sRGB colour
SHEET_VERSION = 2  # bump when the sheet layout changes: old sheets then get redrawn
SHEET_THUMB = 64
SHEET_GAP = 2
# Synthetic tiles (``synthesize``) wear a badge on their contact-sheet thumbnail: a magenta corner with an "S".
BADGE_SIZE = 20
BADGE_COLOUR = (255, 0, 200)
EMPTY_FADE = 0.4  # empty buckets' rings are drawn this much toward the background
NEUTRAL_CHROMA = 6.0  # below this a centroid is "grey": sorted after the hues, by L
FIGURES = ("centroids_ab", "centroids_l", "region_yield", "bucket_fill")

# Figures are drawn about as wide as the gallery shows them (two a row on a laptop screen, each
# ~600 px), with these font sizes (px), so their labels read without opening them.
FIGURE_WIDTH = 640
TICK_FONT, LABEL_FONT, TITLE_FONT, NOTE_FONT = 13, 15, 17, 13
AB_PLOT = (70, 44, 620, 594)  # centroids_ab's plot area (left, top, right, bottom): a square
L_PLOT = (70, 44, 620, 384)  # centroids_l's
SYNTHETIC_COLOUR = BADGE_COLOUR  # how synthetic tiles are drawn in every figure

PAGE_BG = (250, 250, 248)
PLOT_BG = (128, 128, 128)
INK = (30, 30, 30)
GRID = (160, 160, 160)


# ============================================================================ drawing helpers
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size * SCALE)


class Canvas:
    """A supersampled Pillow canvas with a data->pixel mapping for one plot area."""

    def __init__(self, width: int, height: int, plot: tuple[int, int, int, int],
                 xlim: tuple[float, float], ylim: tuple[float, float], background=PLOT_BG) -> None:
        self.size = (width, height)
        self.img = Image.new("RGB", (width * SCALE, height * SCALE), PAGE_BG)
        self.draw = ImageDraw.Draw(self.img)
        self.plot = tuple(v * SCALE for v in plot)
        self.xlim, self.ylim = xlim, ylim
        x0, y0, x1, y1 = self.plot
        self.draw.rectangle(self.plot, fill=background)
        self._sx = (x1 - x0) / (xlim[1] - xlim[0])
        self._sy = (y1 - y0) / (ylim[1] - ylim[0])

    def xy(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (supersampled) of data points."""
        x0, y0, _x1, y1 = self.plot
        return x0 + (np.asarray(x) - self.xlim[0]) * self._sx, y1 - (np.asarray(y) - self.ylim[0]) * self._sy

    def text(self, xy: tuple[float, float], text: str, size: int = 13, anchor: str = "la", fill=INK) -> None:
        self.draw.text((xy[0] * SCALE, xy[1] * SCALE), text, font=_font(size), anchor=anchor, fill=fill)

    def axes(self, xticks, yticks, xlabel: str, ylabel: str, title: str, tick_labels=None) -> None:
        """Grid, ticks (``tick_labels``: the y ticks' texts, for a log axis), axis labels and title."""
        x0, y0, x1, y1 = self.plot
        px, _ = self.xy(np.asarray(xticks, float), np.zeros(len(xticks)))
        _, py = self.xy(np.zeros(len(yticks)), np.asarray(yticks, float))
        for x, label in zip(px, xticks):
            self.draw.line([(x, y0), (x, y1)], fill=GRID, width=SCALE)
            self.draw.text((x, y1 + 6 * SCALE), f"{label:g}", font=_font(TICK_FONT), anchor="ma", fill=INK)
        for y, label in zip(py, tick_labels or [f"{v:g}" for v in yticks]):
            self.draw.line([(x0, y), (x1, y)], fill=GRID, width=SCALE)
            self.draw.text((x0 - 6 * SCALE, y), label, font=_font(TICK_FONT), anchor="rm", fill=INK)
        self.draw.rectangle(self.plot, outline=INK, width=SCALE)
        self.draw.text(((x0 + x1) / 2, y1 + 26 * SCALE), xlabel, font=_font(LABEL_FONT), anchor="ma", fill=INK)
        self.draw.text((x0 - 8 * SCALE, y0 - 8 * SCALE), ylabel, font=_font(LABEL_FONT), anchor="rd", fill=INK)
        self.draw.text((self.size[0] * SCALE / 2, 12 * SCALE), title, font=_font(TITLE_FONT), anchor="ma", fill=INK)

    def save(self, path: Path) -> Path:
        """Write the figure (downsampled) to ``path`` whole: a scratch file renamed into place."""
        out = self.img.resize(self.size, Image.Resampling.LANCZOS)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = scratch_path(path)
        out.save(part, format="PNG", optimize=False)
        os.replace(part, path)
        return path


def centroid_colours(centroids: np.ndarray) -> np.ndarray:
    """sRGB (uint8) of every centroid: each bucket drawn in its own colour."""
    return np.clip(np.round(lab_to_rgb(centroids)), 0, 255).astype(np.uint8)


def dot_radius(counts: np.ndarray, cap: int) -> np.ndarray:
    """Disc radius (output px) for a populated bucket: area grows with the tile count."""
    return 2.5 + 6.5 * np.sqrt(np.clip(counts, 0, cap) / max(cap, 1))


def _scatter(canvas: Canvas, x: np.ndarray, y: np.ndarray, colours: np.ndarray, counts: np.ndarray, cap: int,
             reachable: np.ndarray | None = None, synthetic_only: np.ndarray | None = None) -> None:
    """Empty buckets as hollow rings first, then buckets holding only synthetic tiles as small
    squares outlined in :data:`SYNTHETIC_COLOUR`, then buckets with real tiles as outlined discs
    sized by their real tiles, biggest first (``counts`` are real tiles).

    With a colour atlas (``reachable``), an empty bucket the atlas saw is a bold ring in its
    colour with a black outline (``harvest --target empty`` can fill it); one not seen on the
    source stays a faded ring."""
    px, py = canvas.xy(x, y)
    synthetic_only = np.zeros(len(counts), bool) if synthetic_only is None else synthetic_only
    empty = np.flatnonzero((counts == 0) & ~synthetic_only)
    ring = 2.2 * SCALE
    faded = np.round(colours * (1 - EMPTY_FADE) + np.array(PLOT_BG) * EMPTY_FADE).astype(int)
    for i in empty:
        if reachable is not None and reachable[i]:
            continue
        canvas.draw.ellipse((px[i] - ring, py[i] - ring, px[i] + ring, py[i] + ring),
                            outline=tuple(int(v) for v in faded[i]), width=max(1, SCALE // 2 + 1))
    if reachable is not None:
        bold = 3.2 * SCALE
        for i in empty[reachable[empty]]:
            canvas.draw.ellipse((px[i] - bold, py[i] - bold, px[i] + bold, py[i] + bold), outline=(0, 0, 0),
                                width=SCALE * 2 + 1)
            canvas.draw.ellipse((px[i] - ring, py[i] - ring, px[i] + ring, py[i] + ring),
                                outline=tuple(int(v) for v in colours[i]), width=SCALE)
    half = 2.4 * SCALE
    for i in np.flatnonzero(synthetic_only & (counts == 0)):
        canvas.draw.rectangle((px[i] - half, py[i] - half, px[i] + half, py[i] + half),
                              fill=tuple(int(v) for v in colours[i]), outline=SYNTHETIC_COLOUR, width=SCALE)
    filled = np.flatnonzero(counts > 0)
    radius = dot_radius(counts[filled], cap) * SCALE
    for i, r in sorted(zip(filled, radius), key=lambda t: -t[1]):
        canvas.draw.ellipse((px[i] - r, py[i] - r, px[i] + r, py[i] + r),
                            fill=tuple(int(v) for v in colours[i]), outline=(0, 0, 0), width=SCALE)


def _legend(canvas: Canvas, at: tuple[int, int], cap: int, real: int, synthetic_only: int = 0,
            reachable_empty: int | None = None) -> None:
    """Keys for the discs (real tiles), the squares (synthetic only) and the rings (empty)."""
    x, y = at
    d = canvas.draw
    s = SCALE
    step = 22
    rows = 3 + (synthetic_only > 0) + (reachable_empty is not None)
    d.rectangle(((x - 4) * s, (y - 4) * s, (x + 250) * s, (y + rows * step) * s), fill=(246, 246, 246),
                outline=(120, 120, 120), width=s // 2 + 1)
    lines = 0
    for n in (1, cap):
        r = float(dot_radius(np.array([n]), cap)[0]) * s
        cx, cy = (x + 10) * s, (y + lines * step + 8) * s
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(200, 200, 200), outline=(0, 0, 0), width=s)
        canvas.text((x + 26, y + lines * step + 8), f"real tiles: {n}" + (" (the cap)" if n == cap else ""),
                    size=NOTE_FONT, anchor="lm")
        lines += 1
    cx = (x + 10) * s
    if synthetic_only:
        cy, half = (y + lines * step + 8) * s, 2.4 * s
        d.rectangle((cx - half, cy - half, cx + half, cy + half), fill=(200, 200, 200), outline=SYNTHETIC_COLOUR,
                    width=s)
        canvas.text((x + 26, y + lines * step + 8), f"synthetic tiles only ({synthetic_only})", size=NOTE_FONT,
                    anchor="lm")
        lines += 1
    cy, r = (y + lines * step + 8) * s, 2.2 * s
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(60, 60, 60), width=s // 2 + 1)
    empty = N_BUCKETS - real - synthetic_only
    if reachable_empty is None:
        canvas.text((x + 26, y + lines * step + 8), f"empty ({empty})", size=NOTE_FONT, anchor="lm")
        return
    canvas.text((x + 26, y + lines * step + 8), f"empty, not seen on the source ({empty - reachable_empty})",
                size=NOTE_FONT, anchor="lm")
    lines += 1
    cy, bold = (y + lines * step + 8) * s, 3.2 * s
    d.ellipse((cx - bold, cy - bold, cx + bold, cy + bold), outline=(0, 0, 0), width=s * 2 + 1)
    canvas.text((x + 26, y + lines * step + 8), f"empty, the atlas saw it ({reachable_empty})", size=NOTE_FONT,
                anchor="lm")


def hue_angle(centroids: np.ndarray) -> np.ndarray:
    """CIE LCh hue in degrees 0..360 (a* axis = 0, b* axis = 90)."""
    return np.degrees(np.arctan2(centroids[:, 2], centroids[:, 1])) % 360.0


def chroma(centroids: np.ndarray) -> np.ndarray:
    return np.hypot(centroids[:, 1], centroids[:, 2])


def _synthetic_only(counts: np.ndarray, every: np.ndarray | None) -> np.ndarray:
    """Buckets holding tiles, none of them real (``every``: all tiles per bucket; None: none synthetic)."""
    return np.zeros(len(counts), bool) if every is None else (every > 0) & (counts == 0)


# ============================================================================ figures
def figure_centroids_ab(centroids: np.ndarray, counts: np.ndarray, cap: int, path: Path,
                        reachable: np.ndarray | None = None, every: np.ndarray | None = None) -> Path:
    """The centroids on the a*/b* plane; ``counts``: real tiles per bucket, ``every``: all tiles
    (buckets with synthetic tiles only are drawn as squares)."""
    plot = AB_PLOT
    canvas = Canvas(FIGURE_WIDTH, plot[3] + 56, plot, (-AB_LIMIT, AB_LIMIT), (-AB_LIMIT, AB_LIMIT))
    ticks = list(range(-100, 101, 25))
    real = int((counts > 0).sum())
    synthetic = _synthetic_only(counts, every)
    canvas.axes(ticks, ticks, "a*  (green - red)", "b*",
                f"a*/b* plane: {real} of {N_BUCKETS} buckets hold real tiles ({int(counts.sum())})")
    order = np.argsort(centroids[:, 0])  # darker first, lighter on top among the rings
    _scatter(canvas, centroids[order, 1], centroids[order, 2], centroid_colours(centroids)[order], counts[order], cap,
             None if reachable is None else reachable[order], synthetic[order])
    _legend(canvas, (plot[0] + 8, plot[1] + 8), cap, real, int(synthetic.sum()),
            None if reachable is None else int((reachable & (counts == 0) & ~synthetic).sum()))
    return canvas.save(path)


def figure_centroids_l(centroids: np.ndarray, counts: np.ndarray, cap: int, path: Path,
                       reachable: np.ndarray | None = None, every: np.ndarray | None = None) -> Path:
    plot = L_PLOT
    canvas = Canvas(FIGURE_WIDTH, plot[3] + 56, plot, (0.0, 360.0), (0.0, 100.0))
    real = int((counts > 0).sum())
    synthetic = _synthetic_only(counts, every)
    extra = f", {int(synthetic.sum())} synthetic only" if synthetic.any() else ""
    canvas.axes(list(range(0, 361, 45)), list(range(0, 101, 20)), "hue angle h (degrees from +a*)", "L*",
                f"Lightness by hue: {real} buckets with real tiles{extra}")
    order = np.argsort(chroma(centroids))
    _scatter(canvas, hue_angle(centroids)[order], centroids[order, 0], centroid_colours(centroids)[order],
             counts[order], cap, None if reachable is None else reachable[order], synthetic[order])
    return canvas.save(path)


def region_rows(stats: dict) -> list[tuple[str, int, int]]:
    """``(region, real tiles kept, tiles fetched)`` per region, most tiles first."""
    regions = set(stats.get("by_region", {})) | set(stats.get("fetched_by_region", {}))
    rows = []
    for region in regions:
        kept = int(stats.get("by_region", {}).get(region, 0))
        fetched = int(sum(stats.get("fetched_by_region", {}).get(region, {}).values()))
        rows.append((str(region), kept, fetched))
    return sorted(rows, key=lambda r: (-r[1], -r[2], r[0]))


SYNTHETIC_ROW = "synthetic tiles"


def figure_region_yield(stats: dict, path: Path) -> Path:
    """Real tiles kept of tiles fetched per region, and the synthetic tiles on a row of their own
    (made here, fetched nowhere)."""
    rows = region_rows(stats)
    synthetic = int(stats.get("tiles_synthetic", 0))
    bars = rows + ([(SYNTHETIC_ROW, synthetic, 0)] if synthetic else [])
    bar_h, gap = 22, 12
    height = 50 + max(1, len(bars)) * (bar_h + gap) + 18 + 30
    plot = (200, 50, 440, height - 30)
    # The scale is the real rows' (synthetic tiles can outnumber them a hundred to one); a longer
    # synthetic bar is cut at the edge, with a break mark.
    top = max([max(k, f) for _r, k, f in (rows or bars)] + [1])
    canvas = Canvas(FIGURE_WIDTH, height, plot, (0.0, float(top)), (0.0, 1.0))
    d = canvas.draw
    d.rectangle(canvas.plot, fill=(245, 245, 245), outline=INK, width=SCALE)
    canvas.text((FIGURE_WIDTH / 2, 12), "Real tiles kept (dark) of tiles fetched (light), per region", size=TITLE_FONT,
                anchor="ma")
    if not bars:
        canvas.text(((plot[0] + plot[2]) / 2, (plot[1] + plot[3]) / 2), "no tiles yet", size=LABEL_FONT, anchor="mm")
    for i, (region, kept, fetched) in enumerate(bars):
        y = plot[1] + 12 + i * (bar_h + gap)
        x_fetched, _ = canvas.xy([fetched], [0])
        x_kept, _ = canvas.xy([kept], [0])
        y0, y1 = y * SCALE, (y + bar_h) * SCALE
        if fetched:
            d.rectangle((canvas.plot[0], y0, float(x_fetched[0]), y1), fill=(170, 196, 222))
        made = region == SYNTHETIC_ROW and i == len(rows)
        end = min(float(x_kept[0]), canvas.plot[2])
        d.rectangle((canvas.plot[0], y0, end, y1), fill=SYNTHETIC_COLOUR if made else (38, 84, 140))
        if kept > top:  # cut: two white slashes near the edge
            for dx in (14, 20):
                x = canvas.plot[2] - dx * SCALE
                d.line([(x - 3 * SCALE, y1 + SCALE), (x + 3 * SCALE, y0 - SCALE)], fill=(255, 255, 255), width=2 * SCALE)
        label = "(no region: ingested)" if region == "(none)" else region
        label = label if len(label) <= 26 else label[:25] + "..."
        canvas.text((plot[0] - 8, y + bar_h / 2), label, size=NOTE_FONT, anchor="rm")
        share = (" made, not fetched" if made else f" of {fetched} ({kept / fetched:.0%})" if fetched
                 else " (not fetched here)")
        canvas.text((plot[2] + 8, y + bar_h / 2), f"{kept}{share}", size=NOTE_FONT, anchor="lm")
    return canvas.save(path)


def figure_bucket_fill(counts: np.ndarray, cap: int, path: Path, every: np.ndarray | None = None) -> Path:
    """Buckets by how many tiles they hold, on a log scale (one bar may be a hundred times the
    next): buckets with real tiles by their real tiles (dark), and beside them the buckets holding
    only synthetic tiles (:data:`SYNTHETIC_COLOUR`); each bar labelled with its number."""
    plot = (78, 62, 620, 330)
    edges = np.unique(np.linspace(1, cap + 1, min(cap, 20) + 1).round().astype(int))
    synthetic = _synthetic_only(counts, every)
    series = [(np.histogram(counts[counts > 0], bins=edges)[0], (38, 84, 140))]
    if synthetic.any():
        series.append((np.histogram(every[synthetic], bins=edges)[0], SYNTHETIC_COLOUR))
    top = max(max(int(h.max(initial=0)) for h, _c in series), 1)
    decades = max(1, math.ceil(math.log10(top * 1.5)))
    base = -0.3  # log10 of 0.5: a bar of one bucket still shows
    canvas = Canvas(FIGURE_WIDTH, 400, plot, (float(edges[0]), float(edges[-1])), (base, decades + 0.15),
                    background=(245, 245, 245))
    key = "dark: with real tiles (by real tiles)" + (", magenta: synthetic only" if synthetic.any() else "")
    canvas.axes([int(v) for v in edges[:: max(1, len(edges) // 10)]], list(range(decades + 1)),
                "tiles in the bucket", "buckets",
                f"Bucket fill: {int((counts > 0).sum())} with real tiles, {int((counts >= cap).sum())} full at "
                f"cap {cap}", tick_labels=[f"{10 ** k:,}" for k in range(decades + 1)])
    canvas.text((FIGURE_WIDTH / 2, 34), key, size=NOTE_FONT, anchor="ma")
    width = 1 / len(series)
    for k, (hist, colour) in enumerate(series):
        for lo, hi, n in zip(edges[:-1], edges[1:], hist):
            if not n:
                continue
            left = lo + (hi - lo) * k * width
            (x0, x1), (y0, y1) = canvas.xy([left, left + (hi - lo) * width], [base, math.log10(n)])
            canvas.draw.rectangle((x0 + SCALE, y1, x1 - SCALE, y0), fill=colour)
            canvas.draw.text(((x0 + x1) / 2, y1 - 2 * SCALE), f"{n}", font=_font(11), anchor="md", fill=INK)
    return canvas.save(path)


def render_figures(lib: Library, out_dir: str | os.PathLike) -> dict[str, Path]:
    """The report's figures as PNGs in ``out_dir``: ``{name: path}`` (see the module doc).  Real
    tiles first everywhere: discs and bars are real tiles, synthetic tiles are drawn apart."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    real = lib.bucket_counts(real_only=True)
    every = lib.bucket_counts()
    stats = lib.stats()
    seen = reachable_buckets(lib.conn)  # None without a colour atlas: the figures as before
    return {
        "centroids_ab": figure_centroids_ab(lib.centroids, real, lib.cap, out / "centroids_ab.png", seen, every),
        "centroids_l": figure_centroids_l(lib.centroids, real, lib.cap, out / "centroids_l.png", seen, every),
        "region_yield": figure_region_yield(stats, out / "region_yield.png"),
        "bucket_fill": figure_bucket_fill(real, lib.cap, out / "bucket_fill.png", every),
    }


# ============================================================================ contact sheets
def _thumbnail(lib: Library, bucket_id: int, tile_id: str) -> Image.Image | None:
    try:
        img = decode_tile(lib.read_tile(bucket_id, tile_id)).image
    except (BadTile, ImageRejected) as exc:
        logger.warning("tile %s of bucket %s left out of its contact sheet: %s", tile_id, bucket_id, exc)
        return None
    return img.reduce(TILE_SIZE // SHEET_THUMB)


class StoredThumbnails:
    """The 64-px thumbnails the store keeps for mosaics (``builder.core.thumbcache``), looked up by
    ``(id, phash)``: the same 4x4 box reduction :func:`_thumbnail` makes, without decoding the tile.

    Only the keys are read into memory, as the cache's own :class:`~builder.core.thumbcache.CacheIndex`
    (60 bytes a tile, no Python object per tile); each thumbnail is read from the pixels file when
    drawn (``os.pread``: no memory map, whose touched pages would count in the report's memory).
    A tile the cache lacks, or holds under another pHash, is decoded as before.  Unusable cache:
    every tile is decoded.
    """

    def __init__(self, lib: Library) -> None:
        self.index = None
        self.fd: int | None = None
        if SHEET_THUMB != THUMB_SIZE:
            return
        cache = ThumbnailCache.of(lib.root)
        try:
            with cache.shared():
                index = cache.read_keys()
                if not index.size:
                    return
                self.fd = os.open(cache.pixels_path, os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, ValueError) as exc:
            logger.warning("contact sheets decode every tile: thumbnail cache unreadable (%s)", exc)
            return
        self.index = index

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def get(self, tile_id: str, tile_hash: str | None) -> Image.Image | None:
        if self.index is None or not isinstance(tile_id, str) or not isinstance(tile_hash, str):
            return None
        row = self.index.row(tile_id, tile_hash)
        if row < 0:
            return None
        size = THUMB_SIZE * THUMB_SIZE * 3
        data = os.pread(self.fd, size, row * size)  # rows are appended whole
        return Image.frombytes("RGB", (THUMB_SIZE, THUMB_SIZE), data) if len(data) == size else None


def sheet_name(bucket_id: int, tile_ids: list[str], synthetic: frozenset[str] | set[str] = frozenset()) -> str:
    """``bucket_0042_<hash>.png``: the hash of the tile ids (and which are synthetic) makes unchanged
    sheets reusable."""
    key = f"v{SHEET_VERSION} {SHEET_THUMB} {SHEET_GAP}\n" + "\n".join(
        f"synthetic {i}" if i in synthetic else i for i in tile_ids)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{bucket_name(bucket_id)}_{digest}.png"


def badge(thumb: Image.Image) -> Image.Image:
    """``thumb`` with the synthetic badge in its top-left corner (a copy)."""
    marked = thumb.copy()
    draw = ImageDraw.Draw(marked)
    draw.polygon([(0, 0), (BADGE_SIZE, 0), (0, BADGE_SIZE)], fill=BADGE_COLOUR)
    draw.text((2, 0), "S", fill=(255, 255, 255), font=_font(10))
    return marked


def render_sheet(lib: Library, bucket_id: int, tile_ids: list[str], path: Path,
                 synthetic: frozenset[str] | set[str] = frozenset(), hashes: list[str] | None = None,
                 stored: StoredThumbnails | None = None) -> Path:
    """A near-square grid of the bucket's tile thumbnails (missing files leave a dark gap; synthetic
    tiles wear :func:`badge`).

    With ``stored`` and the tiles' ``hashes``, thumbnails of tiles whose file is there come from
    the store's cache where it holds them; the sheet is the same image either way.
    """
    cols = max(1, math.ceil(math.sqrt(len(tile_ids))))
    rows = max(1, math.ceil(len(tile_ids) / cols))
    step = SHEET_THUMB + SHEET_GAP
    sheet = Image.new("RGB", (cols * step + SHEET_GAP, rows * step + SHEET_GAP), (24, 24, 24))
    for i, tile_id in enumerate(tile_ids):
        thumb = None
        if stored is not None and hashes is not None and lib.tile_path(bucket_id, tile_id).is_file():
            thumb = stored.get(tile_id, hashes[i])  # a tile whose file is gone still leaves a gap
        if thumb is None:
            thumb = _thumbnail(lib, bucket_id, tile_id)
        if thumb is not None:
            if tile_id in synthetic:
                thumb = badge(thumb)
            sheet.paste(thumb, (SHEET_GAP + (i % cols) * step, SHEET_GAP + (i // cols) * step))
    part = scratch_path(path)
    sheet.save(part, format="PNG", compress_type=PNG_ZLIB_STRATEGY)  # lossless; ~3x faster than the default
    os.replace(part, path)
    return path


@dataclass
class BucketEntry:
    bucket_id: int
    count: int
    lab: tuple[float, float, float]
    hex: str
    sheet: str  # relative path inside the report
    synthetic: int = 0  # of ``count``, synthetic tiles (badged on the sheet)


@dataclass
class ReportResult:
    output: Path
    index: Path
    figures: dict[str, Path]
    buckets: list[BucketEntry] = field(default_factory=list)
    sheets_drawn: int = 0
    sheets_reused: int = 0

    def summary(self) -> str:
        return (f"report {self.index}: {len(self.figures)} figures, {plural(len(self.buckets), 'bucket contact sheet')} "
                f"({self.sheets_drawn} drawn, {self.sheets_reused} unchanged)")


def gallery_order(centroids: np.ndarray, bucket_ids: np.ndarray, real: np.ndarray) -> np.ndarray:
    """The gallery's default order: buckets holding real tiles first, then those holding only
    synthetic ones, each group by colour (:func:`colour_order`); ``real``: real tiles per bucket id."""
    with_real = np.array([b for b in bucket_ids if real[b] > 0], dtype=np.int64)
    synthetic = np.array([b for b in bucket_ids if real[b] == 0], dtype=np.int64)
    return np.concatenate([colour_order(centroids, with_real), colour_order(centroids, synthetic)])


def colour_order(centroids: np.ndarray, bucket_ids: np.ndarray) -> np.ndarray:
    """Buckets sorted by colour: chromatic ones by hue then L, greys after them by L."""
    c = centroids[bucket_ids]
    grey = chroma(c) < NEUTRAL_CHROMA
    hue = np.round(hue_angle(c) / 10.0)  # 10-degree hue families, L inside each
    return bucket_ids[np.lexsort((c[:, 0], hue, grey))]


def check_output_dir(lib: Library, output: str | os.PathLike) -> Path:
    out = Path(output).expanduser()
    root = lib.root.resolve()
    resolved = out.resolve()
    if resolved == root or root in resolved.parents:
        raise UsageError(f"--output {output} is inside the library {lib.root}: write the report elsewhere")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {output} exists and is not a folder")
    return out


def render_report(lib: Library, output: str | os.PathLike, progress: bool | None = None,
                  threads: int | None = None) -> ReportResult:
    """Figures, contact sheets and ``index.html`` in ``output``; returns what was written."""
    out = check_output_dir(lib, output)
    out.mkdir(parents=True, exist_ok=True)
    sheets_dir = out / "sheets"
    sheets_dir.mkdir(exist_ok=True)
    for folder in (out, out / "figures", sheets_dir):  # a killed report's half-written page, figures or sheets
        for leftover in dead_scratch(folder):
            if leftover.target.endswith((".html", ".png")) and leftover.path.is_file():
                leftover.path.unlink(missing_ok=True)
    figures = render_figures(lib, out / "figures")
    # Bucket by bucket (one indexed query each), so no list of every tile is ever held; at most
    # a few sheets' ids wait for the drawing threads.
    populated = [b for b in db.bucket_counts(lib.conn) if is_bucket_id(b)]
    synthetic_column = db.select_list(lib.conn, ("synthetic",))  # 0 in a library from before the flag
    colours = centroid_colours(lib.centroids)
    ordered = gallery_order(lib.centroids, np.array(sorted(populated), dtype=np.int64),
                            lib.bucket_counts(real_only=True))
    stored = StoredThumbnails(lib)
    entries = []
    drawn = 0
    show = sys.stderr.isatty() if progress is None else progress
    n_threads = max(1, threads or min(4, os.cpu_count() or 1))
    try:
        with ThreadPoolExecutor(n_threads) as pool, tqdm(total=len(ordered), unit="bucket", desc="contact sheets",
                                                           disable=not show) as bar:
            in_flight: deque = deque()
            for bucket_id in ordered.tolist():
                rows = [(i, h, flag) for i, h, flag in lib.conn.execute(
                    f"SELECT id, phash, {synthetic_column} FROM tiles WHERE bucket_id = ? ORDER BY rowid", (bucket_id,))
                    if _safe_id(lib, bucket_id, i)]
                ids = [i for i, _h, _f in rows]
                marked = frozenset(i for i, _h, flag in rows if flag)
                name = sheet_name(bucket_id, ids, marked)
                entries.append(BucketEntry(bucket_id, len(ids), tuple(float(v) for v in lib.centroids[bucket_id]),
                                           "#{:02x}{:02x}{:02x}".format(*colours[bucket_id]), f"sheets/{name}",
                                           len(marked)))
                if not (sheets_dir / name).is_file():
                    drawn += 1
                    in_flight.append(pool.submit(render_sheet, lib, bucket_id, ids, sheets_dir / name, marked,
                                                 [h for _i, h, _f in rows], stored))
                    while len(in_flight) > 2 * n_threads:
                        in_flight.popleft().result()
                bar.update()
            for future in in_flight:
                future.result()
    finally:
        stored.close()
    keep = {Path(e.sheet).name for e in entries}
    for stale in sheets_dir.glob("bucket_*.png"):
        if stale.name not in keep:
            stale.unlink()
    index = out / "index.html"
    part = scratch_path(index)
    part.write_text(render_html(lib, entries, figures, out), encoding="utf-8")
    os.replace(part, index)
    return ReportResult(out, index, figures, entries, drawn, len(entries) - drawn)


def _safe_id(lib: Library, bucket_id: int, tile_id: object) -> bool:
    try:
        lib.tile_path(bucket_id, tile_id)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - an unsafe row is verify's business; the report skips it
        logger.warning("skipping unsafe tile row %r in bucket %s", tile_id, bucket_id)
        return False
    return True


# ============================================================================ HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#fafaf8;color:#1e1e1e}
header{padding:18px 28px;background:#1f2d3d;color:#f4f4f4}
header h1{margin:0 0 6px;font-size:24px}
header p{margin:2px 0;font-size:15px;opacity:.92}
header .real{font-size:17px;font-weight:600;opacity:1}
main{padding:12px 28px 40px}
h2{font-size:19px;margin:22px 0 10px}
.figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px;align-items:start}
.figures figure{margin:0;background:#fff;border:1px solid #ddd;padding:8px}
.figures img{width:100%;max-width:640px;height:auto;display:block;margin:0 auto}
.figures figcaption{font-size:14px;color:#444;padding-top:6px}
.controls{margin:6px 0 12px;font-size:14px;display:flex;flex-wrap:wrap;gap:6px 18px;align-items:center}
.controls button{font:inherit;margin-right:6px;padding:3px 10px;border:1px solid #999;background:#fff;border-radius:4px;cursor:pointer}
.controls button.on{background:#1f2d3d;color:#fff;border-color:#1f2d3d}
#buckets{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:12px}
.bucket{background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}
.bucket.synthetic-only{border:2px dashed #ff00c8}
.bucket[hidden]{display:none}
.bucket .head{display:flex;align-items:center;gap:8px;padding:6px 8px;font-size:13px}
.swatch{width:34px;height:34px;border-radius:4px;border:1px solid rgba(0,0,0,.35);flex:none}
.bucket .name{font-weight:600}
.bucket .lab{color:#666;font-size:11px}
.bucket .tag{color:#b0008c;font-weight:600}
.bucket img{display:block;width:100%;aspect-ratio:1/1;object-fit:contain;background:#181818}
"""

# Sorting (hue, lightness, tiles; real buckets first unless "all by hue") and filtering (all,
# with real tiles, synthetic only; also from the address: index.html#real, #synthetic, #all).
_JS = """
(function(){
  var grid=document.getElementById('buckets');
  var keys={real:function(e){return +e.dataset.order},hue:function(e){return +e.dataset.hue},
            l:function(e){return -e.dataset.l},count:function(e){return -e.dataset.count}};
  function sort(b){
    var k=keys[b.dataset.sort];
    var items=Array.prototype.slice.call(grid.children);
    items.sort(function(x,y){return k(x)-k(y)||(+x.dataset.order)-(+y.dataset.order)});
    items.forEach(function(e){grid.appendChild(e)});
    document.querySelectorAll('button[data-sort]').forEach(function(o){o.classList.toggle('on',o===b)});
  }
  function show(kind){
    var shown=0;
    Array.prototype.forEach.call(grid.children,function(e){
      var real=+e.dataset.real>0;
      e.hidden=kind==='real'?!real:kind==='synthetic'?real:false;
      if(!e.hidden)shown++;
    });
    document.querySelectorAll('button[data-show]').forEach(function(o){o.classList.toggle('on',o.dataset.show===kind)});
    document.getElementById('shown').textContent=shown;
  }
  document.querySelectorAll('button[data-sort]').forEach(function(b){b.addEventListener('click',function(){sort(b)})});
  document.querySelectorAll('button[data-show]').forEach(function(b){
    b.addEventListener('click',function(){show(b.dataset.show);history.replaceState(null,'','#'+b.dataset.show)});
  });
  var wanted=location.hash.slice(1);
  show(wanted==='real'||wanted==='synthetic'?wanted:'all');
})();
"""

_CAPTIONS = {
    "centroids_ab": "Every centroid on the a*/b* plane in its own colour: discs are buckets holding real tiles "
                    "(area grows with them), magenta-outlined squares buckets holding only synthetic tiles, "
                    "hollow rings empty buckets.",
    "centroids_l": "The same buckets by hue angle and lightness L*.",
    "region_yield": "Real tiles kept and tiles fetched per sampling region; synthetic tiles, made here from real "
                    "ones, on a magenta row of their own.",
    "bucket_fill": "How many tiles the buckets hold, on a log scale: buckets with real tiles by their real tiles, "
                   "beside them (magenta) the buckets holding only synthetic tiles.",
}


def header_html(stats: dict) -> str:
    """The page's headline: real coverage first, then what synthetic tiles add (when any)."""
    real = (f"{stats['tiles_real']:,} real tiles in {stats['buckets_real']:,} of {stats['buckets_total']:,} colour "
            f"buckets ({stats['coverage_real']:.1%}), {stats['buckets_full_real']} full at cap {stats['cap']}.")
    if not stats["tiles_synthetic"]:
        return f'<p class="real">{real}</p>\n'
    return (f'<p class="real">{real}</p>\n<p>Synthetic tiles (colour transfer from real ones, badged <b>S</b> on the '
            f"contact sheets) add {stats['tiles_synthetic']:,} tiles and {stats['buckets_synthetic_only']:,} buckets "
            f"that hold nothing else: {stats['buckets_populated']:,} buckets ({stats['coverage']:.1%}) with them.</p>\n")


def _reach_html(stats: dict) -> str:
    """The three-way split of the buckets when the library has a colour atlas (else nothing)."""
    r = stats.get("reachability")
    if r is None:
        return ""
    return (f"<p>Colour atlas: {r['populated']} buckets populated, {r['reachable_empty']} reachable but empty "
            f"(the atlas saw the colour: <code>harvest --target empty</code> can fill them), {r['not_seen']} not "
            "seen on the source.</p>\n")


def render_html(lib: Library, entries: list[BucketEntry], figures: dict[str, Path], out: Path) -> str:
    """The gallery page; every link is relative to ``out`` and points at a file written here."""
    esc = html.escape
    stats = lib.stats()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    figs = []
    for name, path in figures.items():
        rel = path.relative_to(out).as_posix()
        figs.append(f'<figure><a href="{esc(rel)}"><img src="{esc(rel)}" alt="{esc(name)}"></a>'
                    f"<figcaption>{esc(_CAPTIONS.get(name, name))}</figcaption></figure>")
    cards = []
    hue_rank = {int(b): i for i, b in enumerate(colour_order(lib.centroids, np.array([e.bucket_id for e in entries],
                                                                                     dtype=np.int64)))}
    for order, e in enumerate(entries):
        name = bucket_name(e.bucket_id)
        lab = " ".join(f"{v:.1f}" for v in e.lab)
        real = e.count - e.synthetic
        kind = "" if real else " synthetic-only"
        tiles = (f"{plural(real, 'real tile')}" + (f" + {e.synthetic} synthetic" if e.synthetic else "") if real
                 else f'<span class="tag">{plural(e.synthetic, "synthetic tile")} only</span>')
        cards.append(
            f'<article class="bucket{kind}" id="{name}" data-order="{order}" data-hue="{hue_rank[e.bucket_id]}" '
            f'data-l="{e.lab[0]:.3f}" data-count="{e.count}" data-real="{real}">'
            f'<div class="head"><span class="swatch" style="background:{e.hex}" title="{e.hex}"></span>'
            f'<div><div class="name">{name}</div><div>{tiles}</div>'
            f'<div class="lab">LAB {lab}</div></div></div>'
            f'<a href="{esc(e.sheet)}"><img loading="lazy" src="{esc(e.sheet)}" alt="{name} contact sheet"></a></article>'
        )
    with_real = sum(1 for e in entries if e.count > e.synthetic)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mosaic Library report: {esc(lib.name)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>Mosaic Library: {esc(lib.name)}</h1>
{header_html(stats)}{_reach_html(stats)}<p>Generated {esc(when)}.</p>
</header>
<main>
<h2>Coverage</h2>
<div class="figures">
{chr(10).join(figs)}
</div>
<h2>Buckets ({len(entries)} populated: {with_real} with real tiles, {len(entries) - with_real} synthetic only)</h2>
<div class="controls"><span>Show: <button data-show="all" class="on">all</button><button data-show="real">with real tiles</button><button data-show="synthetic">synthetic only</button> (<span id="shown">{len(entries)}</span> shown)</span>
<span>Sort by: <button class="on" data-sort="real">real first, by hue</button><button data-sort="hue">hue</button><button data-sort="l">lightness</button><button data-sort="count">tiles</button></span></div>
<div id="buckets">
{chr(10).join(cards)}
</div>
</main>
<script>{_JS}</script>
</body>
</html>
"""
