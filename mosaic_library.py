"""``datasets`` builder for a Mosaic Library: ``tiles.db`` + bucket folders -> image/ClassLabel rows.

Modelled on ``datasets``' packaged ``imagefolder`` builder, but driven by ``tiles.db`` rather
than a folder walk, so that ``label`` is the bucket id itself (a ``ClassLabel`` with all 5,000
names ``bucket_0000`` .. ``bucket_4999``; imagefolder only names the buckets it finds, so its
indices shift whenever a new bucket fills) and the LAB, pHash and provenance columns come along.

``datasets`` 4 and later no longer run dataset scripts through ``load_dataset``, so this class
is used directly; the published Hub repo holds Parquet files and needs no code::

    from mosaic_library import MosaicLibrary

    builder = MosaicLibrary(data_dir="mosaic_library", cache_dir="mosaic_cache")
    builder.download_and_prepare(num_proc=2)
    ds = builder.as_dataset(split="train")
    ds.features["label"].int2str(ds[0]["label"])     # 'bucket_0042'

Configs, as a published release has them: ``default`` (real tiles with images), ``synthetic`` (the
flagged synthetic tiles ``synthesize`` made, with ``derived_from``) and ``metadata`` (every tile,
real and synthetic, no image column, with the ``synthetic`` flag and ``derived_from``; fast).  Options:
``skip_bad=True`` logs and skips rows whose PNG is missing or unreadable instead of failing;
``db_path`` reads rows from a consistent snapshot of ``tiles.db``.  The cache folder's hash is a
fingerprint of the library's rows and centroids, so a grown library is regenerated rather than
served stale from the cache.

The rows themselves come from :func:`builder.publish.rows.iter_examples` and the features from
:func:`builder.publish.schema.features_dict`, which ``python -m builder build`` also uses to write
the Hub's Parquet files (without importing ``datasets``), so this builder and the published
dataset cannot drift apart.  Security: a tile's file is derived from ``(bucket_id, id)`` after
validating both; the ``filepath`` column is never opened.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets
from datasets.builder import Key
from datasets.exceptions import DatasetGenerationError

# Re-exported: the row generation is shared with builder.publish (see the module docstring);
# the tile facts live in builder.core.layout and the safe tile reader in builder.core.tilefiles.
from builder.core.db import bucket_counts
from builder.core.errors import BadTile, LibraryError, MosaicError
from builder.core.layout import (
    CENTROIDS_NAME,
    DB_NAME,
    DEFAULT_CAP,
    LABEL_NAMES,
    MAX_TILE_BYTES,
    N_BUCKETS,
    PNG_SIGNATURE,
    TILE_SIZE,
    tile_relpath,
)
from builder.core.library import Library
from builder.core.tilefiles import TileFiles, check_png
from builder.publish import rows as _rows
from builder.publish import schema as _schema
from builder.publish.rows import (
    BUILD_FORMAT,
    DEFAULT_SHARD_ROWS,
    Shard,
    library_fingerprint,
    open_tiles_db,
    plan_shards,
    split_plan,
)

logger = logging.getLogger(__name__)

_DESCRIPTION = (
    f"{TILE_SIZE}x{TILE_SIZE} satellite tiles routed into {N_BUCKETS:,} CIE LAB colour buckets (at most "
    f"{DEFAULT_CAP} per bucket by default, perceptual duplicates dropped). label == bucket_id; label names are "
    f"{LABEL_NAMES[0]}..{LABEL_NAMES[-1]}."
)
_LICENSE = "other"

__all__ = [
    "BUILD_FORMAT",
    "DEFAULT_SHARD_ROWS",
    "LABEL_NAMES",
    "MAX_TILE_BYTES",
    "PNG_SIGNATURE",
    "TILE_SIZE",
    "BadTile",
    "MosaicLibrary",
    "MosaicLibraryConfig",
    "Shard",
    "TileFiles",
    "bucket_counts",
    "check_png",
    "dataset_features",
    "generate_examples",
    "library_fingerprint",
    "open_tiles_db",
    "plan_shards",
    "split_plan",
    "tile_relpath",
]


def dataset_features(with_images: bool = True, synthetic: bool | None = False) -> datasets.Features:
    """The dataset's columns: ``Features.from_dict`` of :func:`builder.publish.schema.features_dict`,
    the one definition, from which ``build`` also derives its Parquet schema."""
    return datasets.Features.from_dict(_schema.features_dict(_schema.feature_groups(with_images, bool(synthetic))))


def generate_examples(
    root: str | Path, db_path: str | Path, shards: list[Shard], with_images: bool = True, skip_bad: bool = False,
    synthetic: bool | None = False,
) -> Iterator[tuple[Key, dict]]:
    """``(Key, example)`` for every row of ``shards`` (real tiles, the synthetic ones, or with
    ``synthetic=None`` every tile), ordered by ``(bucket_id, id)``."""
    for shard_idx, sample_idx, example in _rows.iter_examples(root, db_path, shards, with_images, skip_bad,
                                                              synthetic=synthetic):
        yield Key(shard_idx, sample_idx), example


@dataclass
class MosaicLibraryConfig(datasets.BuilderConfig):
    """BuilderConfig for MosaicLibrary.

    Args:
        with_images: include the ``image`` column (the ``metadata`` config sets it False).
        skip_bad: skip (and log) rows whose PNG is missing or unreadable instead of failing.
        db_path: read rows from this ``tiles.db`` (e.g. a consistent snapshot) instead of
            ``<data_dir>/tiles.db``; image files are still read from ``data_dir``.
        shard_rows: rows per generator shard; shards are what ``num_proc`` distributes.
        synthetic: the synthetic tiles (with ``derived_from``) instead of the real ones; ``None``:
            every tile (the ``metadata`` config: with the ``synthetic`` flag and ``derived_from``).
    """

    with_images: bool = True
    synthetic: bool | None = False
    skip_bad: bool = False
    db_path: str | None = None
    shard_rows: int = DEFAULT_SHARD_ROWS

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.shard_rows, int) or self.shard_rows < 1:
            raise ValueError(f"shard_rows must be a positive integer, got {self.shard_rows!r}")


class MosaicLibrary(datasets.GeneratorBasedBuilder):
    """Mosaic Library tiles as an image/ClassLabel dataset with one ``train`` split."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = MosaicLibraryConfig
    BUILDER_CONFIGS: ClassVar[list[MosaicLibraryConfig]] = [
        MosaicLibraryConfig(name="default", version=VERSION, description="Tiles with images."),
        MosaicLibraryConfig(
            name="metadata", version=VERSION, with_images=False, synthetic=None,
            description="Every tile's row, real and synthetic, without images.",
        ),
        MosaicLibraryConfig(
            name="synthetic", version=VERSION, synthetic=True,
            description="Synthetic tiles (colour transfer from real tiles, flagged), with derived_from.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *args, hash: str | None = None, **kwargs):
        if hash is None and kwargs.get("data_dir"):
            # Key the cache on the library's content: a grown library must not be served stale.
            root = Path(kwargs["data_dir"]).expanduser()
            Library.verify_layout(root)
            db_path = Path(kwargs.get("db_path") or root / DB_NAME)
            centroids = root / CENTROIDS_NAME
            hash = library_fingerprint(db_path, centroids if centroids.is_file() else None)[:16]
        super().__init__(*args, hash=hash, **kwargs)

    # -- datasets API -------------------------------------------------------------------------

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=dataset_features(with_images=self.config.with_images, synthetic=self.config.synthetic),
            license=_LICENSE,
        )

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        root = self._library_root()
        gen_kwargs = split_plan(root, self.config.db_path, self.config.skip_bad, self.config.shard_rows,
                                synthetic=self.config.synthetic)
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs=gen_kwargs)]

    def _generate_shards(self, root: str, db_path: str, shards: list[Shard],
                         synthetic: bool | None = False) -> Iterator[dict]:
        for shard in shards:
            yield {"db_path": db_path, "buckets": (shard.lo, shard.hi)}

    def _generate_examples(self, root: str, db_path: str, shards: list[Shard],
                           synthetic: bool | None = False) -> Iterator[tuple[Key, dict]]:
        yield from generate_examples(root, db_path, shards, self.config.with_images, self.config.skip_bad,
                                     synthetic=synthetic)

    def _prepare_split_single(self, *args, **kwargs):
        """Re-raise our own errors unwrapped, so the caller (and a num_proc parent) sees the
        message naming the tile rather than datasets' generic "error while generating"."""
        try:
            yield from super()._prepare_split_single(*args, **kwargs)
        except DatasetGenerationError as exc:
            if isinstance(exc.__cause__, MosaicError):
                raise exc.__cause__ from None
            raise

    # -- helpers ------------------------------------------------------------------------------

    def _library_root(self) -> Path:
        """The library folder, checked up front (layout and centroids) with a read-only open."""
        if not self.config.data_dir:
            raise LibraryError("MosaicLibrary needs data_dir=<library folder>")
        root = Path(self.config.data_dir).expanduser().resolve()
        Library.open(root, readonly=True).close()
        return root
