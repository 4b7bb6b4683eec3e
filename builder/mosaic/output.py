"""Writing a mosaic to a PNG file: the output-path checks, streaming the bands through
:class:`PngStreamWriter`, and the result the CLI and the demo report."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..library import Library
from .match import MosaicPlan, plan_mosaic
from .pngstream import PngStreamWriter
from .render import iter_bands
from .target import MosaicOptions

logger = logging.getLogger(__name__)

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

    def as_dict(self) -> dict:
        """The figures of :meth:`summary`, JSON-safe (the CLI's ``--json``)."""
        p = self.plan
        w, h = p.output_size
        return {"output": str(self.output), "width": w, "height": h, "cols": p.layout.cols, "rows": p.layout.rows,
                "tile_size": p.layout.tile, "distinct_tiles": len(np.unique(p.grid)),
                "buckets": len(np.unique(p.bucket_grid)), "fallback_cells": int(p.fallback_cells),
                "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        d = self.as_dict()
        return (
            f"mosaic {self.output}: {d['width']}x{d['height']} px, {d['cols']}x{d['rows']} cells of {d['tile_size']} px, "
            f"{d['distinct_tiles']} distinct tiles from {d['buckets']} buckets, "
            f"{d['fallback_cells']} cells fell back to a nearby populated bucket, {self.seconds:.1f} s"
        )


def mosaic_file(lib: Library, target: str | os.PathLike | Image.Image, output: str | os.PathLike,
                options: MosaicOptions | None = None, progress: bool | None = None) -> MosaicResult:
    """Plan and write a mosaic PNG: what the CLI and the demo call."""
    started = time.perf_counter()
    check_output_path(lib, output)
    plan = plan_mosaic(lib, target, options, progress)
    path = write_mosaic(lib, plan, output, progress)
    return MosaicResult(path, plan, time.perf_counter() - started)
