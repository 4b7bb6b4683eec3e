"""``build``: turn a library into the staging folder that is exactly what the Hub repo holds.

::

    staging/
      data/train-00000-of-0000N.parquet       real tiles, image bytes embedded (the ``default`` config)
      synthetic/train-00000-of-0000M.parquet  the synthetic tiles, with ``derived_from`` (only if any)
      metadata/train-00000-of-0000K.parquet   every tile, every column but ``image`` (``metadata``)
      bucket_index.parquet                    bucket -> config, file, row group, byte ranges, image span
      release.json                            every file's size, sha256 and rows (written last)
      README.md                               dataset card with live figures
      centroids.npy
      tiles.db                                consistent snapshot (SQLite backup API), rollback journal
      .mosaic_build.json                      local build record; never uploaded

Parquet files hold whole buckets per row group (at most 100 rows; 2,000 in ``metadata``), declare
their ``(label, id)`` order as ``sorting_columns`` and keep the 5,000 label names once in the
footer (:mod:`.parquet`); the index (:mod:`.index`) and the manifest (:mod:`.manifest`) are made
from the written files themselves.

How: the live ``tiles.db`` is copied with SQLite's backup API (a WAL database cannot be copied
file by file while a harvest writes), then :func:`.rows.iter_examples` (the generator
``mosaic_library.MosaicLibrary._generate_examples`` runs) reads its rows from that snapshot and
:mod:`.parquet` writes them with the schema metadata, column options, row-group size (100
rows), content-defined chunking and page index that ``datasets``' own ParquetWriter and
``push_to_hub`` use, so ``load_dataset(staging)`` and ``load_dataset("user/repo")`` see the
same features.  Rows stream through in 100-row batches; memory does not grow with the library.

Everything is written into a hidden temporary folder beside the output and renamed into place
at the end, so a crash never leaves a half-built staging folder.  The local build record keeps the
library fingerprint (every ``tiles`` row + centroids + build format) so ``push`` can tell a
stale staging folder from a current one; the release manifest's checksums tell a damaged or
edited one.
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
from ..core import db as _db
from ..core.errors import LibraryError, MosaicError, UsageError
from ..core.layout import CENTROIDS_NAME, DB_NAME, N_BUCKETS
from ..core.library import Library
from ..core.redact import redact_url
from ..core.summary import plural
from . import manifest as release_manifest
from . import rows
from .card import CardStats, render_card
from .index import write_index
from .parquet import file_size_limit, write_parquet
from .schema import CARD_NAME, CONFIGS, INDEX_NAME, RELEASE_MANIFEST

logger = logging.getLogger(__name__)

MANIFEST = ".mosaic_build.json"  # the local build record (fingerprint, card figures); never uploaded
SHARDS_DIR = CONFIGS["default"].folder
SYNTHETIC_DIR = CONFIGS["synthetic"].folder  # the ``synthetic`` config's files
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
    suspects = [s for s in sources if "?" in s or "@" in s]  # what redact_url can change
    return sorted(redact_url(s) for s in suspects if redact_url(s) != s)


def example_bucket(conn) -> tuple[int, int]:
    """The bucket the card's examples use and its real tiles: 42 when it holds real tiles (the seed
    card's example), else the fullest bucket of real tiles (the lowest id of those)."""
    real = rows.kind_filter(conn)
    counts = conn.execute(f"SELECT bucket_id, COUNT(*) FROM tiles WHERE 1{real} GROUP BY bucket_id "
                          "ORDER BY (bucket_id = 42) DESC, 2 DESC, 1 LIMIT 1").fetchone()
    return (int(counts[0]), int(counts[1])) if counts else (42, 0)


def card_stats(staging: Path, configs: dict[str, list[Path]]) -> CardStats:
    """Live figures for the card, read from the staged snapshot (what users will download) and files."""
    with Library.open(staging, readonly=True) as lib:
        stats = lib.stats()
        real = rows.kind_filter(lib.conn)  # the card describes the default config: real tiles

        def per(column: str, order: str) -> dict[str, int]:
            return {("(none)" if v is None else str(v)): n for v, n in lib.conn.execute(
                f"SELECT {_db.select_list(lib.conn, (column,))}, COUNT(*) FROM tiles WHERE 1{real} GROUP BY 1 ORDER BY {order}")}

        zooms = per("z", "1")
        if stats["synthetic"]["tiles"]:
            stats["by_region"], stats["by_source"] = per("region", "2 DESC"), per("source", "2 DESC")
        total = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        bucket, bucket_tiles = example_bucket(lib.conn)
    synthetic = stats["synthetic"]
    default = configs.get("default", [])
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
        parquet_files=len(default),
        parquet_bytes=sum(p.stat().st_size for p in default),
        built_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        builder_version=__version__,
        reachability=stats.get("reachability"),
        total_rows=int(total),
        configs={name: [len(files), sum(p.stat().st_size for p in files)] for name, files in configs.items()},
        index_bytes=(staging / INDEX_NAME).stat().st_size if (staging / INDEX_NAME).is_file() else 0,
        example_bucket=bucket,
        example_bucket_tiles=bucket_tiles,
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


def staged_files(staging: Path) -> list[str]:
    """Every file of a staging folder but the local build record, as paths in the repo."""
    staging = Path(staging)
    return [p.relative_to(staging).as_posix() for p in sorted(staging.rglob("*"))
            if p.is_file() and p.name != MANIFEST]


def tile_counts(db_path: Path) -> dict[str, int]:
    """Real and synthetic rows of a ``tiles.db`` (the release's config sizes)."""
    conn = _db.connect(db_path, readonly=True)
    try:
        has = _db.has_synthetic_flag(conn)
        real, synthetic = conn.execute(
            f"SELECT COALESCE(SUM({'synthetic = 0' if has else '1'}), 0), COALESCE(SUM({'synthetic = 1' if has else '0'}), 0) "
            "FROM tiles").fetchone()
    finally:
        conn.close()
    return {"real": int(real), "synthetic": int(synthetic)}


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------


def _prepare_parquet(
    library_root: Path, work: Path, num_proc: int, skip_bad: bool, max_shard_size: str | int,
    config_name: str = "default",
) -> tuple[list[Path], int, list]:
    """Write a config's shards with :mod:`.parquet`, named ``<folder>/train-XXXXX-of-YYYYY.parquet``."""
    config = CONFIGS[config_name]
    prepared = work / ".prepared"
    prepared.mkdir()
    shards, written, skipped = write_parquet(
        library_root, work / DB_NAME, prepared, num_proc, skip_bad, file_size_limit(max_shard_size),
        config_name=config_name,
    )
    (work / config.folder).mkdir()
    out = []
    for i, shard in enumerate(shards):
        target = work / config.shard_name(i, len(shards))
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
        configs: dict[str, list[Path]] = {}
        written, skipped_ids = 0, []
        wanted = ["default", "synthetic"] if synthetic_rows(work / DB_NAME) else ["default"]
        for name in wanted:  # the synthetic config only for a library that has some
            configs[name], rows_written, skipped_here = _prepare_parquet(
                root, work, num_proc, skip_bad, max_shard_size, name)
            written, skipped_ids = written + rows_written, skipped_ids + skipped_here
        skipped = drop_skipped_rows(work / DB_NAME, skipped_ids) if skip_bad else 0
        snapshot_rows = count_rows(work / DB_NAME)
        if snapshot_rows != written:
            raise LibraryError(
                f"the Parquet files hold {written} rows but the tiles.db snapshot {snapshot_rows}: "
                "build is inconsistent"
            )
        # metadata last, from the snapshot as shipped (rows skip_bad dropped are not in it)
        configs["metadata"], metadata_rows, _none = _prepare_parquet(root, work, num_proc, False, max_shard_size,
                                                                     "metadata")
        if metadata_rows != snapshot_rows:
            raise LibraryError(f"the metadata config holds {metadata_rows} rows but tiles.db {snapshot_rows}")
        parquet = [p for files in configs.values() for p in files]
        write_index(work / INDEX_NAME, [(p, p.relative_to(work).as_posix(), name)
                                        for name, files in configs.items() for p in files])
        stats = card_stats(work, configs)
        parquet_bytes = sum(p.stat().st_size for p in parquet)
        if stats.tiles == 0:
            # datasets cannot load a split without rows ("corresponds to no data"): nothing to publish
            detail = f" ({skipped} bad tiles skipped)" if skipped else ""
            raise UsageError(f"library {root} has no tiles to publish{detail}: harvest or ingest first")
        (work / CARD_NAME).write_text(render_card(stats, repo_id), encoding="utf-8")
        release_manifest.write_manifest(work, release_manifest.make_manifest(
            work, {name: (CONFIGS[name].folder, [p.relative_to(work).as_posix() for p in files])
                   for name, files in configs.items()},
            tile_counts(work / DB_NAME), stats.cap, __version__))
        write_manifest(
            work,
            {
                "fingerprint": fingerprint,
                "build_format": rows.BUILD_FORMAT,
                "skip_bad": skip_bad,
                "skipped": skipped,
                "repo_id": repo_id,
                "stats": stats.as_dict(),
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
    """Is ``staging`` a complete, undamaged build of the library as it is now?

    The files are checked by content: each one's sha256 against the release manifest (a damaged
    shard of the same size is stale), and no file beyond the manifest's.
    """
    staging = Path(staging)
    manifest = read_manifest(staging)
    if manifest is None:
        return StagingState(False, f"no build in {staging}", None)
    if manifest.get("build_format") != rows.BUILD_FORMAT:
        return StagingState(False, "built by an older builder", manifest)
    try:
        release = release_manifest.read_manifest(staging)
        if release is None:
            return StagingState(False, f"no {RELEASE_MANIFEST} in {staging}", manifest)
        extra = sorted(set(staged_files(staging)) - set(release["files"]) - {RELEASE_MANIFEST})
        if extra:
            return StagingState(False, f"{staging} holds {extra[0]}, which the build did not write", manifest)
        release_manifest.check_files(staging, release, release["files"])
    except release_manifest.ReleaseIncomplete as exc:
        return StagingState(False, str(exc), manifest)
    root = Path(library_root)
    Library.verify_layout(root)
    # One SELECT is one read transaction: a consistent view even while a harvest writes.
    fingerprint = rows.library_fingerprint(root / DB_NAME, root / CENTROIDS_NAME)
    if fingerprint != manifest.get("fingerprint"):
        return StagingState(False, "the library changed since the build", manifest)
    return StagingState(True, "up to date", manifest)


def refresh_card(staging: str | os.PathLike, repo_id: str | None) -> bool:
    """Re-render ``README.md`` for ``repo_id`` (the snippets name the repo); True if it changed.

    The release manifest's entry for the card follows, so the staging folder stays current.
    """
    staging = Path(staging)
    manifest = read_manifest(staging)
    if manifest is None:
        raise MosaicError(f"{staging} is not a staging folder (no {MANIFEST})")
    if manifest.get("repo_id") == repo_id:
        return False
    text = render_card(CardStats.from_dict(manifest["stats"]), repo_id)
    tmp = staging / (CARD_NAME + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, staging / CARD_NAME)
    release = release_manifest.read_manifest(staging)
    if release is not None:
        release["files"][CARD_NAME] = release_manifest.describe(staging / CARD_NAME)
        release_manifest.write_manifest(staging, release)
    manifest["repo_id"] = repo_id
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
