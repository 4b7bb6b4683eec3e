"""``build``: turn a library into the staging folder that is exactly what the Hub repo holds.

::

    staging/
      data/train-00000-of-0000N.parquet   image bytes embedded, 100-row row groups (real tiles: ``default``)
      synthetic/train-00000-of-0000M.parquet  the synthetic tiles, with ``derived_from`` (only if any)
      README.md                           dataset card with live figures
      centroids.npy
      tiles.db                            consistent snapshot (SQLite backup API), rollback journal
      .mosaic_build.json                  local build manifest; never uploaded

How: the live ``tiles.db`` is copied with SQLite's backup API (a WAL database cannot be copied
file by file while a harvest writes), then :func:`.rows.iter_examples` (the generator
``mosaic_library.MosaicLibrary._generate_examples`` runs) reads its rows from that snapshot and
:mod:`.parquet` writes them with the schema metadata, column options, row-group size (100
rows), content-defined chunking and page index that ``datasets``' own ParquetWriter and
``push_to_hub`` use, so ``load_dataset(staging)`` and ``load_dataset("user/repo")`` see the
same features.  Rows stream through in 100-row batches; memory does not grow with the library.

Everything is written into a hidden temporary folder beside the output and renamed into place
at the end, so a crash never leaves a half-built staging folder.  The manifest records the
library fingerprint (every ``tiles`` row + centroids + build format) so ``push`` can tell a
stale staging folder from a current one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from .. import __version__
from .. import db as _db
from ..errors import LibraryError, MosaicError, UsageError
from ..layout import CENTROIDS_NAME, DB_NAME, N_BUCKETS
from ..library import Library
from ..summary import plural
from . import rows
from .card import CardStats, render_card
from .parquet import file_size_limit, write_parquet

logger = logging.getLogger(__name__)

MANIFEST = ".mosaic_build.json"
SHARDS_DIR = "data"
SYNTHETIC_DIR = "synthetic"  # the ``synthetic`` config's files
# Not datasets' 500MB: `load_dataset` reads each Parquet file with pyarrow's pre_buffer=True, whose
# read cache keeps every column chunk of a file until the file is done (apache/arrow#39808), so a
# user's peak memory is about one shard's size.  At 64 MB it stays flat as the library grows.
DEFAULT_MAX_SHARD_SIZE = "64MB"


class BuildReport(NamedTuple):
    """What ``build`` wrote."""

    output: Path
    rows: int
    skipped: int
    parquet_files: int
    parquet_bytes: int
    fingerprint: str
    seconds: float
    synthetic: int = 0  # rows of the synthetic config (not in ``rows``: the default config's)

    def summary(self) -> str:
        skipped = f", {self.skipped} bad tiles skipped" if self.skipped else ""
        synthetic = f" (+ {self.synthetic} synthetic in the synthetic config)" if self.synthetic else ""
        return (
            f"built {self.output}: {plural(self.rows, 'tile')}{synthetic} in {plural(self.parquet_files, 'Parquet file')} "
            f"({self.parquet_bytes / 1e6:.1f} MB){skipped} in {self.seconds:.1f} s"
        )


class StagingState(NamedTuple):
    """Whether a staging folder matches its library (``current``) and why not."""

    current: bool
    reason: str
    manifest: dict | None


# ---------------------------------------------------------------------------------------------
# Small pure steps
# ---------------------------------------------------------------------------------------------


def default_output(library_root: Path) -> Path:
    """``<library parent>/staging``: beside the library, never inside it."""
    return Path(library_root).resolve().parent / "staging"


def check_paths(library_root: Path, output: Path) -> None:
    """Refuse an output folder that is, contains or sits inside the library."""
    lib, out = Path(library_root).resolve(), Path(output).resolve()
    if out == lib or out.is_relative_to(lib) or lib.is_relative_to(out):
        raise UsageError(f"--output {output} must be outside the library {library_root} and not contain it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {output} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UsageError(
            f"--output {output} is a non-empty folder that is not a staging folder: refusing to replace it"
        )


def snapshot_db(src: Path, dst: Path) -> None:
    """A consistent copy of a live (WAL) ``tiles.db`` via SQLite's online backup API.

    The copy is switched to a rollback journal so it opens read-only from anywhere (the Hub
    cache, a read-only mount) without ``-wal``/``-shm`` side files, and migrated to the current
    schema, so a library still in the card's seven-column form publishes with every column.
    """
    source = _db.connect(src, readonly=True)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
            target.commit()
            _db.migrate(target)
        finally:
            target.close()
    finally:
        source.close()


def secret_sources(db_path: Path) -> list[str]:
    """Source values that still carry credentials (user:password@, key/token query values).

    ``source`` is published in ``tiles.db`` and the Parquet files, so a tile URL with an API key
    must not leave the machine.  The rule is harvest's own (``redact_url``): a source it would
    change is unredacted; one it already redacted (``token=***``) is safe.  Only the redacted
    form appears in the result.
    """
    conn = _db.connect(db_path, readonly=True)
    try:
        sources = [s for (s,) in conn.execute("SELECT DISTINCT source FROM tiles WHERE source LIKE '%://%'")]
    finally:
        conn.close()
    # redact_url only changes a user-info part or a query; skip its import when neither exists
    suspects = [s for s in sources if "?" in s or "@" in s]
    if not suspects:
        return []
    from ..sources.http import redact_url

    return sorted(redact_url(s) for s in suspects if redact_url(s) != s)


def card_stats(staging: Path, parquet_files: list[Path]) -> CardStats:
    """Live figures for the card, read from the staged snapshot (what users will download)."""
    with Library.open(staging, readonly=True) as lib:
        stats = lib.stats()
        real = rows.kind_filter(lib.conn)  # the card describes the default config: real tiles

        def per(column: str, order: str) -> dict[str, int]:
            return {("(none)" if v is None else str(v)): n for v, n in lib.conn.execute(
                f"SELECT {_db.select_list(lib.conn, (column,))}, COUNT(*) FROM tiles WHERE 1{real} GROUP BY 1 ORDER BY {order}")}

        zooms = per("z", "1")
        if stats["synthetic"]["tiles"]:
            stats["by_region"], stats["by_source"] = per("region", "2 DESC"), per("source", "2 DESC")
    synthetic = stats["synthetic"]
    return CardStats(
        # the headline figures are the default config's: real tiles only
        tiles=synthetic["real_tiles"],
        buckets_populated=synthetic["buckets_populated_real"],
        buckets_full=synthetic["buckets_full_real"],
        synthetic_tiles=synthetic["tiles"],
        synthetic_flat=synthetic["flat"],
        synthetic_sources=synthetic["sources"],
        synthetic_buckets=synthetic["buckets_only_synthetic"],
        cap=stats["cap"],
        n_buckets=stats["buckets_total"],
        by_region=dict(stats["by_region"]),
        by_source=dict(stats["by_source"]),
        by_zoom=zooms,
        fetched_by_region={k: dict(v) for k, v in stats.get("fetched_by_region", {}).items()},
        parquet_files=len(parquet_files),
        parquet_bytes=sum(p.stat().st_size for p in parquet_files),
        built_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        builder_version=__version__,
        reachability=stats.get("reachability"),
    )


def drop_skipped_rows(db_path: Path, skipped_ids: list) -> int:
    """Delete the rows ``skip_bad`` left out of the Parquet files from the snapshot, so the
    shipped ``tiles.db`` matches them: the skipped ids, and rows whose ``bucket_id`` is not a
    bucket (they belong to no shard).  Returns the number of rows deleted."""
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM tiles WHERE id IS ?", [(tid,) for tid in skipped_ids])
            conn.execute(
                "DELETE FROM tiles WHERE NOT (typeof(bucket_id) = 'integer' AND bucket_id BETWEEN 0 AND ?)",
                (N_BUCKETS - 1,),
            )
            deleted = conn.total_changes - before
        if deleted:
            conn.execute("VACUUM")
        return deleted
    finally:
        conn.close()


def synthetic_rows(db_path: Path) -> int:
    """Synthetic tiles in a ``tiles.db`` (0 for a schema without the column)."""
    conn = _db.connect(db_path, readonly=True)
    try:
        return _db.synthetic_counts(conn, 1)["tiles"]
    finally:
        conn.close()


def count_rows(db_path: Path) -> int:
    conn = _db.connect(db_path, readonly=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    finally:
        conn.close()


def write_manifest(staging: Path, manifest: dict) -> None:
    tmp = staging / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, staging / MANIFEST)


def read_manifest(staging: Path) -> dict | None:
    try:
        data = json.loads((Path(staging) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def staged_files(staging: Path) -> dict[str, int]:
    """``{path_in_repo: size}`` of every file in a staging folder except the local manifest."""
    staging = Path(staging)
    out = {}
    for path in sorted(staging.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            out[path.relative_to(staging).as_posix()] = path.stat().st_size
    return out


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------


def _prepare_parquet(
    library_root: Path, work: Path, num_proc: int, skip_bad: bool, max_shard_size: str | int,
    synthetic: bool = False,
) -> tuple[list[Path], int, list]:
    """Write the shards with :mod:`.parquet`; name them ``data/train-XXXXX-of-YYYYY.parquet``
    (with ``synthetic``, the synthetic config's: ``synthetic/train-...``)."""
    prepared = work / ".prepared"
    prepared.mkdir()
    shards, written, skipped = write_parquet(
        library_root, work / DB_NAME, prepared, num_proc, skip_bad, file_size_limit(max_shard_size),
        synthetic=synthetic,
    )
    data = work / (SYNTHETIC_DIR if synthetic else SHARDS_DIR)
    data.mkdir()
    out = []
    for i, shard in enumerate(shards):
        target = data / f"train-{i:05d}-of-{len(shards):05d}.parquet"
        os.replace(shard, target)
        out.append(target)
    shutil.rmtree(prepared)
    return out, written, skipped


def _swap_into_place(work: Path, output: Path) -> None:
    """Replace ``output`` with the finished ``work`` folder (two renames; the old one goes last)."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(output, old)
    os.replace(work, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _clean_leftovers(output: Path) -> None:
    """Remove temporary folders a crashed or interrupted build left beside ``output``."""
    for stale in output.parent.glob(f".{output.name}.*"):
        if stale.is_dir() and (".tmp-" in stale.name or ".old-" in stale.name):
            pid = stale.name.rsplit("-", 2)[-2] if ".tmp-" in stale.name else None
            if pid and pid.isdigit() and _alive(int(pid)):
                continue  # another build is running right now
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_staging(
    library_root: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    num_proc: int = 1,
    skip_bad: bool = False,
    repo_id: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> BuildReport:
    """Write the Hub-ready staging folder for a library (see the module docstring)."""
    started = time.perf_counter()
    if not isinstance(num_proc, int) or num_proc < 1:
        raise UsageError(f"--num-proc must be a positive integer, got {num_proc!r}")
    root = Path(library_root).expanduser().resolve()
    Library.verify_layout(root)
    output = Path(output_dir).expanduser().resolve() if output_dir else default_output(root)
    check_paths(root, output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(output)

    work = output.with_name(f".{output.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    work.mkdir()
    try:
        with Library.open(root, readonly=True) as lib:  # validates centroids and schema
            snapshot_db(lib.db_path, work / DB_NAME)
        shutil.copyfile(root / CENTROIDS_NAME, work / CENTROIDS_NAME)
        leaks = secret_sources(work / DB_NAME)
        if leaks:
            raise UsageError("refusing to publish: tile sources carry credentials in their URL: " + "; ".join(leaks))
        fingerprint = rows.library_fingerprint(work / DB_NAME, work / CENTROIDS_NAME)
        parquet, written, skipped_ids = _prepare_parquet(root, work, num_proc, skip_bad, max_shard_size)
        if synthetic_rows(work / DB_NAME):  # the synthetic config, only for a library that has some
            more, extra, more_skipped = _prepare_parquet(root, work, num_proc, skip_bad, max_shard_size, synthetic=True)
            parquet, written, skipped_ids = parquet + more, written + extra, skipped_ids + more_skipped
        skipped = drop_skipped_rows(work / DB_NAME, skipped_ids) if skip_bad else 0
        snapshot_rows = count_rows(work / DB_NAME)
        if snapshot_rows != written:
            raise LibraryError(
                f"the Parquet files hold {written} rows but the tiles.db snapshot {snapshot_rows}: "
                "build is inconsistent"
            )
        stats = card_stats(work, [p for p in parquet if p.parent.name == SHARDS_DIR])
        parquet_bytes = sum(p.stat().st_size for p in parquet)
        if stats.tiles == 0:
            # datasets cannot load a split without rows ("corresponds to no data"): nothing to publish
            detail = f" ({skipped} bad tiles skipped)" if skipped else ""
            raise UsageError(f"library {root} has no tiles to publish{detail}: harvest or ingest first")
        (work / "README.md").write_text(render_card(stats, repo_id), encoding="utf-8")
        write_manifest(
            work,
            {
                "fingerprint": fingerprint,
                "build_format": rows.BUILD_FORMAT,
                "skip_bad": skip_bad,
                "skipped": skipped,
                "repo_id": repo_id,
                "stats": stats.as_dict(),
                "files": staged_files(work),
            },
        )
        _swap_into_place(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    report = BuildReport(
        output=output,
        rows=stats.tiles,
        skipped=skipped,
        parquet_files=len(parquet),
        parquet_bytes=parquet_bytes,
        fingerprint=fingerprint,
        seconds=time.perf_counter() - started,
        synthetic=stats.synthetic_tiles,
    )
    logger.info(report.summary())
    return report


def staging_state(library_root: str | os.PathLike, staging: str | os.PathLike) -> StagingState:
    """Is ``staging`` a complete build of the library as it is now?"""
    staging = Path(staging)
    manifest = read_manifest(staging)
    if manifest is None:
        return StagingState(False, f"no build in {staging}", None)
    if manifest.get("build_format") != rows.BUILD_FORMAT:
        return StagingState(False, "built by an older builder", manifest)
    if staged_files(staging) != manifest.get("files"):
        return StagingState(False, f"files in {staging} changed since the build", manifest)
    root = Path(library_root)
    Library.verify_layout(root)
    # One SELECT is one read transaction: a consistent view even while a harvest writes.
    fingerprint = rows.library_fingerprint(root / DB_NAME, root / CENTROIDS_NAME)
    if fingerprint != manifest.get("fingerprint"):
        return StagingState(False, "the library changed since the build", manifest)
    return StagingState(True, "up to date", manifest)


def refresh_card(staging: str | os.PathLike, repo_id: str | None) -> bool:
    """Re-render ``README.md`` for ``repo_id`` (the load snippet names the repo); True if it changed."""
    staging = Path(staging)
    manifest = read_manifest(staging)
    if manifest is None:
        raise MosaicError(f"{staging} is not a staging folder (no {MANIFEST})")
    if manifest.get("repo_id") == repo_id:
        return False
    text = render_card(CardStats.from_dict(manifest["stats"]), repo_id)
    tmp = staging / "README.md.part"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, staging / "README.md")
    manifest["repo_id"] = repo_id
    manifest["files"] = staged_files(staging)
    write_manifest(staging, manifest)
    return True


def ensure_staging(
    library_root: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    num_proc: int = 1,
    repo_id: str | None = None,
) -> tuple[Path, BuildReport | None]:
    """The staging folder for ``push``: reused if current, (re)built if missing or stale."""
    root = Path(library_root).expanduser().resolve()
    output = Path(output_dir).expanduser().resolve() if output_dir else default_output(root)
    state = staging_state(root, output)
    if state.current:
        logger.info("staging %s is up to date", output)
        return output, None
    logger.info("building %s: %s", output, state.reason)
    return output, build_staging(root, output, num_proc=num_proc, repo_id=repo_id)
