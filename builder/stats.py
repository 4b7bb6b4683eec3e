"""What a library's colour atlas says of its buckets, for readers (``stats``, ``report``, the card).

Light on purpose (the database and NumPy only): :class:`~builder.library.Library` calls it from
``stats()`` and must not pull in the fetching side of :mod:`builder.atlas`, which builds the
tables read here (see :mod:`builder.db` for their DDL).
"""

from __future__ import annotations

import numpy as np

from . import db
from .layout import N_BUCKETS


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
            "new_buckets_per_1000": round(1000.0 * new / fetches, 1)}
