"""Tiles from a folder laid out ``z/x/y.(png|jpg|jpeg|webp)`` (XYZ: y counted from the north).

Paths are built from the three integers only, so no name read from disk or data is ever
opened. The folder is checked at open for at least one numeric zoom folder: pointing
``--source`` at the wrong folder should fail at once, not as a harvest of nothing but misses.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...core.errors import SourceError
from ...core.layout import MAX_TILE_BYTES, TILE_SIZE, tile_in_range
from .base import TileFault, TileSource, check_tile_bytes

logger = logging.getLogger(__name__)

EXTENSIONS = ("png", "jpg", "jpeg", "webp")


class FolderSource(TileSource):
    """Tiles stored as files ``root/z/x/y.<ext>``; named ``folder:<folder name>``."""

    remote = False  # a file read again costs nobody anything

    def __init__(self, root: str | Path, *, tile_size: int | None = TILE_SIZE) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"tile folder {str(self.root)!r} does not exist or is not a folder")
        zooms = [p.name for p in self.root.iterdir() if p.is_dir() and p.name.isdigit()]
        if not zooms:
            raise SourceError(
                f"tile folder {str(self.root)!r} has no numeric zoom folders; expected a z/x/y.png layout"
            )
        self.zooms = sorted(int(z) for z in zooms)
        self.name = f"folder:{self.root.resolve().name}"
        self.tile_size = tile_size

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r})"

    def path_for(self, z: int, x: int, y: int) -> Path | None:
        """The first existing file for z/x/y, trying each extension in turn."""
        base = self.root / str(int(z)) / str(int(x))
        for ext in EXTENSIONS:
            path = base / f"{int(y)}.{ext}"
            if path.is_file():
                return path
        return None

    def fetch(self, z: int, x: int, y: int) -> bytes | None:
        path = self.path_for(z, x, y) if tile_in_range(z, x, y) else None
        if path is None:
            return None
        where = f"{self.name} {z}/{x}/{y}"
        try:
            if path.stat().st_size > MAX_TILE_BYTES:
                raise TileFault("too_large", f"{where}: {path.stat().st_size} bytes", retryable=False)
            body = path.read_bytes()
            check_tile_bytes(body, where, tile_size=self.tile_size, retryable=False)
        except OSError as exc:
            raise SourceError(f"cannot read tile file {str(path)!r}: {exc}") from exc
        return body

    def close(self) -> None:
        """Nothing to release."""
