"""A mosaic's output files: never its input, swapped in whole, and no debris after a kill.

A PNG mosaic is one file: it is streamed into a scratch file beside it
(:func:`builder.core.scratch.scratch_path`) and renamed over ``OUT.png`` in one step.

A Deep Zoom mosaic is three names, ``OUT.dzi`` (the descriptor), ``OUT_files/`` (the pyramid)
and ``OUT.html`` (the viewer), and no file system renames three names at once.  It is built
whole in a scratch folder ``.OUT.dzi.<pid>.part/``, the descriptor written there last (its
presence says the staged output is complete), then installed by :func:`install_dzi`:

1. the old ``OUT.dzi`` is deleted: from here no reader finds a descriptor;
2. the old ``OUT_files/`` is moved aside (``.OUT_files.<pid>.old``) and the new one moved in;
3. the new ``OUT.html`` is moved in;
4. the new ``OUT.dzi`` is moved in: the new output is complete and visible;
5. the old pyramid and the scratch folder are deleted.

So a reader never meets a descriptor without its own pyramid.  A kill before step 1 leaves the
old output whole (and scratch, removed by the next run); a kill after step 4 the new one whole
(and scratch); a kill within steps 1-4 (a few renames) leaves no descriptor and the new output
complete in the scratch folder, and the next run finishes the installation before anything else
(:func:`clean_leftovers`), so it ends with the new output whole.

:func:`clean_leftovers` runs at the start of every mosaic, in its output's folder: it removes the
scratch that dead processes left there, and only what is provably a mosaic's (a name of the
scratch form, a dead owner, and the content a mosaic writes: a PNG stream, a pyramid of level
folders, a viewer page); anything else is left alone, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from ..core.errors import UsageError
from ..core.layout import PNG_SIGNATURE
from ..core.scratch import dead_scratch, parse_scratch, scratch_path

logger = logging.getLogger(__name__)

_LEVEL = re.compile(r"^[0-9]{1,3}$")
_PYRAMID_TILE = re.compile(r"^[0-9]{1,9}_[0-9]{1,9}\.(jpg|png)$")


def pyramid_paths(path: Path) -> tuple[Path, Path, Path]:
    """``(OUT.dzi, OUT_files, OUT.html)`` of a Deep Zoom output ``path``."""
    return path, path.with_name(f"{path.stem}_files"), path.with_name(f"{path.stem}.html")


def is_pyramid(folder: Path) -> bool:
    """A folder holding only what a Deep Zoom writer makes: level folders ``0..N`` of ``col_row`` tiles."""
    try:
        for level in folder.iterdir():
            if not (_LEVEL.match(level.name) and level.is_dir() and not level.is_symlink()):
                return False
            if not all(_PYRAMID_TILE.match(tile.name) and tile.is_file() and not tile.is_symlink()
                       for tile in level.iterdir()):
                return False
    except OSError:
        return False
    return True


def is_png_stream(path: Path) -> bool:
    """A scratch file a PNG stream left: empty (killed at its opening) or starting as a PNG does."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with open(path, "rb") as fh:
            head = fh.read(len(PNG_SIGNATURE))
    except OSError:
        return False
    return head in (b"", PNG_SIGNATURE)


def is_dzi_stage(folder: Path, name: str) -> bool:
    """A Deep Zoom scratch folder for output ``name``: only its descriptor (and that descriptor's
    own scratch file), viewer and pyramid."""
    stem = Path(name).stem
    allowed = {name: "file", f"{stem}.html": "file", f"{stem}_files": "pyramid"}
    try:
        if folder.is_symlink() or not folder.is_dir():
            return False
        for entry in folder.iterdir():
            kind = allowed.get(entry.name)
            if kind is None and (parse_scratch(entry.name) or ("",))[0] == name:
                kind = "file"  # the descriptor's own scratch file, killed while it was written
            if kind is None or entry.is_symlink():
                return False
            if kind == "file" and not entry.is_file():
                return False
            if kind == "pyramid" and not (entry.is_dir() and is_pyramid(entry)):
                return False
    except OSError:
        return False
    return True


def install_dzi(stage: Path, path: Path) -> None:
    """Move a complete staged Deep Zoom output (``stage`` holds ``OUT.dzi`` and whatever of
    ``OUT_files/`` and ``OUT.html`` is not installed yet) into place, in the order the module doc
    gives; safe to run again on what a killed run of it left."""
    descriptor, files, viewer = pyramid_paths(path)
    staged_files = stage / files.name
    descriptor.unlink(missing_ok=True)
    if staged_files.exists():
        if files.exists() or files.is_symlink():
            old = scratch_path(files, "old")
            os.replace(files, old)
        os.replace(staged_files, files)
    if (stage / viewer.name).exists():
        os.replace(stage / viewer.name, viewer)
    os.replace(stage / descriptor.name, descriptor)
    for old in (scratch_path(files, "old"), stage):
        shutil.rmtree(old, ignore_errors=True)


def clean_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove (or, for an interrupted Deep Zoom installation, finish) what killed mosaics left in
    ``folder``; returns the leftovers dealt with.  Only provable mosaic scratch is touched."""
    done = []
    for leftover in dead_scratch(folder):
        path, target = leftover.path, leftover.target
        try:
            if leftover.kind == "part" and target.lower().endswith(".png") and is_png_stream(path):
                path.unlink()
            elif leftover.kind == "part" and target.lower().endswith(".dzi") and is_dzi_stage(path, target):
                descriptor = path.parent / target
                if (path / target).is_file() and not descriptor.exists():
                    install_dzi(path, descriptor)  # killed while installing: finish it
                    logger.warning("finished installing %s, which a killed mosaic left half installed", descriptor)
                else:
                    shutil.rmtree(path)
            elif leftover.kind == "old" and target.endswith("_files") and path.is_dir() and is_pyramid(path):
                shutil.rmtree(path)
            else:
                if target.lower().endswith((".png", ".dzi", "_files")):
                    logger.warning("leaving %s: named like a mosaic's scratch but not what a mosaic writes", path)
                continue
        except OSError as exc:
            logger.warning("could not remove %s, left by a killed mosaic: %s", path, exc.strerror or exc)
            continue
        done.append(path)
    if done:
        logger.info("removed what killed mosaics left: %s", ", ".join(p.name for p in done))
    return done


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_input(target: str | os.PathLike, output: str | os.PathLike, fmt: str) -> None:
    """:class:`UsageError` when writing ``output`` would overwrite the picture ``target`` being
    redrawn: the same file (a symlink or a hard link to it included), or, for a Deep Zoom output,
    its viewer page or a file inside the pyramid folder it replaces."""
    source, out = Path(target), Path(output)
    if not source.exists():
        return  # opening the target reports it
    if fmt == "dzi":
        descriptor, files, viewer = pyramid_paths(out)
        clash = _same_file(source, descriptor) or _same_file(source, viewer)
        if not clash and files.exists():
            inside = os.path.realpath(source)
            clash = os.path.commonpath([inside, os.path.realpath(files)]) == os.path.realpath(files)
    else:
        clash = _same_file(source, out)
    if clash:
        raise UsageError(f"--output {output} would overwrite the input {target}: choose another output name")
