"""The release manifest (``release.json``): every file of a release with its size, sha256 and rows.

``build`` writes it last, into the staging folder, and ``push`` uploads it with the rest, so every
copy of a release (the staging folder, the Hub repo, a download of it) says what it must hold::

    {"format": 1, "builder_version": "...", "cap": 100,
     "tiles": {"real": 1500, "synthetic": 4881, "total": 6381},
     "configs": {"default": {"folder": "data", "rows": 1500, "files": ["data/train-00000-of-00004.parquet", ...]},
                 "synthetic": {...}, "metadata": {...}},
     "files": {"data/train-00000-of-00004.parquet": {"size": ..., "sha256": "...", "rows": 375, "footer": 91234},
               "tiles.db": {"size": ..., "sha256": "..."}, ...}}

It lists every file of the release but itself.  ``rows`` is a Parquet file's row count and
``footer`` the length of its footer (a reader fetches exactly that many bytes to open it);
``tiles.total`` is what ``SELECT COUNT(*) FROM tiles`` returns on the shipped ``tiles.db``.

Uses: ``restore`` checks a release is complete before it writes anything (:func:`check_files`:
every file it needs present, its size and sha256 equal, each shard's row count equal, and the
config row counts equal to those of the shipped ``tiles.db``); ``push`` and ``build`` decide
"up to date" by content (the sha256 here against the files, and against the Hub's LFS sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow.parquet as pq

from ..core.errors import LibraryError
from .schema import RELEASE_MANIFEST

FORMAT = 1


class ReleaseIncomplete(LibraryError):
    """A release is missing a file it names, or a file differs from what it names (one line)."""


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in pieces (memory stays flat for any size)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """The git object id of ``data`` (what the Hub reports as a non-LFS file's ``blob_id``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def parquet_facts(path: Path) -> dict:
    """Rows and footer length of a Parquet file (its last 8 bytes: footer length, ``PAR1``)."""
    with open(path, "rb") as fh:
        fh.seek(-8, os.SEEK_END)
        footer = int.from_bytes(fh.read(4), "little")
    return {"rows": pq.ParquetFile(path).metadata.num_rows, "footer": footer}


def describe(path: Path) -> dict:
    """``{size, sha256}`` of a file, plus ``rows`` and ``footer`` for a Parquet file."""
    facts = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    if path.suffix == ".parquet":
        facts.update(parquet_facts(path))
    return facts


def make_manifest(folder: Path, configs: Mapping[str, tuple[str, list[str]]], tiles: Mapping[str, int],
                  cap: int, builder_version: str) -> dict:
    """The manifest of ``folder``: every file in it but the manifest (and hidden build files).

    ``configs``: ``{name: (folder in repo, [files])}``; ``tiles``: real and synthetic counts.
    """
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != RELEASE_MANIFEST and not rel.startswith("."):
            files[rel] = describe(path)
    return {
        "format": FORMAT,
        "builder_version": builder_version,
        "cap": cap,
        "tiles": {"real": tiles["real"], "synthetic": tiles["synthetic"], "total": tiles["real"] + tiles["synthetic"]},
        "configs": {
            name: {"folder": sub, "rows": sum(files[f]["rows"] for f in names), "files": list(names)}
            for name, (sub, names) in configs.items()
        },
        "files": files,
    }


def write_manifest(folder: Path, manifest: dict) -> None:
    """``release.json``, whole or absent (``.part`` then rename)."""
    tmp = folder / (RELEASE_MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / RELEASE_MANIFEST)


def parse_manifest(text: str | bytes, where: str) -> dict:
    """A manifest's JSON, its shape checked (a damaged one is refused, never half-trusted)."""
    try:
        data = json.loads(text)
        files, configs, tiles = data["files"], data["configs"], data["tiles"]
        ok = (isinstance(files, dict) and isinstance(configs, dict) and isinstance(tiles, dict)
              and all(isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
                      for v in files.values())
              and all(isinstance(c.get("files"), list) and all(f in files for f in c["files"]) for c in configs.values()))
    except (ValueError, TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise ReleaseIncomplete(f"{where}: {RELEASE_MANIFEST} is damaged (not the manifest build writes)")
    return data


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a release folder, or None when it has none (an older release, bare files)."""
    path = Path(folder) / RELEASE_MANIFEST
    if not path.is_file():
        return None
    return parse_manifest(path.read_bytes(), str(folder))


def needed_files(manifest: dict, configs: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The files of ``configs`` (those the release has) and ``extra``, in manifest order."""
    names = [f for c in configs if c in manifest["configs"] for f in manifest["configs"][c]["files"]]
    return names + [f for f in extra if f in manifest["files"]]


def file_problem(path: Path, facts: dict) -> str | None:
    """Why a local file is not the one the manifest names (missing, size, checksum, rows), or None."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != facts["size"]:
        return f"is damaged ({size:,} bytes, the release says {facts['size']:,})"
    if sha256_of(path) != facts["sha256"]:
        return "is damaged (its sha256 differs from the release's)"
    if "rows" in facts:
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as exc:  # noqa: BLE001 - any unreadable footer is a damaged file
            return f"is damaged (unreadable Parquet: {exc})"
        if rows != facts["rows"]:
            return f"is damaged ({rows} rows, the release says {facts['rows']})"
    return None


def check_files(folder: Path, manifest: dict, names: Iterable[str]) -> None:
    """Refuse (:class:`ReleaseIncomplete`, one line naming the first bad file) unless every file in
    ``names`` is in ``folder`` exactly as the manifest describes it."""
    problems = []
    for name in names:
        problem = file_problem(Path(folder) / name, manifest["files"][name])
        if problem:
            problems.append(f"{name} {problem}")
    if problems:
        more = f" (and {len(problems) - 1} more file{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise ReleaseIncomplete(f"release {folder} is incomplete: {problems[0]}{more}; download it again")


def check_counts(manifest: dict, real: int, synthetic: int, where: str) -> None:
    """The shipped ``tiles.db``'s real and synthetic counts must be the release's config rows."""
    tiles = manifest["tiles"]
    if (real, synthetic) != (tiles["real"], tiles["synthetic"]):
        raise ReleaseIncomplete(
            f"{where}: tiles.db holds {real} real and {synthetic} synthetic tiles, "
            f"the release's files {tiles['real']} and {tiles['synthetic']}"
        )
    for name, flag_rows in (("default", real), ("synthetic", synthetic)):
        config = manifest["configs"].get(name)
        rows = config["rows"] if config else 0
        if rows != flag_rows:
            raise ReleaseIncomplete(f"{where}: the {name} config holds {rows} rows, tiles.db {flag_rows}")
