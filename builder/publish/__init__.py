"""Publishing: the Hub-ready staging folder (``build``), its upload (``push``) and the way
back from a release to an on-disk library (``restore``).

* :func:`build_staging` writes the rows ``mosaic_library.MosaicLibrary`` generates as Parquet shards and writes
  the card, ``centroids.npy`` and a consistent ``tiles.db`` snapshot (:mod:`.staging`).
* :func:`plan_upload` / :func:`push_staging` upload exactly that folder (:mod:`.hub`).
* :func:`restore_library` recreates bucket folders and ``tiles.db`` (:mod:`.restore`).
* :func:`render_card` fills the dataset card template (``data/card_template.md``) with live figures (:mod:`.card`).
* :func:`.schema.features_dict` is the one definition of the dataset's columns (:mod:`.schema`).
"""

from .card import CardStats, render_card
from .hub import PublishError, PushReport, UploadItem, format_plan, plan_upload, push_staging, validate_repo_id
from .restore import RestoreReport, restore_library
from .staging import (
    BuildReport,
    StagingState,
    build_staging,
    default_output,
    ensure_staging,
    staging_state,
)

__all__ = [
    "BuildReport",
    "CardStats",
    "PublishError",
    "PushReport",
    "RestoreReport",
    "StagingState",
    "UploadItem",
    "build_staging",
    "default_output",
    "ensure_staging",
    "format_plan",
    "plan_upload",
    "push_staging",
    "render_card",
    "restore_library",
    "staging_state",
    "validate_repo_id",
]
