"""The dataset card (``README.md``) of a published Mosaic Library.

The seed card (``/work/shared/seed/dataset_card.md``) is the text users know; this module keeps
its sections and snippets and replaces its stale figures (786 buckets, zoom 15 only) with the
live ones measured from the very ``tiles.db`` that ships beside the Parquet files.

The YAML header stays small on purpose: the 5,000 ``ClassLabel`` names live in the Parquet
schema metadata (``huggingface`` key), which ``load_dataset`` reads, not in ``dataset_info``.
Nothing local (paths, user names, tokens) goes into the card.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import yaml

logger = logging.getLogger(__name__)

PLACEHOLDER_REPO = "USER/mosaic_library"
EARTH_SOURCES = {"earth"}
_EQUATOR_M_PER_PX_Z0 = 156543.03392  # Web Mercator ground resolution at zoom 0, metres/pixel
_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
)


@dataclass
class CardStats:
    """Live figures the card reports; measured by :func:`builder.publish.staging.card_stats`."""

    tiles: int
    buckets_populated: int
    buckets_full: int
    cap: int
    by_region: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    by_zoom: dict[str, int] = field(default_factory=dict)
    fetched_by_region: dict[str, dict[str, int]] = field(default_factory=dict)
    parquet_files: int = 0
    parquet_bytes: int = 0
    built_at: str = ""
    builder_version: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> CardStats:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows.

    >>> size_category(999), size_category(1000), size_category(250_000)
    ('n<1K', '1K<n<10K', '100K<n<1M')
    """
    for limit, name in _SIZE_CATEGORIES:
        if n < limit:
            return name
    return "n>1T" if n >= 10**12 else "100M<n<1B"


def public_source_name(source: str) -> str:
    """A source as it may appear in the card: URL templates lose their query and credentials.

    >>> public_source_name("https://u:p@tiles.example/{z}/{x}/{y}.png?access_token=abc")
    'https://tiles.example/{z}/{x}/{y}.png'
    >>> public_source_name("earth")
    'earth'
    """
    if "://" not in source:
        return source
    parts = urlsplit(source)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def source_kind(source: str) -> str:
    """``esri``, ``nasa`` or ``other``: whose terms cover tiles from ``source``.

    >>> source_kind("arcgis"), source_kind("earth"), source_kind("ingest")
    ('esri', 'nasa', 'other')
    """
    if source in EARTH_SOURCES:
        return "nasa"
    if source == "arcgis" or "arcgisonline.com" in source or "arcgis.com" in source:
        return "esri"
    return "other"


def license_fields(sources: Mapping[str, int]) -> dict[str, str]:
    """``license`` / ``license_name`` for the YAML, from the sources the tiles came from.

    >>> license_fields({"earth": 3})["license_name"], license_fields({"earth": 3, "arcgis": 1})["license_name"]
    ('nasa-blue-marble-public-domain', 'esri-world-imagery-terms')
    """
    kinds = {source_kind(s) for s, n in sources.items() if n}
    if kinds == {"nasa"}:
        name = "nasa-blue-marble-public-domain"
    elif "esri" in kinds or not kinds:
        name = "esri-world-imagery-terms"
    else:
        name = "mixed-see-dataset-card"
    return {"license": "other", "license_name": name}


def card_yaml(stats: CardStats) -> str:
    """The YAML header (without ``---`` fences): license, task, tags, size, one config.

    Plain ``yaml.safe_dump`` with keys in the order written, which is what
    ``huggingface_hub.DatasetCardData.to_yaml`` produces for these fields (the tests parse it
    with ``DatasetCard``), without importing ``huggingface_hub`` at every ``build``.
    """
    data = {
        "pretty_name": "Mosaic Library",
        **license_fields(stats.by_source),
        "task_categories": ["image-classification"],
        "tags": ["satellite-imagery", "remote-sensing", "color", "cielab", "photomosaic", "image"],
        "size_categories": [size_category(stats.tiles)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Escape a data value for a Markdown table cell."""
    return re.sub(r"([|\\`*_<>\[\]])", r"\\\1", str(text)).replace("\n", " ")


def _plans() -> list[tuple[str, list]]:
    """The sampling plans (``builder.regions``) as ``(title, regions)``; empty if unavailable."""
    try:
        from ..regions import load_plan

        return [
            ("Phase 1 - general biomes", list(load_plan("1").regions)),
            ("Phase 2 - spectral anomalies (rare colours)", list(load_plan("2").regions)),
        ]
    except Exception as exc:  # noqa: BLE001 - the card falls back to the summary text
        logger.warning("sampling plans unavailable for the card (%s)", exc)
        return []


def _yield_cells(stats: CardStats, region: str) -> tuple[str, str, str]:
    n = stats.by_region.get(region, 0)
    tried = sum(stats.fetched_by_region.get(region, {}).values())
    rate = f"{100.0 * n / tried:.1f}%" if tried else "-"
    return f"{n:,}", (f"{tried:,}" if tried else "-"), rate


def coverage_section(stats: CardStats) -> str:
    """Geographic coverage: each phase's regions (box, weight) with live yield, then the rest."""
    parts = []
    planned: set[str] = set()
    for title, regions in _plans():
        rows = []
        for r in regions:
            planned.add(r.name)
            box = ", ".join(f"{v:g}" for v in r.bbox)
            rows.append((_md(r.name), box, f"{r.weight:g}", *_yield_cells(stats, r.name)))
        header = ("Region", "lon_min, lat_min, lon_max, lat_max", "Weight", "Tiles", "Tiles fetched", "Yield")
        parts.append(f"### {title}\n\n{_table(header, rows)}")
    others = [r for r in stats.by_region if r not in planned]
    if others:
        rows = [(_md(r), *_yield_cells(stats, r)) for r in sorted(others, key=lambda r: -stats.by_region[r])]
        title = "Other tiles (ingested files, other plans)" if parts else "Tiles per region"
        parts.append(f"### {title}\n\n{_table(('Region', 'Tiles', 'Tiles fetched', 'Yield'), rows)}")
    return "\n\n".join(parts) or "No tiles yet."


def _zoom_rows(stats: CardStats) -> list[tuple]:
    rows = []
    for zoom, n in sorted(stats.by_zoom.items(), key=lambda kv: (kv[0] == "(none)", kv[0])):
        if zoom.isdigit():
            res = f"~{_EQUATOR_M_PER_PX_Z0 / 2 ** int(zoom):,.1f} m/pixel"
        else:
            res = "-"
        rows.append((_md(zoom), f"{n:,}", res))
    return rows


def _zoom_phrase(stats: CardStats) -> str:
    zooms = sorted(int(z) for z in stats.by_zoom if z.isdigit())
    if not zooms:
        return ""
    if len(zooms) == 1:
        return f" at zoom level {zooms[0]} (~{_EQUATOR_M_PER_PX_Z0 / 2 ** zooms[0]:,.1f} m/pixel at the equator)"
    return f" at zoom levels {', '.join(map(str, zooms))}"


def render_card(stats: CardStats, repo_id: str | None = None) -> str:
    """The whole ``README.md``: YAML header, then the seed card's sections with live figures."""
    repo = repo_id or PLACEHOLDER_REPO
    n_buckets = 5000
    pct = 100.0 * stats.buckets_populated / n_buckets
    sources = ", ".join(
        f"`{_md(public_source_name(s))}` ({n:,})" for s, n in sorted(stats.by_source.items(), key=lambda kv: -kv[1])
    )
    zoom_table = _table(("Zoom", "Tiles", "Ground resolution (equator)"), _zoom_rows(stats)) if stats.by_zoom else ""
    kinds = {source_kind(s) for s in stats.by_source}
    license_notes = []
    if "esri" in kinds:
        license_notes.append(
            "- Tiles from ArcGIS World Imagery (source `arcgis` or its URL) derive from Esri imagery; their use is "
            "subject to Esri's terms of use. This dataset is intended for non-commercial research purposes."
        )
    if "other" in kinds:
        license_notes.append(
            "- Tiles from other tile servers, MBTiles files, tile folders or local files (source `ingest`) are "
            "subject to the terms of their original provider, which this dataset does not record beyond `source`."
        )
    if "nasa" in kinds:
        license_notes.append(
            "- Tiles from source `earth` are cut from NASA's Blue Marble world image (NASA Earth Observatory / "
            "Visible Earth), which NASA publishes as public domain; NASA asks to be credited as the source."
        )
    license_text = "\n".join(license_notes) or "- The library holds no tiles yet."

    return f"""---
{card_yaml(stats)}
---

# Mosaic Library - LAB-Clustered Satellite Tile Dataset

A curated collection of satellite image tiles organized into perceptually-uniform CIE LAB colour clusters.
Each tile is a 256x256 PNG snapshot of Earth's surface{_zoom_phrase(stats)}, deduplicated and routed into
one of 5,000 colour buckets using K-Means centroids in CIE LAB space. The dataset currently contains
**{stats.tiles:,} tiles** covering **{stats.buckets_populated:,} of 5,000 colour clusters** ({pct:.1f}%),
with up to {stats.cap} unique images per bucket; {stats.buckets_full:,} buckets are full.

Tile sources: {sources or "none yet"}.

## Loading the dataset

```python
from datasets import load_dataset

ds = load_dataset("{repo}", split="train")
row = ds[0]
row["image"]                                   # PIL image, 256x256 RGB
row["label"]                                   # == bucket_id
ds.features["label"].int2str(row["label"])     # 'bucket_XXXX'
```

`label` is a `ClassLabel` with all 5,000 names `bucket_0000` .. `bucket_4999`, so `label == bucket_id`
in every release (a folder-based loader would only name the buckets it finds, and its indices would shift
whenever a new bucket fills). The names live in the Parquet files' schema metadata.

| Column | Type | Description |
|---|---|---|
| `image` | Image | 256x256 RGB PNG |
| `label` | ClassLabel (5,000) | bucket id, 0 to 4999 |
| `id` | string | UUID v4 of the tile (its PNG file name in the library) |
| `phash` | string | 64-bit perceptual hash (`imagehash.phash`, hash_size=8), 16 hex digits |
| `mean_l`, `mean_a`, `mean_b` | float64 | CIE LAB of the mean RGB of the 64x64 resize |
| `source` | string | tile source (`arcgis`, a tile URL template, `earth`, `ingest`, ...) |
| `z`, `x`, `y` | int | Web-Mercator tile address, when the tile came from a tile source |
| `lon`, `lat` | float64 | tile centre, when known |
| `region` | string | sampling region (biome or anomaly) the tile was drawn for |
| `harvested_at` | string | ISO 8601 UTC time the tile was stored |

Provenance columns are empty (null) for tiles that did not come from a tile source.

## Files in this repository

| File | What it is |
|---|---|
| `data/train-XXXXX-of-YYYYY.parquet` | the tiles with embedded PNG bytes ({stats.parquet_files} files, {stats.parquet_bytes / 1e6:,.1f} MB) |
| `tiles.db` | the library's SQLite index (same rows), for the queries below without loading images |
| `centroids.npy` | the 5,000 LAB centroids (float64, 5000 x 3): the library's identity |

Rebuild the on-disk library layout below from this repository with the project's builder:
`python -m builder restore <downloaded folder> --library mosaic_library`. The snippets below run against
that folder; `tiles.db` and `centroids.npy` alone can also be fetched with `huggingface_hub.hf_hub_download`.

## Dataset structure

```
mosaic_library/
  tiles.db        # SQLite index of all tiles (id, bucket, path, phash, LAB values, provenance)
  centroids.npy   # NumPy array of 5,000 LAB cluster centroids (shape: 5000 x 3)
  temp/           # Ephemeral download scratch space (empty at rest)
  bucket_0000/    # Up to {stats.cap} PNG tiles whose mean LAB color maps to centroid 0
  bucket_0001/
    <uuid>.png
  ...
  bucket_4999/
```

Each bucket folder holds images whose dominant color, expressed in CIE LAB space, is nearest to that bucket's
centroid. Folder names are zero-padded to four digits (`bucket_0786`).

### SQLite schema (`tiles.db`)

The database provides fast metadata lookups without loading any images.

| Column | Type | Description |
|---|---|---|
| `id` | TEXT (PK) | UUID v4 - matches the PNG filename |
| `bucket_id` | INTEGER | Cluster index, 0 to 4999 |
| `filepath` | TEXT | Relative path to the PNG file (`mosaic_library/bucket_XXXX/<id>.png`) |
| `phash` | TEXT | 64-bit perceptual hash (hash_size=8) |
| `mean_l` | REAL | Mean L channel of the tile in CIE LAB |
| `mean_a` | REAL | Mean a channel |
| `mean_b` | REAL | Mean b channel |
| `source`, `z`, `x`, `y`, `lon`, `lat`, `region`, `harvested_at` | | provenance, as in the dataset columns |

Indexes: `idx_bucket` on `bucket_id`; `idx_phash` on `(bucket_id, phash)` for fast duplicate checks.

Quick queries:

```python
import sqlite3
conn = sqlite3.connect("mosaic_library/tiles.db")
# Total tile count
conn.execute("SELECT COUNT(*) FROM tiles").fetchone()
# Buckets fully populated at 100 images
conn.execute(
    "SELECT bucket_id, COUNT(*) as n FROM tiles GROUP BY bucket_id HAVING n >= 100"
).fetchall()
# All tiles in bucket 42
conn.execute("SELECT * FROM tiles WHERE bucket_id = 42").fetchall()
```

## Color clustering design

### Why CIE LAB?

RGB is not perceptually uniform - equal numeric distances do not correspond to equal perceptual differences.
CIE LAB is specifically designed so that Euclidean distance in LAB space closely matches human color perception.
This makes the clusters visually meaningful: each bucket represents a genuinely distinct visual texture-color
region of Earth's surface.

### How clusters were generated

```python
import numpy as np
from skimage.color import rgb2lab
from sklearn.cluster import MiniBatchKMeans
random_rgb = np.random.randint(0, 255, (500000, 1, 3), dtype=np.uint8)
random_lab = rgb2lab(random_rgb).reshape(-1, 3)
kmeans = MiniBatchKMeans(n_clusters=5000, batch_size=10000, n_init=3)
kmeans.fit(random_lab)
centroids = kmeans.cluster_centers_
np.save("mosaic_library/centroids.npy", centroids)
```

The shipped `centroids.npy` was made once with this recipe and a fixed seed; do not regenerate it.
At inference time, a KD-Tree (`scipy.spatial.cKDTree`) provides O(log n) nearest-centroid lookup for each
incoming tile.

## Tile assignment pipeline

Each downloaded tile goes through this pipeline before being saved:

1. Resize to 64x64 pixels for fast color computation.
2. Compute mean RGB across all pixels and convert to LAB.
3. Query the KD-Tree to find the nearest centroid and assign `bucket_id`.
4. If the bucket already holds {stats.cap} images, discard the tile.
5. Compute perceptual hash (`imagehash.phash`, hash_size=8) and discard if a matching hash exists in the same bucket.
6. Atomically move the file into `bucket_XXXX/` and insert a row into `tiles.db`.

## Geographic coverage

Tiles are sampled across two harvesting phases with different biome weightings: phase 1 covers general biomes,
phase 2 targets visually extreme locations to populate underrepresented LAB clusters. Weights are relative within
a phase. Live figures per region: tiles stored, tiles fetched for that region, and the share stored (the rest were
placeholders, full buckets or perceptual duplicates).

{coverage_section(stats)}

Tiles per zoom level:

{zoom_table or "No tiles yet."}

## Data collection parameters

| Parameter | Value |
|---|---|
| Tile sources | {sources or "none yet"} |
| Tile size | 256 x 256 px |
| Format | PNG (RGB) |
| Total color buckets | 5,000 |
| Max tiles per bucket | {stats.cap} |
| Tiles (current) | {stats.tiles:,} |
| Buckets populated (current) | {stats.buckets_populated:,} / 5,000 |
| Buckets full (current) | {stats.buckets_full:,} |
| Deduplication method | Perceptual hash (pHash, 64-bit) per bucket |

## Loading tiles from a local library

Load all tile metadata:

```python
import sqlite3
import numpy as np
conn = sqlite3.connect("mosaic_library/tiles.db")
rows = conn.execute("SELECT id, bucket_id, filepath, mean_l, mean_a, mean_b FROM tiles").fetchall()
print(f"Total tiles: {{len(rows)}}")
```

Load tiles from a specific bucket as NumPy arrays:

```python
from PIL import Image
import numpy as np
import sqlite3, os
def load_bucket(base_dir, bucket_id, db_path="mosaic_library/tiles.db"):
    conn = sqlite3.connect(db_path)
    rows = conn.execute(
        "SELECT filepath FROM tiles WHERE bucket_id = ?", (bucket_id,)
    ).fetchall()
    images = []
    for (fp,) in rows:
        img = Image.open(os.path.join(base_dir, fp)).convert("RGB")
        images.append(np.array(img))
    return np.stack(images)  # shape: (N, 256, 256, 3)
imgs = load_bucket(".", bucket_id=42)
print(imgs.shape)
```

(`np.stack` needs at least one tile: pick a populated bucket.)

Query by LAB color proximity:

```python
from scipy.spatial import cKDTree
import numpy as np
centroids = np.load("mosaic_library/centroids.npy")
tree = cKDTree(centroids)
# Find the bucket closest to a target LAB color
target_lab = np.array([60.0, -20.0, 30.0])  # e.g. greenish mid-tone
dist, bucket_id = tree.query(target_lab)
print(f"Nearest bucket: {{bucket_id}} (distance: {{dist:.2f}})")
```

## How this release was built

`python -m builder build` took a consistent snapshot of the library's `tiles.db` (the `tiles.db` shipped here),
generated the rows with the example generator of `mosaic_library.MosaicLibrary`, the project's
`datasets.GeneratorBasedBuilder` (`builder.publish.rows.iter_examples`, which reads each tile's PNG from the path
derived from its bucket and id), and wrote them with pyarrow in the layout `datasets` itself writes: the same
features in the Parquet schema metadata, 100-row row groups, content-defined chunking. This repository holds no
code: `load_dataset` reads the Parquet files directly. Built {stats.built_at or "-"} with builder {stats.builder_version or "-"}.

## Limitations and notes

- {stats.buckets_populated:,} of 5,000 buckets are currently populated. Many LAB colors are extremely rare in
  nature (e.g. pure magenta terrain) and may never fill without targeted synthetic augmentation.
{license_text}
- Ocean and cloud tiles may appear in general biome samples; they are not explicitly filtered beyond
  color-bucket routing.
- Perceptual hash deduplication is per-bucket only - the same geographic location could appear in two different
  buckets if its color shifts (e.g. seasonal change).
- The `centroids.npy` file is required to correctly interpret bucket assignments. Do not regenerate it, as this
  would invalidate all existing bucket assignments.
"""
