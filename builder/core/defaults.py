"""Defaults of the commands' options, and the forms ``--source`` accepts, in one light module.

``python -m builder COMMAND --help`` shows these values, and it must not pay for NumPy, SciPy
or Pillow to do so: this module imports nothing.  The modules that use a value import it from
here (``builder.acquire.harvest``, ``builder.mosaic``, ``builder.acquire.sources``), so each is stated once.
Tile and layout facts (tile size, zoom range, default zoom, bucket cap) live in
:mod:`builder.core.layout`, which is just as light.
"""

from __future__ import annotations

# --- harvest ---------------------------------------------------------------------------------
DEFAULT_SOURCE = "arcgis"
# What ``--source`` takes (``builder.acquire.sources.open_source`` parses it); used in help and errors.
SPEC_FORMS = (
    "'arcgis', 'earth', an http(s):// URL template with {z}, {x} and {y}, "
    "a .mbtiles file, or an existing z/x/y tile folder"
)
DEFAULT_THREADS = 20  # fetch threads (I/O bound)
DEFAULT_BATCH = 100
# Consecutive batches with nothing accepted before the run calls the buckets "not filling".
# At the default batch size that is 1,000 tiles in a row; a yield that low means the plan's
# colours are used up (or the source is down), and more requests would only cost politeness.
DEFAULT_PATIENCE = 10
TARGETS = ("empty", "underfilled")  # --target: what an aimed harvest fills (builder.acquire.atlas.AimedSampler)

# --- mosaic ----------------------------------------------------------------------------------
DEFAULT_LONG_SIDE_CELLS = 64  # cells along the input's long side when neither --grid nor --cell-size
DEFAULT_MIN_TILE = 32  # output tile size when the cell is smaller
DEFAULT_RADIUS = 2  # --no-repeat-radius
DEFAULT_SUBCELLS = 2  # --subcells
DEFAULT_DETAIL = 8  # --detail: samples a side compared between a cell and a candidate tile (0: sub-cell means only)
DEFAULT_BLEND = 1.0  # --blend: how far toward the input's colours a tile is shifted, within the budget
DEFAULT_MAX_CORRECTION = 15.0  # --max-correction: CIEDE2000 a tile's sub-cell colour may move (bench/README.md)
DEFAULT_OVERLAY = 0.0  # --overlay: percent of the input blended over the mosaic (off: the tiles alone)
DEFAULT_CONTRAST = True  # --contrast: match each tile's contrast to its cell's (bench/README.md)
OUTPUT_FORMATS = ("png", "dzi")  # --format
DZI_FORMATS = ("jpg", "png")  # --dzi-image: Deep Zoom pyramid tile formats

# --- query -------------------------------------------------------------------------------------
DEFAULT_QUERY_PATHS = 5  # --paths: tile paths listed per bucket (a full bucket holds 100)

# --- duplicates (ingest, harvest, synthesize) -------------------------------------------------
# --near-duplicate-radius: pHash bits two tiles of a bucket may differ by and still count as
# duplicates; 0 is the card's rule (identical hashes).  Flat tiles are held to 0 whatever the
# radius (builder.assign.phash.MIN_HASH_CONTRAST).
DEFAULT_NEAR_DUPLICATE_RADIUS = 0

# --- synthesize --------------------------------------------------------------------------------
DEFAULT_PER_BUCKET = 1  # --per-bucket: synthetic tiles wanted in each bucket without a real tile
DEFAULT_MAX_USES = None  # --max-uses: cap on the synthetic tiles one real tile may give (None: as the need asks)
DEFAULT_SYNTH_SEED = 0  # --seed: which of the nearest sources a bucket gets
