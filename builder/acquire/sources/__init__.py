"""Tile sources: where harvest gets 256x256 XYZ tiles from.

``open_source(spec, **options)`` turns a ``--source`` value into a :class:`TileSource`:

=====================  ====================================================================
``arcgis`` (default)   ArcGIS World Imagery over HTTPS (``blankTile=false``), name "arcgis"
``http(s)://...``      any URL template with ``{z}``, ``{x}``, ``{y}`` in any order; named
                       by the template (credentials redacted)
``FILE.mbtiles``       an MBTiles archive (TMS rows), name "mbtiles:<file name>"
``DIR``                an existing folder laid out ``z/x/y.png|jpg|jpeg|webp``,
                       name "folder:<folder name>"
``earth``              the embedded Blue Marble image reprojected to Web-Mercator, no
                       network, name "earth"
=====================  ====================================================================

Every source: ``fetch(z, x, y) -> bytes | None`` (None: no tile there), raising
:class:`TileFault` (a :class:`~builder.core.errors.SourceError` with ``kind``) for faults;
``close()``.  Every source subclasses :class:`TileSource`, which declares what a run reads
from it; a run counts the answers in a :class:`FetchStats`.
A run's requests pass through one :class:`RequestGate` (budget, halt, dead-source verdict
from :class:`SourceHealth`); a source cut short by it raises :class:`GateClosed`.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from ...core.defaults import ARCGIS, DEFAULT_SOURCE, EARTH, SPEC_FORMS
from ...core.errors import UsageError
from ...core.layout import EARTH_IMAGE, MAX_TILE_BYTES, TILE_SIZE
from ...core.redact import redact_url
from .base import (
    KNOWN_PLACEHOLDER_SHA256,
    PERMANENT_KINDS,
    TRANSIENT_KINDS,
    FetchStats,
    GateClosed,
    RequestGate,
    SourceHealth,
    TileFault,
    TileSource,
    check_tile_bytes,
    fault_counts,
    is_blank_tile,
    sniff_format,
)
from .earth import EarthSource
from .folder import FolderSource
from .http import (
    ARCGIS_TEMPLATE,
    USER_AGENT,
    HttpSource,
    add_query_param,
    arcgis_source,
    validate_template,
)
from .mbtiles import MBTilesSource
from .transport import HttpTransport, RateLimiter

logger = logging.getLogger(__name__)

__all__ = [
    "ARCGIS_TEMPLATE",
    "EARTH_IMAGE",
    "HTTP_OPTIONS",
    "KNOWN_PLACEHOLDER_SHA256",
    "MAX_TILE_BYTES",
    "PERMANENT_KINDS",
    "SPEC_FORMS",
    "TILE_SIZE",
    "TRANSIENT_KINDS",
    "USER_AGENT",
    "EarthSource",
    "FetchStats",
    "FolderSource",
    "GateClosed",
    "HttpSource",
    "HttpTransport",
    "MBTilesSource",
    "RateLimiter",
    "RequestGate",
    "SourceHealth",
    "TileFault",
    "TileSource",
    "add_query_param",
    "arcgis_source",
    "check_tile_bytes",
    "fault_counts",
    "is_blank_tile",
    "open_source",
    "redact_url",
    "sniff_format",
]

# Options only the HTTP source understands: the keyword options of HttpSource and of its
# transport (``tile_size`` is every source's). open_source drops them for local sources, so
# harvest can pass one set of options whatever --source is.
HTTP_OPTIONS = frozenset(
    name for cls in (HttpSource, HttpTransport) for name, param in inspect.signature(cls).parameters.items()
    if param.kind is param.KEYWORD_ONLY and name != "tile_size"
)


def open_source(spec: str = DEFAULT_SOURCE, **options) -> TileSource:
    """Open the tile source that ``spec`` (a ``--source`` value) names; see the module doc.

    ``options`` go to the source's constructor (HTTP: retries, timeout, rate, ...; all:
    tile_size). HTTP-only options are ignored for local sources. A URL template on an
    ArcGIS MapServer gets ``blankTile=false`` like the ``arcgis`` shorthand.
    Raises UsageError for a value of no known form, SourceError for a file or folder
    that cannot be used.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"--source {spec!r} is empty; use {SPEC_FORMS}")
    spec = spec.strip()
    lowered = spec.lower()
    local = {k: v for k, v in options.items() if k not in HTTP_OPTIONS}
    if lowered == ARCGIS:
        return arcgis_source(**options)
    if lowered == EARTH:
        return EarthSource(**local)
    if lowered.startswith(("http://", "https://")):
        validate_template(spec)
        if "/mapserver/tile/" in lowered:
            options.setdefault("name", redact_url(spec))
            return arcgis_source(spec, **options)
        return HttpSource(spec, **options)
    if "://" in spec:
        shown = redact_url(spec)
        raise UsageError(f"--source {shown!r}: only http:// and https:// URLs are supported; use {SPEC_FORMS}")
    if lowered.endswith(".mbtiles"):
        return MBTilesSource(spec, **local)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, **local)
    if path.exists():
        raise UsageError(f"--source {spec!r} is a file but not a .mbtiles archive; use {SPEC_FORMS}")
    raise UsageError(f"--source {spec!r} is not a known source and no such folder exists; use {SPEC_FORMS}")
