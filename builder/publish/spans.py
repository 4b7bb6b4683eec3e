"""Each tile's PNG inside a shard: a bucket's *image span*, located at build time, split at read time.

The ``image`` column's bytes are written as ``datasets`` and ``push_to_hub`` write them
(:mod:`.schema`): uncompressed, PLAIN-encoded, no dictionary.  Parquet's PLAIN encoding stores a
``BYTE_ARRAY`` value as its length (4 bytes, little-endian) followed by its bytes, and a value of a
flat column never straddles two data pages, so each tile's PNG lies whole in its shard right after
its length prefix.  Rows are sorted by ``(label, id)``, so a bucket's images are consecutive values
of the row group's ``image.bytes`` column chunk: one contiguous span of the file, from its first
PNG's length prefix to its last PNG's end, with nothing else inside but the header and levels of
each data page that begins within it (a few dozen bytes a page).

``build`` records that span per bucket and row group in the bucket index (:func:`file_spans`:
each row group's image chunk walked PNG by PNG from its first page, each PNG framed by its
length prefix, its signature and its ``IEND`` chunk, and exactly as many PNGs as the row group
has rows; a row group that does not walk so gets no spans and is read whole).  Walking the
frames touches a few bytes a tile (0.7 s for 25,000 tiles); searching each tile's known bytes in
the file instead, then splitting every span, cost 9.5 s, 80% on top of the build.

A reader of one bucket fetches the span and the row group's small columns instead of the whole
row group (for a small bucket, mostly its neighbours' images) and splits the span with
:func:`split`: each PNG is walked chunk by chunk to ``IEND`` with every chunk's CRC-32 checked,
must be exactly as long as its length prefix says, and the span must hold exactly the bucket's
row count of them and end where the last one ends.  A byte changed inside a PNG fails a chunk's CRC, a changed length prefix fails the
length check: the bucket is refused, never restored.

Why by hand: pyarrow reads whole column chunks only (no row ranges through the page index in its
Python API, 26.x), and the spans need no Parquet decoding at all, only the PNG format.
"""

from __future__ import annotations

import logging
import mmap
import zlib
from collections.abc import Sequence

import pyarrow.parquet as pq

from ..core.layout import PNG_SIGNATURE

logger = logging.getLogger(__name__)

IMAGE_LEAF = "image.bytes"  # the column chunk that holds the PNGs
LENGTH_PREFIX = 4  # PLAIN BYTE_ARRAY: a 4-byte little-endian length before each value
# Most bytes between one PNG's end and the next one's length prefix: the next data page's header
# and definition levels (measured: 27 bytes; page statistics of small values would add a few KB).
MAX_GAP = 1 << 16
_NEAR_GAP = 1 << 10
IEND = b"\0\0\0\0IEND\xaeB`\x82"  # every PNG's last 12 bytes: the empty IEND chunk and its CRC-32
_CHUNK_OVERHEAD = 12  # a PNG chunk's length (4, big-endian), type (4) and CRC-32 (4)
_MAX_CHUNK = 2**31 - 1  # the PNG specification's limit on a chunk's length


class SpanError(ValueError):
    """Why a span of a shard does not split into the PNGs it should hold (one line)."""


def png_length(data: memoryview, start: int) -> int:
    """Bytes of the whole PNG at ``data[start:]``: its chunks walked to ``IEND``, each chunk's CRC-32 checked.

    >>> import io; from PIL import Image
    >>> png = io.BytesIO(); Image.new("RGB", (4, 4)).save(png, "PNG"); png = png.getvalue()
    >>> png_length(memoryview(b"xx" + png + b"yy"), 2) == len(png)
    True
    """
    if bytes(data[start:start + len(PNG_SIGNATURE)]) != PNG_SIGNATURE:
        raise SpanError("no PNG signature where a PNG should begin")
    pos = start + len(PNG_SIGNATURE)
    while True:
        if pos + _CHUNK_OVERHEAD > len(data):
            raise SpanError("a PNG is cut short before its IEND chunk")
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = bytes(data[pos + 4:pos + 8]).decode("latin-1")
        end = pos + _CHUNK_OVERHEAD + size
        if size > _MAX_CHUNK or end > len(data):
            raise SpanError(f"a PNG's {kind} chunk claims {size} bytes, past the end of its span")
        if zlib.crc32(data[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            raise SpanError(f"a PNG's {kind} chunk fails its CRC")
        pos = end
        if kind == "IEND":
            return pos - start


def _prefixed_png(data: memoryview, prefix: int) -> int:
    """Length of the PNG whose length prefix is at ``prefix``: walked (:func:`png_length`) and
    checked against that prefix.  How a reader measures each PNG."""
    length = png_length(data, prefix + LENGTH_PREFIX)
    claimed = int.from_bytes(data[prefix:prefix + LENGTH_PREFIX], "little")
    if claimed != length:
        raise SpanError(f"a PNG of {length} bytes follows a length prefix of {claimed}")
    return length


def _framed_png(data: memoryview, prefix: int) -> int:
    """Length of the PNG whose length prefix is at ``prefix``, from its frame alone: a signature
    right after the prefix and the (empty, fixed) ``IEND`` chunk exactly where the prefix says the
    PNG ends.  How ``build`` locates the PNGs of a file it has just written: it touches a few
    bytes a tile, not the tile (the reader's :func:`_prefixed_png` checks every byte)."""
    length = int.from_bytes(data[prefix:prefix + LENGTH_PREFIX], "little")
    start = prefix + LENGTH_PREFIX
    end = start + length
    if (bytes(data[start:start + len(PNG_SIGNATURE)]) != PNG_SIGNATURE or length < len(PNG_SIGNATURE) + len(IEND)
            or end > len(data) or bytes(data[end - len(IEND):end]) != IEND):
        raise SpanError("no PNG ends with IEND where its length prefix says")
    return length


def _next_prefix(data: memoryview, pos: int, measure) -> tuple[int, int]:
    """``(prefix position, PNG length)`` of the next PNG at or after ``pos``: at ``pos`` itself
    (the next value of the same page), or after a page header, within :data:`MAX_GAP` bytes."""
    head = bytes(data[pos + LENGTH_PREFIX:pos + LENGTH_PREFIX + len(PNG_SIGNATURE)])
    if head == PNG_SIGNATURE:  # no page boundary: this is the next value, whole or damaged
        return pos, measure(data, pos)
    first_problem = None
    for reach in (_NEAR_GAP, MAX_GAP):  # a page header is a few dozen bytes: look near first
        window = bytes(data[pos:min(len(data), pos + reach + LENGTH_PREFIX + len(PNG_SIGNATURE))])
        found = window.find(PNG_SIGNATURE, LENGTH_PREFIX)
        while found >= 0:  # a signature inside a page header's statistics fails the prefix check
            try:
                return pos + found - LENGTH_PREFIX, measure(data, pos + found - LENGTH_PREFIX)
            except SpanError as exc:
                first_problem = first_problem or str(exc)
            found = window.find(PNG_SIGNATURE, found + 1)
    raise SpanError(first_problem or f"no PNG within {MAX_GAP} bytes where the next one should begin")


def _walk(data: memoryview, count: int, measure, first_at_start: bool) -> list[tuple[int, int]]:
    """``(start, end)`` of the ``count`` PNGs of ``data``, which must end where the last one ends.

    ``first_at_start``: ``data`` begins with the first PNG's length prefix (a span), else with a
    data page's header (a column chunk)."""
    out: list[tuple[int, int]] = []
    pos = 0
    while len(out) < count:
        if pos >= len(data):
            raise SpanError(f"the span holds {len(out)} PNGs, not {count}")
        try:
            prefix, length = (0, measure(data, 0)) if first_at_start and not out else _next_prefix(data, pos, measure)
        except SpanError as exc:
            raise SpanError(f"PNG {len(out) + 1} of {count}: {exc}") from None
        start = prefix + LENGTH_PREFIX
        out.append((start, start + length))
        pos = start + length
    if pos != len(data):
        raise SpanError(f"{len(data) - pos} bytes follow the last of its {count} PNGs")
    return out


def split(span: bytes | memoryview, count: int) -> list[bytes]:
    """The ``count`` PNGs of a bucket's image span, each checked (see the module docstring).

    Raises :class:`SpanError` saying which PNG is wrong and how.
    """
    data = memoryview(span)
    return [bytes(data[start:end]) for start, end in _walk(data, count, _prefixed_png, True)]


def image_chunk(metadata: pq.FileMetaData, group: int) -> tuple[int, int] | None:
    """``(offset, length)`` of row group ``group``'s ``image.bytes`` column chunk if its PNGs lie
    whole in the file (uncompressed, PLAIN, no dictionary), else None (no spans for it)."""
    leaves = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    if IMAGE_LEAF not in leaves:
        return None
    chunk = metadata.row_group(group).column(leaves.index(IMAGE_LEAF))
    plain = set(chunk.encodings) <= {"PLAIN", "RLE", "BIT_PACKED"}  # RLE / BIT_PACKED: the levels
    if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page or not plain:
        return None
    return int(chunk.data_page_offset), int(chunk.total_compressed_size)


def small_columns(metadata: pq.FileMetaData, group: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Every leaf column but the images (``image.path``, ``label``, ``id``...) and the byte ranges
    of their chunks in row group ``group`` (merged: in a row group they follow each other)."""
    columns, ranges = [], []
    row_group = metadata.row_group(group)
    for i in range(metadata.num_columns):
        chunk = row_group.column(i)
        if chunk.path_in_schema == IMAGE_LEAF:
            continue
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        columns.append(chunk.path_in_schema)
        ranges.append((int(start), int(start + chunk.total_compressed_size)))
    return columns, merge_ranges(ranges)


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[start, end)`` ranges sorted, those that overlap or touch made one (one request each).

    >>> merge_ranges([(10, 20), (0, 4), (20, 25), (22, 23)])
    [(0, 4), (10, 25)]
    """
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def pieces(fetched: dict[tuple[int, int], bytes], wanted: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """Each range of ``wanted`` cut from the fetched (merged) range that holds it.

    >>> pieces({(10, 20): bytes(range(10))}, [(12, 14)])
    {(12, 14): b'\\x02\\x03'}
    """
    out = {}
    for start, end in wanted:
        (low, _high), data = next(((r, d) for r, d in fetched.items() if r[0] <= start and end <= r[1]))
        out[(start, end)] = data[start - low:end - low]
    return out


def file_spans(path, metadata: pq.FileMetaData, runs: dict[int, Sequence[tuple[int, int]]]) -> dict[int, list]:
    """``{row group: [(offset, length) of each run's images in the file, or None]}``, ``runs``
    giving each row group's ``(first row, rows)`` per bucket.

    Each row group's ``image.bytes`` chunk is walked from its first page to its end
    (:func:`_framed_png`, memory-mapped: a few bytes a tile are read) and must hold exactly its
    row count of PNGs; a row group whose images are not stored whole (:func:`image_chunk`) or
    do not walk gets None (read a row group at a time).
    """
    out: dict[int, list] = {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        for group, group_runs in runs.items():
            where = image_chunk(metadata, group)
            out[group] = [None] * len(group_runs)
            if where is None:
                continue
            offset, length = where
            view = memoryview(mapped)[offset:offset + length]
            try:
                places = _walk(view, metadata.row_group(group).num_rows, _framed_png, False)
            except SpanError as exc:
                logger.info("%s: row group %d's images are read whole: %s", path, group, exc)
                continue
            finally:
                view.release()
            out[group] = [(offset + places[first][0] - LENGTH_PREFIX, places[first + rows - 1][1] - places[first][0]
                           + LENGTH_PREFIX) for first, rows in group_runs]
    return out
