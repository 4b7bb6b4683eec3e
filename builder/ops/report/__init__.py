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

The package: ``canvas`` (the drawing kit: a supersampled canvas, sizes, fonts, palette),
``figures`` (the four figures), ``sheets`` (contact sheets and the stored thumbnails they use),
``page`` (the gallery page and its bucket order); this module runs them (:func:`render_report`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...core import db
from ...core.errors import UsageError
from ...core.layout import is_bucket_id
from ...core.library import Library
from ...core.scratch import dead_scratch, scratch_path
from ...core.summary import plural
from .figures import centroid_colours, render_figures
from .page import BucketEntry, gallery_order, render_html
from .sheets import StoredThumbnails, render_sheet, sheet_name

logger = logging.getLogger(__name__)


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


