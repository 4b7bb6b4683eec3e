"""Publishing: the Hub-ready staging folder (``build``), its upload (``push``), reading part of a
release from the Hub, and the way back from a release to an on-disk library (``restore``).

* :func:`build_staging` writes every config's rows (those ``mosaic_library.MosaicLibrary`` generates)
  as Parquet shards, the bucket index (:mod:`.index`), the card, ``centroids.npy``, a consistent
  ``tiles.db`` snapshot and the release manifest (:mod:`.manifest`) (:mod:`.staging`, :mod:`.parquet`).
* :func:`plan_upload` / :func:`push_staging` upload exactly that folder, what changed by sha256 (:mod:`.hub`).
* :func:`restore_library` recreates bucket folders and ``tiles.db`` from a checked release, all or
  nothing and resumable (:mod:`.restore`); :mod:`.remote` reads a release on the Hub whole or in
  part (``restore_from_hub``, ``query_hub``).
* :func:`render_card` fills the dataset card template (``data/card_template.md``) with live figures (:mod:`.card`).
* :mod:`.schema` is the one definition of the dataset's columns and configs and of the release's file names.
"""

from .card import CardStats, render_card
from .hub import PublishError, PushReport, UploadItem, format_plan, plan_upload, push_staging, validate_repo_id
from .restore import LocalRelease, RestoreReport, restore_library, restore_release
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
    "LocalRelease",
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
    "restore_release",
    "staging_state",
    "validate_repo_id",
]
