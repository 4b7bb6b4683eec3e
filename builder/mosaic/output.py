"""Writing a mosaic to a file: a PNG (:class:`PngStreamWriter`) or a Deep Zoom pyramid with its
viewer (:class:`DziWriter`), both streamed band by band, the fidelity measured on the way, and
the result the CLI and the demo report."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.db import has_synthetic_flag
from ..core.defaults import OUTPUT_FORMATS
from ..core.errors import UsageError
from ..core.library import Library
from ..core.summary import fields_dict, plural
from .dzi import DZI_FORMATS, DziWriter
from .fidelity import Fidelity, FidelityMeter
from .match import MosaicPlan, plan_mosaic
from .outfiles import clean_leftovers, refuse_overwriting_input
from .pngstream import PngStreamWriter
from .render import iter_bands
from .target import MAX_DZI_PIXELS, MAX_STREAM_PIXELS, MosaicOptions

logger = logging.getLogger(__name__)



def output_format(output: str | os.PathLike, fmt: str | None = None) -> str:
    """``fmt``, or the one the file name implies (``.png`` or ``.dzi``)."""
    if fmt is None:
        fmt = Path(output).suffix.lower().lstrip(".")
        if fmt not in OUTPUT_FORMATS:
            raise UsageError(f"--output must be a .png or .dzi file, got {str(output)!r}")
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    return fmt


def check_output_path(lib: Library, output: str | os.PathLike, fmt: str = "png",
                      target: str | os.PathLike | Image.Image | None = None) -> Path:
    """The output path, refused (:class:`UsageError`) when it is not a ``.png``/``.dzi`` name,
    lies inside the library, is a folder, or would overwrite ``target``, the picture being
    redrawn (:func:`~.outfiles.refuse_overwriting_input`)."""
    out = Path(output)
    if out.suffix.lower() != f".{fmt}":
        raise UsageError(f"--output must be a .{fmt} file, got {str(output)!r}")
    resolved = out.resolve()
    if resolved == lib.root.resolve() or lib.root.resolve() in resolved.parents:
        raise UsageError(f"--output {output} is inside the library {lib.root}: write it elsewhere")
    if out.is_dir():
        raise UsageError(f"--output {output} is a folder")
    if target is not None and not isinstance(target, Image.Image):
        refuse_overwriting_input(target, out, fmt)
    return out


def write_mosaic(lib: Library, plan: MosaicPlan, output: str | os.PathLike, progress: bool | None = None,
                 fmt: str = "png", dzi_image: str = DZI_FORMATS[0], meter: FidelityMeter | None = None) -> Path:
    """Stream the mosaic into a PNG file, or a Deep Zoom pyramid plus viewer (``fmt="dzi"``),
    band by band; ``meter`` (if given) sees every band.  Returns the written path; the seconds
    of each stage (render, correct, write, fidelity) are added to ``plan.seconds``."""
    out = check_output_path(lib, output, fmt)
    width, height = plan.output_size
    limit = MAX_DZI_PIXELS if fmt == "dzi" else MAX_STREAM_PIXELS
    if width * height > limit:
        raise UsageError(f"a {width}x{height} mosaic is more than {limit:,} pixels: use a smaller --tile-size"
                         + (" or --format dzi" if fmt == "png" and width * height <= MAX_DZI_PIXELS else ""))
    if fmt == "dzi" and dzi_image not in DZI_FORMATS:
        raise UsageError(f"--dzi-image must be one of {', '.join(DZI_FORMATS)}, got {dzi_image!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out.parent)  # what killed mosaics left here; frees their space first
    writer = DziWriter(out, width, height, dzi_image, title=out.stem) if fmt == "dzi" else \
        PngStreamWriter(out, width, height)
    stages = plan.seconds
    for stage in ("write", "fidelity"):
        stages.setdefault(stage, 0.0)
    try:
        for band in iter_bands(lib, plan, progress, stages):
            clock = time.perf_counter()
            writer.write(band)
            written = time.perf_counter()
            if meter is not None:
                meter.add(band)
            stages["write"] += written - clock
            stages["fidelity"] += time.perf_counter() - written
        clock = time.perf_counter()
        writer.close()
        stages["write"] += time.perf_counter() - clock
    except BaseException:
        writer.abort()
        raise
    return out


@dataclass
class MosaicResult:
    output: Path
    plan: MosaicPlan
    seconds: float
    fidelity: Fidelity | None = None
    format: str = "png"
    synthetic_cells: int = 0  # cells drawn with a synthetic tile (0 with ``real_only``)

    @property
    def viewer(self) -> Path | None:
        """The HTML page that shows a Deep Zoom mosaic."""
        return self.output.with_suffix(".html") if self.format == "dzi" else None

    def summary(self) -> str:
        p = self.plan
        w, h = p.output_size
        buckets = len(np.unique(p.bucket_grid))
        uses = f"at most {p.options.max_uses} uses a tile, " if p.options.max_uses else ""
        viewer = f" (viewer {self.viewer})" if self.viewer else ""
        overlay = f" with {p.options.overlay:g}% of the input overlaid" if p.options.overlay else ""
        fidelity = f", {self.fidelity.summary()}{overlay}" if self.fidelity else overlay
        fell_back = "cell fell" if p.fallback_cells == 1 else "cells fell"
        return (
            f"mosaic {self.output}{viewer}: {w}x{h} px, {p.layout.cols}x{p.layout.rows} cells of {p.layout.tile} px, "
            f"{plural(len(np.unique(p.grid)), 'distinct tile')} from {plural(buckets, 'bucket')}, {uses}"
            f"{p.fallback_cells} {fell_back} back to a nearby populated bucket, "
            f"{self.synthetic_cells} used a synthetic tile{' (--real-only)' if p.options.real_only else ''}{fidelity}, "
            f"{self.seconds:.1f} s"
        )

    def as_dict(self) -> dict:
        """The figures of :meth:`summary` and the options, JSON-safe (the CLI's ``--json``)."""
        p = self.plan
        o = p.options
        return {
            "output": str(self.output),
            "format": self.format,
            "viewer": str(self.viewer) if self.viewer else None,
            "width": p.output_size[0],
            "height": p.output_size[1],
            "cols": p.layout.cols,
            "rows": p.layout.rows,
            "tile_size": p.layout.tile,
            "distinct_tiles": int(len(np.unique(p.grid))),
            "buckets": int(len(np.unique(p.bucket_grid))),
            "most_uses": p.most_uses,
            "fallback_cells": p.fallback_cells,
            "synthetic_cells": self.synthetic_cells,
            "fidelity": self.fidelity.as_dict() if self.fidelity else None,
            "options": fields_dict(o),
            "seconds": round(self.seconds, 3),
            "stages": {stage: round(value, 3) for stage, value in p.seconds.items()},
        }


def mosaic_file(lib: Library, target: str | os.PathLike | Image.Image, output: str | os.PathLike,
                options: MosaicOptions | None = None, progress: bool | None = None, fmt: str | None = None,
                dzi_image: str = DZI_FORMATS[0]) -> MosaicResult:
    """Plan and write a mosaic (PNG, or Deep Zoom with ``fmt="dzi"`` or a ``.dzi`` name), with its
    fidelity figures: what the CLI and the demo call."""
    started = time.perf_counter()
    fmt = output_format(output, fmt)
    check_output_path(lib, output, fmt, target)
    plan = plan_mosaic(lib, target, options, progress)
    meter = FidelityMeter(plan.reference, plan.layout.cols)
    path = write_mosaic(lib, plan, output, progress, fmt, dzi_image, meter)
    clock = time.perf_counter()
    fidelity = meter.result()
    plan.seconds["fidelity"] = plan.seconds.get("fidelity", 0.0) + time.perf_counter() - clock
    return MosaicResult(path, plan, time.perf_counter() - started, fidelity, fmt, synthetic_cells(lib, plan))


def synthetic_cells(lib: Library, plan: MosaicPlan) -> int:
    """Cells of ``plan`` whose tile is a synthetic one."""
    if not has_synthetic_flag(lib.conn):
        return 0
    synthetic = {tile_id for (tile_id,) in lib.conn.execute("SELECT id FROM tiles WHERE synthetic = 1")}
    if not synthetic:
        return 0
    used = np.isin(plan.table.id_bytes, np.array(sorted(synthetic), dtype=plan.table.id_bytes.dtype))
    return int(used[plan.grid].sum())
