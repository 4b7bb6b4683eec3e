"""What every tile source shares: the protocol, the fault type, fault counters and body checks.

A source answers one question, "what are the bytes of tile z/x/y?", with three possible
answers: image bytes, ``None`` (nothing there: a 404, a placeholder, a hole in an archive), or
a :class:`TileFault` (the source misbehaved). Harvest treats the three very differently: bytes
go to the assignment pipeline, ``None`` is recorded as "no tile" and never asked again, and a
fault is counted by its ``kind`` and may be asked again in a later run. Keeping that contract
identical for HTTP, MBTiles, folders and the embedded Earth image is what lets one harvest
loop drive all of them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections import Counter
from typing import Protocol, Self, runtime_checkable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..decode import sniff_format
from ..errors import SourceError
from ..layout import MAX_TILE_BYTES, TILE_SIZE

logger = logging.getLogger(__name__)

# Fault kinds a source raises (``http_<code>`` stands for any unexpected HTTP status).
# Transient kinds are retried by the HTTP source and are worth asking again later;
# the others will not change on a retry.
TRANSIENT_KINDS = frozenset(
    {"http_429", "http_500", "http_502", "http_503", "http_504", "timeout", "connection", "truncated", "not_image",
     "empty"}
)
PERMANENT_KINDS = frozenset({"bad_size", "too_large", "request_error"})

# sha256 of placeholder bodies known to be served instead of a 404. ArcGIS World Imagery's
# grey "Map data not yet available" JPEG (2521 bytes) is reported by public client code with
# this digest; it could not be re-measured here (no internet), so `is_blank_tile` on the
# decoded tile stays the harvest's second line of defence for placeholders nobody listed.
KNOWN_PLACEHOLDER_SHA256 = frozenset(
    {
        "9eafd300d61393184a4abc1d458564cfd1cd9b6f9c4e9c74687045c0a0e5b858",  # ArcGIS World Imagery, 2521 B
    }
)

class TileFault(SourceError):
    """A source failed to give a usable answer for one tile.

    ``kind`` is a short stable tag ("http_503", "timeout", "truncated", ...) that harvest
    counts; ``retryable`` says whether asking again (now or in a later run) can help;
    ``attempts`` is how many requests were made before giving up.
    """

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        self.kind = kind
        self.detail = detail
        self.retryable = kind in TRANSIENT_KINDS if retryable is None else retryable
        self.retry_after = retry_after
        self.attempts = attempts
        super().__init__(f"{kind}: {detail}")

    def __reduce__(self):
        # The default reduce passes only ``args`` back to __init__, which needs more.
        state = {"retryable": self.retryable, "retry_after": self.retry_after, "attempts": self.attempts}
        return (_rebuild_fault, (self.kind, self.detail, state))

    def __str__(self) -> str:
        suffix = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{self.kind}: {self.detail}{suffix}"


def _rebuild_fault(kind: str, detail: str, state: dict) -> TileFault:
    return TileFault(kind, detail, **state)


class SourceStats(Counter):
    """A Counter that many fetch threads may increment at once.

    ``Counter.__iadd__``/``c[k] += 1`` is a read-modify-write and loses counts under threads,
    so writers go through :meth:`incr`; readers use the ordinary Counter API, or
    :meth:`snapshot` for a consistent copy.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def incr(self, key: str, n: int = 1) -> None:
        with self._lock:
            self[key] += n

    def snapshot(self) -> Counter:
        with self._lock:
            return Counter(dict(self))

    def __reduce__(self):  # pickling a lock fails; a copy of the counts is what callers want
        return (Counter, (dict(self),))


@runtime_checkable
class TileSource(Protocol):
    """One provider of 256x256 XYZ (Web-Mercator, y down) tiles.

    ``name`` is the stable identity written to the ``source`` column and the ``fetched`` key;
    ``stats`` counts outcomes and every fault seen, including faults a retry later cured.
    ``screen_blank`` tells harvest whether decoded tiles should go through
    :func:`is_blank_tile` (True where placeholders or nodata fill can occur: servers and
    archives scraped from them; False for rendered sources, whose flat ocean is real).
    ``fetch`` must be safe to call from many threads at once.
    """

    name: str
    stats: SourceStats
    screen_blank: bool

    def fetch(self, z: int, x: int, y: int) -> bytes | None: ...

    def close(self) -> None: ...


class ClosingSource:
    """Mixin for every source: ``with open_source(...) as source:`` closes it on exit."""

    def close(self) -> None:  # pragma: no cover - every source defines its own
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_tile_bytes(
    body: bytes,
    where: str,
    *,
    content_type: str | None = None,
    tile_size: int | None = TILE_SIZE,
    max_bytes: int = MAX_TILE_BYTES,
    retryable: bool | None = None,
) -> str:
    """Raise a :class:`TileFault` unless ``body`` is a PNG/JPEG/WebP of the tile size.

    Reads only the image header (no pixel decode), so it costs tens of microseconds.
    Returns the image format. ``retryable`` overrides the kind's default: a bad body in a
    local archive will be just as bad next time.
    """
    if not body:
        raise TileFault("empty", f"{where}: empty body", retryable=retryable)
    if len(body) > max_bytes:
        raise TileFault("too_large", f"{where}: {len(body)} bytes", retryable=retryable)
    fmt = sniff_format(body)  # magic bytes, not Content-Type: servers mislabel error pages and tiles
    if fmt is None:
        head = body[:16]
        raise TileFault(
            "not_image",
            f"{where}: content-type {content_type or 'unknown'!s}, starts {head!r}",
            retryable=retryable,
        )
    if tile_size is not None:
        try:
            with Image.open(io.BytesIO(body)) as img:
                size = img.size
        except Image.DecompressionBombError as exc:
            raise TileFault("bad_size", f"{where}: {exc}", retryable=False) from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise TileFault("not_image", f"{where}: unreadable {fmt} header: {exc}", retryable=retryable) from exc
        if size != (tile_size, tile_size):
            raise TileFault(
                "bad_size", f"{where}: {fmt} is {size[0]}x{size[1]}, expected {tile_size}x{tile_size}",
                retryable=False,
            )
    return fmt


def is_blank_tile(rgb: np.ndarray, *, std_threshold: float = 2.0, mode_fraction: float = 0.9) -> bool:
    """True for tiles that carry no imagery: one flat colour, or mostly a single nodata colour.

    Catches placeholders and fill nobody listed by hash: the ArcGIS grey "Map data not yet
    available" tile, black/white nodata borders at the edge of coverage, flat fills. Two
    tests, cheapest first: luminance std below ``std_threshold`` (flat), or at least
    ``mode_fraction`` of the pixels exactly equal to the most common colour (nodata fill,
    text on a flat background). Exact equality is what separates fill from real ocean or
    ice, whose pixels vary by a few levels even when they look uniform.

    The mode is found without a histogram: when more than half the pixels share one colour,
    that colour is the median of the packed 24-bit values (hence ``mode_fraction > 0.5``).

    ``rgb``: uint8 array (H, W, 3) (alpha, if any, is ignored), or (H, W) greyscale.
    """
    if not 0.5 < mode_fraction <= 1.0:
        raise ValueError(f"mode_fraction must be in (0.5, 1], got {mode_fraction}")
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = arr[..., None].repeat(3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 3) image array, got shape {arr.shape}")
    arr = arr[..., :3]
    rgb_f = arr.reshape(-1, 3).astype(np.float32)
    lum = rgb_f @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if float(lum.std()) < std_threshold:
        return True
    px = arr.reshape(-1, 3).astype(np.uint32)
    packed = (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]
    mid = packed.size // 2
    median = np.partition(packed, mid)[mid]
    return bool(np.count_nonzero(packed == median) >= mode_fraction * packed.size)
