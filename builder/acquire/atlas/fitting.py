"""Fitting the calibration on fetched tiles: the pairs of atlas and measured LAB, the fit kept when
it raises the cross-validated hit rate (or when forced), and then every sample re-predicted."""

from __future__ import annotations

import numpy as np

from ...core import db
from ...core.errors import UsageError
from ...core.library import Library
from .calibration import Calibration, cross_validated_hits, fit_affine
from .samples import atlas_info


def calibration_pairs(conn, source: str, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    """``(atlas LAB, measured LAB)`` of the fetched tiles of ``source`` at ``zoom`` that are in
    the atlas's sample and were decoded."""
    rows = conn.execute(
        "SELECT s.mean_l, s.mean_a, s.mean_b, f.mean_l, f.mean_a, f.mean_b FROM fetched f JOIN atlas_sample s "
        "ON s.source = f.source AND s.zoom = f.z AND s.x = f.x AND s.y = f.y "
        "WHERE f.source = ? AND f.z = ? AND f.mean_l IS NOT NULL AND f.mean_a IS NOT NULL AND f.mean_b IS NOT NULL",
        (source, zoom)).fetchall()
    arr = np.array(rows, dtype=np.float64).reshape(-1, 6)
    ok = np.isfinite(arr).all(axis=1)
    return arr[ok, :3], arr[ok, 3:]


def calibrate(lib: Library, source: str, zoom: int, *, min_tiles: int = 8, force: bool = False) -> dict:
    """Fit and (when it raises the hit rate, or ``force``) keep the atlas's LAB calibration;
    re-predicts every sample.  Returns ``{tiles, hit_rate_before, hit_rate_after, kept}``."""
    info = atlas_info(lib, source, zoom)
    if info is None:
        raise UsageError(f"no atlas of {source} at zoom {zoom} in {lib.root}: run `atlas` first")
    x, truth = calibration_pairs(lib.conn, source, zoom)
    index = lib.index
    out = {"tiles": int(len(x)), "hit_rate_before": 0.0, "hit_rate_after": 0.0, "kept": False}
    if len(x) < min_tiles:
        out["note"] = f"needs {min_tiles} fetched tiles of the atlas with a measured colour, has {len(x)}"
        return out
    actual = index.assign_lab(truth)[0]
    before = float((index.assign_lab(x)[0] == actual).mean())
    after = cross_validated_hits(x, truth, index)
    out.update(hit_rate_before=round(before, 4), hit_rate_after=round(after, 4))
    if after <= before and not force:
        return out
    matrix, offset = fit_affine(x, truth)
    cal = Calibration(matrix, offset, len(x), before, after)
    samples = lib.conn.execute("SELECT x, y, mean_l, mean_a, mean_b FROM atlas_sample WHERE source = ? AND zoom = ?",
                               (source, zoom)).fetchall()
    arr = np.array(samples, dtype=np.float64).reshape(-1, 5)
    pred = index.assign_lab(cal.apply(arr[:, 2:]))[0] if len(arr) else np.zeros(0, np.int64)
    with lib.conn:
        lib.conn.execute("UPDATE atlas_meta SET calibration = ?, updated_at = ? WHERE source = ? AND zoom = ?",
                         (cal.to_json(), db.utc_now(), source, zoom))
        lib.conn.executemany("UPDATE atlas_sample SET predicted = ? WHERE source = ? AND zoom = ? AND x = ? AND y = ?",
                             [(int(p), source, zoom, int(r[0]), int(r[1])) for p, r in zip(pred, arr)])
    out["kept"] = True
    return out
