"""Parquet shards straight from the rows ``mosaic_library.MosaicLibrary`` generates, in ``datasets``' layout.

Why not ``MosaicLibrary.download_and_prepare(file_format="parquet")``: ``datasets``' writer
re-derives the features from the schema for every 100-row batch (``Features.arrow_schema``,
``from_arrow_schema``, ``embed_table_storage``), and with a 5,000-name ``ClassLabel`` that costs
~75 ms a batch, more than reading and writing the batch's images (measured: 2/3 of the build
time).  Here the schema is computed once and each batch is one ``pa.RecordBatch``.

What stays identical to ``datasets`` (and so to ``push_to_hub``), see :mod:`.schema`: the Arrow
schema and its ``huggingface`` feature metadata, the per-column compression/encoding options,
content-defined chunking with ``datasets``' defaults (so a re-upload of a grown library
deduplicates on the Hub's Xet storage), the page index and 100-row row groups for the dataset
viewer.  ``tests/test_publish.py`` checks all of it against a file written by ``datasets``.
Neither this module nor :mod:`.rows` imports ``datasets`` (~0.5 s of CPU per process).

Files: the split is cut into bucket ranges of about ``rows_per_file`` rows (an eighth of the
library, at least ~16 MB and at most ``max_shard_size`` per file, estimated from a fixed sample
of tile sizes), one range per job and per file.  ``num_proc`` workers take jobs in any order,
but the files are numbered by range, so the staging folder is the same for any ``num_proc``.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import multiprocessing
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..core.errors import LibraryError, UnsafePath, UsageError
from ..core.layout import N_BUCKETS, is_bucket_id
from ..core.library import Library
from . import rows, schema

logger = logging.getLogger(__name__)

FILES_PER_LIBRARY = 8  # a small library still gives num_proc workers something to share
MIN_FILE_BYTES = 16 * 10**6
SIZE_SAMPLE = 256
METADATA_ROW_BYTES = 200.0  # a metadata row in memory (ids, hashes, provenance), for sizing its files


class JobResult(NamedTuple):
    files: list[str]
    rows: int
    skipped: list  # ids of rows skipped with skip_bad (few: only the bad ones)


def rows_per_file(total_rows: int, bytes_per_row: float, max_bytes: int) -> int:
    """Rows per Parquet file: 1/8 of the library, clamped to ``[MIN_FILE_BYTES, max_bytes]``.

    >>> rows_per_file(2800, 80_000, 500 * 10**6), rows_per_file(500_000, 80_000, 500 * 10**6)
    (350, 6250)
    """
    per_row = max(bytes_per_row, 1.0)
    low = max(1, int(MIN_FILE_BYTES // per_row))
    high = max(1, int(max_bytes // per_row))
    return max(1, min(high, max(low, -(-total_rows // FILES_PER_LIBRARY))))


def mean_tile_bytes(root: Path, db_path: Path, synthetic: bool | None = False) -> float:
    """Mean PNG size over a fixed sample of a config's rows (the first ids: uuid4s, so effectively random)."""
    conn = rows.open_tiles_db(db_path)
    try:
        sample = conn.execute(
            f"SELECT bucket_id, id FROM tiles WHERE bucket_id BETWEEN 0 AND ?{rows.kind_filter(conn, synthetic)} "
            "ORDER BY id LIMIT ?",
            (N_BUCKETS - 1, SIZE_SAMPLE),
        ).fetchall()
    finally:
        conn.close()
    sizes = []
    with Library.open(root, readonly=True) as lib:
        for bucket_id, tile_id in sample:
            try:
                sizes.append(lib.tile_path(bucket_id, tile_id).stat().st_size)
            except (OSError, UnsafePath):
                continue  # the build itself reports bad rows
    return sum(sizes) / len(sizes) if sizes else 100_000.0


_NUMPY_TYPES = {pa.float64(): np.float64, pa.int32(): np.int32, pa.int64(): np.int64}


def to_arrow(values: list, pa_type: pa.DataType, name: str = "") -> pa.Array:
    """One column as an Arrow array, built from buffers.

    Not ``pa.array``: its first call imports pandas (to check for pandas inputs), ~0.15 s of CPU
    in every process; buffers are also faster for the image bytes (one join, one cumsum).
    Types are those of :mod:`.schema` (binary, string, bool, float64, int32, int64, and a struct of
    them); ``None`` is null.
    """
    n = len(values)
    if pa.types.is_struct(pa_type):
        children = [to_arrow([v[f.name] for v in values], f.type, f"{name}.{f.name}") for f in pa_type]
        return pa.StructArray.from_arrays(children, fields=list(pa_type))
    mask = np.fromiter((v is not None for v in values), dtype=bool, count=n)
    nulls = n - int(mask.sum())
    validity = pa.py_buffer(np.packbits(mask, bitorder="little")) if nulls else None
    try:
        if pa.types.is_boolean(pa_type):  # Arrow packs booleans 8 to a byte
            bits = np.array([bool(v) for v in values], dtype=bool)
            buffers = [validity, pa.py_buffer(np.packbits(bits, bitorder="little"))]
        elif pa.types.is_binary(pa_type) or pa.types.is_string(pa_type):
            text = pa.types.is_string(pa_type)
            parts = [b"" if v is None else (v.encode() if text else bytes(v)) for v in values]
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum([len(b) for b in parts], out=offsets[1:])
            buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(parts))]
        else:
            data = np.array([0 if v is None else v for v in values], dtype=_NUMPY_TYPES[pa_type])
            buffers = [validity, pa.py_buffer(data)]
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        bad = next((v for v in values if v is not None and not _fits(v, pa_type)), None)
        raise LibraryError(f"column {name!r}: value {bad!r} is not {pa_type} ({exc})") from None
    return pa.Array.from_buffers(pa_type, n, buffers, null_count=nulls)


def _fits(value: object, pa_type: pa.DataType) -> bool:
    if pa.types.is_string(pa_type):
        return isinstance(value, str)
    if pa.types.is_binary(pa_type):
        return isinstance(value, (bytes, bytearray, memoryview))
    if pa.types.is_boolean(pa_type):
        return isinstance(value, bool)
    if pa.types.is_floating(pa_type):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    info = np.iinfo(_NUMPY_TYPES[pa_type])
    return isinstance(value, int) and not isinstance(value, bool) and info.min <= value <= info.max


@functools.cache
def _layout(config_name: str = "default") -> tuple[pa.Schema, dict]:
    """Schema (with the 5,000 label names in its metadata), writer options and sorting, once per process and config.

    ``store_schema=False``: pyarrow would otherwise also store the whole Arrow schema, its
    metadata included, base64-encoded in the footer, so every file carried the 5,000 label
    names twice (88% of a footer).  ``datasets`` takes the features from the ``huggingface``
    key-value metadata, which stays; the column types read back the same without it (the
    tests load every config with ``load_dataset``, streaming too).  ``sorting_columns``
    declares the order rows are written in: ``(label, id)``.
    """
    arrow = schema.arrow_schema(schema.CONFIGS[config_name].groups)
    options = schema.column_options(arrow)
    options["store_schema"] = False
    options["sorting_columns"] = pq.SortingColumn.from_ordering(arrow, schema.SORT_KEYS)
    return arrow, options


class _ImageColumn:
    """One batch's image column in a reusable buffer.

    Each tile's bytes are copied in as soon as they are read and then released, so a batch
    costs one buffer that lives for the whole job instead of a hundred short-lived 80 KB
    objects plus their concatenation: the process stays at its first batch's size (the heap
    otherwise creeps up over the first dozen batches as those allocations fragment it).
    """

    def __init__(self, capacity: int = 16 * 2**20) -> None:
        self.buf = bytearray(capacity)
        self.reset()

    def reset(self) -> None:
        # A resize fails while Arrow still holds a view of the buffer: never overwrite data in use.
        try:
            self.buf.append(0)
            del self.buf[-1]
        except BufferError:
            self.buf = bytearray(len(self.buf))
        self.end = 0
        self.offsets = [0]
        self.paths: list = []

    def append(self, image: dict) -> None:
        data = image["bytes"]
        size = len(data)
        if self.end + size > len(self.buf):
            self.buf.extend(bytes(max(size, len(self.buf))))
        self.buf[self.end : self.end + size] = data
        self.end += size
        self.offsets.append(self.end)
        self.paths.append(image["path"])

    def array(self, pa_type: pa.StructType) -> pa.StructArray:
        n = len(self.paths)
        offsets = pa.py_buffer(np.array(self.offsets, dtype=np.int32))
        data = pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(memoryview(self.buf)[: self.end])])
        paths = to_arrow(self.paths, pa.string(), "image.path")
        return pa.StructArray.from_arrays([data, paths], fields=list(pa_type))


class _ShardWriter:
    """Writes one record batch per row group, rolling to a new file past ``max_bytes`` (between groups)."""

    def __init__(self, out_dir: Path, prefix: str, max_bytes: int, config_name: str = "default") -> None:
        self.out_dir, self.prefix, self.max_bytes = out_dir, prefix, max_bytes
        self.schema, self.options = _layout(config_name)
        self.cdc = dict(schema.CDC_OPTIONS)
        self.files: list[str] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._bytes = 0

    def _open(self) -> None:
        path = self.out_dir / f"{self.prefix}-{len(self.files):05d}.parquet"
        self._writer = pq.ParquetWriter(
            path, self.schema, use_content_defined_chunking=self.cdc, write_page_index=True, **self.options
        )
        # With store_schema=False the schema's own metadata is not written: the features go in as
        # key-value metadata, where pyarrow reads them back as the schema's metadata.
        self._writer.add_key_value_metadata({**self.schema.metadata,
                                             b"content_defined_chunking": json.dumps(self.cdc).encode()})
        self.files.append(str(path))
        self._bytes = 0

    def write(self, columns: dict[str, list], images: _ImageColumn | None) -> None:
        """One row group of the rows in ``columns`` (and ``images``)."""
        arrays = [
            images.array(f.type) if f.name == "image" else to_arrow(columns[f.name], f.type, f.name)
            for f in self.schema
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        if self._writer is None or self._bytes >= self.max_bytes:
            self.close()
            self._open()
        self._writer.write_batch(batch, row_group_size=batch.num_rows)
        self._bytes += batch.nbytes
        self.rows += batch.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self, skipped: list) -> JobResult:
        if not self.files:  # an empty job still yields a valid, empty file with the schema
            self._open()
        self.close()
        return JobResult(self.files, self.rows, skipped)


class _GroupBuffer:
    """Row groups of whole buckets: the row group being filled, and the bucket being read.

    Rows arrive ordered by ``(label, id)``; each bucket goes whole into the current group, which is
    written first if the bucket would not fit in its ``rows_per_group`` rows.  A bucket larger than
    a group (a library with a cap above it) fills groups of its own, split only where it must be.
    A reader of one bucket then reads one row group, never the tail of one and the head of the
    next; a full bucket (100 tiles) is a row group of its own.  Smaller groups (a cap on their
    bytes, so that a small bucket shares its group with less) were measured and not kept:
    ``load_dataset`` pays about 13 ms a row group (bench/README.md).
    """

    def __init__(self, names: list[str], with_images: bool, rows_per_group: int) -> None:
        self.names, self.rows_per_group = names, rows_per_group
        self.images = _ImageColumn() if with_images else None
        self.group: dict[str, list] = {n: [] for n in names}
        self.bucket: list[dict] = []  # the current bucket's examples, images still inside

    def add(self, example: dict, writer: _ShardWriter) -> None:
        if self.bucket and example["label"] != self.bucket[0]["label"]:
            self.end_bucket(writer)
        self.bucket.append(example)
        if len(self.bucket) == self.rows_per_group:  # a bucket larger than a group: this part fills one
            self.end_bucket(writer)

    def end_bucket(self, writer: _ShardWriter) -> None:
        if len(self.group["id"]) + len(self.bucket) > self.rows_per_group:
            self.flush(writer)
        for example in self.bucket:
            if self.images is not None:
                self.images.append(example.pop("image"))
            for name in self.names:
                self.group[name].append(example[name])
        self.bucket = []

    def flush(self, writer: _ShardWriter) -> None:
        if self.group["id"]:
            writer.write(self.group, self.images)
        self.group = {n: [] for n in self.names}
        if self.images is not None:
            self.images.reset()

    def finish(self, writer: _ShardWriter) -> None:
        self.end_bucket(writer)
        self.flush(writer)


def write_job(job_id: int, gen_kwargs: dict, out_dir: str, skip_bad: bool, max_bytes: int,
              config_name: str = "default") -> tuple[int, JobResult]:
    """One job: stream the examples of its bucket range into ``job-JJJJJ-SSSSS.parquet``, whole buckets a row group."""
    config = schema.CONFIGS[config_name]
    writer = _ShardWriter(Path(out_dir), f"job-{job_id:05d}", max_bytes, config_name)
    buffer = _GroupBuffer([n for n in writer.schema.names if n != "image"], config.with_images, config.rows_per_group)
    skipped: list = []
    try:
        examples = rows.iter_examples(
            skip_bad=skip_bad, with_images=config.with_images,
            on_skip=lambda tile_id, _exc: skipped.append(tile_id), **gen_kwargs
        )
        for _shard, _sample, example in examples:
            buffer.add(example, writer)
        buffer.finish(writer)
        return job_id, writer.finish(skipped)
    finally:
        writer.close()


def _write_job_star(args: tuple) -> tuple[int, JobResult]:
    return write_job(*args)


def write_parquet(
    root: Path,
    db_path: Path,
    out_dir: Path,
    num_proc: int = 1,
    skip_bad: bool = False,
    max_bytes: int = 500 * 10**6,
    progress: bool | None = None,
    config_name: str = "default",
) -> tuple[list[Path], int, list]:
    """Every row of a config (:data:`.schema.CONFIGS`) into Parquet files in ``out_dir``.

    Returns the files in row order, the number of rows written and the ids of rows skipped
    (``skip_bad``).  Nothing here grows with the library but that short list.
    """
    config = schema.CONFIGS[config_name]
    conn = rows.open_tiles_db(db_path)
    try:
        total = sum(n for b, n in rows.config_counts(conn, config.synthetic).items() if is_bucket_id(b))
    finally:
        conn.close()
    per_row = mean_tile_bytes(root, db_path, config.synthetic) if config.with_images else METADATA_ROW_BYTES
    per_file = rows_per_file(total, per_row, max_bytes)
    plan = rows.split_plan(root, db_path, skip_bad=skip_bad, shard_rows=per_file, min_shards=1,
                           synthetic=config.synthetic)
    jobs = [
        (job_id, {**plan, "shards": [shard]}, str(out_dir), skip_bad, max_bytes, config_name)
        for job_id, shard in enumerate(plan["shards"])
    ]
    show = sys.stderr.isatty() if progress is None else progress
    results: dict[int, JobResult] = {}
    workers = max(1, min(num_proc, len(jobs)))
    # fork, as builder.assign.pipeline does: works from scripts without a __main__ guard and from notebooks.
    # The pool starts before the progress bar (tqdm's monitor thread) and before the parent has
    # used pyarrow, so no thread is running when it forks.
    pool = None
    if workers > 1:
        # gc.freeze: the children's garbage collector would otherwise walk (and so copy-on-write)
        # every object the parent imported: measured 0.1-0.2 s and ~100 MB per worker.
        gc.freeze()
        pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        done = pool.imap_unordered(_write_job_star, jobs) if pool else map(_write_job_star, jobs)
        with tqdm(total=total, unit=" tiles", desc=f"build {config_name}", disable=not show) as bar:
            for job_id, result in done:
                results[job_id] = result
                bar.update(result.rows)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
            gc.unfreeze()
    files = [Path(f) for job_id in sorted(results) for f in results[job_id].files]
    written = sum(r.rows for r in results.values())
    skipped = [tile_id for job_id in sorted(results) for tile_id in results[job_id].skipped]
    logger.info("wrote %d rows into %d Parquet files (%d rows per file planned)", written, len(files), per_file)
    return files, written, skipped


def file_size_limit(value: str | int) -> int:
    """``"500MB"`` -> bytes, with ``datasets``' units for ``max_shard_size`` (decimal KB/MB/GB).

    >>> file_size_limit("500MB"), file_size_limit("1GiB"), file_size_limit(1234)
    (500000000, 1073741824, 1234)
    """
    if isinstance(value, int):
        return value
    text = str(value).strip().upper()
    units = {
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
    }
    suffix = next((u for u in units if text.endswith(u)), "")
    number, factor = (text[: -len(suffix)], units[suffix]) if suffix else (text.rstrip("B"), 1)
    try:
        size = int(float(number) * factor)
    except ValueError:
        raise UsageError(f"not a size: {value!r} (use e.g. 500MB)") from None
    if size <= 0:
        raise UsageError(f"size must be positive, got {value!r}")
    return size
