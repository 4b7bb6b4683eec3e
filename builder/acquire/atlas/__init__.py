"""The colour atlas: a source's overview tiles predict the bucket of every zoom-``z`` tile.

One pixel of a tile at zoom ``z - 8`` covers one whole tile at zoom ``z`` (256 = 2**8), so the
overview tiles of a source tell the mean colour, and so the bucket, of every zoom-``z`` tile
without fetching it.  ``atlas_zoom`` may be finer (``z - 6``: a 4x4 block of pixels a tile,
for sources whose low zooms come from other imagery); for ``z < 8`` the atlas reads zoom 0 in
blocks of ``2**(8 - z)`` pixels.  A block's prediction is made with assignment's colour maths:
the LAB (:func:`builder.core.color.rgb_to_lab`) of the block's mean RGB, then the library's
KD-tree.  Blocks holding a nodata pixel (pure black or pure white) are skipped, and so is a
whole overview tile that is a flat fill (90% of its pixels one exact colour, the test of
:func:`builder.acquire.sources.is_blank_tile` without its smoothness test: smooth ocean is real
imagery); a source's known placeholder answers "no tile" already.

What is kept (tables in ``tiles.db``, DDL in :mod:`builder.core.db`), per atlas ``(source, zoom)``:

- ``atlas_buckets``: per bucket, the blocks seen in it (``pixels``);
- ``atlas_sample``: per bucket, a uniform sample of at most
  :data:`~builder.core.layout.ATLAS_SAMPLE_PER_BUCKET` candidate tiles: every block draws a random
  ``key`` (seeded by its overview tile, so a rebuild gives the same atlas) and a bucket keeps
  the blocks with the smallest keys, a sample that merges exactly across batches and runs.
  The atlas is therefore at most 5,000 x 64 rows whatever the area (``--world`` at zoom 15:
  16,384 overview requests, 320,000 rows at most);
- ``atlas_fetched``: the overview tiles' fetch ledger (:class:`~builder.acquire.ledger.FetchLedger`):
  polite, resumable and fail-fast exactly as harvest (the same driver,
  :class:`~builder.acquire.run.FetchRun`, with the atlas's hooks :class:`_Atlas`),
  and each batch's samples commit in the transaction that records its tiles, so a kill loses
  nothing and a rerun continues.  Everything in these tables is derived from the source:
  ``--rebuild`` drops an atlas and makes it again.
- ``atlas_meta``: the overview zoom, the sample size, the centroids checksum (an atlas made
  with other centroids is refused) and the calibration.

**Calibration** (:func:`calibrate`, ``atlas --calibrate``; ``harvest --target`` runs it by
itself, see :data:`AUTO_CALIBRATE_MIN`): an affine map in LAB, ``lab_true ~ A @ lab_atlas + t``,
fitted by least squares on the fetched tiles that have both an atlas LAB (their sample row)
and a measured one (``fetched.mean_l/a/b``).  The hit rate before (the raw prediction) and
after (5-fold cross-validated, so the figure is not measured on the tiles it was fitted to)
is reported; the map is kept only when it helps, and then every sample's ``predicted`` bucket
is the bucket of its mapped LAB.
"""

from ...core.defaults import TARGETS
from ...core.stats import aimed_figures, reachability, reachable_buckets
from ..options import AtlasOptions, default_atlas_zoom
from .aimed import AimedSampler, aimed_sampler, recalibrate
from .blocks import Blocks, is_flat_fill, tile_blocks
from .build import AtlasReport, area_plan, build_atlas, run_atlas
from .calibration import AUTO_CALIBRATE_MIN, Calibration
from .fitting import calibrate, calibration_pairs
from .geometry import block_size
from .samples import SampleStore, atlas_info

__all__ = ["AUTO_CALIBRATE_MIN", "TARGETS", "AimedSampler", "AtlasOptions", "AtlasReport", "Blocks", "Calibration",
           "SampleStore", "aimed_figures", "aimed_sampler", "area_plan", "atlas_info", "block_size", "build_atlas",
           "calibrate", "calibration_pairs", "default_atlas_zoom", "is_flat_fill", "reachability", "reachable_buckets",
           "recalibrate", "run_atlas", "tile_blocks"]
