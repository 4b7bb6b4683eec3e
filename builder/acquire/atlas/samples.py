"""The atlas in ``tiles.db``: its ``atlas_meta`` row (checked against the library's centroids),
the per-bucket sample that merges blocks in keeping the smallest keys, and what reads the samples
back (sizes, candidates by predicted bucket)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core import db
from ...core.color import CentroidIndex
from ...core.errors import LibraryError, UsageError
from ...core.layout import CENTROIDS_NAME, N_BUCKETS
from ...core.library import Library, file_sha256
from ..options import default_atlas_zoom
from .blocks import Blocks
from .calibration import Calibration
from .geometry import ledger_source


@dataclass
class AtlasInfo:
    source: str
    zoom: int
    atlas_zoom: int
    sample_size: int
    calibration: Calibration | None


def atlas_info(lib: Library, source: str, zoom: int) -> AtlasInfo | None:
    """The atlas of ``source`` at ``zoom``, checked against the library's centroids; None if none."""
    conn = lib.conn
    if "atlas_meta" not in db.table_names(conn):
        return None
    row = conn.execute("SELECT atlas_zoom, sample_size, centroids_sha256, calibration FROM atlas_meta "
                       "WHERE source = ? AND zoom = ?", (source, zoom)).fetchone()
    if row is None:
        return None
    atlas_zoom, sample_size, sha, calibration = row
    where = str(lib.root / db.DB_NAME)
    if sha != file_sha256(lib.root / CENTROIDS_NAME):
        raise LibraryError(f"{where}: the atlas of {source} at zoom {zoom} was made with other centroids than "
                           f"{CENTROIDS_NAME}; run atlas --rebuild")
    if not (isinstance(atlas_zoom, int) and default_atlas_zoom(zoom) <= atlas_zoom <= zoom
            and isinstance(sample_size, int) and 1 <= sample_size <= 100_000):
        raise LibraryError(f"{where}: the atlas of {source} at zoom {zoom} has a damaged atlas_meta row; "
                           "run atlas --rebuild")
    cal = Calibration.from_json(calibration, where) if calibration else None
    return AtlasInfo(source, zoom, atlas_zoom, sample_size, cal)


def drop_atlas(lib: Library, source: str, zoom: int) -> None:
    """Remove an atlas and its ledger (``--rebuild``)."""
    with lib.conn:
        for table in ("atlas_meta", "atlas_buckets", "atlas_sample"):
            lib.conn.execute(f"DELETE FROM {table} WHERE source = ? AND zoom = ?", (source, zoom))
        lib.conn.execute(f"DELETE FROM {db.ATLAS_LEDGER_TABLE} WHERE source = ?", (ledger_source(source, zoom),))


class SampleStore:
    """The per-bucket samples of one atlas: merges blocks in, keeping the smallest keys."""

    def __init__(self, conn, source: str, zoom: int, size: int, calibration: Calibration | None,
                 index: CentroidIndex) -> None:
        self.conn, self.source, self.zoom, self.size = conn, source, zoom, size
        self.calibration, self.index = calibration, index
        self.count = np.zeros(N_BUCKETS, np.int64)
        self.max_key = np.full(N_BUCKETS, np.inf)
        for bucket, n, top in conn.execute("SELECT bucket_id, COUNT(*), MAX(key) FROM atlas_sample "
                                           "WHERE source = ? AND zoom = ? GROUP BY bucket_id", (source, zoom)):
            if not (isinstance(bucket, int) and 0 <= bucket < N_BUCKETS):
                raise LibraryError(f"atlas of {source} at zoom {zoom}: a sample names bucket {bucket!r}; "
                                   "run atlas --rebuild")
            self.count[bucket], self.max_key[bucket] = n, top

    def predicted(self, lab: np.ndarray, bucket: np.ndarray) -> np.ndarray:
        if self.calibration is None or not len(lab):
            return bucket
        return self.index.assign_lab(self.calibration.apply(lab))[0]

    def add(self, blocks: Blocks) -> int:
        """Fold blocks in (inside the caller's transaction); returns the sample rows added."""
        if not len(blocks):
            return 0
        conn, k = self.conn, self.size
        pixels = np.bincount(blocks.bucket, minlength=N_BUCKETS)
        conn.executemany(
            "INSERT INTO atlas_buckets (source, zoom, bucket_id, pixels) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(source, zoom, bucket_id) DO UPDATE SET pixels = pixels + excluded.pixels",
            [(self.source, self.zoom, int(b), int(pixels[b])) for b in np.nonzero(pixels)[0]])
        # A block of a full bucket with a key above the bucket's largest kept one can never be
        # kept, and it ranks after every block that can: drop those before sorting.
        maybe = np.flatnonzero((self.count[blocks.bucket] < k) | (blocks.key < self.max_key[blocks.bucket]))
        order = maybe[np.lexsort((blocks.key[maybe], blocks.bucket[maybe]))]
        bucket = blocks.bucket[order]
        starts = np.r_[0, np.nonzero(np.diff(bucket))[0] + 1]
        rank = np.arange(len(bucket)) - np.repeat(starts, np.diff(np.r_[starts, len(bucket)]))
        chosen = order[rank < k]
        if not len(chosen):
            return 0
        lab = blocks.lab[chosen]
        raw = blocks.bucket[chosen]
        pred = self.predicted(lab, raw)
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO atlas_sample (source, zoom, x, y, bucket_id, predicted, key, mean_l, mean_a, mean_b) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(self.source, self.zoom, int(x), int(y), int(b), int(p), float(kk), float(v[0]), float(v[1]), float(v[2]))
             for x, y, b, p, kk, v in zip(blocks.x[chosen].tolist(), blocks.y[chosen].tolist(), raw.tolist(),
                                         np.asarray(pred).tolist(), blocks.key[chosen].tolist(), lab.tolist())])
        # ``chosen`` is sorted by bucket, then key: each bucket's last row holds its largest key.
        touched, first, added = np.unique(raw, return_index=True, return_counts=True)
        if conn.total_changes - before == len(chosen):  # every row new: a bucket still within its
            within = self.count[touched] + added <= k    # sample size needs no trimming or recount
            fits, top = touched[within], blocks.key[chosen][(first + added - 1)[within]]
            self.max_key[fits] = np.where(self.count[fits] == 0, top, np.maximum(self.max_key[fits], top))
            self.count[fits] += added[within]
            touched = touched[~within]
        for b in touched.tolist():
            conn.execute(
                "DELETE FROM atlas_sample WHERE source = ? AND zoom = ? AND bucket_id = ? AND key > "
                "(SELECT key FROM atlas_sample WHERE source = ? AND zoom = ? AND bucket_id = ? "
                "ORDER BY key LIMIT 1 OFFSET ?)", (self.source, self.zoom, b, self.source, self.zoom, b, k - 1))
            n, top = conn.execute("SELECT COUNT(*), MAX(key) FROM atlas_sample WHERE source = ? AND zoom = ? "
                                  "AND bucket_id = ?", (self.source, self.zoom, b)).fetchone()
            self.count[b], self.max_key[b] = n, top if top is not None else np.inf
        return len(chosen)


def _ensure_meta(lib: Library, source: str, zoom: int, atlas_zoom: int, rebuild: bool, sample_size: int) -> AtlasInfo:
    db.create_atlas_tables(lib.conn)
    if rebuild:
        drop_atlas(lib, source, zoom)
    info = atlas_info(lib, source, zoom)
    if info is not None:
        if info.atlas_zoom != atlas_zoom:
            raise UsageError(f"the atlas of {source} at zoom {zoom} reads overview zoom {info.atlas_zoom}, not "
                             f"{atlas_zoom}: pass --atlas-zoom {info.atlas_zoom}, or --rebuild to make a new one")
        return info
    now = db.utc_now()
    with lib.conn:
        lib.conn.execute("INSERT INTO atlas_meta (source, zoom, atlas_zoom, sample_size, centroids_sha256, "
                         "calibration, created_at, updated_at) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                         (source, zoom, atlas_zoom, sample_size, file_sha256(lib.root / CENTROIDS_NAME), now, now))
    return AtlasInfo(source, zoom, atlas_zoom, sample_size, None)


def atlas_size(conn, source: str, zoom: int) -> tuple[int, int]:
    """``(sample rows, distinct predicted buckets)`` of one atlas."""
    return conn.execute("SELECT COUNT(*), COUNT(DISTINCT predicted) FROM atlas_sample WHERE source = ? AND zoom = ?",
                        (source, zoom)).fetchone()


def candidates(conn, source: str, zoom: int) -> dict[int, list[tuple[int, int]]]:
    """``{predicted bucket: [(x, y), ...]}`` of one atlas, in key order."""
    out: dict[int, list[tuple[int, int]]] = {}
    for bucket, x, y in conn.execute("SELECT predicted, x, y FROM atlas_sample WHERE source = ? AND zoom = ? "
                                     "ORDER BY predicted, key", (source, zoom)):
        if not (isinstance(bucket, int) and 0 <= bucket < N_BUCKETS and isinstance(x, int) and isinstance(y, int)
                and 0 <= x < (1 << zoom) and 0 <= y < (1 << zoom)):
            raise LibraryError(f"atlas of {source} at zoom {zoom}: a damaged sample row ({bucket!r}, {x!r}, {y!r}); "
                               "run atlas --rebuild")
        out.setdefault(bucket, []).append((x, y))
    return out
