"""The atlas's calibration: an affine map in LAB from the atlas's colour of a tile to its measured
one, the least-squares fit, and the cross-validated hit rate that decides whether the map is kept."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ...core.color import CentroidIndex
from ...core.errors import LibraryError

# harvest --target calibrates by itself once this many aimed tiles have a measured colour and
# the fit raises the cross-validated hit rate (see :func:`calibrate`).
AUTO_CALIBRATE_MIN = 30
CALIBRATION_FOLDS = 5


@dataclass
class Calibration:
    """``lab_true ~ lab @ matrix.T + offset``, fitted on ``tiles`` tiles."""

    matrix: np.ndarray
    offset: np.ndarray
    tiles: int
    hit_rate_before: float
    hit_rate_after: float

    def apply(self, lab: np.ndarray) -> np.ndarray:
        return np.asarray(lab, np.float64).reshape(-1, 3) @ self.matrix.T + self.offset

    def to_json(self) -> str:
        return json.dumps({"matrix": self.matrix.tolist(), "offset": self.offset.tolist(), "tiles": self.tiles,
                           "hit_rate_before": self.hit_rate_before, "hit_rate_after": self.hit_rate_after})

    @classmethod
    def from_json(cls, text: str, where: str) -> Calibration:
        try:
            data = json.loads(text)
            matrix = np.array(data["matrix"], dtype=np.float64)
            offset = np.array(data["offset"], dtype=np.float64)
            out = cls(matrix, offset, int(data["tiles"]), float(data["hit_rate_before"]),
                      float(data["hit_rate_after"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise LibraryError(f"{where}: the atlas calibration is not readable ({exc}); run atlas --rebuild") from None
        if matrix.shape != (3, 3) or offset.shape != (3,) or not (np.isfinite(matrix).all() and np.isfinite(offset).all()):
            raise LibraryError(f"{where}: the atlas calibration is not a finite 3x3 map and offset; run atlas --rebuild")
        return out


def fit_affine(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``y ~ x @ M.T + t`` for LAB rows."""
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef[:3].T.copy(), coef[3].copy()


def cross_validated_hits(x: np.ndarray, truth: np.ndarray, index: CentroidIndex, folds: int = CALIBRATION_FOLDS,
                         seed: int = 0) -> float:
    """Share of tiles whose bucket the affine map predicts right, each fold fitted on the others."""
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    hits = 0
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        if len(test) == 0 or len(train) < 4:
            continue
        matrix, offset = fit_affine(x[train], truth[train])
        pred = index.assign_lab(x[test] @ matrix.T + offset)[0]
        actual = index.assign_lab(truth[test])[0]
        hits += int((pred == actual).sum())
    return hits / n if n else 0.0
