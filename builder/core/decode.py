"""Safe decoding of untrusted tile bytes into a 256x256 RGB image.

Everything that reaches the library passes through :func:`decode_tile`, which checks the
cheap things first (size of the bytes, format and dimensions from the header) before paying
for a full decode, and raises :class:`~builder.core.errors.ImageRejected` with a short reason tag
that harvest and ingest count.

Size rule for inputs that are not 256x256 (documented in the README): a square image between
64 and 4096 pixels a side is resized to 256x256 with Lanczos; anything else is rejected
(``not_square``, ``too_small``, ``too_large``), unless ``crop`` is asked for (``ingest --crop``):
then a non-square image's centre square is taken.  Bytes that carry an image format's
signature but do not decode (truncated, damaged) are ``corrupt``; ``not_image`` is for bytes
that are no PNG, JPEG or WebP at all.  Images over
:data:`~builder.core.layout.MAX_INPUT_PIXELS` are never decoded (decompression bombs).  The limits
themselves live in :mod:`builder.core.layout`.

Speed: a tile that already is what the library stores (a plain 8-bit RGB 256x256 PNG, every
chunk's CRC intact) is decoded by libspng (``pyspng``) instead of Pillow: the same pixels (PNG is
lossless) in about 0.6 of the time, and decoding is most of what ingesting a PNG tile costs.
Everything else, and any tile libspng refuses, goes through Pillow, whose verdict stands.
"""

from __future__ import annotations

import io
import warnings
import zlib
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from .errors import ImageRejected
from .layout import MAX_INPUT_BYTES, MAX_INPUT_PIXELS, MAX_INPUT_SIDE, MIN_INPUT_SIDE, PNG_SIGNATURE, TILE_SIZE

FORMATS = ("PNG", "JPEG", "WEBP")
# 16-bit greyscale PNGs open in these modes (values 0..65535).
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I"})

# Pillow's own process-wide bomb guard (Image.MAX_IMAGE_PIXELS) is left at its default as a
# second line of defence: decode_tile checks MAX_INPUT_PIXELS from the header itself, and lowering the
# global would break other decoders in the process (the earth source's world image, mosaic targets).


class DecodedTile(NamedTuple):
    """A decoded tile: ``image`` is RGB 256x256; ``png_passthrough`` means the source bytes
    are already a 256x256 RGB PNG and can be stored as they are, without re-encoding."""

    image: Image.Image
    png_passthrough: bool
    resized: bool


def sniff_format(data: bytes) -> str | None:
    """Image format from magic bytes, or None.

    >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n....")
    'PNG'
    """
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The box of the largest centred square of a ``width x height`` image (``crop``'s cut).

    >>> centre_square(300, 200), centre_square(200, 301)
    ((50, 0, 250, 200), (0, 50, 200, 250))
    """
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decode_tile(data: bytes, crop: bool = False) -> DecodedTile:
    """Decode ``data`` into a 256x256 RGB tile or raise :class:`ImageRejected`; ``crop`` takes
    a non-square image's centre square instead of rejecting it."""
    if not data:
        raise ImageRejected("empty", "0 bytes")
    if len(data) > MAX_INPUT_BYTES:
        raise ImageRejected("too_large", f"{len(data)} bytes > {MAX_INPUT_BYTES}")
    stored_form = _decode_stored_form(data)
    if stored_form is not None:
        return stored_form
    fmt = sniff_format(data)
    if fmt is None:
        head = data[:16].lower()
        kind = "html" if head.lstrip().startswith((b"<!doctype", b"<html", b"<?xml", b"<")) else "unknown bytes"
        raise ImageRejected("not_image", f"{kind}, not PNG/JPEG/WebP")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = img.size
            if width * height > MAX_INPUT_PIXELS or max(width, height) > MAX_INPUT_SIDE:
                raise ImageRejected("too_large", f"{width}x{height} exceeds {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}")
            if width != height and not crop:
                raise ImageRejected("not_square", f"{width}x{height}: tiles are square; `ingest --crop` takes the "
                                                  "centre square of such images")
            if min(width, height) < MIN_INPUT_SIDE:
                raise ImageRejected("too_small", f"{width}x{height} < {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE}")
            img.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_large", str(exc)) from None
    except UnidentifiedImageError:  # the signature is right, the rest is not: damaged, not foreign
        raise ImageRejected("corrupt", f"{fmt} signature but undecodable") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected("corrupt", f"{fmt}: {exc}") from None
    cropped = img.width != img.height
    if cropped:  # crop: the centre square (a copy; the source bytes are no longer the tile's)
        img = img.crop(centre_square(img.width, img.height))
    passthrough = (fmt == "PNG" and not cropped and img.mode == "RGB" and img.size == (TILE_SIZE, TILE_SIZE)
                   and "transparency" not in img.info)
    if img.mode in _SIXTEEN_BIT:  # Pillow's convert("RGB") clips 16-bit grey to white: scale it
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    resized = rgb.size != (TILE_SIZE, TILE_SIZE)
    if resized:
        rgb = rgb.resize((TILE_SIZE, TILE_SIZE), Image.Resampling.LANCZOS)
    return DecodedTile(rgb, passthrough, resized)


# Chunks a tile stored byte for byte may hold: the image and colour-space hints.  Anything else
# (text, EXIF with GPS, APNG frames, a payload after IEND) would ride into the published dataset.
_PLAIN_PNG_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"sRGB", b"gAMA", b"cHRM", b"pHYs"})


def is_plain_png(data: bytes) -> bool:
    """True when a PNG holds only image chunks and ends exactly at IEND (safe to store as is).

    >>> is_plain_png(encode_png(Image.new("RGB", (4, 4))))
    True
    """
    pos, end = 8, len(data)
    while pos + 12 <= end:
        kind = data[pos + 4:pos + 8]
        if kind not in _PLAIN_PNG_CHUNKS:
            return False
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
        if kind == b"IEND":
            return pos == end
    return False


# IHDR of the stored form: 256x256, bit depth 8, colour type 2 (RGB), deflate, adaptive filtering,
# not interlaced.
_STORED_IHDR = TILE_SIZE.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])


def is_stored_form(data: bytes) -> bool:
    """True for a plain (:func:`is_plain_png`) 8-bit RGB 256x256 PNG whose chunk CRCs all hold:
    a tile as the library stores it, safe for the fast decoder (which does not check CRCs)."""
    if not (data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and data[16:29] == _STORED_IHDR):
        return False
    view, pos, end = memoryview(data), 8, len(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        stop = pos + 8 + length
        if kind not in _PLAIN_PNG_CHUNKS or stop + 4 > end:
            return False
        if zlib.crc32(view[pos + 4:stop]) != int.from_bytes(data[stop:stop + 4], "big"):
            return False
        pos = stop + 4
        if kind == b"IEND":
            return pos == end
    return False


def _decode_stored_form(data: bytes) -> DecodedTile | None:
    """The fast path: libspng for a tile already in the stored form; None to take Pillow's path."""
    if not is_stored_form(data):
        return None
    import pyspng  # here: only the decoding paths pay for loading it

    try:
        pixels = pyspng.load(data, "RGB")
    except (RuntimeError, ValueError):
        return None  # Pillow gives the verdict (corrupt, truncated...)
    if pixels.shape != (TILE_SIZE, TILE_SIZE, 3) or pixels.dtype != "uint8":
        return None
    image = Image.frombuffer("RGB", (TILE_SIZE, TILE_SIZE), pixels, "raw", "RGB", 0, 1)
    return DecodedTile(image, True, False)


# zlib's Z_RLE strategy: on filtered photographic rows it compresses within about 4% of the
# default strategy at a quarter of the time (satellite tiles: 3 ms instead of 12 ms a tile,
# the largest cost of accepting a JPEG tile), and the files decode just as fast.
PNG_ZLIB_STRATEGY = 3  # Z_RLE


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an RGB tile: lossless, zlib level 6 with the RLE strategy (see above)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_type=PNG_ZLIB_STRATEGY)
    return buf.getvalue()
