"""verify finds every kind of planted damage; --repair fixes it and a second verify is clean."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from builder.core.library import Library
from builder.ops.ingest import ingest
from builder.ops.verify import verify_library
from tests.support.cli import run_cli


@pytest.fixture
def damaged(make_library, real_tiles_dir, bluemarble):
    """A real library with one instance of each kind of damage planted."""
    lib = make_library(cap=100)
    ingest(lib, [real_tiles_dir], workers=1)
    conn = lib.conn
    rows = conn.execute("SELECT id, bucket_id, phash FROM tiles ORDER BY rowid").fetchall()
    planted = {}
    # missing_file
    tid, b, _ = rows[0]
    lib.tile_path(b, tid).unlink()
    planted["missing_file"] = tid
    # bad_image: a stored file overwritten with junk
    tid, b, _ = rows[1]
    lib.tile_path(b, tid).write_bytes(b"not a png at all")
    planted["bad_image"] = tid
    # bad_phash
    tid, b, _ = rows[2]
    with conn:
        conn.execute("UPDATE tiles SET phash = 'ffffffffffffffff' WHERE id = ?", (tid,))
    planted["bad_phash"] = tid
    # wrong_bucket: move a tile (file and row) to another bucket with room
    tid, b, _ = rows[3]
    other = (b + 1) % 5000
    dest = lib.tile_path(other, tid)
    dest.parent.mkdir(exist_ok=True)
    shutil.move(lib.tile_path(b, tid), dest)
    with conn:
        conn.execute("UPDATE tiles SET bucket_id = ?, filepath = ? WHERE id = ?", (other, lib.filepath_for(other, tid), tid))
    planted["wrong_bucket"] = tid
    # filepath_mismatch
    tid, b, _ = rows[4]
    with conn:
        conn.execute("UPDATE tiles SET filepath = '../../etc/passwd' WHERE id = ?", (tid,))
    planted["filepath_mismatch"] = tid
    # orphan_file: a real PNG in a bucket with no row, and junk in temp/
    orphan = lib.root / "bucket_0007" / "0b6e3a8c-5f1e-4c1a-9a57-2f4b8d9e1c3a.png"
    orphan.parent.mkdir(exist_ok=True)
    Image.new("RGB", (256, 256), (1, 2, 3)).save(orphan)
    (lib.temp_dir / "leftover.part").write_bytes(b"x")
    # unsafe_row: an id that tries to escape the library
    with conn:
        conn.execute(
            "INSERT INTO tiles (id, bucket_id, filepath, phash, mean_l, mean_a, mean_b) VALUES (?, ?, ?, ?, 0, 0, 0)",
            ("../../../etc/passwd", 3, "/etc/passwd", "0000000000000000"),
        )
    # duplicate_phash + over_cap: copy a tile 3 times into its own bucket under new ids, cap lowered
    tid, b, ph = rows[5]
    import uuid

    for _ in range(3):
        new = str(uuid.uuid4())
        shutil.copy(lib.tile_path(b, tid), lib.tile_path(b, new))
        with conn:
            conn.execute(
                "INSERT INTO tiles (id, bucket_id, filepath, phash, mean_l, mean_a, mean_b) "
                "SELECT ?, bucket_id, ?, phash, mean_l, mean_a, mean_b FROM tiles WHERE id = ?",
                (new, lib.filepath_for(b, new), tid),
            )
    lib.cap = 3
    planted["dup_bucket"] = b
    return lib, planted


def test_verify_finds_each_planted_kind(damaged):
    lib, planted = damaged
    report = verify_library(lib)
    kinds = report.counts
    for kind in ("missing_file", "bad_image", "bad_phash", "wrong_bucket", "filepath_mismatch", "orphan_file",
                 "unsafe_row", "duplicate_phash", "over_cap"):
        assert kinds[kind] >= 1, (kind, kinds)
    by_id = {(p.kind, p.tile_id) for p in report.problems}
    for kind in ("missing_file", "bad_image", "bad_phash", "wrong_bucket", "filepath_mismatch"):
        assert (kind, planted[kind]) in by_id
    assert kinds["orphan_file"] == 2
    assert kinds["duplicate_phash"] == 3
    assert not report.ok


def test_repair_fixes_everything_and_a_second_verify_is_clean(damaged):
    lib, planted = damaged
    report = verify_library(lib, repair=True)
    assert report.repaired["missing_file"] == 1 and report.repaired["orphan_file"] == 2
    assert report.repaired["wrong_bucket"] == 1
    after = verify_library(lib)
    assert after.ok, after.summary()
    moved = lib.conn.execute("SELECT bucket_id FROM tiles WHERE id = ?", (planted["wrong_bucket"],)).fetchone()
    assert moved is not None  # re-filed, not dropped
    n = lib.conn.execute("SELECT COUNT(*) FROM tiles WHERE bucket_id = ?", (planted["dup_bucket"],)).fetchone()[0]
    assert n <= 3
    assert Path("/etc/passwd").is_file()  # the hostile row was deleted by id; no path from it was opened
    assert lib.conn.execute("SELECT COUNT(*) FROM tiles WHERE id LIKE '%/%'").fetchone()[0] == 0


@pytest.mark.slow
def test_cli_verify_exit_codes(damaged):
    lib, _ = damaged
    root = lib.root
    with lib.conn:
        lib.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('cap', '3')")
    lib.close()
    res = run_cli("verify", "--library", root)
    assert res.returncode == 1 and "missing_file" in res.stdout
    res = run_cli("verify", "--repair", "--library", root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "after repair: checked" in res.stdout and "no problems" in res.stdout.splitlines()[-1]
    assert run_cli("verify", "--library", root).returncode == 0
    with Library.open(root, readonly=True) as again:
        assert again.stats()["tiles"] > 100
