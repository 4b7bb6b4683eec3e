"""The dataset card (``README.md``) of a published Mosaic Library.

Its sections and snippets are the text users know; its figures are never written in the text
but measured live from the very ``tiles.db`` that ships beside the Parquet files.

The prose and the snippets live in ``data/card_template.md`` (:data:`CARD_TEMPLATE`), a
:class:`string.Template`: ``${name}`` placeholders, ``$$`` for a literal dollar sign.  This
module supplies the values (:func:`card_values`): the live figures, the library's cap and
bucket count (so the snippets' ``HAVING n >= ${cap}`` matches the library), and the computed
sections (coverage and zoom tables, licence notes) as small functions.  Filling is strict
(:func:`fill_template`): a placeholder without a value is an error at render time, never a
literal ``$x`` in a published card.

The YAML header is data, built with ``yaml.safe_dump`` (:func:`card_yaml`), and stays small on
purpose: the 5,000 ``ClassLabel`` names live in the Parquet schema metadata (``huggingface``
key), which ``load_dataset`` reads, not in ``dataset_info``.  Nothing local (paths, user names,
tokens) goes into the card.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import yaml

from ..core.errors import MosaicError
from ..core.layout import DATA_DIR, N_BUCKETS, TILE_SIZE, bucket_name
from .schema import CONFIGS, INDEX_NAME, METADATA_ROWS_PER_GROUP, RELEASE_MANIFEST, ROWS_PER_GROUP, Config

logger = logging.getLogger(__name__)

CARD_TEMPLATE = DATA_DIR / "card_template.md"
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
# (source kind, the card's note on whose terms cover such tiles), in the card's order.
_LICENSE_NOTES = (
    (
        "esri",
        "- Tiles from ArcGIS World Imagery (source `arcgis` or its URL) derive from Esri imagery; their use is "
        "subject to Esri's terms of use. This dataset is intended for non-commercial research purposes.",
    ),
    (
        "other",
        "- Tiles from other tile servers, MBTiles files, tile folders or local files (source `ingest`) are "
        "subject to the terms of their original provider, which this dataset does not record beyond `source`.",
    ),
    (
        "nasa",
        "- Tiles from source `earth` are cut from NASA's Blue Marble world image (NASA Earth Observatory / "
        "Visible Earth), which NASA publishes as public domain; NASA asks to be credited as the source.",
    ),
)


class CardTemplateError(MosaicError):
    """The card template and its values do not match (a placeholder without a value, or the reverse)."""


@dataclass
class CardStats:
    """Live figures the card reports; measured by :func:`builder.publish.staging.card_stats`.

    ``cap`` and ``n_buckets`` are the library's own (its ``meta`` cap, its bucket count), not
    the defaults: the card's snippets and tables quote them.
    """

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
    n_buckets: int = N_BUCKETS
    # the synthetic config (``synthesize``): tiles, flat ones, real tiles used, buckets only they fill
    synthetic_tiles: int = 0
    synthetic_flat: int = 0
    synthetic_sources: int = 0
    synthetic_buckets: int = 0
    # With a colour atlas: {populated, reachable_empty, not_seen} buckets (builder.acquire.atlas.reachability).
    reachability: dict[str, int] | None = None
    # what SELECT COUNT(*) FROM tiles returns on the shipped tiles.db: real and synthetic tiles
    total_rows: int = 0
    # {config name: [files, bytes]} of every config the release holds
    configs: dict[str, list[int]] = field(default_factory=dict)
    index_bytes: int = 0
    # the bucket the examples use (42 when it holds real tiles) and its real tiles
    example_bucket: int = 42
    example_bucket_tiles: int = 0

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


# Where each licence name's terms are read: NASA Earth Observatory's image use policy, the terms
# of use on Esri's World Imagery item, and for mixed sources this card's own section on terms.
LICENSE_LINKS = {
    "nasa-blue-marble-public-domain": "https://earthobservatory.nasa.gov/image-use-policy",
    "esri-world-imagery-terms": "https://www.arcgis.com/home/item.html?id=10df2279f9684e4a9f6a7f08febac2a9",
    "mixed-see-dataset-card": "README.md#limitations-and-notes",
}


def license_fields(sources: Mapping[str, int]) -> dict[str, str]:
    """``license`` / ``license_name`` / ``license_link`` for the YAML, from the sources the tiles came from.

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
    return {"license": "other", "license_name": name, "license_link": LICENSE_LINKS[name]}


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
        "configs": [config_yaml(CONFIGS[name]) for name in release_configs(stats)],
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")


def release_configs(stats: CardStats) -> list[str]:
    """The configs a release holds, in the card's order: ``synthetic`` only with synthetic tiles.

    Every config lists its own ``data_files``, so ``datasets`` never takes the root files
    (``bucket_index.parquet``, ``tiles.db``) for data.
    """
    return [name for name in CONFIGS if name != "synthetic" or stats.synthetic_tiles]


def config_yaml(config: Config) -> dict:
    """A config's entry in the YAML ``configs`` list."""
    return {"config_name": config.name, "data_files": [{"split": "train", "path": config.pattern}]}


def synthetic_section(stats: CardStats, repo_id: str) -> str:
    """The card's words on synthetic tiles, glued after the column table (empty without any)."""
    if not stats.synthetic_tiles:
        return ""
    textured = stats.synthetic_tiles - stats.synthetic_flat
    return (
        "\n\n### Synthetic tiles (config `synthetic`)\n\n"
        f"Besides the real tiles above, this repository holds **{stats.synthetic_tiles:,} synthetic tiles** for colours "
        f"the sources lack; they alone fill {stats.synthetic_buckets:,} buckets. They are **not** in the `default` "
        "config (what `load_dataset` gives without a config name) and are always flagged:\n\n"
        "```python\n"
        "from datasets import load_dataset\n\n"
        f'synthetic = load_dataset("{repo_id}", "synthetic", split="train")\n'
        'synthetic[0]["derived_from"]                   # id of the real tile it was made from\n'
        "```\n\n"
        f"How they were made (`python -m builder synthesize`): {textured:,} by colour transfer from {stats.synthetic_sources:,} "
        "real tiles of the nearest populated colours (per pixel in CIE LAB, the lightness and colour shifted to the "
        "target bucket's centroid, the light-dark spread scaled to fit the target lightness, so the texture is "
        "the source tile's), each checked to land in its bucket by the assignment recipe on the stored PNG; "
        f"{stats.synthetic_flat:,} are flat one-colour tiles (`derived_from` null) where no unused source was left. "
        "In `tiles.db` they carry `synthetic = 1` and `derived_from`; add `WHERE synthetic = 0` to the queries "
        "below to see real tiles only. A real tile always takes a synthetic one's place when a bucket is full."
    )


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Escape a data value for a Markdown table cell."""
    return re.sub(r"([|\\`*_<>\[\]])", r"\\\1", str(text)).replace("\n", " ")


def _plans() -> list[tuple[str, list]]:
    """The sampling plans (``builder.core.plans``) as ``(title, regions)``; empty if unavailable."""
    try:
        from ..core.plans import load_plan

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


def _sources_text(stats: CardStats) -> str:
    by_count = sorted(stats.by_source.items(), key=lambda kv: -kv[1])
    return ", ".join(f"`{_md(public_source_name(s))}` ({n:,})" for s, n in by_count) or "none yet"


def zoom_table(stats: CardStats) -> str:
    """Tiles per zoom level with the ground resolution each stands for."""
    if not stats.by_zoom:
        return "No tiles yet."
    return _table(("Zoom", "Tiles", "Ground resolution (equator)"), _zoom_rows(stats))


def license_notes(stats: CardStats) -> str:
    """One bullet per kind of source the tiles came from: whose terms cover them."""
    kinds = {source_kind(s) for s in stats.by_source}
    notes = [text for kind, text in _LICENSE_NOTES if kind in kinds]
    return "\n".join(notes) or "- The library holds no tiles yet."


def reachability_note(stats: CardStats) -> str:
    """What the colour atlas says of the empty buckets; nothing without an atlas (the card is then
    the same, byte for byte, as before atlases existed)."""
    r = stats.reachability
    if not r:
        return ""
    return (f" Of the {stats.n_buckets - stats.buckets_populated:,} empty buckets, {r['reachable_empty']:,} were "
            f"seen by the library's colour atlas of its tile source (`python -m builder harvest --target empty` "
            f"can fill them) and {r['not_seen']:,} were not seen on the source at all.")


def synthetic_headline(stats: CardStats) -> str:
    """The headline's second sentence: the synthetic tiles beside the real ones, and what the
    shipped ``tiles.db`` counts (``SELECT COUNT(*) FROM tiles`` counts both kinds)."""
    total = stats.total_rows or stats.tiles + stats.synthetic_tiles
    if not stats.synthetic_tiles:
        return f" `tiles.db` holds the same {total:,} tiles."
    return (f" Besides them, the `synthetic` config holds **{stats.synthetic_tiles:,} synthetic tiles** (flagged, never "
            f"in the default config); `tiles.db` holds both kinds, {total:,} rows.")


def rare_colours_note(stats: CardStats) -> str:
    """The limitation on empty buckets, true to what this release ships."""
    head = (f"{stats.buckets_populated:,} of {stats.n_buckets:,} buckets hold real tiles. Many LAB colors are extremely "
            "rare in nature (e.g. pure magenta terrain)")
    if stats.synthetic_tiles:
        return (f"{head}; {stats.synthetic_buckets:,} buckets hold only synthetic tiles (config `synthetic`, colour "
                "transfer from real tiles): they show real textures in colours no harvested tile had, not observations "
                "of those colours on the Earth's surface.")
    return (f"{head} and may never fill from imagery alone; this release holds no synthetic tiles "
            "(`python -m builder synthesize` makes flagged ones).")


_CONFIG_WORDS = {
    "default": "config `default`: the real tiles with embedded PNG bytes",
    "synthetic": "config `synthetic`: the synthetic tiles with embedded PNG bytes and `derived_from`",
    "metadata": "config `metadata`: every tile, real and synthetic, every column but `image`",
}


def files_table(stats: CardStats) -> str:
    """Every file of the release: each config's shards with their count and size, then the root files."""
    rows = []
    for name in release_configs(stats):
        files, size = stats.configs.get(name, [stats.parquet_files, stats.parquet_bytes] if name == "default" else [0, 0])
        rows.append((f"`{CONFIGS[name].folder}/train-XXXXX-of-YYYYY.parquet`",
                     f"{_CONFIG_WORDS[name]} ({files} file{'s' if files != 1 else ''}, {size / 1e6:,.1f} MB)"))
    rows += [
        (f"`{INDEX_NAME}`", "bucket -> config, file, row group, rows, byte ranges (the row group, the bucket's own "
                            f"images): read one bucket without scanning every file ({stats.index_bytes / 1e3:,.0f} KB)"),
        (f"`{RELEASE_MANIFEST}`", "every file's size, sha256 and rows: `restore` checks a download against it"),
        ("`tiles.db`", f"the library's SQLite index ({stats.total_rows or stats.tiles:,} rows, real and synthetic), "
                       "for the queries below without loading images"),
        ("`centroids.npy`", f"the {stats.n_buckets:,} LAB centroids (float64, {stats.n_buckets} x 3): the library's identity"),
    ]
    return _table(("File", "What it is"), rows)


def card_values(stats: CardStats, repo_id: str | None = None) -> dict[str, str]:
    """Every placeholder of the card template, as text, from the live figures and the library's facts."""
    metadata_files, metadata_bytes = stats.configs.get("metadata", [0, 0])
    return {
        "yaml_header": card_yaml(stats),
        "repo_id": repo_id or PLACEHOLDER_REPO,
        "tiles": f"{stats.tiles:,}",
        "buckets_populated": f"{stats.buckets_populated:,}",
        "buckets_full": f"{stats.buckets_full:,}",
        "populated_percent": f"{100.0 * stats.buckets_populated / stats.n_buckets:.1f}",
        "cap": str(stats.cap),
        "n_buckets": str(stats.n_buckets),
        "n_buckets_text": f"{stats.n_buckets:,}",
        "last_bucket": str(stats.n_buckets - 1),
        "last_label": bucket_name(stats.n_buckets - 1),
        "tile_size": str(TILE_SIZE),
        "rows_per_group": str(ROWS_PER_GROUP),
        "metadata_rows_per_group": f"{METADATA_ROWS_PER_GROUP:,}",
        "sources": _sources_text(stats),
        "zoom_phrase": _zoom_phrase(stats),
        "zoom_table": zoom_table(stats),
        "coverage": coverage_section(stats),
        "license_notes": license_notes(stats),
        "built_at": stats.built_at or "-",
        "builder_version": stats.builder_version or "-",
        "synthetic_section": synthetic_section(stats, repo_id or PLACEHOLDER_REPO),
        "synthetic_headline": synthetic_headline(stats),
        "reachability_note": reachability_note(stats),
        "rare_colours_note": rare_colours_note(stats),
        "files_table": files_table(stats),
        "total_rows_text": (f"{stats.total_rows:,} ({stats.tiles:,} real, {stats.synthetic_tiles:,} synthetic)"
                            if stats.synthetic_tiles else f"{stats.total_rows or stats.tiles:,}"),
        "example_bucket": str(stats.example_bucket),
        "index_name": INDEX_NAME,
        "metadata_rows": f"{stats.total_rows or stats.tiles + stats.synthetic_tiles:,}",
        "metadata_mb": f"{metadata_bytes / 1e6:,.1f}",
    }


def fill_template(text: str, values: Mapping[str, str], name: str = "card template") -> str:
    """``text`` with every ``$name`` / ``${name}`` replaced; ``$$`` is a literal ``$``.

    Strict both ways, so a published card never shows a literal ``$x`` and the template and
    :func:`card_values` cannot drift apart: a placeholder without a value, a value no
    placeholder uses, and a ``$`` that starts no placeholder are all :class:`CardTemplateError`.

    >>> fill_template("up to ${cap} per bucket, $$5 each", {"cap": "100"})
    'up to 100 per bucket, $5 each'
    >>> fill_template("HAVING n >= $cap", {})
    Traceback (most recent call last):
    ...
    builder.publish.card.CardTemplateError: card template: no value for $cap
    """
    template = string.Template(text)
    if not template.is_valid():
        at = next(m.start() for m in template.pattern.finditer(text) if m.group("invalid") is not None)
        line, context = text.count("\n", 0, at) + 1, text[at : at + 12].split("\n")[0]
        raise CardTemplateError(f"{name}, line {line}: {context!r}: a '$' that starts no placeholder (write $$)")
    used = set(template.get_identifiers())
    missing, unused = sorted(used - set(values)), sorted(set(values) - used)
    if missing:
        raise CardTemplateError(f"{name}: no value for " + ", ".join(f"${m}" for m in missing))
    if unused:
        raise CardTemplateError(f"{name}: values no placeholder uses: {', '.join(unused)}")
    return template.substitute(values)


def render_card(stats: CardStats, repo_id: str | None = None, template: str | None = None) -> str:
    """The whole ``README.md``: :data:`CARD_TEMPLATE` (or ``template``) filled with :func:`card_values`."""
    if template is None:
        try:
            template = CARD_TEMPLATE.read_text(encoding="utf-8")
        except OSError as exc:
            raise CardTemplateError(f"card template unreadable: {CARD_TEMPLATE} ({exc.strerror or exc})") from None
        name = str(CARD_TEMPLATE)
    else:
        name = "card template"
    return fill_template(template, card_values(stats, repo_id), name)
