"""Aimed sampling (``harvest --target``): candidate tiles drawn from an atlas, weighted by what each
bucket still needs, and the calibration fitted again as the run measures more of them."""

from __future__ import annotations

import logging
import random
from collections import Counter

from ...core.defaults import TARGETS
from ...core.errors import UsageError
from ...core.library import Library
from ..tiles import TileRef, tile_centre
from .calibration import AUTO_CALIBRATE_MIN
from .fitting import calibrate, calibration_pairs
from .samples import atlas_info, candidates

logger = logging.getLogger(__name__)


AIMED_REGION = "atlas"


class AimedSampler:
    """Draws candidate tiles from an atlas for ``harvest --target``, weighted by how many tiles
    each bucket still needs (``empty``: 1 for a bucket with no tile; ``underfilled``: the cap
    less its tiles) less the tiles already drawn for it and not yet settled; never a z/x/y in
    ``exclude``.  ``counts()`` gives the library's current tiles per bucket (the pipeline's)."""

    def __init__(self, conn, source: str, zoom: int, target: str, cap: int, counts, seed: int | None = None) -> None:
        if target not in TARGETS:
            raise UsageError(f"--target {target!r}: use one of {', '.join(TARGETS)}")
        import secrets

        self.conn, self.source = conn, source
        self.zoom, self.target, self.cap, self.counts = zoom, target, cap, counts
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        self.rng = random.Random(self.seed)
        self.outstanding: Counter = Counter()
        self.predicted: dict[tuple[int, int, int], int] = {}  # tile drawn -> the bucket it was drawn for
        self.next_fit: int | None = None  # measured aimed tiles at which to calibrate again (None: never)
        self.reload()

    def reload(self, exclude=None) -> None:
        """Read the atlas's candidates again (after a calibration re-predicted them)."""
        self.pool = candidates(self.conn, self.source, self.zoom)
        for tiles in self.pool.values():
            if exclude is not None:
                tiles[:] = [t for t in tiles if (self.zoom, *t) not in exclude]
            self.rng.shuffle(tiles)
        self.reachable = len(self.pool)

    def need(self, bucket: int) -> int:
        have = int(self.counts()[bucket])
        if self.target == "empty":
            return 1 if have == 0 else 0
        return max(0, self.cap - have)

    @property
    def all_exhausted(self) -> bool:
        """No bucket that needs a tile has a candidate left."""
        return not any(tiles and self.need(b) > 0 for b, tiles in self.pool.items())

    def sample(self, n: int, exclude=None) -> list[TileRef]:
        out: list[TileRef] = []
        weights = {b: self.need(b) - self.outstanding[b] for b, tiles in self.pool.items() if tiles}
        weights = {b: w for b, w in weights.items() if w > 0}
        while len(out) < n and weights:
            buckets = list(weights)
            b = self.rng.choices(buckets, weights=[weights[k] for k in buckets])[0]
            tiles = self.pool[b]
            ref = None
            while tiles:
                x, y = tiles.pop()
                if exclude is None or (self.zoom, x, y) not in exclude:
                    lon, lat = tile_centre(self.zoom, x, y)
                    ref = TileRef(self.zoom, x, y, AIMED_REGION, lon, lat)
                    break
            if ref is None:
                del weights[b]
                continue
            out.append(ref)
            self.outstanding[b] += 1
            self.predicted[ref.key] = b
            weights[b] -= 1
            if weights[b] <= 0 or not tiles:
                del weights[b]
        return out

    def settle(self, refs) -> None:
        """The tiles' outcomes are known: they no longer count as drawn for their buckets."""
        for ref in refs:
            b = self.predicted.get(ref.key)
            if b is not None and self.outstanding[b] > 0:
                self.outstanding[b] -= 1


def aimed_sampler(lib: Library, source: str, zoom: int, target: str, counts, seed: int | None,
                  auto_calibrate: bool = True) -> tuple[AimedSampler, dict | None]:
    """The sampler for ``harvest --target`` from the library's atlas of ``source`` at ``zoom``,
    after calibrating it when enough aimed tiles have a measured colour (see :func:`calibrate`).
    With ``auto_calibrate`` the sampler's ``next_fit`` says when :func:`recalibrate` should fit
    again during the run."""
    info = atlas_info(lib, source, zoom)
    if info is None:
        raise UsageError(f"--target needs an atlas of {source} at zoom {zoom}: run "
                         f"`python -m builder atlas --library {lib.root} --source {source} --zoom {zoom}` first")
    cal = None
    fitted = info.calibration.tiles if info.calibration is not None else 0
    if auto_calibrate:
        n = len(calibration_pairs(lib.conn, source, zoom)[0])
        if n >= max(AUTO_CALIBRATE_MIN, 2 * fitted):
            cal = calibrate(lib, source, zoom, min_tiles=AUTO_CALIBRATE_MIN)
            fitted = n
    sampler = AimedSampler(lib.conn, source, zoom, target, lib.cap, counts, seed)
    if auto_calibrate:
        sampler.next_fit = max(AUTO_CALIBRATE_MIN, 2 * fitted)
    return sampler, cal


def recalibrate(lib: Library, sampler: AimedSampler, measured: int, exclude) -> dict | None:
    """During an aimed harvest: once ``measured`` (the atlas's fetched candidates with a measured
    colour, this run's and earlier ones) reaches ``sampler.next_fit``, fit again; when the fit is
    kept, the sampler draws from the re-predicted candidates (less ``exclude``).  The next fit is
    due when the count has doubled, so a run fits O(log n) times."""
    if sampler.next_fit is None or measured < sampler.next_fit:
        return None
    result = calibrate(lib, sampler.source, sampler.zoom, min_tiles=AUTO_CALIBRATE_MIN)
    sampler.next_fit = 2 * max(measured, result["tiles"])
    if result["kept"]:
        sampler.reload(exclude)
    logger.info("atlas calibration on %d tiles: hit rate %.3f -> %.3f (%s)", result["tiles"],
                result["hit_rate_before"], result["hit_rate_after"], "kept" if result["kept"] else "not kept")
    return result
