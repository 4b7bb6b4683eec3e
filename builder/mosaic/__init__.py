"""Photomosaics: any picture redrawn with the library's tiles.

How a mosaic is made, and why:

1. **Target.**  The input is opened with decode-like safety (byte and pixel limits checked
   from the header before any decode; unknown formats rejected as :class:`ImageRejected`).
   Only box means of it are needed (``s x s`` sub-cells, ``d x d`` detail samples and 4x4
   fidelity samples per cell), so a JPEG is decoded at a reduced scale (``draft``) and each
   grid comes from one box-filtered resize.
2. **Tile thumbnails and features.**  Every tile has a 64-px thumbnail in the library's
   append-only :class:`ThumbnailCache` (``<library>/.cache/``, about a tenth of the tiles' PNG
   size), written by the store as each batch commits, so no mosaic has to decode the library.
   It is derived data: matched row by row on ``(id, phash)`` against ``tiles.db`` (tiles it
   lacks are decoded and appended), spot-checked against re-decoded tiles, and rebuilt when
   anything disagrees.  Sub-cell colours come from it (and a small derived file).
3. **Candidates.**  A cell's mean LAB picks buckets through a KD-tree over the *populated*
   centroids: its own bucket when that holds tiles, else the nearest populated ones (the
   fallback).  Whole buckets are taken, nearest first, until there are at least
   ``min_candidates`` tiles (256); the best ``shortlist`` by sub-cell LAB distance are kept.
   When the library holds synthetic tiles, the nearest *real* buckets give their own list too,
   so the best real tiles are always compared.  All of this is vectorised over cells.
4. **Cost.**  Each candidate is costed as the cell will look once the render has corrected it
   (:func:`.match.corrected_costs`): the texture left after its contrast gain, on ``d x d``
   samples with sub-cell means removed, plus the sub-cell colour error the budgeted shift
   cannot remove.  A synthetic tile's cost is raised by a margin, so at equal cost the real tile
   wins.
5. **Choice.**  Greedy (:func:`place_tiles`): in raster order each cell takes its cheapest
   candidate not used by an already placed cell within ``no_repeat_radius``, which makes the
   constraint hold for every pair of cells.  Fair (``max_uses``, :mod:`.fair`): a sparse
   assignment problem over the shortlists, solved exactly, then the radius restored.  With
   synthetic tiles the plan from real tiles alone is made as well and both are previewed
   (:func:`.correct.preview_samples`: the fidelity samples without a render): synthetic tiles
   stay only in the cells where they come out better, and only if the whole mosaic then scores
   better on both figures.
6. **Rendering.**  Output rows are produced one band of cells at a time; every used tile is
   fetched (a slice of the thumbnail cache for tile sizes up to 64 px; above that its PNG is
   decoded, on threads) into a bounded cache that drops the tile needed farthest ahead, and
   gathered into the band with one fancy-indexing operation.  :mod:`.correct` scales each
   tile's texture by the least-squares gain that best draws its cell (0.5x..2x) and shifts its
   sub-cell colours toward the target's within a CIEDE2000 budget, which keeps the texture
   while the picture reads better; ``overlay`` then blends that share of the input over the
   band.  :func:`write_mosaic` streams the bands into a PNG or a Deep Zoom pyramid
   (:mod:`.dzi`), and :mod:`.fidelity` measures them on the way, so the output never has to
   be in memory.

Where each step lives: :mod:`.target` (options, ``--grid`` parsing, the layout, the target
image), :mod:`.tiletable` (the tile table, read from the library's thumbnail cache,
:mod:`builder.core.thumbcache`), :mod:`.match` (candidates, ranking, greedy placement,
:class:`MosaicPlan`), :mod:`.fair` (the assignment), :mod:`.correct` (colour correction),
:mod:`.render` (bands), :mod:`.fidelity` (the figures), :mod:`.pngstream` and :mod:`.dzi` (the
streamed writers, the viewer page) and :mod:`.output` (writing a mosaic file,
:class:`MosaicResult`).  This package re-exports their public names (and the cache's), so
``from builder.mosaic import ...`` is the API.
"""

from ..core.layout import THUMB_SIZE
from ..core.thumbcache import CACHE_VERSION, THUMB_PREFIX, CacheIndex, ThumbnailCache, cache_dir, tile_thumbnail
from .correct import correction_shift
from .dzi import DZI_FORMATS, DZI_TILE, DziWriter, viewer_html
from .fair import fair_grid, match_with_uses
from .fidelity import Fidelity, FidelityMeter, compare_samples, measure_fidelity
from .match import MosaicPlan, candidate_tiles, place_tiles, plan_mosaic, rank_candidates, required_tiles
from .output import OUTPUT_FORMATS, MosaicResult, check_output_path, mosaic_file, output_format, write_mosaic
from .pngstream import PngStreamWriter
from .render import MAX_IMAGE_PIXELS, iter_bands, load_thumbnail, make_mosaic, render_mosaic
from .target import (
    DEFAULT_BLEND,
    DEFAULT_CONTRAST,
    DEFAULT_DETAIL,
    DEFAULT_LONG_SIDE_CELLS,
    DEFAULT_MAX_CORRECTION,
    DEFAULT_MIN_CANDIDATES,
    DEFAULT_MIN_TILE,
    DEFAULT_RADIUS,
    DEFAULT_SHORTLIST,
    DEFAULT_SUBCELLS,
    MAX_CELLS,
    MAX_DETAIL,
    MAX_DZI_PIXELS,
    MAX_STREAM_PIXELS,
    MAX_SUBCELLS,
    MAX_TARGET_BYTES,
    MAX_TARGET_PIXELS,
    TARGET_FORMATS,
    Layout,
    MosaicOptions,
    displayed_size,
    open_target,
    parse_grid,
    target_samples,
    target_subcells,
)
from .tiletable import SPOT_CHECKS, TileTable, load_tile_table, subcell_means

__all__ = [
    "CACHE_VERSION",
    "CacheIndex",
    "DEFAULT_BLEND",
    "DEFAULT_CONTRAST",
    "DEFAULT_DETAIL",
    "DEFAULT_LONG_SIDE_CELLS",
    "DEFAULT_MAX_CORRECTION",
    "DEFAULT_MIN_CANDIDATES",
    "DEFAULT_MIN_TILE",
    "DEFAULT_RADIUS",
    "DEFAULT_SHORTLIST",
    "DEFAULT_SUBCELLS",
    "DZI_FORMATS",
    "DZI_TILE",
    "MAX_CELLS",
    "MAX_DETAIL",
    "MAX_DZI_PIXELS",
    "MAX_IMAGE_PIXELS",
    "MAX_STREAM_PIXELS",
    "MAX_SUBCELLS",
    "MAX_TARGET_BYTES",
    "MAX_TARGET_PIXELS",
    "OUTPUT_FORMATS",
    "SPOT_CHECKS",
    "TARGET_FORMATS",
    "THUMB_PREFIX",
    "THUMB_SIZE",
    "cache_dir",
    "candidate_tiles",
    "check_output_path",
    "compare_samples",
    "correction_shift",
    "displayed_size",
    "DziWriter",
    "fair_grid",
    "Fidelity",
    "FidelityMeter",
    "iter_bands",
    "Layout",
    "load_thumbnail",
    "load_tile_table",
    "make_mosaic",
    "match_with_uses",
    "measure_fidelity",
    "mosaic_file",
    "MosaicOptions",
    "MosaicPlan",
    "MosaicResult",
    "open_target",
    "output_format",
    "parse_grid",
    "place_tiles",
    "plan_mosaic",
    "PngStreamWriter",
    "rank_candidates",
    "render_mosaic",
    "required_tiles",
    "subcell_means",
    "target_samples",
    "target_subcells",
    "tile_thumbnail",
    "ThumbnailCache",
    "TileTable",
    "viewer_html",
    "write_mosaic",
]
