"""The facts every part of the builder shares: tile size, limits, zooms, names and paths.

One home for each fact, so that a limit or a name is stated once.  This module imports only
the standard library: the CLI reads its defaults from here without paying for NumPy or Pillow.

On-disk layout of a library (a contract: tools and users rely on these names)::

    mosaic_library/
      tiles.db          SQLite, WAL
      centroids.npy     float64 (5000, 3), LAB; never overwritten
      temp/             scratch, empty at rest
      bucket_XXXX/      <uuid4>.png, PNG RGB 256x256
      quarantine/       what repair took out of the bucket folders, never read as tiles

>>> bucket_name(42), tile_relpath(42, "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a")
('bucket_0042', 'bucket_0042/0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a.png')
"""

from __future__ import annotations

import math
import re
import uuid
from pathlib import Path

from .errors import UnsafePath

# --- buckets -------------------------------------------------------------------------------
N_BUCKETS = 5000
DEFAULT_CAP = 100  # tiles a bucket holds at most (the card's 100); a library may set its own

# --- tiles ---------------------------------------------------------------------------------
TILE_SIZE = 256  # pixels a side of every stored, fetched and published tile
# A 256x256 tile is 2 KB to 200 KB as JPEG or PNG (under 200 KB even uncompressed): anything
# much larger read from a server, an archive or a bucket folder is not a tile.
MAX_TILE_BYTES = 4 * 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the first bytes of every stored tile (all are PNG)
TILE_SUFFIX = ".png"  # a tile's file is <id>.png, in its bucket folder and while staged in temp/

# --- inputs to ingest (images that may be resized into tiles) ------------------------------
MAX_INPUT_BYTES = 32 * 2**20
MIN_INPUT_SIDE = 64
MAX_INPUT_SIDE = 4096
MAX_INPUT_PIXELS = MAX_INPUT_SIDE * MAX_INPUT_SIDE

# --- Web-Mercator tile pyramid -------------------------------------------------------------
MIN_ZOOM = 0
MAX_ZOOM = 22
DEFAULT_ZOOM = 15
# Web-Mercator's latitude limit, where the square world ends: atan(sinh(pi)) = 85.0511...
MERCATOR_MAX_LAT = math.degrees(math.atan(math.sinh(math.pi)))
# Plans' bounding boxes stop short of it, rounded inwards to two decimals (85.05).
PLAN_MAX_LAT = math.floor(MERCATOR_MAX_LAT * 100) / 100

# --- names inside a library ----------------------------------------------------------------
DB_NAME = "tiles.db"
CENTROIDS_NAME = "centroids.npy"
TEMP_DIR = "temp"
LOCK_NAME = ".lock"
CACHE_DIR = ".cache"  # derived data (mosaic thumbnails), rebuilt when it disagrees with tiles.db
THUMB_SIZE = 64  # pixels a side of the mosaic cache's thumbnails: the 4x4 box reduction of a tile
JOURNAL_NAME = "journal.json"  # in temp/: the batch being stored (see builder.core.store)
# What ``verify --repair`` takes out of the bucket folders instead of deleting it (see
# builder.core.quarantine): ``quarantine/<reason>/<bucket_XXXX>/<name>``.  No reader of the library
# looks inside; only ``verify --empty-quarantine`` deletes what it holds.
QUARANTINE_DIR = "quarantine"
# ``recover`` (builder.ops.recover): the rebuilt database, complete, waiting to replace tiles.db, and
# the name prefix of a damaged tiles.db it set aside (never overwritten).
RECOVERED_DB_NAME = f"{DB_NAME}.recovered"
BROKEN_DB_PREFIX = f"{DB_NAME}.broken-"
INFLIGHT_DIR = "inflight"  # the fetch ledger's logs of batches not yet settled (see builder.acquire.ledger)

# --- the colour atlas (builder.acquire.atlas; its tables live in tiles.db, see builder.core.db) ----------
# One pixel of a tile at zoom z-8 covers one whole tile at zoom z (TILE_SIZE = 2**8).
ATLAS_ZOOM_SPAN = 8
# Candidate tiles kept per bucket: a uniform sample (the smallest random keys), so the atlas of
# the whole world at zoom 15 stays at most N_BUCKETS * ATLAS_SAMPLE_PER_BUCKET rows (320,000).
ATLAS_SAMPLE_PER_BUCKET = 64

_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_BUCKET_DIR = re.compile(r"^bucket_(\d{4})$")

# --- files shipped with the project --------------------------------------------------------
# In a checkout data/ sits beside builder/; an installed copy carries it inside the package.
_PACKAGE = Path(__file__).resolve().parent.parent  # builder/, above core/
DATA_DIR = _PACKAGE / "data" if (_PACKAGE / "data").is_dir() else _PACKAGE.parent / "data"
SHIPPED_CENTROIDS = DATA_DIR / CENTROIDS_NAME
EARTH_IMAGE = DATA_DIR / "bluemarble_5400x2700.jpg"
PLANS_DIR = DATA_DIR / "plans"
SAMPLE_TARGET = DATA_DIR / "sample_target.jpg"


def bucket_name(bucket_id: int) -> str:
    """The folder (and ``ClassLabel`` name) of a bucket.

    >>> bucket_name(7)
    'bucket_0007'
    """
    return f"bucket_{int(bucket_id):04d}"


LABEL_NAMES = [bucket_name(i) for i in range(N_BUCKETS)]


def parse_bucket_dir(name: str) -> int | None:
    """Bucket id of a ``bucket_XXXX`` folder name, or None.

    >>> parse_bucket_dir("bucket_0042"), parse_bucket_dir("bucket_9999"), parse_bucket_dir("temp")
    (42, None, None)
    """
    match = _BUCKET_DIR.match(name)
    if not match:
        return None
    value = int(match.group(1))
    return value if value < N_BUCKETS else None


def is_bucket_id(value: object) -> bool:
    """True for an int (not a bool) in ``0 .. N_BUCKETS - 1``.

    >>> is_bucket_id(4999), is_bucket_id(5000), is_bucket_id(True)
    (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < N_BUCKETS


def is_tile_id(value: object) -> bool:
    """True for a lowercase uuid4 string, the only form a tile id may take.

    >>> is_tile_id("0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a"), is_tile_id("../../etc/passwd")
    (True, False)
    """
    return isinstance(value, str) and bool(_UUID4.match(value))


def new_tile_id() -> str:
    return str(uuid.uuid4())


def tile_relpath(bucket_id: object, tile_id: object) -> str:
    """``bucket_XXXX/<id>.png`` inside the library, for a validated ``(bucket_id, id)``.

    Ids and buckets come from data (a database, a Parquet file) and become file names, so
    only a canonical uuid4 and an integer bucket in range are accepted; anything else raises
    :class:`~builder.core.errors.UnsafePath`.
    """
    if not is_tile_id(tile_id):
        raise UnsafePath(f"tile id is not a uuid4 string: {tile_id!r}")
    if hasattr(bucket_id, "__index__") and not isinstance(bucket_id, bool):
        bucket_id = bucket_id.__index__()  # NumPy integers
    if not is_bucket_id(bucket_id):
        raise UnsafePath(f"bucket id out of range 0..{N_BUCKETS - 1}: {bucket_id!r}")
    return f"{bucket_name(bucket_id)}/{tile_id}{TILE_SUFFIX}"


def tile_stem(file_name: str) -> str | None:
    """The id part of a tile file's name (not validated), or None for a name that is no tile's.

    >>> tile_stem("0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a.png"), tile_stem("x.part")
    ('0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a', None)
    """
    return file_name[: -len(TILE_SUFFIX)] if file_name.endswith(TILE_SUFFIX) else None


def tile_filepath(library_name: str, bucket_id: object, tile_id: object) -> str:
    """The ``filepath`` column: relative to the folder holding the library, as the card's
    ``load_bucket(".", 42)`` expects.

    >>> tile_filepath("mosaic_library", 3, "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a")
    'mosaic_library/bucket_0003/0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a.png'
    """
    return f"{library_name}/{tile_relpath(bucket_id, tile_id)}"


def tile_in_range(z: int, x: int, y: int) -> bool:
    """True when z/x/y names a tile of the XYZ pyramid up to :data:`MAX_ZOOM`.

    >>> tile_in_range(1, 1, 1), tile_in_range(1, 2, 0)
    (True, False)
    """
    return MIN_ZOOM <= z <= MAX_ZOOM and 0 <= x < (1 << z) and 0 <= y < (1 << z)
