"""How close a mosaic is to its input: mean CIEDE2000 at cell scale and greyscale SSIM finer.

A mosaic is meant to be seen at two distances.  From afar each cell should have the input's
colour there: both pictures are box-averaged to :data:`COLOUR_SAMPLES` x :data:`COLOUR_SAMPLES`
samples per cell and compared with CIEDE2000 (``skimage.color.deltaE_ciede2000``, the
field's reference), averaged over the samples (0 = identical, about 2 = just noticeable).
Closer, the cells should draw the input's shapes: both are box-averaged to
:data:`STRUCTURE_SAMPLES` per cell, turned grey (Rec. 709 luma, as
``skimage.color.rgb2gray``) and compared with SSIM (``skimage.metrics.structural_similarity``,
1 = identical structure).

The mosaic side can be measured band by band while it is written (:class:`FidelityMeter`),
so a mosaic far too large for memory still gets its figures; :func:`measure_fidelity` does
the same for any two pictures (the benchmark uses it on other tools' mosaics too).

>>> import numpy as np
>>> ref = np.random.default_rng(0).uniform(0, 255, (16, 24, 3))
>>> compare_samples(ref, ref)
Fidelity(delta_e=0.0, ssim=1.0)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from ..core.color import rgb_to_lab
from ..core.errors import UsageError
from .pixels import block_sums

COLOUR_SAMPLES = 2  # samples a cell side for the CIEDE2000 figure
STRUCTURE_SAMPLES = 4  # samples a cell side for the SSIM figure
LUMA = np.array([0.2125, 0.7154, 0.0721])  # skimage.color.rgb2gray's weights
SSIM_WINDOW = 7  # skimage's default window, shrunk (odd) for tiny mosaics


class Fidelity(NamedTuple):
    """``delta_e``: mean CIEDE2000 at cell scale (lower is better); ``ssim``: greyscale SSIM
    at a finer scale (higher is better, at most 1)."""

    delta_e: float
    ssim: float

    def as_dict(self) -> dict:
        return {"delta_e2000": round(self.delta_e, 3), "ssim": round(self.ssim, 4)}

    def summary(self) -> str:
        return f"fidelity: CIEDE2000 {self.delta_e:.2f}, SSIM {self.ssim:.3f}"


def _box(samples: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks of an ``(h, w, 3)`` array (sides divisible by ``factor``)."""
    h, w = samples.shape[0] // factor, samples.shape[1] // factor
    return samples.reshape(h, factor, w, factor, 3).mean(axis=(1, 3))


def compare_samples(reference: np.ndarray, mosaic: np.ndarray) -> Fidelity:
    """Fidelity of two ``(rows * 4, cols * 4, 3)`` RGB sample grids (0..255, any float dtype).

    Both must come from the same cell grid at :data:`STRUCTURE_SAMPLES` samples per cell; the
    colour figure uses their 2x2 box means.
    """
    from skimage.color import deltaE_ciede2000  # imported on use: the store imports this package
    from skimage.metrics import structural_similarity

    reference, mosaic = np.asarray(reference, dtype=np.float64), np.asarray(mosaic, dtype=np.float64)
    per_cell = STRUCTURE_SAMPLES // COLOUR_SAMPLES
    if reference.shape != mosaic.shape:
        raise UsageError(f"fidelity needs samples of the same shape, got {reference.shape} and {mosaic.shape}")
    if reference.ndim != 3 or reference.shape[2] != 3 or min(reference.shape[:2]) < 1 \
            or reference.shape[0] % STRUCTURE_SAMPLES or reference.shape[1] % STRUCTURE_SAMPLES:
        raise UsageError(f"fidelity needs (rows*{STRUCTURE_SAMPLES}, cols*{STRUCTURE_SAMPLES}, 3) RGB samples, "
                         f"got shape {reference.shape}")
    lab_ref, lab_mos = (rgb_to_lab(np.clip(_box(x, per_cell), 0, 255)) for x in (reference, mosaic))
    delta_e = float(deltaE_ciede2000(lab_ref, lab_mos).mean())
    grey_ref, grey_mos = reference @ LUMA, mosaic @ LUMA
    side = min(grey_ref.shape)
    window = min(SSIM_WINDOW, side if side % 2 else side - 1)
    if window < 3:  # a single row of samples: no window fits; equal pictures are still 1
        ssim = 1.0 if np.allclose(grey_ref, grey_mos) else 0.0
    else:
        ssim = float(structural_similarity(grey_ref, grey_mos, win_size=window, data_range=255.0))
    return Fidelity(delta_e, ssim)


def image_samples(image: Image.Image, cols: int, rows: int, box: tuple[float, float, float, float] | None = None,
                  per_cell: int = STRUCTURE_SAMPLES) -> np.ndarray:
    """Box-averaged ``(rows * n, cols * n, 3)`` float32 samples of (the ``box`` of) a picture."""
    if cols < 1 or rows < 1:
        raise UsageError(f"fidelity needs a grid of at least 1x1 cells, got {cols}x{rows}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    small = rgb.resize((cols * per_cell, rows * per_cell), Image.Resampling.BOX, box=box)
    return np.asarray(small, dtype=np.float32)


def measure_fidelity(target: Image.Image, mosaic: Image.Image, cols: int, rows: int,
                     target_box: tuple[float, float, float, float] | None = None) -> Fidelity:
    """Fidelity of any ``mosaic`` picture of ``cols x rows`` cells to (``target_box`` of) ``target``."""
    return compare_samples(image_samples(target, cols, rows, target_box), image_samples(mosaic, cols, rows))


def band_samples(band: np.ndarray, cols: int, per_cell: int = STRUCTURE_SAMPLES) -> np.ndarray:
    """``(n, cols * n, 3)`` box means of one band of cells ``(T, cols * T, 3)`` uint8."""
    tile = band.shape[0]
    if tile % per_cell == 0:  # exact, vectorised
        f = tile // per_cell
        return (block_sums(band[None], f)[0] / (f * f)).astype(np.float32)
    small = Image.fromarray(band).resize((cols * per_cell, per_cell), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


class FidelityMeter:
    """Collects a mosaic's samples band by band as it is rendered, then compares them.

    Memory: 48 floats per cell, whatever the tile size.
    """

    def __init__(self, reference: np.ndarray, cols: int) -> None:
        self.reference, self.cols = reference, cols
        self.bands: list[np.ndarray] = []

    def add(self, band: np.ndarray) -> None:
        self.bands.append(band_samples(band, self.cols))

    def result(self) -> Fidelity:
        return compare_samples(self.reference, np.concatenate(self.bands, axis=0))
