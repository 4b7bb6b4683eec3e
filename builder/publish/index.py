"""The bucket index shipped with a release: where each bucket's rows are, without a footer scan.

``bucket_index.parquet`` at the repo's root holds one row per bucket, config and row group holding
that bucket's rows (:data:`INDEX_SCHEMA`): the file (path in the repo), the row group, the bucket's
first row in it and its row count, and the row group's byte range in the file.  A reader of one
bucket (``restore --buckets``, ``query --hub``, a user's own pyarrow code) looks the bucket up here
and reads that row group only (one footer, one range), instead of opening every file's footer to
read its ``label`` statistics: at 500,000 tiles in 64 MB shards that is some 600 footers.

Rows are ordered by ``(bucket, config, file, row_group)``; the file is small (a few hundred KB at
5,000 populated buckets: dictionary-encoded names, delta-friendly integers).  It is made from the
written files' own metadata and ``label`` column (:func:`index_rows`), so it cannot disagree with
them; ``build`` writes it, the release manifest checksums it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
    ]
)


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


def index_rows(parquet_path: Path, path_in_repo: str, config: str) -> list[dict]:
    """The index rows of one written file: every (bucket, row group) it holds, in file order."""
    parquet = pq.ParquetFile(parquet_path)
    metadata = parquet.metadata
    out = []
    for group in range(metadata.num_row_groups):
        offset, length = row_group_range(metadata, group)
        labels = parquet.read_row_group(group, columns=["label"]).column("label").to_pylist()
        start = 0
        while start < len(labels):
            bucket = labels[start]
            end = start
            while end < len(labels) and labels[end] == bucket:
                end += 1
            out.append({"bucket": bucket, "config": config, "file": path_in_repo, "row_group": group,
                        "first_row": start, "rows": end - start, "offset": offset, "length": length})
            start = end
    return out


def write_index(path: Path, files: Iterable[tuple[Path, str, str]]) -> int:
    """Write the index of ``(local path, path in repo, config)`` files to ``path``; returns its rows."""
    rows = [row for local, in_repo, config in files for row in index_rows(local, in_repo, config)]
    rows.sort(key=lambda r: (r["bucket"], r["config"], r["file"], r["row_group"]))
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    pq.write_table(table, path, compression="zstd", use_dictionary=["config", "file"], store_schema=False)
    return table.num_rows


def read_index(source) -> pa.Table:
    """The index as an Arrow table (``source``: a path or a file object)."""
    table = pq.read_table(source)
    missing = [f.name for f in INDEX_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"not a bucket index: columns {missing} are missing")
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


def ranges_by_file(rows: pa.Table) -> dict[str, dict[int, tuple[int, int]]]:
    """``{file: {row group: (offset, length)}}`` to fetch for the index rows ``rows``."""
    out: dict[str, dict[int, tuple[int, int]]] = {}
    for row in rows.select(["file", "row_group", "offset", "length"]).to_pylist():
        out.setdefault(row["file"], {})[row["row_group"]] = (row["offset"], row["length"])
    return dict(sorted(out.items()))


def bucket_counts(index: pa.Table, config: str) -> dict[int, int]:
    """Rows per bucket of one config, from the index alone."""
    rows = index.filter(pc.equal(index["config"], config))
    out: dict[int, int] = {}
    for bucket, n in zip(rows["bucket"].to_pylist(), rows["rows"].to_pylist()):
        out[bucket] = out.get(bucket, 0) + n
    return out
