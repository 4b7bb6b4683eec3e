"""The dataset's features, defined once, and the Parquet layout ``datasets`` writes for them.

:func:`features_dict` is the one definition of the dataset's columns (a contract with every
reader of the dataset), kept as data in the form ``datasets.Features.to_dict()`` produces (key order
included).  ``mosaic_library.dataset_features()`` is ``datasets.Features.from_dict`` of it;
:func:`arrow_schema` derives the Arrow schema and its ``huggingface`` metadata from it without
importing ``datasets``: that import costs about 1 s of CPU per process on top of pyarrow and
NumPy, more than the rest of a small ``build``.  The tests check
that ``datasets`` derives the same schema and metadata from the same mapping, and that
``load_dataset`` reads the written files back with these features.

Columns come in groups (:data:`FEATURE_GROUPS`) so that a config with fewer or more columns is a
different choice of groups, in the fixed order of the table: ``metadata`` leaves out ``image`` and
adds ``synthetic`` and ``derived_from``.  :data:`CONFIGS` names each config of a release (its folder,
columns, rows and row-group size), and the release's root files are named here too.

``build`` must write files that ``load_dataset`` reads back with the exact features (the
5,000-name ``ClassLabel`` lives only here, in the schema's ``huggingface`` metadata), and with
the options ``datasets``' own ParquetWriter and ``push_to_hub`` use: images uncompressed and
PLAIN-encoded (already PNG-compressed; lets the Hub's Xet storage deduplicate), other columns
snappy with dictionaries, content-defined chunking, a page index, 100-row row groups.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

import pyarrow as pa

from ..core.layout import LABEL_NAMES

ROWS_PER_GROUP = 100
# The order every config's rows are written in, declared as the files' ``sorting_columns``.
SORT_KEYS = (("label", "ascending"), ("id", "ascending"))
# datasets.config.DEFAULT_CDC_OPTIONS (5.x), what push_to_hub writes with.
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}


def _value(dtype: str) -> dict:
    return {"dtype": dtype, "_type": "Value"}


# The dataset's columns by group, in dataset order, each feature as datasets.Features.to_dict()
# writes it.  The label's names are the layout's bucket names: label == bucket_id in every release.
FEATURE_GROUPS: dict[str, dict[str, dict]] = {
    "image": {"image": {"_type": "Image"}},
    "tile": {
        "label": {"names": LABEL_NAMES, "_type": "ClassLabel"},
        "id": _value("string"),
        "phash": _value("string"),
        "mean_l": _value("float64"),
        "mean_a": _value("float64"),
        "mean_b": _value("float64"),
    },
    "provenance": {
        "source": _value("string"),
        "z": _value("int32"),
        "x": _value("int64"),
        "y": _value("int64"),
        "lon": _value("float64"),
        "lat": _value("float64"),
        "region": _value("string"),
        "harvested_at": _value("string"),
    },
    # the metadata config only, where real and synthetic tiles sit side by side
    "flag": {"synthetic": _value("bool")},
    # the synthetic and metadata configs: the real tile a synthetic one was made from (null: a flat tile, a real one)
    "synthetic": {"derived_from": _value("string")},
}
DEFAULT_GROUPS = ("image", "tile", "provenance")  # the default config: real tiles with images
SYNTHETIC_GROUPS = (*DEFAULT_GROUPS, "synthetic")  # the synthetic config: synthetic tiles, with derived_from
METADATA_GROUPS = ("tile", "provenance", "flag", "synthetic")  # the metadata config: every tile, no image


class Config(NamedTuple):
    """One dataset config of a release: its name, its folder in the repo, its columns and its rows.

    ``synthetic`` selects the rows (``False``: real tiles, ``True``: synthetic ones, ``None``:
    every tile); ``rows_per_group`` is the most rows a Parquet row group holds (a row group holds
    whole buckets whenever a bucket fits in it: ``builder.publish.parquet``'s ``_GroupBuffer``).
    """

    name: str
    folder: str
    groups: tuple[str, ...]
    synthetic: bool | None
    rows_per_group: int

    @property
    def with_images(self) -> bool:
        return "image" in self.groups

    @property
    def pattern(self) -> str:
        """The ``data_files`` path pattern of the card's YAML (and the shards' name prefix)."""
        return f"{self.folder}/train-*"

    def shard_name(self, index: int, count: int) -> str:
        """``<folder>/train-XXXXX-of-YYYYY.parquet``, the name ``push_to_hub`` gives shards."""
        return f"{self.folder}/train-{index:05d}-of-{count:05d}.parquet"


# Metadata rows are about 150 bytes: 2,000 of them make a row group of a few hundred KB, few enough
# groups for a small footer at 500,000 tiles and small enough that a colour query reads little.
METADATA_ROWS_PER_GROUP = 2000
CONFIGS: dict[str, Config] = {
    "default": Config("default", "data", DEFAULT_GROUPS, False, ROWS_PER_GROUP),
    "synthetic": Config("synthetic", "synthetic", SYNTHETIC_GROUPS, True, ROWS_PER_GROUP),
    "metadata": Config("metadata", "metadata", METADATA_GROUPS, None, METADATA_ROWS_PER_GROUP),
}

# The release's other files, at the repo's root (README.md is the card).
CARD_NAME = "README.md"
INDEX_NAME = "bucket_index.parquet"  # bucket -> config, file, row group, rows, byte ranges (see builder.publish.index)
RELEASE_MANIFEST = "release.json"  # every file's size, sha256 and rows (see builder.publish.manifest)


def feature_groups(with_images: bool = True, synthetic: bool = False) -> tuple[str, ...]:
    """The groups of the ``default`` or ``synthetic`` config, or (``with_images=False``) the ``metadata`` one.

    >>> feature_groups(False), feature_groups(synthetic=True)[-1]
    (('tile', 'provenance', 'flag', 'synthetic'), 'synthetic')
    """
    if not with_images:
        return METADATA_GROUPS
    return SYNTHETIC_GROUPS if synthetic else DEFAULT_GROUPS


def features_dict(groups: Iterable[str] = DEFAULT_GROUPS) -> dict[str, dict]:
    """The features of ``groups`` as ``datasets.Features.to_dict()`` gives them (a fresh copy).

    Columns keep the order of :data:`FEATURE_GROUPS` whatever the order of ``groups``.

    >>> list(features_dict(["provenance", "image"]))[:3], features_dict(["tile"])["label"]["names"][42]
    (['image', 'source', 'z'], 'bucket_0042')
    """
    wanted = set(groups)
    unknown = wanted - set(FEATURE_GROUPS)
    if unknown:
        raise ValueError(f"unknown feature groups {sorted(unknown)}; known: {list(FEATURE_GROUPS)}")
    return {
        name: {key: list(value) if isinstance(value, list) else value for key, value in feature.items()}
        for group, columns in FEATURE_GROUPS.items()
        if group in wanted
        for name, feature in columns.items()
    }


_VALUE_TYPES = {
    "bool": pa.bool_(),
    "string": pa.string(),
    "float64": pa.float64(),
    "int32": pa.int32(),
    "int64": pa.int64(),
}
_IMAGE_TYPE = pa.struct({"bytes": pa.binary(), "path": pa.string()})  # datasets.Image's storage


def arrow_type(feature: dict) -> pa.DataType:
    """The Arrow storage type of one feature (as ``datasets`` stores Image, ClassLabel, Value).

    >>> arrow_type({"_type": "ClassLabel", "names": ["a"]}), arrow_type({"dtype": "int32", "_type": "Value"})
    (DataType(int64), DataType(int32))
    """
    kind = feature.get("_type")
    if kind == "Image":
        return _IMAGE_TYPE
    if kind == "ClassLabel":
        return pa.int64()
    if kind == "Value" and feature.get("dtype") in _VALUE_TYPES:
        return _VALUE_TYPES[feature["dtype"]]
    raise ValueError(f"no Arrow type for feature {feature!r}")


def arrow_schema(groups: Iterable[str] = DEFAULT_GROUPS) -> pa.Schema:
    """The Arrow schema of ``groups`` with ``{"huggingface": {"info": {"features": ...}}}`` metadata."""
    features = features_dict(groups)
    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema([pa.field(name, arrow_type(f)) for name, f in features.items()], metadata=metadata)


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
