"""``push``: upload a staging folder to a Hub dataset repo with ``huggingface_hub`` 2.x.

One commit (``HfApi.create_commit``) adds exactly the files :func:`plan_upload` lists and deletes
Parquet shards a previous release left under ``data/`` (the ``data/train-*`` pattern in the card
would otherwise load them too).  The token comes from ``huggingface_hub``'s own resolution
(``HF_TOKEN``, then the saved login) unless one is passed in; it is never printed, logged or
written, and error messages are scrubbed of it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

from ..errors import MosaicError, UsageError
from ..layout import CENTROIDS_NAME, DB_NAME
from .staging import MANIFEST, refresh_card

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("README.md", CENTROIDS_NAME, DB_NAME)
_SHARD = re.compile(r"^data/train-(\d{5})-of-(\d{5})\.parquet$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PublishError(MosaicError):
    """The Hub refused or could not be reached; the message never contains the token."""


class UploadItem(NamedTuple):
    """One file of the commit: where it is, where it goes, how big it is."""

    local_path: Path
    path_in_repo: str
    size: int


class PushReport(NamedTuple):
    repo_url: str
    plan: list[UploadItem]
    deleted: list[str]
    commit_url: str | None
    dry_run: bool

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.plan)

    def summary(self) -> str:
        what = "would upload" if self.dry_run else "uploaded"
        deleted = f", deleted {len(self.deleted)} stale shards" if self.deleted else ""
        return f"{what} {len(self.plan)} files ({self.total_bytes / 1e6:.1f} MB) to {self.repo_url}{deleted}"


def validate_repo_id(repo_id: object) -> str:
    """``USER/NAME`` as the Hub accepts it; :class:`UsageError` naming the value otherwise.

    >>> validate_repo_id("alice/mosaic_library")
    'alice/mosaic_library'
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hf_validate

    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise UsageError(f"--repo-id must look like USER/NAME (letters, digits, '-', '_', '.'), got {repo_id!r}")
    try:
        hf_validate(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"invalid --repo-id {repo_id!r}: {exc}") from None
    return repo_id


def plan_upload(staging_dir: str | os.PathLike) -> list[UploadItem]:
    """Exactly the files the commit adds, in a fixed order: shards, then the three root files.

    Refuses a staging folder with anything else in it (a ``.py`` at the root would make
    ``datasets`` refuse the repo) or with an incomplete set of shards.
    """
    staging = Path(staging_dir)
    if not staging.is_dir():
        raise UsageError(f"staging folder not found: {staging}")
    shards: list[UploadItem] = []
    root_files: dict[str, UploadItem] = {}
    unexpected: list[str] = []
    for path in sorted(staging.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(staging).as_posix()
        if rel == MANIFEST:
            continue
        if path.is_symlink():
            unexpected.append(f"{rel} (symlink)")
        elif rel in REQUIRED_FILES:
            root_files[rel] = UploadItem(path, rel, path.stat().st_size)
        elif _SHARD.match(rel):
            shards.append(UploadItem(path, rel, path.stat().st_size))
        else:
            unexpected.append(rel)
    if unexpected:
        raise UsageError(f"{staging} holds files that are not part of a release: {', '.join(unexpected)}")
    missing = [name for name in REQUIRED_FILES if name not in root_files]
    if missing:
        raise UsageError(f"{staging} is not a complete staging folder: missing {', '.join(missing)}")
    expected = {f"data/train-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))}
    if not shards or {s.path_in_repo for s in shards} != expected:
        names = ", ".join(s.path_in_repo for s in shards) or "none"
        raise UsageError(f"{staging}: Parquet shards are incomplete or mixed from two builds: {names}")
    return shards + [root_files[name] for name in REQUIRED_FILES]


def format_plan(plan: list[UploadItem]) -> list[str]:
    """One line per file, as ``push --dry-run`` prints it."""
    return [f"{item.size:>14,d}  {item.path_in_repo}" for item in plan]


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def push_staging(
    staging_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
) -> PushReport:
    """Upload a staging folder as one commit to the dataset repo ``repo_id`` (created if needed)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants

    validate_repo_id(repo_id)
    staging = Path(staging_dir)
    refresh_card(staging, repo_id)  # the card's load_dataset snippet names the repo
    plan = plan_upload(staging)
    if dry_run:
        url = f"{constants.ENDPOINT}/datasets/{repo_id}"
        return PushReport(url, plan, [], None, True)

    from huggingface_hub.utils import get_token

    secret = token or get_token()
    if not secret:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then retry")
    api = HfApi(token=secret)
    try:
        # private=None, not False, without --private: the Hub's default (an organisation may make
        # new repos private by default) is never overridden to public.
        repo_url = api.create_repo(repo_id, repo_type="dataset", private=True if private else None, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        existing = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
        planned = {item.path_in_repo for item in plan}
        stale = sorted(f for f in existing if f.startswith("data/") and f.endswith(".parquet") and f not in planned)
        operations = [CommitOperationAdd(path_in_repo=i.path_in_repo, path_or_fileobj=str(i.local_path)) for i in plan]
        operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
        shards = sum(1 for i in plan if i.path_in_repo.startswith("data/"))
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=f"Mosaic Library release: {shards} Parquet shards, card, tiles.db, centroids.npy",
            repo_type="dataset",
            revision=revision,
        )
    except MosaicError:
        raise
    except Exception as exc:  # noqa: BLE001 - the Hub's and the network's errors, reported on one line
        message = _scrub(f"{type(exc).__name__}: {exc}", secret).splitlines()[0]
        raise PublishError(f"push to {repo_id} failed: {message}") from None
    return PushReport(str(repo_url), plan, stale, getattr(info, "commit_url", None), False)
