"""Tiles from an HTTP(S) server through a URL template: ArcGIS World Imagery or any XYZ server.

Retries, backoff, ``Retry-After``, the rate limit, the run's request gate and the sessions are
the :class:`~builder.acquire.sources.transport.HttpTransport`'s; this module adds what is particular to
tiles: the URL template, the placeholder digests, and the check that a body is an image of the
tile size (run inside each attempt, so a bad body is retried like a bad status).
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Iterable
from urllib.parse import urlsplit

from ... import __version__
from ...core.defaults import ARCGIS
from ...core.errors import SourceError, UsageError
from ...core.layout import MAX_TILE_BYTES, TILE_SIZE, tile_in_range
from ...core.redact import redact_url
from .base import (
    KNOWN_PLACEHOLDER_SHA256,
    FetchStats,
    RequestGate,
    TileSource,
    body_sha256,
    check_tile_bytes,
)
from .transport import (
    HttpTransport,
)

logger = logging.getLogger(__name__)

ARCGIS_TEMPLATE = "https://server.arcgisonline.com/ArcGIS/rest/services/World_Imagery/MapServer/tile/{z}/{y}/{x}"
USER_AGENT = f"mosaic-library-builder/{__version__} (+https://huggingface.co/datasets)"
TEMPLATE_FIELDS = frozenset({"z", "x", "y"})


def validate_template(template: str) -> str:
    """Return ``template`` if it is an http(s) URL using exactly the fields {z}, {x}, {y}.

    The fields may come in any order ({z}/{y}/{x} for ArcGIS, {z}/{x}/{y} for OSM-style
    servers, or query parameters); each must appear, and nothing else may, so a typo such as
    ``{Z}`` or an unsupported ``{s}`` fails now rather than as a million 404s.
    """
    shown = redact_url(template)
    if not template.startswith(("http://", "https://")):
        raise UsageError(f"tile URL template {shown!r} must start with http:// or https://")
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        raise UsageError(f"tile URL template {shown!r} is malformed: {exc}") from exc
    unknown = sorted(fields - TEMPLATE_FIELDS)
    if unknown:
        names = ", ".join("{" + f + "}" for f in unknown)
        raise UsageError(f"tile URL template {shown!r} uses {names}; only {{z}}, {{x}} and {{y}} are supported")
    missing = sorted(TEMPLATE_FIELDS - fields)
    if missing:
        names = ", ".join("{" + f + "}" for f in missing)
        raise UsageError(f"tile URL template {shown!r} lacks {names}; it needs all of {{z}}, {{x}} and {{y}}")
    try:
        template.format(z=0, x=0, y=0)
    except (ValueError, IndexError, KeyError) as exc:
        raise UsageError(f"tile URL template {shown!r} cannot be filled in: {exc}") from exc
    return template


def host_of(url: str) -> str:
    """``host[:port]`` of a URL or template, without credentials: how errors name a server.

    >>> host_of("https://user:pw@tiles.example.com:8443/{z}/{x}/{y}.png")
    'tiles.example.com:8443'
    """
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return redact_url(url)
    return netloc.rsplit("@", 1)[-1] or redact_url(url)


def add_query_param(template: str, key: str, value: str) -> str:
    """Append ``key=value`` to a URL template unless ``key`` is already there."""
    if re.search(rf"[?&]{re.escape(key)}=", template):
        return template
    return f"{template}{'&' if '?' in template else '?'}{key}={value}"


class HttpSource(TileSource):
    """Tiles from ``template`` (a URL with {z}, {x}, {y}), validated, retried and counted.

    ``fetch`` returns image bytes, ``None`` for 404/204 and known placeholders, or raises
    :class:`TileFault` once retries are exhausted (or at once for faults a retry cannot
    cure: bad_size, too_large, other 4xx), or :class:`GateClosed` when the run's gate
    (:meth:`attach`) refuses an attempt.  The asking is its
    :class:`~builder.acquire.sources.transport.HttpTransport`'s: retries, backoff, rate, the gate, and
    the count of every attempt in the run's :class:`~builder.acquire.sources.base.FetchStats`.
    """

    remote = True  # every fetch costs the server a request: harvest never asks for a tile twice
    takes_gate = True  # the transport takes the run's gate once per attempt, retries included

    def __init__(
        self,
        template: str,
        *,
        name: str | None = None,
        user_agent: str = USER_AGENT,
        headers: dict[str, str] | None = None,
        placeholder_sha256: Iterable[str] = (),
        tile_size: int | None = TILE_SIZE,
        max_bytes: int = MAX_TILE_BYTES,
        **transport_options,
    ) -> None:
        """``transport_options`` (``retries``, ``backoff_factor``, ``timeout``, ``rate``, ``sleep``...)
        go to the :class:`~builder.acquire.sources.transport.HttpTransport`, which owns their defaults."""
        self.template = validate_template(template)
        self.name = name or redact_url(template)
        self.placeholders = frozenset(KNOWN_PLACEHOLDER_SHA256 | {h.lower() for h in placeholder_sha256})
        self.tile_size = tile_size
        self.max_bytes = int(max_bytes)
        self.transport = HttpTransport(
            self.name,
            headers={"User-Agent": user_agent, "Accept": "image/jpeg,image/png,image/webp,image/*;q=0.8",
                     **(headers or {})},
            max_bytes=max_bytes, **transport_options)
        self._shown_template = redact_url(self.template)
        self.host = host_of(self.template)

    def __repr__(self) -> str:
        return f"HttpSource({self.name!r})"

    @property
    def gate(self) -> RequestGate | None:
        """The run's request gate while a run uses the source (see :meth:`attach`)."""
        return self.transport.gate

    def attach(self, gate: RequestGate | None, attempts: FetchStats | None) -> None:
        self.transport.gate, self.transport.attempts = gate, attempts

    def detach(self) -> None:
        self.transport.gate, self.transport.attempts = None, None

    def url(self, z: int, x: int, y: int) -> str:
        return self.template.format(z=z, x=x, y=y)

    def fetch(self, z: int, x: int, y: int) -> bytes | None:
        if self.transport.closed:
            raise SourceError(f"tile source {self.name!r} is closed")
        if not tile_in_range(z, x, y):
            return None
        return self.transport.get(self.url(z, x, y), self._shown_template.format(z=z, x=x, y=y),
                                  check=self.check_body)

    def check_body(self, body: bytes, content_type: str | None, shown: str) -> bytes | None:
        """Inside each attempt: None for a known placeholder, the body if it is an image of the
        tile size, else a TileFault (retried when its kind is transient)."""
        if body and body_sha256(body) in self.placeholders:
            return None
        check_tile_bytes(body, shown, content_type=content_type, tile_size=self.tile_size, max_bytes=self.max_bytes)
        return body

    def close(self) -> None:
        self.transport.close()


def arcgis_source(template: str = ARCGIS_TEMPLATE, **options) -> HttpSource:
    """ArcGIS World Imagery (or a server with its layout), named "arcgis".

    ``blankTile=false`` makes the server answer 404 where it has no imagery instead of its
    grey "Map data not yet available" JPEG; the placeholder's digest is still checked in
    case a server or cache ignores the parameter.
    """
    options.setdefault("name", ARCGIS)
    return HttpSource(add_query_param(template, "blankTile", "false"), **options)
