"""Colour maths: sRGB to CIE LAB, the 5,000 centroids, nearest-centroid lookup.

The LAB conversion is a NumPy copy of :func:`skimage.color.rgb2lab` (sRGB, D65, 2 degree
observer) so the hot path avoids skimage's per-call overhead; tests compare it with skimage
to the bit.  Centroids follow the dataset card's recipe exactly, with a seed.

>>> lab = rgb_to_lab([[255, 255, 255]])
>>> [round(float(v), 3) for v in lab[0]]  # skimage's D65 white is not exactly a* = b* = 0
[100.0, -0.002, 0.005]
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import CentroidsError
from .layout import N_BUCKETS

CENTROIDS_SHAPE = (N_BUCKETS, 3)

# skimage.color.colorconv: sRGB -> XYZ matrix and the D65 / 2 degree white point.
XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def srgb_to_linear(v):
    """sRGB companding undone: channel values in 0..1 to linear light (skimage's formula).  Keeps
    the input's float precision, so float32 lookup tables built from it stay float32."""
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


def linear_to_srgb(w):
    """Linear light in 0..1 back to sRGB channel values in 0..1 (the inverse of :func:`srgb_to_linear`)."""
    return np.where(w > 0.0031308, 1.055 * w ** (1 / 2.4) - 0.055, 12.92 * w)


def lab_f(t):
    """CIE LAB's ``f``: the cube root of ``X/Xn`` (``Y/Yn``, ``Z/Zn``), linear near black (skimage's constants)."""
    return np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16.0 / 116.0)


def lab_f_inverse(f):
    """The inverse of :func:`lab_f`: ``f`` values back to ``X/Xn`` (``Y/Yn``, ``Z/Zn``)."""
    return np.where(f > 0.2068966, f * f * f, (f - 16.0 / 116.0) / 7.787)


class Assignment(NamedTuple):
    """Where a colour lands: its bucket, its LAB value and the distance to the centroid."""

    bucket_id: int
    lab: tuple[float, float, float]
    distance: float


def rgb_to_lab(rgb) -> np.ndarray:
    """Convert sRGB colours (0..255, shape ``(..., 3)``) to CIE LAB, float64.

    Bit-identical to ``skimage.color.rgb2lab(rgb / 255)``, for one colour or a batch: the
    matrix product runs as a stack of ``(1, 3) @ (3, 3)`` products, the very kernel skimage
    uses on the card's ``(1, 1, 3)`` mean colour.  A plain ``(n, 3) @ (3, 3)`` goes through
    BLAS, whose summation order differs in the last bit for about one colour in ten.

    >>> rgb_to_lab([0, 0, 0]).round(6).tolist()
    [0.0, 0.0, 0.0]
    """
    arr = np.asarray(rgb, dtype=np.float64) / 255.0
    if arr.shape[-1] != 3:
        raise ValueError(f"expected colours with 3 channels, got shape {arr.shape}")
    linear = srgb_to_linear(arr)
    xyz = (linear.reshape(-1, 1, 3) @ XYZ_FROM_RGB.T).reshape(linear.shape)
    xyz = xyz / WHITE_D65
    f = lab_f(xyz)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab) -> np.ndarray:
    """Convert CIE LAB to sRGB 0..255 floats (clipped), via :func:`skimage.color.lab2rgb`."""
    from skimage.color import lab2rgb

    arr = np.asarray(lab, dtype=np.float64)
    return lab2rgb(arr.reshape(-1, 1, 3)).reshape(arr.shape) * 255.0


def hex_to_rgb(text: str) -> tuple[int, int, int]:
    """Parse ``RRGGBB`` or ``#RRGGBB``.

    >>> hex_to_rgb("#ff8000")
    (255, 128, 0)
    """
    value = text.strip().lstrip("#")
    if len(value) != 6 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(f"not a RRGGBB colour: {text!r}")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def rgb_to_hex(rgb) -> str:
    """``#rrggbb`` of an sRGB colour (floats are rounded and clipped).

    >>> rgb_to_hex((255, 127.6, -3))
    '#ff8000'
    """
    r, g, b = (int(np.clip(round(float(v)), 0, 255)) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def make_centroids(seed: int = 0, n_colours: int = 500_000, n_clusters: int = N_BUCKETS) -> np.ndarray:
    """The card's recipe for ``centroids.npy``, seeded: same seed, same file (about 50 s).

    Random sRGB colours -> ``rgb2lab`` -> ``MiniBatchKMeans(5000, batch_size=10000, n_init=3)``.
    """
    from skimage.color import rgb2lab
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.RandomState(seed)
    random_rgb = rng.randint(0, 255, (n_colours, 1, 3), dtype=np.uint8)
    random_lab = rgb2lab(random_rgb).reshape(-1, 3)
    kmeans = MiniBatchKMeans(n_clusters=n_clusters, batch_size=10000, n_init=3, random_state=seed)
    kmeans.fit(random_lab)
    return np.ascontiguousarray(kmeans.cluster_centers_, dtype=np.float64)


def rows_distinct(rows: np.ndarray) -> bool:
    """True when no two rows of ``rows`` (2-D) are equal: neighbours in lexicographic order
    differ.  ``np.unique(axis=0)`` says the same but imports ``numpy.ma`` (~15 ms of every
    command that opens a library).

    >>> rows_distinct(np.array([[1, 2], [2, 1]])), rows_distinct(np.array([[1, 2], [0, 0], [1, 2]]))
    (True, False)
    """
    ordered = rows[np.lexsort(rows.T[::-1])]
    return not (ordered[1:] == ordered[:-1]).all(axis=1).any()


def validate_centroids(centroids: np.ndarray, origin: str = "centroids") -> np.ndarray:
    """Check shape, dtype and finiteness; return a float64 C-contiguous copy."""
    if not isinstance(centroids, np.ndarray) or centroids.dtype.kind not in "fiu":
        raise CentroidsError(f"{origin}: expected a numeric array, got {getattr(centroids, 'dtype', type(centroids))}")
    if centroids.shape != CENTROIDS_SHAPE:
        raise CentroidsError(f"{origin}: expected shape {CENTROIDS_SHAPE}, got {centroids.shape}")
    if not np.isfinite(centroids).all():
        raise CentroidsError(f"{origin}: contains NaN or infinite values")
    if not rows_distinct(centroids):
        raise CentroidsError(f"{origin}: centroids are not distinct")
    return np.ascontiguousarray(centroids, dtype=np.float64)


def load_centroids(path: str | os.PathLike) -> np.ndarray:
    """Load and validate a ``centroids.npy`` without ever unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CentroidsError(f"centroids file not found: {path}")
    if path.stat().st_size > 1024 * 1024:  # (5000, 3) float64 is 120 KB: nothing bigger is read
        raise CentroidsError(f"{path}: {path.stat().st_size} bytes, too large for {CENTROIDS_SHAPE} centroids")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle: refused
        raise CentroidsError(f"{path}: not a plain NumPy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise CentroidsError(f"{path}: unreadable .npy file ({exc})") from None
    except MemoryError:  # a header claiming a huge shape over a few bytes of data
        raise CentroidsError(f"{path}: its header claims an array too large to be centroids") from None
    return validate_centroids(arr, str(path))


# Up to this many colours a lookup compares them with every centroid directly (5,000 x 3: about a
# millisecond for 64) instead of a KD-tree, whose scipy import and build cost ~0.3 s of a fresh
# process.  The buckets are the same: both compare the same squared distances (summed in the same
# order), an exact tie going to the lower bucket id here.
BRUTE_FORCE_MAX = 64


_SCRATCH = threading.local()


def _thread_scratch(size: int) -> np.ndarray:
    """This thread's float64 working space of at least ``size`` values, kept between calls
    (threads folding atlas tiles each get their own)."""
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = _SCRATCH.buffer = np.empty(size)
    return buffer


def nearest_brute(points: np.ndarray, lab: np.ndarray, k: int = 1,
                  scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``k`` nearest rows of ``points`` to each colour of ``lab`` ``(n, 3)``, nearest first:
    ``(distances, indices)``, each ``(n, k)``.  For few colours (:data:`BRUTE_FORCE_MAX`).

    ``scratch``: a float64 buffer of at least ``2 * n * len(points)`` values to work in, for
    callers that look up batch after batch (a fresh megabyte-sized temporary per call is
    handed back to the kernel and faulted in again each time).
    """
    lab = np.asarray(lab, dtype=np.float64)
    n, m = len(lab), len(points)
    if scratch is None or scratch.size < 2 * n * m:
        scratch = np.empty(2 * n * m)
    d2, term = scratch[:n * m].reshape(n, m), scratch[n * m:2 * n * m].reshape(n, m)
    # Channel by channel over contiguous columns: the same floats as
    # ``((lab[:, None] - points[None]) ** 2).sum(axis=2)``, whose length-3 sums add in this order,
    # at a tenth of the cost (no (n, m, 3) temporaries, no strided reduction).
    columns = np.ascontiguousarray(np.asarray(points, dtype=np.float64).T)
    np.subtract(lab[:, 0, None], columns[0], out=d2)
    np.square(d2, out=d2)
    for channel in (1, 2):
        np.subtract(lab[:, channel, None], columns[channel], out=term)
        d2 += np.square(term, out=term)
    if k == 1:
        order = d2.argmin(axis=1)[:, None]
    else:
        order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d2, order, axis=1)), order


class CentroidIndex:
    """Nearest-centroid lookup for many colours in one call: a KD-tree, built on first use by a
    batch of more than :data:`BRUTE_FORCE_MAX` colours (smaller batches compare directly).

    >>> import numpy as np
    >>> idx = CentroidIndex(np.array([[0.0, 0, 0], [100.0, 0, 0]]), validate=False)
    >>> idx.assign_lab([[90.0, 1, 1]])[0].tolist()
    [1]
    """

    def __init__(self, centroids: np.ndarray, validate: bool = True) -> None:
        self.centroids = validate_centroids(centroids) if validate else np.asarray(centroids, np.float64)
        self._tree = None

    @property
    def tree(self):
        """scipy's ``cKDTree`` over the centroids (lazy: scipy.spatial costs ~0.15 s to import)."""
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.centroids)
        return self._tree

    def assign_lab(self, lab, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Nearest ``k`` buckets for LAB colours ``(n, 3)``: ``(bucket_ids, distances)``."""
        lab = np.asarray(lab, dtype=np.float64).reshape(-1, 3)
        if len(lab) <= BRUTE_FORCE_MAX:
            dist, idx = nearest_brute(self.centroids, lab, k, _thread_scratch(2 * BRUTE_FORCE_MAX * len(self.centroids)))
            if k == 1:
                dist, idx = dist[:, 0], idx[:, 0]
        else:
            dist, idx = self.tree.query(lab, k=k)
        return np.asarray(idx, dtype=np.int64), np.asarray(dist, dtype=np.float64)

    def assign_rgb(self, rgb) -> list[Assignment]:
        """Bucket, LAB and distance for sRGB colours ``(n, 3)`` in 0..255."""
        lab = rgb_to_lab(np.asarray(rgb, dtype=np.float64).reshape(-1, 3))
        idx, dist = self.assign_lab(lab)
        return [Assignment(int(i), tuple(float(v) for v in row), float(d)) for i, row, d in zip(idx, lab, dist)]
