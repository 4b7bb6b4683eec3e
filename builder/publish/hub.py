"""``push``: upload a staging folder to a Hub dataset repo with ``huggingface_hub`` 2.x.

One commit (``HfApi.create_commit``) publishes every config the staging folder holds (``default``,
``synthetic``, ``metadata``), the bucket index, the release manifest, the card, ``tiles.db`` and
``centroids.npy`` (:func:`plan_upload`: exactly the files ``release.json`` names, anything else in
the folder refused).  "Up to date" is decided by content: each file's sha256 from the manifest
against the Hub's LFS sha256 (``paths-info``), or for a small file kept in git its blob id; only
files that differ are uploaded, and a release the Hub already holds makes no commit at all.  The
commit deletes the stale files of the configs it writes (Parquet files under ``data/``,
``synthetic/``, ``metadata/`` a previous release left and this one does not hold: the card's
``data_files`` patterns would load them too), never anything else in the repo.

The token comes from ``huggingface_hub``'s own resolution (``HF_TOKEN``, then the saved login)
unless one is passed in; it is never printed, logged or written, and error messages are scrubbed
of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from ..core.errors import MosaicError, UsageError
from . import manifest as release_manifest
from .schema import CONFIGS, RELEASE_MANIFEST
from .staging import MANIFEST, refresh_card

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
CONFIG_FOLDERS = tuple(f"{c.folder}/" for c in CONFIGS.values())


class PublishError(MosaicError):
    """The Hub refused or could not be reached; the message never contains the token."""


class UploadItem(NamedTuple):
    """One file of the release: where it is, where it goes, how big it is, its sha256."""

    local_path: Path
    path_in_repo: str
    size: int
    sha256: str = ""


class PushReport(NamedTuple):
    repo_url: str
    plan: list[UploadItem]
    deleted: list[str]
    commit_url: str | None
    dry_run: bool
    unchanged: tuple[str, ...] = ()  # files the Hub already holds with the same content

    @property
    def uploaded(self) -> list[UploadItem]:
        return [item for item in self.plan if item.path_in_repo not in set(self.unchanged)]

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.uploaded)

    def summary(self) -> str:
        deleted = f", deleted {len(self.deleted)} stale files" if self.deleted else ""
        if self.dry_run:
            return f"would upload {len(self.plan)} files ({self.total_bytes / 1e6:.1f} MB) to {self.repo_url}"
        if self.commit_url is None:
            return f"{self.repo_url} is up to date: it holds these {len(self.plan)} files (same sha256); nothing pushed"
        same = f"; {len(self.unchanged)} unchanged" if self.unchanged else ""
        return (f"uploaded {len(self.uploaded)} files ({self.total_bytes / 1e6:.1f} MB{same}) to {self.repo_url}"
                f"{deleted}")


@contextlib.contextmanager
def hub_progress(show: bool | None = None) -> Iterator[None]:
    """``huggingface_hub``'s progress bars only on a terminal (by default): a command's output stays
    its summary line when piped or logged."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    show = sys.stderr.isatty() if show is None else show
    was_disabled = are_progress_bars_disabled()
    if not show and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not show and not was_disabled:
            enable_progress_bars()


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


def plan_upload(staging_dir: str | os.PathLike, verify: bool = True) -> list[UploadItem]:
    """Exactly the files of the release, in a fixed order: each config's shards, then the root files.

    The staging folder's ``release.json`` names them; anything else in the folder (a ``.py`` at the
    root would make ``datasets`` refuse the repo) or a file missing is refused.  With ``verify``
    every file's sha256 is checked against the manifest (a damaged shard is never published).
    """
    staging = Path(staging_dir)
    if not staging.is_dir():
        raise UsageError(f"staging folder not found: {staging}")
    try:
        manifest = release_manifest.read_manifest(staging)
    except release_manifest.ReleaseIncomplete as exc:
        raise UsageError(str(exc)) from None
    if manifest is None:
        raise UsageError(f"{staging} is not a complete staging folder: missing {RELEASE_MANIFEST} (run build)")
    named = manifest["files"]
    unexpected = []
    for path in sorted(staging.rglob("*")):
        rel = path.relative_to(staging).as_posix()
        if path.is_dir() and not path.is_symlink() or rel in (MANIFEST, RELEASE_MANIFEST):
            continue
        if path.is_symlink():
            unexpected.append(f"{rel} (symlink)")
        elif rel not in named:
            unexpected.append(rel)
    if unexpected:
        raise UsageError(f"{staging} holds files that are not part of a release: {', '.join(unexpected)}")
    missing = [name for name in named if not (staging / name).is_file()]
    if missing:
        raise UsageError(f"{staging} is not a complete staging folder: missing {', '.join(missing)}")
    if verify:
        try:
            release_manifest.check_files(staging, manifest, named)
        except release_manifest.ReleaseIncomplete as exc:
            raise UsageError(f"{exc} (run build again)") from None
    shards = [name for config in manifest["configs"].values() for name in config["files"]]
    order = shards + sorted(set(named) - set(shards))
    items = [UploadItem(staging / name, name, named[name]["size"], named[name]["sha256"]) for name in order]
    manifest_path = staging / RELEASE_MANIFEST
    return items + [UploadItem(manifest_path, RELEASE_MANIFEST, manifest_path.stat().st_size,
                               release_manifest.sha256_of(manifest_path))]


def format_plan(plan: list[UploadItem]) -> list[str]:
    """One line per file, as ``push --dry-run`` prints it."""
    return [f"{item.size:>14,d}  {item.path_in_repo}" for item in plan]


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def remote_unchanged(api, repo_id: str, plan: list[UploadItem], revision: str | None) -> list[str]:
    """The planned files the repo already holds with the same content: LFS files by their sha256,
    files kept in git (the card, the manifest) by their git blob id."""
    if not plan:
        return []
    infos = api.get_paths_info(repo_id, [item.path_in_repo for item in plan], repo_type="dataset",
                               revision=revision, expand=False)
    remote = {info.path: info for info in infos if hasattr(info, "blob_id")}
    same = []
    for item in plan:
        info = remote.get(item.path_in_repo)
        if info is None:
            continue
        lfs = getattr(info, "lfs", None)
        if lfs is not None:
            equal = lfs.sha256 == item.sha256 and lfs.size == item.size
        else:
            equal = info.size == item.size and info.blob_id == release_manifest.git_blob_sha1(item.local_path.read_bytes())
        if equal:
            same.append(item.path_in_repo)
    return same


def stale_files(existing: list[str], plan: list[UploadItem]) -> list[str]:
    """Files of the configs this release writes that it no longer holds (a previous release's shards)."""
    planned = {item.path_in_repo for item in plan}
    return sorted(f for f in existing if f.startswith(CONFIG_FOLDERS) and f.endswith(".parquet") and f not in planned)


def push_staging(
    staging_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    verify: bool = True,
) -> PushReport:
    """Upload a staging folder as one commit to the dataset repo ``repo_id`` (created if needed).

    ``verify=False`` skips the checksum pass over the staging folder when the caller has just
    checked it (``push`` after :func:`~builder.publish.ensure_staging`).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants

    validate_repo_id(repo_id)
    staging = Path(staging_dir)
    refresh_card(staging, repo_id)  # the card's snippets name the repo
    plan = plan_upload(staging, verify=verify)
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
        unchanged = remote_unchanged(api, repo_id, [i for i in plan if i.path_in_repo in set(existing)], revision)
        stale = stale_files(existing, plan)
        operations = [CommitOperationAdd(path_in_repo=i.path_in_repo, path_or_fileobj=str(i.local_path))
                      for i in plan if i.path_in_repo not in set(unchanged)]
        operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
        if not operations:
            return PushReport(str(repo_url), plan, [], None, False, tuple(unchanged))
        configs = sorted({i.path_in_repo.split("/")[0] for i in plan if i.path_in_repo.startswith(CONFIG_FOLDERS)})
        with hub_progress():
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=f"Mosaic Library release: {', '.join(configs)} ({len(plan)} files), card, index, tiles.db",
                repo_type="dataset",
                revision=revision,
            )
    except MosaicError:
        raise
    except Exception as exc:  # noqa: BLE001 - the Hub's and the network's errors, reported on one line
        message = _scrub(f"{type(exc).__name__}: {exc}", secret).splitlines()[0]
        raise PublishError(f"push to {repo_id} failed: {message}") from None
    return PushReport(str(repo_url), plan, stale, getattr(info, "commit_url", None) or str(repo_url), False, tuple(unchanged))
