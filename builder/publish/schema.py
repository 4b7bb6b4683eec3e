"""The Parquet layout ``datasets`` writes, reproduced without importing ``datasets``.

``build`` must write files that ``load_dataset`` reads back with the exact features (the
5,000-name ``ClassLabel`` lives only here, in the schema's ``huggingface`` metadata), and with
the options ``datasets``' own ParquetWriter and ``push_to_hub`` use: images uncompressed and
PLAIN-encoded (already PNG-compressed; lets the Hub's Xet storage deduplicate), other columns
snappy with dictionaries, content-defined chunking, a page index, 100-row row groups.

Importing ``datasets`` costs ~0.5 s of CPU per process, more than writing a thousand tiles, so
the schema is built from :data:`builder.publish.rows.COLUMNS` directly.  Drift from ``datasets``
is caught by the tests, which compare this schema, its metadata and the written files' column
options with what ``datasets`` itself produces for ``mosaic_library.dataset_features()``.
"""

from __future__ import annotations

import json

import pyarrow as pa

from .rows import COLUMNS, LABEL_NAMES

ROWS_PER_GROUP = 100
# datasets.config.DEFAULT_CDC_OPTIONS (5.x), what push_to_hub writes with.
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}

_ARROW_TYPES = {
    "string": pa.string(),
    "float64": pa.float64(),
    "int32": pa.int32(),
    "int64": pa.int64(),
}
_IMAGE_TYPE = pa.struct({"bytes": pa.binary(), "path": pa.string()})


def _feature_json(kind: str, dtype: str | None) -> dict:
    """One feature as ``datasets.Features.to_dict()`` serialises it (key order included)."""
    if kind == "Image":
        return {"_type": "Image"}
    if kind == "ClassLabel":
        return {"names": LABEL_NAMES, "_type": "ClassLabel"}
    return {"dtype": dtype, "_type": "Value"}


def _arrow_type(kind: str, dtype: str | None) -> pa.DataType:
    if kind == "Image":
        return _IMAGE_TYPE
    if kind == "ClassLabel":
        return pa.int64()
    return _ARROW_TYPES[dtype]


def arrow_schema(with_images: bool = True) -> pa.Schema:
    """The Arrow schema with ``{"huggingface": {"info": {"features": ...}}}`` metadata."""
    columns = [c for c in COLUMNS if with_images or c[1] != "Image"]
    features = {name: _feature_json(kind, dtype) for name, kind, dtype in columns}
    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema([pa.field(name, _arrow_type(kind, dtype)) for name, kind, dtype in columns], metadata=metadata)


def column_options(schema: pa.Schema) -> dict:
    """``pq.ParquetWriter`` options per leaf column, as ``datasets.arrow_writer`` chooses them."""
    compression, use_dictionary, encoding = {}, [], {}
    for field in schema:
        embedded = pa.types.is_struct(field.type)  # the image column: bytes to embed
        leaves = [f"{field.name}.{sub.name}" for sub in field.type] if embedded else [field.name]
        for leaf in leaves:
            compression[leaf] = "none" if embedded else "snappy"
            if embedded:
                encoding[leaf] = "PLAIN"
            else:
                use_dictionary.append(leaf)
    return {"compression": compression, "use_dictionary": use_dictionary, "column_encoding": encoding}
