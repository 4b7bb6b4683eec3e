"""Read-only figures of a library: what ``stats`` prints, and what ``report`` and the card reuse.

Tiles per bucket (:func:`tiles_per_bucket`), the whole summary (:func:`library_stats`, which is
:meth:`Library.stats() <builder.core.library.Library.stats>`), what the fetch ledger says per region
(:func:`status_counts_by_region`), what a colour atlas says of the buckets
(:func:`reachable_buckets`, :func:`reachability`), the aimed fetches' figures
(:func:`aimed_figures`) and the one rate of new buckets per 1,000 requests (:func:`per_thousand`).

Light on purpose (SQLite and NumPy only, over a connection): it reads the ``fetched`` and atlas
tables without pulling in the side that writes them (the ledger imports the sources, and
:mod:`builder.acquire.atlas` the fetch engine; their DDL is in :mod:`builder.core.db`), and it imports neither
the library nor the store.
"""

from __future__ import annotations

import os
import sqlite3

import numpy as np

from . import db
from .layout import N_BUCKETS, is_bucket_id


def tiles_per_bucket(conn: sqlite3.Connection, real_only: bool = False) -> np.ndarray:
    """Tiles per bucket, shape (5000,); ``real_only``: real tiles only (synthetic ones left out)."""
    counts = np.zeros(N_BUCKETS, dtype=np.int64)
    for bucket_id, n in db.bucket_counts(conn, real_only=real_only).items():
        if is_bucket_id(bucket_id):  # rows with a damaged bucket_id are verify's business
            counts[bucket_id] = n
    return counts


def library_stats(conn: sqlite3.Connection, root: str | os.PathLike, cap: int) -> dict:
    """Tile count, buckets populated and full, and yield per source/region; real and
    synthetic tiles apart (``tiles_real``, ``buckets_real``: what the source gave;
    ``tiles_synthetic``, ``buckets_synthetic_only``: what ``synthesize`` added), while
    ``tiles``, ``buckets_populated`` and ``coverage`` count every tile.  ``by_region`` counts
    real tiles (synthetic ones come from no region)."""
    counts = tiles_per_bucket(conn)
    real = tiles_per_bucket(conn, real_only=True)
    tiles = int(counts.sum())
    # Readers never migrate: an old (card-schema) tiles.db lacks provenance and `fetched`.
    synthetic_flag = db.synthetic_expr(conn)
    regions = {
        (region or "(none)"): n
        for region, n in conn.execute(
            f"SELECT {db.select_list(conn, ('region',))}, COUNT(*) FROM tiles WHERE {synthetic_flag} = 0 "
            "GROUP BY 1 ORDER BY 2 DESC")
    }
    sources = {
        (source or "(none)"): n
        for source, n in conn.execute(
            f"SELECT {db.select_list(conn, ('source',))}, COUNT(*) FROM tiles GROUP BY 1 ORDER BY 2 DESC")
    }
    extra = {}
    reach = reachability(conn, real)  # the source's reach: real tiles
    if reach is not None:  # only with a colour atlas: the split of the buckets it allows
        extra["reachability"] = reach
    aimed = aimed_figures(conn)
    if aimed is not None:  # only after harvest --target
        extra["aimed"] = aimed
    return {
        "library": str(root),
        "tiles": tiles,
        "tiles_real": int(real.sum()),
        "tiles_synthetic": tiles - int(real.sum()),
        "buckets_real": int((real > 0).sum()),
        "buckets_synthetic_only": int(((counts > 0) & (real == 0)).sum()),
        "buckets_full_real": int((real >= cap).sum()),
        "coverage_real": round(float((real > 0).mean()), 4),
        "buckets_total": N_BUCKETS,
        "buckets_populated": int((counts > 0).sum()),
        "buckets_full": int((counts >= cap).sum()),
        "cap": cap,
        "coverage": round(float((counts > 0).mean()), 4),
        "by_region": regions,
        "by_source": sources,
        "fetched_by_region": status_counts_by_region(conn),
        "synthetic": db.synthetic_counts(conn, cap),  # real and synthetic tiles apart
        **extra,
    }


def status_counts_by_region(conn: sqlite3.Connection, table: str = "fetched") -> dict[str, dict[str, int]]:
    """``{region: {status: tiles}}`` of a ledger table (``{}`` when the file has none: an old schema)."""
    db.check_ledger_table_name(table)
    if not db.table_columns(conn, table):
        return {}
    out: dict[str, dict[str, int]] = {}
    for region, status, n in conn.execute(f"SELECT region, status, COUNT(*) FROM {table} GROUP BY region, status"):
        out.setdefault(region or "(none)", {})[status] = n
    return out


def per_thousand(count: int, requests: int) -> float:
    """``count`` (new buckets) per 1,000 ``requests``, to 0.1; 0.0 before any request."""
    return round(1000.0 * count / requests, 1) if requests else 0.0


def reachable_buckets(conn) -> np.ndarray | None:
    """Buckets any atlas of the library saw (bool, 5,000); None without an atlas.

    A bucket is seen when one of its candidates is predicted there (after calibration, if the
    atlas has one).  Every bucket with overview pixels keeps at least one candidate, so before
    calibration this is exactly the buckets ``atlas_buckets`` counts pixels in."""
    if not db.has_atlas(conn):
        return None
    seen = np.zeros(N_BUCKETS, bool)
    for (b,) in conn.execute("SELECT DISTINCT predicted FROM atlas_sample"):
        if isinstance(b, int) and 0 <= b < N_BUCKETS:
            seen[b] = True
    return seen


def reachability(conn, counts: np.ndarray) -> dict | None:
    """``{populated, reachable_empty, not_seen}`` buckets; None without an atlas."""
    seen = reachable_buckets(conn)
    if seen is None:
        return None
    populated = counts > 0
    return {"populated": int(populated.sum()), "reachable_empty": int((seen & ~populated).sum()),
            "not_seen": int((~seen & ~populated).sum())}


def aimed_figures(conn) -> dict | None:
    """Hit rate and new buckets of the aimed fetches (``fetched.predicted_bucket`` set); None if none."""
    if "predicted_bucket" not in db.table_columns(conn, "fetched"):
        return None
    fetches, decoded, hits = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(bucket_id IS NOT NULL), 0), COALESCE(SUM(bucket_id = predicted_bucket), 0) "
        "FROM fetched WHERE predicted_bucket IS NOT NULL").fetchone()
    if not fetches:
        return None
    # Buckets whose first tile (in insertion order) came from an aimed fetch.
    (new,) = conn.execute(
        "SELECT COUNT(*) FROM (SELECT t.bucket_id, MIN(t.rowid) AS first FROM tiles t GROUP BY t.bucket_id) f "
        "JOIN tiles t ON t.rowid = f.first JOIN fetched d ON d.source = t.source AND d.z = t.z AND d.x = t.x "
        "AND d.y = t.y WHERE d.predicted_bucket IS NOT NULL").fetchone()
    return {"fetches": fetches, "decoded": decoded, "hits": hits,
            "hit_rate": round(hits / decoded, 4) if decoded else 0.0, "new_buckets": new,
            "new_buckets_per_1000": per_thousand(new, fetches)}
