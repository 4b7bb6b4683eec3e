"""The tile files of one library folder: how they are named and how they are read, safely.

Every part of the project that opens a stored tile (build, verify, report, mosaic) reads it
through :meth:`TileFiles.read`, and :meth:`TileFiles.path` (``Library.tile_path``) is the only
way a tile's file is named.  The rules:

* the path is derived from a validated ``(bucket_id, id)`` (:func:`builder.core.layout.tile_relpath`:
  a uuid4 and an integer bucket in range), never from the ``filepath`` column;
* each bucket folder is resolved once per :class:`TileFiles` to check that it is the library's
  own folder (a ``bucket_XXXX`` symlinked elsewhere is refused); resolving every file instead
  costs as much as reading it;
* the file is opened with ``O_NOFOLLOW`` (a symlinked tile is refused), ``O_NONBLOCK`` (a FIFO
  planted under a tile's name cannot hang the reader) and ``O_CLOEXEC``, must be a regular
  file, and at most :data:`~builder.core.layout.MAX_TILE_BYTES` are read;
* every failure is one :class:`~builder.core.errors.BadTile` naming the tile id, the path and the
  problem (an escaping bucket folder is a :class:`~builder.core.errors.TileOutsideLibrary`, which is
  also an :class:`~builder.core.errors.UnsafePath`).

A :class:`TileFiles` is built from the root alone and pickles as its root, so worker processes
read tiles without opening a :class:`~builder.core.library.Library`.  Standard library only.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import BadTile, TileOutsideLibrary
from .layout import MAX_TILE_BYTES, PNG_SIGNATURE, TILE_SIZE, tile_relpath

# BadTile.problem of a tile whose file is not there (verify counts it as missing_file).
MISSING = "file missing"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class TileFiles:
    """Names and reads the PNGs under ``root``.

    >>> import tempfile
    >>> files = TileFiles(tempfile.mkdtemp())
    >>> files.path(7, "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a").name
    '0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a.png'
    >>> files.read(7, "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    builder.core.errors.BadTile: tile 0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a: file missing: ...
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._real_root: Path | None = None
        self._checked_buckets: set[str] = set()

    def __reduce__(self):  # the checked-bucket cache is per process: rebuilt after a pickle
        return (type(self), (self.root,))

    def __repr__(self) -> str:
        return f"TileFiles({str(self.root)!r})"

    def path(self, bucket_id: object, tile_id: object) -> Path:
        """``root/bucket_XXXX/<id>.png``; :class:`~builder.core.errors.UnsafePath` for an id or bucket
        that is not valid.  Touches no file."""
        return self.root / tile_relpath(bucket_id, tile_id)

    def read(self, bucket_id: object, tile_id: object) -> bytes:
        """The bytes of one stored tile, under the rules of the module docstring."""
        path = self.path(bucket_id, tile_id)
        self._check_bucket(path, tile_id)
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            raise BadTile(tile_id, path, MISSING) from None
        except OSError as exc:  # ELOOP: the tile is a symlink; ENXIO: a socket; EACCES, EIO...
            raise BadTile(tile_id, path, _open_problem(exc)) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):  # a FIFO, a folder, a device
                raise BadTile(tile_id, path, "not a regular file")
            # Sized from fstat (a read of MAX_TILE_BYTES + 1 would allocate 4 MiB per tile), plus
            # one byte to notice a file that grew since, which is then read on up to the limit.
            want = min(info.st_size, MAX_TILE_BYTES) + 1
            data = _read_at_most(fd, want)
            if len(data) == want:
                data += _read_at_most(fd, MAX_TILE_BYTES + 1 - want)
        except OSError as exc:
            raise BadTile(tile_id, path, f"unreadable ({exc.strerror or exc})") from None
        finally:
            os.close(fd)
        if len(data) > MAX_TILE_BYTES:
            raise BadTile(tile_id, path, f"larger than {MAX_TILE_BYTES} bytes")
        return data

    def read_png(self, bucket_id: object, tile_id: object) -> bytes:
        """:meth:`read`, then the PNG header must say 256x256 8-bit RGB (:func:`check_png`)."""
        data = self.read(bucket_id, tile_id)
        problem = check_png(data)
        if problem:
            raise BadTile(tile_id, self.path(bucket_id, tile_id), problem)
        return data

    def _check_bucket(self, path: Path, tile_id: object) -> None:
        folder = path.parent
        if folder.name in self._checked_buckets:
            return
        if self._real_root is None:
            self._real_root = self.root.resolve()
        real = folder.resolve()
        if real != self._real_root / folder.name:
            raise TileOutsideLibrary(str(tile_id), path, f"bucket folder resolves outside the library ({real})")
        self._checked_buckets.add(folder.name)


def _read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd`` (a regular file: reads return short only at its end)."""
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _open_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symbolic link (never followed: a symlink may lead out of the library)"
    return f"unreadable ({exc.strerror or exc})"


def check_png(data: bytes) -> str | None:
    """Why ``data`` is not a 256x256 8-bit RGB PNG, or ``None`` if its header says it is.

    Reads only the signature and IHDR chunk: a full decode would cost more than the rest of
    a build per tile.  Truncated or corrupt bodies are caught by ``verify``, not here.

    >>> check_png(b"GIF89a")
    'not a PNG file'
    """
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return "not a PNG file"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if (width, height) != (TILE_SIZE, TILE_SIZE):
        return f"PNG is {width}x{height}, expected {TILE_SIZE}x{TILE_SIZE}"
    bit_depth, colour_type = data[24], data[25]
    if (bit_depth, colour_type) != (8, 2):
        return f"PNG has bit depth {bit_depth} and colour type {colour_type}, expected 8-bit RGB (2)"
    return None

