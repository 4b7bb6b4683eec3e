"""Web-Mercator XYZ tiles rendered from the embedded Blue Marble image: a source with no network.

``data/bluemarble_5400x2700.jpg`` is equirectangular (lon -180..180 left to right, lat
90..-90 top to bottom, ~6.7 km per pixel). Each output pixel centre is taken through the
inverse Mercator projection to lon/lat and the image is sampled there, bilinearly. Because
longitude depends only on the column and latitude only on the row, the projection is two
256-long vectors and the sampling one vectorised gather; a tile costs a few milliseconds,
most of it PNG encoding.

The image (44 MB as uint8) is decoded once, on the first fetch, under a lock, so many
threads can start fetching at once and only one of them pays for the decode.
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import mercantile
import numpy as np
from PIL import Image

from ...core.defaults import EARTH
from ...core.errors import SourceError
from ...core.layout import EARTH_IMAGE, MERCATOR_MAX_LAT, TILE_SIZE, tile_in_range
from .base import TileSource

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 60_000_000  # decode guard: the shipped image has 14.6 M


class EarthSource(TileSource):
    """Tiles of any zoom from an equirectangular world image; named ``earth``.

    Above zoom ~3 each source pixel covers several output pixels, so tiles are smooth
    (bilinear), and at high zoom nearly uniform: use zoom 4 to 8 for varied tiles.
    """

    remote = False  # rendering a tile again costs nobody anything
    screen_blank = False  # rendered: its flat ocean is real imagery

    def __init__(self, image_path: str | Path = EARTH_IMAGE, *, tile_size: int = TILE_SIZE) -> None:
        self.image_path = Path(image_path)
        if not self.image_path.is_file():
            raise SourceError(f"world image {str(self.image_path)!r} does not exist")
        self.name = EARTH
        self.tile_size = int(tile_size)
        self._image: np.ndarray | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EarthSource({str(self.image_path)!r})"

    @property
    def image(self) -> np.ndarray:
        """The world image as uint8 (H, W, 3), decoded on first use (thread-safe)."""
        image = self._image
        if image is None:
            with self._lock:
                if self._image is None:
                    self._image = load_world_image(self.image_path)
                image = self._image
        return image

    def render(self, z: int, x: int, y: int) -> np.ndarray:
        """Tile z/x/y as a uint8 (tile_size, tile_size, 3) array."""
        lon, lat = pixel_lonlat(z, x, y, self.tile_size)
        return sample_bilinear(self.image, lon, lat)

    def fetch(self, z: int, x: int, y: int) -> bytes | None:
        if not tile_in_range(z, x, y):
            return None
        rgb = self.render(z, x, y)
        buf = io.BytesIO()
        # compress_level=1: these bytes are decoded once by the pipeline and thrown away;
        # level 6 would triple the encode time for a smaller transient buffer.
        Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def close(self) -> None:
        with self._lock:
            self._image = None


def load_world_image(path: Path) -> np.ndarray:
    """Decode the world image to uint8 RGB, refusing absurd sizes before decoding."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise SourceError(f"world image {str(path)!r} is {w}x{h}, over the {MAX_IMAGE_PIXELS} pixel limit")
            if w != 2 * h:
                raise SourceError(f"world image {str(path)!r} is {w}x{h}; an equirectangular image is 2:1")
            arr = np.asarray(img.convert("RGB"))
    except OSError as exc:
        raise SourceError(f"cannot decode world image {str(path)!r}: {exc}") from exc
    logger.debug("loaded world image %s (%dx%d)", path, w, h)
    return arr


def pixel_lonlat(z: int, x: int, y: int, size: int = TILE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Longitudes of the tile's pixel columns and latitudes of its pixel rows (centres).

    Pixel centres are laid out linearly in Web-Mercator metres across
    ``mercantile.xy_bounds`` and taken back to degrees with the inverse projection.
    """
    b = mercantile.xy_bounds(x, y, z)
    frac = (np.arange(size, dtype=np.float64) + 0.5) / size
    mx = b.left + frac * (b.right - b.left)
    my = b.top - frac * (b.top - b.bottom)
    lon = np.degrees(mx / mercantile.RE)
    lat = np.degrees(2.0 * np.arctan(np.exp(my / mercantile.RE)) - np.pi / 2.0)
    return lon, np.clip(lat, -MERCATOR_MAX_LAT, MERCATOR_MAX_LAT)


def sample_bilinear(image: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Sample an equirectangular ``image`` at the grid lat (rows) x lon (columns), bilinearly.

    Longitude wraps around (column -1 is the last column); latitude clamps at the poles.
    """
    h, w = image.shape[:2]
    u = (lon + 180.0) / 360.0 * w - 0.5
    v = (90.0 - lat) / 180.0 * h - 0.5
    u0 = np.floor(u)
    v0 = np.floor(v)
    fu = (u - u0).astype(np.float32)[None, :, None]
    fv = (v - v0).astype(np.float32)[:, None, None]
    c0 = u0.astype(np.int64) % w
    c1 = (c0 + 1) % w
    r0 = np.clip(v0.astype(np.int64), 0, h - 1)
    r1 = np.clip(v0.astype(np.int64) + 1, 0, h - 1)
    top = image[r0[:, None], c0[None, :]] * (1 - fu) + image[r0[:, None], c1[None, :]] * fu
    bottom = image[r1[:, None], c0[None, :]] * (1 - fu) + image[r1[:, None], c1[None, :]] * fu
    out = top * (1 - fv) + bottom * fv
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
