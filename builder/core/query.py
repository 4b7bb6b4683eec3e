"""Colour queries: which buckets lie nearest a colour, and which tiles they hold.

Everything is batched: :func:`nearest_buckets` answers any number of LAB colours with one
KD-tree query (the centroid tree, or a tree over only the populated centroids), so a mosaic
or a report can ask a million colours at once.  The per-colour view for people and the CLI,
:func:`describe`, adds tile counts and tile paths derived with ``lib.tile_path`` (never the
``filepath`` column).

>>> parse_hex("#FF8000"), parse_rgb(["255", "128", "0"])
((255, 128, 0), (255, 128, 0))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import db
from .color import BRUTE_FORCE_MAX, hex_to_rgb, lab_to_rgb, nearest_brute, rgb_to_hex, rgb_to_lab  # noqa: F401  (rgb_to_hex: part of this module's API)
from .defaults import DEFAULT_QUERY_PATHS
from .errors import UsageError
from .layout import N_BUCKETS
from .library import Library

logger = logging.getLogger(__name__)

# CIE LAB as reached from sRGB: L in 0..100, a* and b* within about -128..128.  Inputs outside
# these ranges are typos, not colours.
L_RANGE = (0.0, 100.0)
AB_RANGE = (-128.0, 128.0)
# cKDTree.query splits a large batch over every core (-1); answers are identical to one thread.
QUERY_WORKERS = -1


class Neighbours(NamedTuple):
    """Nearest buckets of ``n`` colours, nearest first: arrays of shape ``(n, k)``.

    ``bucket_ids`` are global bucket ids (0..4999) even when only populated buckets were
    searched; ``counts`` are the tiles each bucket holds.
    """

    bucket_ids: np.ndarray
    distances: np.ndarray
    counts: np.ndarray


# What a tile is, as ``query`` marks it: flat synthetic tiles are the one-colour squares
# ``synthesize`` makes where no source was left (``derived_from`` NULL).
REAL, SYNTHETIC, FLAT_SYNTHETIC = "real", "synthetic", "synthetic, flat"


class BucketMatch(NamedTuple):
    """One bucket near a queried colour: its tiles (real and synthetic apart) and the paths of
    the first few, each with its kind (:data:`REAL`, :data:`SYNTHETIC`, :data:`FLAT_SYNTHETIC`).

    ``count`` is the tiles the query counts: all of them, or the real ones with ``real_only``.
    """

    bucket_id: int
    distance: float
    count: int
    centroid_lab: tuple[float, float, float]
    centroid_hex: str
    tiles: list[Path]
    real: int = 0
    synthetic: int = 0
    kinds: list[str] = []  # noqa: RUF012 - a NamedTuple default, never mutated

    def as_dict(self) -> dict:
        return {
            "bucket_id": self.bucket_id,
            "distance": round(self.distance, 4),
            "count": self.count,
            "real": self.real,
            "synthetic": self.synthetic,
            "centroid_lab": [round(v, 4) for v in self.centroid_lab],
            "centroid_hex": self.centroid_hex,
            "tiles": [str(p) for p in self.tiles],
            "kinds": list(self.kinds),
        }


# ----------------------------------------------------------------------------- input parsing
def _number(text: object, what: str) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"{what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{what} must be finite, got {text!r}")
    return value


def parse_lab(values: Sequence[object]) -> tuple[float, float, float]:
    """Validate ``L A B``: L in 0..100, a* and b* in -128..128 (one-line :class:`UsageError`)."""
    if len(values) != 3:
        raise UsageError(f"LAB needs 3 numbers (L A B), got {len(values)}")
    lab = tuple(_number(v, name) for v, name in zip(values, ("L", "a*", "b*")))
    if not L_RANGE[0] <= lab[0] <= L_RANGE[1]:
        raise UsageError(f"L must be within 0..100, got {values[0]!r}")
    for value, raw, name in zip(lab[1:], values[1:], ("a*", "b*")):
        if not AB_RANGE[0] <= value <= AB_RANGE[1]:
            raise UsageError(f"{name} must be within -128..128, got {raw!r}")
    return lab  # type: ignore[return-value]


def parse_rgb(values: Sequence[object]) -> tuple[int, int, int]:
    """Validate ``R G B``: integers 0..255."""
    if len(values) != 3:
        raise UsageError(f"RGB needs 3 integers (R G B), got {len(values)}")
    out = []
    for raw, name in zip(values, "RGB"):
        try:
            value = int(str(raw).strip(), 10)
        except ValueError:
            raise UsageError(f"{name} is not an integer 0..255: {raw!r}") from None
        if not 0 <= value <= 255:
            raise UsageError(f"{name} must be within 0..255, got {raw!r}")
        out.append(value)
    return tuple(out)  # type: ignore[return-value]


def parse_hex(text: str) -> tuple[int, int, int]:
    """Validate ``RRGGBB`` or ``#RRGGBB``."""
    try:
        return hex_to_rgb(str(text))
    except ValueError:
        raise UsageError(f"not a RRGGBB hex colour: {text!r}") from None


def lab_from_rgb(rgb) -> np.ndarray:
    """LAB ``(n, 3)`` of sRGB colours ``(n, 3)`` in 0..255 (validated)."""
    arr = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(arr).all() or arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise UsageError("RGB values must be finite and within 0..255")
    return rgb_to_lab(arr)


def lab_from_hex(colours: str | Sequence[str]) -> np.ndarray:
    """LAB ``(n, 3)`` of one or more ``RRGGBB`` strings."""
    if isinstance(colours, str):
        colours = [colours]
    return rgb_to_lab(np.array([parse_hex(c) for c in colours], dtype=np.float64).reshape(-1, 3))


# ----------------------------------------------------------------------------- batch search
def _check_k(k: int, available: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError(f"k must be a positive integer, got {k!r}")
    if available == 0:
        raise UsageError("no buckets to search: the library holds no tiles")
    return int(min(k, available))


def _as_lab(colours_lab) -> np.ndarray:
    lab = np.asarray(colours_lab, dtype=np.float64)
    if lab.ndim == 1:
        lab = lab.reshape(1, -1)
    if lab.ndim != 2 or lab.shape[1] != 3:
        raise UsageError(f"expected LAB colours of shape (n, 3), got {np.shape(colours_lab)}")
    if not np.isfinite(lab).all():
        raise UsageError("LAB colours must be finite")
    return lab


class PopulatedIndex:
    """KD-tree over the centroids of buckets that hold at least one tile.

    Mosaics fall back to the nearest *populated* bucket when a colour's own bucket is empty;
    searching this smaller tree answers that directly instead of over-fetching from the
    full one.  Built from ``lib.bucket_counts()`` once and reused for every query (the tree
    on the first query of more than :data:`BRUTE_FORCE_MAX` colours).
    """

    def __init__(self, centroids: np.ndarray, counts: np.ndarray) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.bucket_ids = np.flatnonzero(self.counts > 0)
        self.points = centroids[self.bucket_ids]
        self._tree = None

    @property
    def tree(self):
        if self._tree is None and len(self.bucket_ids):
            from scipy.spatial import cKDTree  # lazy: ~0.3 s of a fresh process

            self._tree = cKDTree(self.points)
        return self._tree

    def query(self, lab: np.ndarray, k: int) -> Neighbours:
        k = _check_k(k, len(self.bucket_ids))
        if len(lab) <= BRUTE_FORCE_MAX:
            dist, local = nearest_brute(self.points, lab, k)
        else:
            dist, local = self.tree.query(lab, k=k, workers=QUERY_WORKERS)
        local = np.asarray(local, dtype=np.int64).reshape(len(lab), k)
        ids = self.bucket_ids[local]
        return Neighbours(ids, np.asarray(dist, dtype=np.float64).reshape(len(lab), k), self.counts[ids])


def counts_of(lib: Library, bucket_ids: np.ndarray) -> np.ndarray:
    """Tile counts of just these buckets (one indexed query), shaped like ``bucket_ids``."""
    ids = np.asarray(bucket_ids, dtype=np.int64)
    found = db.bucket_counts(lib.conn, sorted({int(b) for b in ids.reshape(-1)}))
    return np.array([found.get(int(b), 0) for b in ids.reshape(-1)], dtype=np.int64).reshape(ids.shape)


def nearest_buckets(lib: Library, colours_lab, k: int = 5, populated: bool = False,
                    counts: np.ndarray | None = None) -> Neighbours:
    """The ``k`` nearest buckets of every LAB colour in ``colours_lab`` ``(n, 3)``, in one query.

    ``populated=True`` searches only buckets holding tiles (what a mosaic can use).  ``counts``
    lets a caller that already has ``lib.bucket_counts()`` skip the SQL (without it, a search
    of all buckets counts only the buckets found).  ``k`` above the number of searchable
    buckets is clipped to it.
    """
    lab = _as_lab(colours_lab)
    if populated:
        counts = lib.bucket_counts() if counts is None else np.asarray(counts, dtype=np.int64)
        return PopulatedIndex(lib.centroids, counts).query(lab, k)
    k = _check_k(k, N_BUCKETS)
    if len(lab) <= BRUTE_FORCE_MAX:
        dist, ids = nearest_brute(lib.centroids, lab, k)
    else:
        dist, ids = lib.index.tree.query(lab, k=k, workers=QUERY_WORKERS)
    ids = np.asarray(ids, dtype=np.int64).reshape(len(lab), k)
    found = counts_of(lib, ids) if counts is None else np.asarray(counts, dtype=np.int64)[ids]
    return Neighbours(ids, np.asarray(dist, dtype=np.float64).reshape(len(lab), k), found)


def bucket_tiles(lib: Library, bucket_id: int, real_only: bool = False,
                 limit: int | None = None) -> list[tuple[Path, str]]:
    """``(path, kind)`` of a bucket's tiles, oldest first (at most ``limit``; real ones only with
    ``real_only``); paths derived from ``(bucket_id, id)``, kinds as :class:`BucketMatch` says."""
    kind = db.synthetic_expr(lib.conn)  # 0 in a library from before the flag
    flat = "derived_from IS NULL" if "derived_from" in db.table_columns(lib.conn, "tiles") else "0"
    where = f" AND {kind} = 0" if real_only else ""
    rows = lib.conn.execute(
        f"SELECT id, {kind}, {flat} FROM tiles WHERE bucket_id = ?{where} ORDER BY rowid"
        + ("" if limit is None else " LIMIT ?"), (int(bucket_id),) if limit is None else (int(bucket_id), int(limit)))
    return [(lib.tile_path(int(bucket_id), tile_id), FLAT_SYNTHETIC if synthetic and is_flat else
             SYNTHETIC if synthetic else REAL) for tile_id, synthetic, is_flat in rows]


def real_and_all(lib: Library, bucket_ids) -> dict[int, tuple[int, int]]:
    """``{bucket: (real tiles, all tiles)}`` of just these buckets, in one indexed query (buckets
    holding nothing are left out)."""
    wanted = sorted({int(b) for b in np.asarray(bucket_ids).reshape(-1)})
    if not wanted:
        return {}
    flag = db.synthetic_expr(lib.conn)
    marks = ", ".join("?" * len(wanted))
    return {int(b): (int(real), int(n)) for b, real, n in lib.conn.execute(
        f"SELECT bucket_id, SUM({flag} = 0), COUNT(*) FROM tiles WHERE bucket_id IN ({marks}) GROUP BY bucket_id",
        wanted)}


def describe(lib: Library, lab, k: int = 5, populated: bool = False, real_only: bool = False,
             max_paths: int | None = DEFAULT_QUERY_PATHS) -> list[BucketMatch]:
    """The nearest buckets of one LAB colour with counts (real and synthetic apart), centroid
    colours and the paths of at most ``max_paths`` tiles each (None: all).

    ``real_only`` counts and lists real tiles only, so a bucket holding only synthetic tiles is
    empty (and left out with ``populated``).
    """
    lab = _as_lab(lab)[:1]
    if populated:  # the search itself needs every bucket's count
        found = nearest_buckets(lib, lab, k=k, populated=True, counts=lib.bucket_counts(real_only=real_only))
    else:
        found = nearest_buckets(lib, lab, k=k)
    split = real_and_all(lib, found.bucket_ids[0])
    centroid_rgb = lab_to_rgb(lib.centroids[found.bucket_ids[0]])
    matches = []
    for bucket_id, dist, rgb in zip(found.bucket_ids[0], found.distances[0], centroid_rgb):
        real, every = split.get(int(bucket_id), (0, 0))
        count = real if real_only else every
        centroid = tuple(float(v) for v in lib.centroids[bucket_id])
        listed = bucket_tiles(lib, int(bucket_id), real_only, max_paths) if count and max_paths != 0 else []
        matches.append(BucketMatch(int(bucket_id), float(dist), int(count), centroid, rgb_to_hex(rgb),  # type: ignore[arg-type]
                                   [path for path, _kind in listed], real, every - real,
                                   [kind for _path, kind in listed]))
    return matches
