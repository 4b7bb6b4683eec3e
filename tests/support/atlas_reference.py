"""The atlas fold as it was written before it was vectorised: the reference ``tests/test_atlas.py``
checks the project's fold against (bit for bit) and ``bench/atlas.py`` times it against."""

from __future__ import annotations

import numpy as np

from builder.core.color import rgb_to_lab


def per_block_tile_blocks(rgb, ref, zoom, index):
    """The fold as it was: every block's float mean, LAB and KD-tree query, one by one in NumPy."""
    from builder.acquire.atlas import Blocks, block_size

    az, ax, ay = ref
    b = block_size(zoom, az)
    n = 256 // b
    arr = np.asarray(rgb, dtype=np.uint8)[:256, :256, :3]
    bad = (arr == 0).all(-1) | (arr == 255).all(-1)
    bad_block = bad.reshape(n, b, n, b).any(axis=(1, 3))
    sums = arr.reshape(n, b, n, b, 3).astype(np.float64).sum(axis=(1, 3))
    rows, cols = np.nonzero(~bad_block)
    mean = sums[rows, cols] / float(b * b)
    lab = rgb_to_lab(mean) if len(mean) else np.zeros((0, 3))
    bucket = index.tree.query(lab)[1] if len(lab) else np.zeros(0, np.int64)
    keys = np.random.default_rng([az, ax, ay, zoom]).random(n * n).reshape(n, n)[rows, cols]
    return Blocks(ax * n + cols.astype(np.int64), ay * n + rows.astype(np.int64), lab, bucket, keys)


def per_bucket_add(store, blocks):
    """SampleStore.add as it was: every block ranked, two statements per bucket touched."""
    from builder.core.layout import N_BUCKETS

    conn, k = store.conn, store.size
    pixels = np.bincount(blocks.bucket, minlength=N_BUCKETS)
    conn.executemany(
        "INSERT INTO atlas_buckets (source, zoom, bucket_id, pixels) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(source, zoom, bucket_id) DO UPDATE SET pixels = pixels + excluded.pixels",
        [(store.source, store.zoom, int(b), int(pixels[b])) for b in np.nonzero(pixels)[0]])
    order = np.lexsort((blocks.key, blocks.bucket))
    bucket, key = blocks.bucket[order], blocks.key[order]
    starts = np.r_[0, np.nonzero(np.diff(bucket))[0] + 1]
    rank = np.arange(len(bucket)) - np.repeat(starts, np.diff(np.r_[starts, len(bucket)]))
    keep = (rank < k) & (~(store.count[bucket] >= k) | (key < store.max_key[bucket]))
    chosen = order[keep]
    raw = blocks.bucket[chosen]
    conn.executemany(
        "INSERT OR IGNORE INTO atlas_sample (source, zoom, x, y, bucket_id, predicted, key, mean_l, mean_a, mean_b) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(store.source, store.zoom, int(x), int(y), int(b), int(b), float(kk), *map(float, v))
         for x, y, b, kk, v in zip(blocks.x[chosen], blocks.y[chosen], raw, blocks.key[chosen], blocks.lab[chosen])])
    for b in np.unique(raw).tolist():
        conn.execute(
            "DELETE FROM atlas_sample WHERE source = ? AND zoom = ? AND bucket_id = ? AND key > "
            "(SELECT key FROM atlas_sample WHERE source = ? AND zoom = ? AND bucket_id = ? "
            "ORDER BY key LIMIT 1 OFFSET ?)", (store.source, store.zoom, b, store.source, store.zoom, b, k - 1))
        n, top = conn.execute("SELECT COUNT(*), MAX(key) FROM atlas_sample WHERE source = ? AND zoom = ? "
                              "AND bucket_id = ?", (store.source, store.zoom, b)).fetchone()
        store.count[b], store.max_key[b] = n, top if top is not None else np.inf
