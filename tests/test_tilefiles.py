"""The one safe tile reader (``Library.read_tile`` / ``TileFiles``) on real files in a real library:
it reads a stored tile, and refuses everything a planted file or a damaged row can throw at it."""

from __future__ import annotations

import os
import pickle
import shutil
import threading

import pytest
from PIL import Image

from builder.assign.pipeline import Candidate, Pipeline
from builder.core.errors import BadTile, TileOutsideLibrary, UnsafePath
from builder.core.layout import MAX_TILE_BYTES
from builder.core.tilefiles import MISSING, TileFiles
from builder.ops.verify import verify_library
from tests.support.images import png_bytes, real_crops

UNKNOWN_ID = "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a"


@pytest.fixture
def stored(make_library, bluemarble):
    """A library holding three real tiles; returns it with (bucket_id, tile_id) of each."""
    lib = make_library()
    with Pipeline(lib, workers=1) as pipe:
        outcomes = pipe.process([Candidate(f"{i}.png", data=png_bytes(c))
                                 for i, c in enumerate(real_crops(bluemarble, 3, seed=21))])
    assert all(o.accepted for o in outcomes)
    return lib, [(o.bucket_id, o.tile_id) for o in outcomes]


def test_read_tile_gives_the_stored_bytes(stored):
    lib, tiles = stored
    for bucket_id, tile_id in tiles:
        assert lib.read_tile(bucket_id, tile_id) == lib.tile_path(bucket_id, tile_id).read_bytes()
    # A fresh reader built from the root alone (what worker processes use) agrees.
    bucket_id, tile_id = tiles[0]
    assert TileFiles(lib.root).read_png(bucket_id, tile_id) == lib.read_tile(bucket_id, tile_id)


def test_a_symlinked_tile_is_refused(stored, tmp_path):
    lib, [(bucket_id, tile_id), *_] = stored
    path = lib.tile_path(bucket_id, tile_id)
    outside = tmp_path / "private.png"
    shutil.move(path, outside)
    path.symlink_to(outside)
    with pytest.raises(BadTile, match="is a symbolic link") as info:
        lib.read_tile(bucket_id, tile_id)
    assert (info.value.tile_id, info.value.path) == (tile_id, str(path))


def test_a_symlinked_bucket_folder_leading_outside_is_refused(stored, tmp_path):
    lib, [(bucket_id, tile_id), *_] = stored
    folder = lib.tile_path(bucket_id, tile_id).parent
    elsewhere = tmp_path / "elsewhere"
    shutil.move(folder, elsewhere)
    folder.symlink_to(elsewhere, target_is_directory=True)
    assert (folder / f"{tile_id}.png").is_file()  # the file is there, through the link
    for reader in (lib.read_tile, TileFiles(lib.root).read):
        with pytest.raises(TileOutsideLibrary, match="resolves outside the library") as info:
            reader(bucket_id, tile_id)
        assert isinstance(info.value, UnsafePath) and isinstance(info.value, BadTile)
        assert tile_id in str(info.value)


def test_an_oversized_file_is_refused_and_a_tile_at_the_limit_is_read(stored):
    lib, [(bucket_id, tile_id), *_] = stored
    path = lib.tile_path(bucket_id, tile_id)
    os.truncate(path, MAX_TILE_BYTES)
    assert len(TileFiles(lib.root).read(bucket_id, tile_id)) == MAX_TILE_BYTES
    os.truncate(path, MAX_TILE_BYTES + 1)
    with pytest.raises(BadTile, match=f"larger than {MAX_TILE_BYTES} bytes"):
        TileFiles(lib.root).read(bucket_id, tile_id)


def test_a_fifo_is_refused_without_blocking(stored):
    lib, [(bucket_id, tile_id), *_] = stored
    path = lib.tile_path(bucket_id, tile_id)
    path.unlink()
    os.mkfifo(path)
    result: list[BaseException] = []

    def read() -> None:
        try:
            lib.read_tile(bucket_id, tile_id)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock it: a writer end opened and closed
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO named like a tile blocked")
    assert len(result) == 1 and isinstance(result[0], BadTile) and "not a regular file" in str(result[0])


def test_a_folder_and_a_missing_file_are_bad_tiles(stored):
    lib, [(bucket_id, tile_id), (b2, t2), _] = stored
    lib.tile_path(bucket_id, tile_id).unlink()
    with pytest.raises(BadTile) as info:
        lib.read_tile(bucket_id, tile_id)
    assert info.value.problem == MISSING
    lib.tile_path(b2, t2).unlink()
    lib.tile_path(b2, t2).mkdir()
    with pytest.raises(BadTile, match="not a regular file"):
        lib.read_tile(b2, t2)


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "/etc/passwd", UNKNOWN_ID.upper(), UNKNOWN_ID + ".png",
                                    "0b6e3a8c-5f1e-1c1a-9a57-2f4b8d9e1c3a", 42, None])
def test_an_id_that_is_not_a_uuid4_names_no_file(stored, bad_id):
    lib, _tiles = stored
    with pytest.raises(UnsafePath, match="not a uuid4"):
        lib.read_tile(3, bad_id)


@pytest.mark.parametrize("bad_bucket", [-1, 5000, "3", 1.5, True, None])
def test_a_bucket_out_of_range_names_no_file(stored, bad_bucket):
    lib, [(_bucket_id, tile_id), *_] = stored
    with pytest.raises(UnsafePath, match="bucket id out of range"):
        lib.read_tile(bad_bucket, tile_id)


def test_a_png_header_that_is_not_a_tile_is_refused_by_read_png(stored):
    lib, [(bucket_id, tile_id), *_] = stored
    lib.tile_path(bucket_id, tile_id).write_bytes(png_bytes(Image.new("RGB", (64, 64), (10, 20, 30))))
    assert TileFiles(lib.root).read(bucket_id, tile_id)  # raw bytes are readable
    with pytest.raises(BadTile, match="PNG is 64x64, expected 256x256"):
        TileFiles(lib.root).read_png(bucket_id, tile_id)


def test_bad_tile_and_tile_files_survive_a_pickle(stored):
    """Both cross process pools (verify's workers, build's num_proc)."""
    lib, [(bucket_id, tile_id), *_] = stored
    err = pickle.loads(pickle.dumps(BadTile(tile_id, "/x/y.png", MISSING)))
    assert (type(err), err.tile_id, err.path, err.problem, str(err)) == (
        BadTile, tile_id, "/x/y.png", MISSING, f"tile {tile_id}: {MISSING}: /x/y.png")
    outside = pickle.loads(pickle.dumps(TileOutsideLibrary(tile_id, "/x", "bucket folder resolves outside")))
    assert isinstance(outside, UnsafePath) and outside.problem == "bucket folder resolves outside"
    files = pickle.loads(pickle.dumps(TileFiles(lib.root)))
    assert files.read(bucket_id, tile_id) == lib.read_tile(bucket_id, tile_id)


def test_verify_reports_what_the_reader_refuses_and_reads_nothing_outside(stored, tmp_path):
    """verify's deep check goes through the same reader: a symlinked tile and a FIFO are bad
    images (never followed, never blocking), a missing file is missing."""
    lib, [(b1, t1), (b2, t2), (b3, t3)] = stored
    outside = tmp_path / "private.png"
    shutil.move(lib.tile_path(b1, t1), outside)
    lib.tile_path(b1, t1).symlink_to(outside)
    lib.tile_path(b2, t2).unlink()
    os.mkfifo(lib.tile_path(b2, t2))
    lib.tile_path(b3, t3).unlink()
    report = verify_library(lib, workers=1, progress=False)
    kinds = {(p.kind, p.tile_id): p.detail for p in report.problems}
    assert "a symlink" in kinds[("bad_image", t1)]
    assert "not a regular file" in kinds[("bad_image", t2)]
    assert ("missing_file", t3) in kinds
