"""The report's four figures of a library's coverage: the centroids on the a*/b* plane and by hue
and lightness, tiles per sampling region, and how full the buckets are."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ...core.color import lab_to_rgb
from ...core.layout import N_BUCKETS
from ...core.library import Library
from ...core.stats import reachable_buckets
from .canvas import (
    FIGURE_WIDTH,
    INK,
    LABEL_FONT,
    NOTE_FONT,
    PLOT_BG,
    SCALE,
    SYNTHETIC_COLOUR,
    TITLE_FONT,
    Canvas,
    font,
)

AB_LIMIT = 115.0  # a*, b* axis range: covers every sRGB colour
EMPTY_FADE = 0.4  # empty buckets' rings are drawn this much toward the background
NEUTRAL_CHROMA = 6.0  # below this a centroid is "grey": sorted after the hues, by L
FIGURES = ("centroids_ab", "centroids_l", "region_yield", "bucket_fill")
AB_PLOT = (70, 44, 620, 594)  # centroids_ab's plot area (left, top, right, bottom): a square
L_PLOT = (70, 44, 620, 384)  # centroids_l's


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
            canvas.draw.text(((x0 + x1) / 2, y1 - 2 * SCALE), f"{n}", font=font(11), anchor="md", fill=INK)
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


