"""The bucket index shipped with a release: where each bucket's rows are, without a footer scan.

``bucket_index.parquet`` at the repo's root holds one row per bucket, config and row group holding
that bucket's rows (:data:`INDEX_SCHEMA`): the file (path in the repo), the row group, the bucket's
first row in it and its row count, and the row group's byte range in the file.  A reader of one
bucket (``restore --buckets``, ``query --hub``, a user's own pyarrow code) looks the bucket up here
and reads that row group only (one footer, one range), instead of opening every file's footer to
read its ``label`` statistics: at 500,000 tiles in 64 MB shards that is some 600 footers.

Two more facts per row of a config with images (index format 2; :data:`SPAN_COLUMNS`): the byte
span of the bucket's PNGs in the file (``image_offset``, ``image_length``: :mod:`.spans`), so a
reader of a small bucket fetches its own images and the row group's small columns rather than
the whole row group (a 100-row group is about 6 MB, a 5-tile bucket 0.3 MB); and, for the
``synthetic`` config, ``source_buckets``: the buckets holding the real tiles its synthetic tiles
were made from (their ``derived_from``), so a partial restore can bring those sources along and
leave a library ``verify`` passes.  An index without these columns (format 1) reads as nulls:
its buckets are read a row group at a time, their sources not located.

Rows are ordered by ``(bucket, config, file, row_group)``; the file is small (a few hundred KB at
5,000 populated buckets: dictionary-encoded names, delta-friendly integers).  It is made from the
written files' own metadata and ``label`` column (:func:`index_rows`), so it cannot disagree with
them; ``build`` writes it, the release manifest checksums it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import spans

FORMAT = 2  # 1: no SPAN_COLUMNS
FORMAT_KEY = b"mosaic_bucket_index_format"  # in the index file's key-value metadata
INDEX_SCHEMA = pa.schema(
    [
        pa.field("bucket", pa.int32()),
        pa.field("config", pa.string()),
        pa.field("file", pa.string()),  # path in the repo, e.g. data/train-00003-of-00008.parquet
        pa.field("row_group", pa.int32()),
        pa.field("first_row", pa.int32()),  # the bucket's first row within the row group
        pa.field("rows", pa.int32()),  # the bucket's rows in this row group
        pa.field("offset", pa.int64()),  # the row group's first byte in the file
        pa.field("length", pa.int64()),  # the row group's bytes (every column chunk, page headers included)
        # format 2: null in configs without images (and in rows whose images are not stored whole)
        pa.field("image_offset", pa.int64()),  # the bucket's first PNG's length prefix in the file
        pa.field("image_length", pa.int64()),  # to its last PNG's end (spans.split splits it)
        # format 2, synthetic config only: the buckets of the real tiles its rows' derived_from name
        pa.field("source_buckets", pa.list_(pa.int32())),
    ]
)
SPAN_COLUMNS = ("image_offset", "image_length", "source_buckets")  # absent from a format-1 index


def row_group_range(metadata: pq.FileMetaData, index: int) -> tuple[int, int]:
    """``(offset, length)`` of row group ``index``: from its first column chunk's first page (the
    dictionary page when there is one) to the end of its last chunk."""
    group = metadata.row_group(index)
    start, end = None, 0
    for i in range(group.num_columns):
        chunk = group.column(i)
        first = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        start = first if start is None else min(start, first)
        end = max(end, first + chunk.total_compressed_size)
    return int(start or 0), int(end - (start or 0))


def _runs(labels: list) -> list[tuple[int, int, int]]:
    """``(label, first row, rows)`` of each run of equal labels."""
    out = []
    start = 0
    while start < len(labels):
        end = start
        while end < len(labels) and labels[end] == labels[start]:
            end += 1
        out.append((labels[start], start, end - start))
        start = end
    return out


def index_rows(parquet_path: Path, path_in_repo: str, config: str,
               source_label: Mapping[str, int] | None = None) -> list[dict]:
    """The index rows of one written file: every (bucket, row group) it holds, in file order, with
    its image span when the file has images, and (``source_label``: real tile id -> label) the
    buckets of its rows' sources when the file has ``derived_from``."""
    parquet = pq.ParquetFile(parquet_path)
    metadata = parquet.metadata
    names = parquet.schema_arrow.names
    sources = source_label is not None and "derived_from" in names
    columns = ["label"] + (["derived_from"] if sources else [])
    groups = {group: parquet.read_row_group(group, columns=columns) for group in range(metadata.num_row_groups)}
    runs = {group: _runs(table.column("label").to_pylist()) for group, table in groups.items()}
    places = (spans.file_spans(parquet_path, metadata, {g: [(first, n) for _b, first, n in r] for g, r in runs.items()})
              if "image" in names else {g: [None] * len(r) for g, r in runs.items()})
    out = []
    for group, table in groups.items():
        offset, length = row_group_range(metadata, group)
        derived = table.column("derived_from").to_pylist() if sources else None
        for (bucket, first, rows), place in zip(runs[group], places[group]):
            found = None
            if derived is not None:
                found = sorted({source_label[d] for d in derived[first:first + rows] if d in source_label})
            out.append({"bucket": bucket, "config": config, "file": path_in_repo, "row_group": group,
                        "first_row": first, "rows": rows, "offset": offset, "length": length,
                        "image_offset": place[0] if place else None, "image_length": place[1] if place else None,
                        "source_buckets": found})
    return out


def source_labels(synthetic: Iterable[Path], real: Iterable[Path]) -> dict[str, int]:
    """``{real tile id: label}`` for every id the ``derived_from`` column of ``synthetic`` names,
    from the ``id`` and ``label`` columns of the files of ``real``."""
    wanted = {d for path in synthetic for d in pq.ParquetFile(path).read(columns=["derived_from"])["derived_from"].to_pylist()}
    wanted.discard(None)
    out: dict[str, int] = {}
    for path in real if wanted else ():
        table = pq.ParquetFile(path).read(columns=["id", "label"])
        out.update((i, b) for i, b in zip(table["id"].to_pylist(), table["label"].to_pylist()) if i in wanted)
    return out


def write_index(path: Path, files: Iterable[tuple[Path, str, str]]) -> int:
    """Write the index of ``(local path, path in repo, config)`` files to ``path``; returns its rows.

    Raises :class:`.spans.SpanError` if a file's images are not where its own bytes say.
    """
    files = list(files)
    labels = source_labels([p for p, _r, c in files if c == "synthetic"], [p for p, _r, c in files if c == "default"])
    rows = [row for local, in_repo, config in files
            for row in index_rows(local, in_repo, config, labels if config == "synthetic" else None)]
    rows.sort(key=lambda r: (r["bucket"], r["config"], r["file"], r["row_group"]))
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA).replace_schema_metadata({FORMAT_KEY: str(FORMAT)})
    pq.write_table(table, path, compression="zstd", use_dictionary=["config", "file"], store_schema=False)
    return table.num_rows


def read_index(source) -> pa.Table:
    """The index as an Arrow table (``source``: a path or a file object); a format-1 index gets
    null :data:`SPAN_COLUMNS`."""
    table = pq.read_table(source)
    missing = [f.name for f in INDEX_SCHEMA if f.name not in table.column_names and f.name not in SPAN_COLUMNS]
    if missing:
        raise ValueError(f"not a bucket index: columns {missing} are missing")
    for field in INDEX_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


def select(index: pa.Table, buckets: Sequence[int], configs: Sequence[str]) -> pa.Table:
    """The index rows of ``buckets`` in ``configs``."""
    mask = pc.and_(pc.is_in(index["bucket"], pa.array(list(buckets), pa.int32())),
                   pc.is_in(index["config"], pa.array(list(configs), pa.string())))
    return index.filter(mask)


def row_groups_by_file(rows: pa.Table) -> dict[str, list[int]]:
    """``{file: sorted row groups}`` to read for the index rows ``rows``."""
    out: dict[str, set[int]] = {}
    for file, group in zip(rows["file"].to_pylist(), rows["row_group"].to_pylist()):
        out.setdefault(file, set()).add(group)
    return {file: sorted(groups) for file, groups in sorted(out.items())}


def bucket_counts(index: pa.Table, config: str) -> dict[int, int]:
    """Rows per bucket of one config, from the index alone."""
    rows = index.filter(pc.equal(index["config"], config))
    out: dict[int, int] = {}
    for bucket, n in zip(rows["bucket"].to_pylist(), rows["rows"].to_pylist()):
        out[bucket] = out.get(bucket, 0) + n
    return out
