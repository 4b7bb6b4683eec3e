"""Shared fixtures (helpers live in :mod:`tests.support`; nothing is imported from this module)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.support import net
from tests.support.cli import bare_env, run_cli
from tests.support.images import jpeg_bytes, real_crops
from tests.support.libraries import build_earth_library, copy_library
from tests.support.paths import BLUEMARBLE


@pytest.fixture(scope="session")
def bluemarble() -> Image.Image:
    """The NASA Blue Marble world image shipped in data/ (5400x2700, RGB)."""
    img = Image.open(BLUEMARBLE)
    img.load()
    return img.convert("RGB")


@pytest.fixture(scope="session")
def real_tiles_dir(tmp_path_factory, bluemarble) -> Path:
    """240 real-imagery tiles: 200 PNG and 40 JPEG files, in a folder."""
    folder = tmp_path_factory.mktemp("real_tiles")
    for i, crop in enumerate(real_crops(bluemarble, 240, seed=7)):
        if i % 6 == 5:
            (folder / f"tile_{i:04d}.jpg").write_bytes(jpeg_bytes(crop))
        else:
            crop.save(folder / f"tile_{i:04d}.png")
    return folder


@pytest.fixture(scope="session")
def library_factory(tmp_path_factory, bluemarble):
    """``library_factory(recipe, **params)``: the library a ``build_*`` recipe of
    :mod:`tests.support.libraries` makes from the Blue Marble image, built once per session (per
    xdist worker) and handed to every module that asks for the same recipe and parameters.  It is
    shared, so read-only: copy it (``library_copy``, :func:`tests.support.libraries.copy_library`)
    before changing anything."""
    built: dict[tuple, Path] = {}

    def build(recipe, **params) -> Path:
        key = (recipe, tuple(sorted(params.items())))
        if key not in built:
            folder = tmp_path_factory.mktemp(recipe.__name__.removeprefix("build_"))
            built[key] = recipe(folder / "mosaic_library", bluemarble, **params)
        return built[key]

    return build


@pytest.fixture(scope="session")
def earth_library(library_factory) -> Path:
    """160 real Blue Marble tiles of mixed scales, shared by the mosaic modules (read-only)."""
    return library_factory(build_earth_library)


@pytest.fixture
def library_copy(library, tmp_path) -> Path:
    """A private copy, in tmp_path, of the requesting module's ``library`` fixture (a folder), that
    a test may damage."""
    return copy_library(library, tmp_path / "mosaic_library")


@pytest.fixture
def make_library(tmp_path):
    """Factory: a fresh library under tmp_path (closed by the test or at teardown)."""
    from builder.core.library import Library

    opened = []

    def make(name: str = "mosaic_library", **kwargs) -> Library:
        lib = Library.create(tmp_path / name, **kwargs)
        opened.append(lib)
        return lib

    yield make
    for lib in opened:
        lib.close()


@pytest.fixture
def cli(tmp_path):
    """``cli(*args, env=..., cwd=..., timeout=...)``: :func:`tests.support.cli.run_cli` run in the
    test's tmp_path with :func:`tests.support.cli.bare_env`, as a user in an empty folder would."""

    def run(*args, cwd=tmp_path, env=None, **kwargs):
        return run_cli(*args, cwd=cwd, env=bare_env() if env is None else env, **kwargs)

    return run


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return net.free_port()


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A :class:`tests.support.localhub.LocalHub` on 127.0.0.1, and this process's Hugging Face
    clients pointed at it: ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_DISABLE_XET=1`` and every cache
    under tmp_path, in the environment (so subprocesses inherit it; ``local_hub.env()`` gives the
    same dict) and in the settings ``huggingface_hub`` and ``datasets`` read when imported."""
    from huggingface_hub import HfFileSystem

    from tests.support.localhub import LocalHub

    with LocalHub(tmp_path / "local_hub", client_home=tmp_path / "hf_client") as hub:
        for name, value in hub.env().items():
            monkeypatch.setenv(name, value)
        for target, name, value in hub.client_patches():
            monkeypatch.setattr(target, name, value)
        HfFileSystem.clear_instance_cache()  # an instance cached by an earlier test knows other repos
        yield hub
        HfFileSystem.clear_instance_cache()
