"""Layout, init, locking, recovery and path safety of the on-disk library."""

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from builder.assign.pipeline import Candidate, Pipeline
from builder.core.errors import CentroidsError, LibraryError, LibraryLocked, UnsafePath
from builder.core.layout import SHIPPED_CENTROIDS
from builder.core.library import Library
from tests.support.cli import run_cli
from tests.support.images import png_bytes, real_crops


def test_init_creates_the_layout_and_refuses_to_overwrite_centroids(tmp_path):
    root = tmp_path / "mosaic_library"
    with Library.create(root) as lib:
        assert (root / "tiles.db").is_file() and (root / "temp").is_dir()
        assert np.array_equal(np.load(root / "centroids.npy"), np.load(SHIPPED_CENTROIDS))
        assert lib.cap == 100
    before = (root / "centroids.npy").read_bytes()
    other = tmp_path / "other.npy"
    np.save(other, np.load(SHIPPED_CENTROIDS)[::-1].copy())
    with pytest.raises(LibraryError, match="never overwritten"):
        Library.create(root, centroids=other)
    assert (root / "centroids.npy").read_bytes() == before


def test_import_centroids_and_detect_a_swapped_file(tmp_path):
    other = tmp_path / "other.npy"
    np.save(other, np.load(SHIPPED_CENTROIDS)[::-1].copy())
    root = tmp_path / "lib"
    Library.create(root, centroids=other).close()
    assert np.array_equal(np.load(root / "centroids.npy"), np.load(other))
    np.save(root / "centroids.npy", np.load(SHIPPED_CENTROIDS))
    with pytest.raises(CentroidsError, match="differs from the file this library was built with"):
        Library.open(root)


def test_open_gives_actionable_errors(tmp_path):
    with pytest.raises(LibraryError, match="run `python -m builder init"):
        Library.open(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(CentroidsError, match="no centroids.npy"):
        Library.open(tmp_path / "half")


def test_tiles_db_without_table_is_refused(tmp_path):
    root = tmp_path / "lib"
    Library.create(root).close()
    os.remove(root / "tiles.db")
    sqlite3.connect(root / "tiles.db").execute("CREATE TABLE other (x)").connection.commit()
    with pytest.raises(LibraryError, match="no 'tiles' table"):
        Library.open(root)


def test_second_writer_is_refused_with_a_clear_message_and_readers_still_work(tmp_path):
    root = tmp_path / "lib"
    writer = Library.create(root)
    try:
        with pytest.raises(LibraryLocked, match=f"pid {os.getpid()}"):
            Library.open(root)
        with Library.open(root, readonly=True) as reader:
            assert reader.stats()["tiles"] == 0
        assert Library.writer_active(root)
    finally:
        writer.close()
    assert not Library.writer_active(root)
    Library.open(root).close()


def test_deleting_the_lock_file_lets_no_second_writer_in(tmp_path):
    """The lock is held on the library folder itself: ``.lock`` (which names the holder) can go."""
    root = tmp_path / "lib"
    writer = Library.create(root)
    try:
        (root / "temp" / "staged.png").write_bytes(b"a batch in flight")
        (root / ".lock").unlink()
        with pytest.raises(LibraryLocked, match=f"is being written by pid {os.getpid()};"):  # from /proc/locks
            Library.open(root)
        assert (root / "temp" / "staged.png").exists()  # the refused writer cleaned nothing
        (root / ".lock").write_text("pid 1")  # a new .lock, planted: changes nothing
        with pytest.raises(LibraryLocked, match=f"pid {os.getpid()};"):
            Library.open(root)
        assert Library.writer_active(root)
    finally:
        writer.close()
    assert not Library.writer_active(root)
    with Library.open(root) as again:
        assert list(again.temp_dir.iterdir()) == []  # the next writer cleans its scratch
        assert (root / ".lock").read_text() == f"pid {os.getpid()}"


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "/etc/passwd", "x" * 36, "0B6E3A8C-5F1E-4C1A-9A57-2F4B8D9E1C3A"])
def test_tile_path_refuses_ids_that_are_not_uuid4(make_library, bad_id):
    lib = make_library()
    with pytest.raises(UnsafePath):
        lib.tile_path(1, bad_id)


@pytest.mark.parametrize("bad_bucket", [-1, 5000, "3", 1.5])
def test_tile_path_refuses_out_of_range_buckets(make_library, bad_bucket):
    with pytest.raises(UnsafePath):
        make_library().tile_path(bad_bucket, "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a")


def test_recovery_replays_a_crashed_batch(make_library, bluemarble):
    """Simulate a crash after the renames: committed rows keep files, uncommitted files go."""
    lib = make_library()
    crops = real_crops(bluemarble, 3, seed=4)
    with Pipeline(lib, workers=1) as pipe:
        committed = pipe.process([Candidate("a.png", data=png_bytes(crops[0]))])[0]
    root = lib.root
    lib.close()
    # A batch whose rows never committed: file renamed into its bucket, journal left behind,
    # and stray scratch in temp/.
    ghost = "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a"
    (root / "bucket_0001").mkdir(exist_ok=True)
    (root / "bucket_0001" / f"{ghost}.png").write_bytes(png_bytes(crops[1]))
    (root / "temp" / "journal.json").write_text(json.dumps({"tiles": [[ghost, 1], [committed.tile_id, committed.bucket_id]]}))
    (root / "temp" / "half.part").write_bytes(b"partial")
    with Library.open(root) as again:
        assert not (root / "bucket_0001" / f"{ghost}.png").exists()
        assert again.tile_path(committed.bucket_id, committed.tile_id).is_file()
        assert list(again.temp_dir.iterdir()) == []


def test_read_only_library_gives_one_clear_error_for_writers():
    """A library the user cannot write: writers get one line, readers still work.

    As root (CI) permissions do not bind, so the CLI runs as ``nobody`` through setpriv.
    """
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="mosaic_ro_"))  # /tmp/pytest-of-root is 0700: nobody can't enter it
    os.chmod(base, 0o755)
    root = base / "mosaic_library"
    Library.create(root).close()
    os.chmod(root, 0o555)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root for this test"
        prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    try:
        res = run_cli("ingest", "--library", root, root, prefix=prefix, cwd="/")
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip().count("\n") == 0 and "read-only" in res.stderr, res.stderr
        res = run_cli("stats", "--library", root, prefix=prefix, cwd="/")
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("0 tiles")
    finally:
        os.chmod(root, 0o755)
        shutil.rmtree(base)
