"""The report's drawing kit: a supersampled Pillow canvas with a data-to-pixel mapping, and the
sizes, fonts and palette every figure and sheet shares (Pillow and NumPy only, no plotting stack)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...core.scratch import scratch_path

# Everything is drawn SCALE times larger and downsampled, for anti-aliasing.
SCALE = 2
# Figures are drawn about as wide as the gallery shows them (two a row on a laptop screen, each
# ~600 px), with these font sizes (px), so their labels read without opening them.
FIGURE_WIDTH = 640
TICK_FONT, LABEL_FONT, TITLE_FONT, NOTE_FONT = 13, 15, 17, 13
PAGE_BG = (250, 250, 248)
PLOT_BG = (128, 128, 128)
INK = (30, 30, 30)
GRID = (160, 160, 160)
# Synthetic tiles (``synthesize``) are drawn in this colour in every figure, and wear a badge of
# it on their contact-sheet thumbnail.
SYNTHETIC_COLOUR = (255, 0, 200)


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
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
        self.draw.text((xy[0] * SCALE, xy[1] * SCALE), text, font=font(size), anchor=anchor, fill=fill)

    def axes(self, xticks, yticks, xlabel: str, ylabel: str, title: str, tick_labels=None) -> None:
        """Grid, ticks (``tick_labels``: the y ticks' texts, for a log axis), axis labels and title."""
        x0, y0, x1, y1 = self.plot
        px, _ = self.xy(np.asarray(xticks, float), np.zeros(len(xticks)))
        _, py = self.xy(np.zeros(len(yticks)), np.asarray(yticks, float))
        for x, label in zip(px, xticks):
            self.draw.line([(x, y0), (x, y1)], fill=GRID, width=SCALE)
            self.draw.text((x, y1 + 6 * SCALE), f"{label:g}", font=font(TICK_FONT), anchor="ma", fill=INK)
        for y, label in zip(py, tick_labels or [f"{v:g}" for v in yticks]):
            self.draw.line([(x0, y), (x1, y)], fill=GRID, width=SCALE)
            self.draw.text((x0 - 6 * SCALE, y), label, font=font(TICK_FONT), anchor="rm", fill=INK)
        self.draw.rectangle(self.plot, outline=INK, width=SCALE)
        self.draw.text(((x0 + x1) / 2, y1 + 26 * SCALE), xlabel, font=font(LABEL_FONT), anchor="ma", fill=INK)
        self.draw.text((x0 - 8 * SCALE, y0 - 8 * SCALE), ylabel, font=font(LABEL_FONT), anchor="rd", fill=INK)
        self.draw.text((self.size[0] * SCALE / 2, 12 * SCALE), title, font=font(TITLE_FONT), anchor="ma", fill=INK)

    def save(self, path: Path) -> Path:
        """Write the figure (downsampled) to ``path`` whole: a scratch file renamed into place."""
        out = self.img.resize(self.size, Image.Resampling.LANCZOS)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = scratch_path(path)
        out.save(part, format="PNG", optimize=False)
        os.replace(part, path)
        return path


