"""Hostile input: every case gives one line on stderr, a non-zero exit, and writes nothing.

Covered here (each a test or a parametrised case):

* images: empty, noise, HTML, truncated, GIF in disguise, a FIFO, a symlink loop, a 33 MB
  file, and PNG/JPEG/WebP headers claiming 5000x5000 to 100000x100000 (decompression bombs,
  never decoded); PNGs carrying text, an APNG frame or a payload after IEND (stored
  re-encoded, never byte for byte);
* ``tiles.db`` rows whose id, filepath or bucket try to leave the library, against every
  reader (verify, verify --repair, stats, build, query, mosaic), with an audit hook proving
  no file outside the library is ever opened;
* ``centroids.npy``: wrong shape/dtype, NaN/inf, not distinct, a pickle, a lying header,
  not NumPy at all, for ``init --centroids`` and swapped into an existing library;
* ``tiles.db``: not SQLite, empty, no ``tiles`` table, missing the card's columns, a newer
  schema, a folder; an old (card) schema is read by readers and migrated by writers;
* symlinks planted in a library (``temp/``, ``.lock``, a bucket folder, a tile);
* a read-only library folder, including one whose last writer was killed (rows in the WAL);
* a full disk (a real 8 MB tmpfs when ``mount`` works, else ENOSPC injected in every process);
* bad command-line values.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from builder.cli import main
from builder.core import db
from builder.core.decode import is_plain_png
from builder.core.layout import SHIPPED_CENTROIDS
from builder.core.library import Library
from builder.ops.ingest import ingest
from builder.ops.verify import verify_library
from tests.support.campaigns.crash import make_tile_pool, run_and_kill
from tests.support.cli import builder_argv, cli_env, run_cli
from tests.support.images import png_claiming, raw_png
from tests.support.libraries import copy_library

# ----------------------------------------------------------------------------------------- helpers


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """The CLI in this process (fast): exit code, stdout, stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, expect_code: int = 2, contains: str = "") -> None:
    assert code == expect_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    assert contains in lines[0], lines[0]


def digest(root: Path) -> dict[str, str]:
    """Every file of a folder by content; a SQLite database by its SQL dump (opening and closing
    one rewrites header bytes without changing a row), the lock file and SQLite's scratch aside."""
    skip = {".lock", "tiles.db-wal", "tiles.db-shm"}
    return {
        str(p.relative_to(root)): hashlib.sha256(_content(p)).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink() and p.name not in skip
    }


def _content(path: Path) -> bytes:
    data = path.read_bytes()
    if not data.startswith(b"SQLite format 3\0"):
        return data
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return "\n".join(conn.iterdump()).encode()
    finally:
        conn.close()


def rows(root: Path) -> list[tuple]:
    conn = sqlite3.connect(f"{(root / 'tiles.db').as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM tiles ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> list[Path]:
    return make_tile_pool(tmp_path_factory.mktemp("hostile_pool"), 60, seed=21)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, pool) -> Path:
    root = tmp_path_factory.mktemp("hostile_lib") / "mosaic_library"
    with Library.create(root) as lib:
        assert ingest(lib, pool[:40], workers=1, progress=False).accepted >= 30
    return root


@pytest.fixture
def library(pristine, tmp_path) -> Path:
    """A private copy of a real ~35-tile library that a test may damage."""
    return copy_library(pristine, tmp_path / "mosaic_library")


# ------------------------------------------------------------------------------- hostile images


def jpeg_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 80, 160)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 80, 160)).save(buf, "WEBP")
    inner = buf.getvalue()[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + inner
    return b"RIFF" + struct.pack("<I", len(body)) + body


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (256, 256)).save(buf, "GIF")
    return buf.getvalue()


HOSTILE_IMAGES = {
    # name: (how to make it, reason counted)
    "empty.png": (lambda d, p: d.write_bytes(b""), "empty"),
    "noise.png": (lambda d, p: d.write_bytes(os.urandom(5000)), "not_image"),
    "page.jpg": (lambda d, p: d.write_bytes(b"<!DOCTYPE html><html><body>503</body></html>"), "not_image"),
    "truncated.png": (lambda d, p: d.write_bytes(p.read_bytes()[:40_000]), "corrupt"),
    "gif_in_disguise.png": (lambda d, p: d.write_bytes(gif_bytes()), "not_image"),
    "bomb_100000.png": (lambda d, p: d.write_bytes(png_claiming(100_000, 100_000)), "too_large"),
    "bomb_5000.png": (lambda d, p: d.write_bytes(png_claiming(5000, 5000)), "too_large"),
    "bomb_65000.jpg": (lambda d, p: d.write_bytes(jpeg_claiming(65_000, 65_000)), "too_large"),
    "bomb_100000.webp": (lambda d, p: d.write_bytes(webp_claiming(100_000, 100_000)), "too_large"),
    "fifo.png": (lambda d, p: os.mkfifo(d), "not_a_file"),
    "loop.png": (lambda d, p: d.symlink_to(d.name), "unreadable"),
    "huge_33mb.png": (lambda d, p: (d.write_bytes(p.read_bytes()), os.truncate(d, 33 * 1024 * 1024)), "too_large"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_IMAGES))
def test_hostile_image_gives_one_line_exit_1_and_stores_nothing(library, tmp_path, pool, name):
    make, reason = HOSTILE_IMAGES[name]
    folder = tmp_path / "in"
    folder.mkdir()
    make(folder / name, pool[-1])
    before = digest(library)
    res = run_cli("ingest", "--library", library, folder, timeout=60)
    assert_one_line_error(res.returncode, res.stderr, 1, f"1 of 1 inputs unusable ({reason} 1); first {reason}: ")
    assert name in res.stderr
    assert res.stdout.startswith("ingest: 0 accepted, 1 rejected")
    assert digest(library) == before
    assert list((library / "temp").iterdir()) == []


def test_good_tiles_beside_bad_ones_are_stored_and_the_exit_says_some_were_unusable(library, tmp_path, pool):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in pool[40:46]:
        shutil.copy(p, folder)
    (folder / "zz_bomb.png").write_bytes(png_claiming(100_000, 100_000))
    res = run_cli("ingest", "--library", library, folder, timeout=120)
    assert_one_line_error(res.returncode, res.stderr, 1, "1 of 7 inputs unusable (too_large 1)")
    assert res.stdout.startswith("ingest: 6 accepted")


def _apng(first: Image.Image, hidden: Image.Image) -> bytes:
    buf = io.BytesIO()
    first.save(buf, "PNG", save_all=True, append_images=[hidden])
    return buf.getvalue()


def _with_text(img: Image.Image, text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text)
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_png_payloads_never_ride_into_the_library(library, tmp_path, pool):
    """Text chunks, APNG frames and bytes after IEND are dropped: such PNGs are re-encoded."""
    imgs = [Image.open(p).convert("RGB") for p in pool[50:53]]
    secret = b"hf_" + b"S3cretPayload" * 3
    hidden = Image.fromarray(np.full((256, 256, 3), 7, np.uint8))
    payloads = {
        "apng.png": _apng(imgs[0], hidden),
        "text.png": _with_text(imgs[1], secret.decode()),
        "appended.png": raw_png(np.asarray(imgs[2])) + b"PK\x03\x04" + secret,
    }
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in payloads.items():
        (folder / name).write_bytes(data)
    before = {r[0] for r in rows(library)}
    res = run_cli("ingest", "--library", library, "--json", folder, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["accepted"] == 3
    new = [r for r in rows(library) if r[0] not in before]
    assert len(new) == 3
    stored = {tuple(np.asarray(Image.open(library / f"bucket_{r[1]:04d}" / f"{r[0]}.png")).ravel()[:64]): r for r in new}
    for img in imgs:
        assert tuple(np.asarray(img).ravel()[:64]) in stored  # same pixels (the first frame)...
    for r in new:
        data = (library / f"bucket_{r[1]:04d}" / f"{r[0]}.png").read_bytes()
        assert is_plain_png(data) and secret not in data and b"acTL" not in data  # ...and nothing else


# ------------------------------------------------------------------ rows that try to leave the library

AUDIT = textwrap.dedent("""
    import os, sys
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)):
            os.write(fd, os.fsencode(args[0]) + b"\\n")
    sys.addaudithook(hook)
    from builder.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def audited(log: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI with an audit hook logging every file the process (and its forks) opens."""
    return subprocess.run([sys.executable, "-c", AUDIT, str(log), *map(str, args)], capture_output=True, text=True,
                          env=cli_env(), cwd=cwd, timeout=300)


def opened_outside(log: Path, outside: Path) -> list[str]:
    paths = log.read_bytes().decode(errors="replace").splitlines() if log.exists() else []
    return [p for p in paths if "outside" in p or Path(p).resolve().is_relative_to(outside)]


@pytest.fixture
def hostile_rows(library, tmp_path):
    """Rows pointing out of the library at a real PNG (a private picture, say) next to it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    Image.fromarray(np.full((256, 256, 3), (250, 10, 200), np.uint8)).save(secret)
    conn = sqlite3.connect(library / "tiles.db")
    with conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM tiles ORDER BY id LIMIT 4")]
        conn.execute("UPDATE tiles SET filepath = '../outside/secret.png' WHERE id = ?", (ids[0],))
        conn.execute("UPDATE tiles SET filepath = ? WHERE id = ?", (str(secret), ids[1]))
        conn.execute("UPDATE tiles SET bucket_id = '../outside' WHERE id = ?", (ids[2],))
        conn.execute("UPDATE tiles SET bucket_id = -1 WHERE id = ?", (ids[3],))
        for hostile_id in ("../outside/secret", str(outside / "secret"), "../../outside/secret.png"):
            conn.execute(
                "INSERT INTO tiles (id, bucket_id, filepath, phash, mean_l, mean_a, mean_b) "
                "SELECT ?, bucket_id, ?, phash, mean_l, mean_a, mean_b FROM tiles WHERE id = ?",
                (hostile_id, str(secret), ids[0]),
            )
    conn.close()
    return library, outside, secret.read_bytes()


READERS = {
    "verify": (["verify"], 1),
    "verify --quick --json": (["verify", "--quick", "--json"], 1),
    "stats": (["stats", "--json"], 0),
    "query": (["query", "--hex", "fa0ac8", "-k", "3", "--json"], 0),
    "build": (["build", "--output", "{tmp}/staging"], 2),
    "mosaic": (["mosaic", "{target}", "--output", "{tmp}/mosaic.png", "--grid", "4x4", "--tile-size", "8"], None),
    "verify --repair": (["verify", "--repair"], 0),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_rows_escaping_the_library_are_never_followed(hostile_rows, tmp_path, pool, reader):
    library, outside, secret = hostile_rows
    args, expect = READERS[reader]
    args = [a.format(tmp=tmp_path, target=pool[0]) for a in args]
    log = tmp_path / "opened.log"
    res = audited(log, args[0], "--library", library, *args[1:], cwd=tmp_path)
    assert opened_outside(log, outside) == [], res.stderr
    assert str(library) in log.read_text()  # the hook saw this process's opens
    assert (outside / "secret.png").read_bytes() == secret
    assert "Traceback" not in res.stderr, res.stderr
    if expect is not None:
        assert res.returncode == expect, res.stdout + res.stderr
    if reader == "build":
        assert_one_line_error(res.returncode, res.stderr, 2)
        assert "bucket_id outside 0..4999" in res.stderr or "not a uuid4 string" in res.stderr
    elif reader == "verify":
        assert "unsafe_row" in res.stdout and "filepath_mismatch" in res.stdout
    elif reader == "verify --repair":
        assert res.stdout.splitlines()[-1].endswith("no problems")
        assert all("outside" not in str(r[0]) and "outside" not in str(r[2]) for r in rows(library))
    elif reader == "mosaic":
        assert res.returncode in (0, 2) and len(res.stderr.strip().splitlines()) <= 1, res.stderr
    for staged in tmp_path.rglob("*.parquet"):
        assert secret not in staged.read_bytes()


# -------------------------------------------------------------------------------- centroids files


def _npy(path: Path, array: np.ndarray, allow_pickle: bool = False) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=allow_pickle)


def _lying_header(path: Path) -> None:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 3)})
        fh.write(b"\0" * 64)


GOOD = np.load(SHIPPED_CENTROIDS)
BAD_CENTROIDS = {
    "shape_5000x4": lambda p: _npy(p, np.zeros((5000, 4))),
    "shape_4999x3": lambda p: _npy(p, GOOD[:-1]),
    "nan": lambda p: _npy(p, np.where(np.arange(5000)[:, None] == 7, np.nan, GOOD)),
    "inf": lambda p: _npy(p, np.where(np.arange(5000)[:, None] == 9, np.inf, GOOD)),
    "not_distinct": lambda p: _npy(p, np.concatenate([GOOD[:4999], GOOD[:1]])),
    "strings": lambda p: _npy(p, GOOD.astype(str)),
    "pickle": lambda p: _npy(p, np.array([{"__reduce__": "os.system"}] * 15000, dtype=object).reshape(5000, 3), True),
    "lying_header": _lying_header,
    "not_numpy": lambda p: p.write_bytes(os.urandom(4096)),
    "npz": lambda p: np.savez(p.with_suffix(""), GOOD) or p.with_suffix(".npz").rename(p),
    "empty": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("kind", sorted(BAD_CENTROIDS))
def test_init_refuses_a_bad_centroids_file(tmp_path, capsys, kind):
    bad = tmp_path / "centroids.npy"
    BAD_CENTROIDS[kind](bad)
    code, out, err = run_main(["init", "--library", tmp_path / "lib", "--centroids", bad], capsys)
    assert_one_line_error(code, err, 2, str(bad))
    assert out == "" and not (tmp_path / "lib").exists()


SWAPS = {**{k: BAD_CENTROIDS[k] for k in ("shape_4999x3", "nan", "pickle", "not_numpy", "lying_header")},
         "valid_but_other": lambda p: _npy(p, GOOD[::-1].copy()),
         "deleted": lambda p: p.unlink()}


@pytest.mark.parametrize("kind", sorted(SWAPS))
def test_a_swapped_centroids_file_stops_every_command(library, tmp_path, capsys, pool, kind):
    SWAPS[kind](library / "centroids.npy")
    before = digest(library)
    for argv in (["stats"], ["verify"], ["ingest", pool[55]], ["query", "--hex", "336699"],
                 ["build", "--output", tmp_path / "staging"]):
        code, out, err = run_main([argv[0], "--library", library, *argv[1:]], capsys)
        assert_one_line_error(code, err, 2, "centroids.npy")
        assert digest(library) == before, argv
    assert not (tmp_path / "staging").exists()


# --------------------------------------------------------------------------------- tiles.db files


def _sql(db: Path, script: str) -> None:
    conn = sqlite3.connect(db)
    conn.executescript(script)
    conn.close()


BAD_DBS = {
    "not_sqlite": (lambda db: db.write_bytes(os.urandom(8192)), "not a usable SQLite database"),
    "text_file": (lambda db: db.write_text("id,bucket_id\n1,2\n" * 100), "not a usable SQLite database"),
    "empty": (lambda db: db.write_bytes(b""), "no 'tiles' table"),
    "no_tiles_table": (lambda db: (db.unlink(), _sql(db, "CREATE TABLE other (x);")), "no 'tiles' table"),
    "lacks_card_columns": (lambda db: (db.unlink(), _sql(db, "CREATE TABLE tiles (id TEXT, bucket_id INTEGER);")),
                           "lacks the card's columns"),
    "a_folder": (lambda db: (db.unlink(), db.mkdir()), "has no tiles.db"),
}


@pytest.mark.parametrize("kind", sorted(BAD_DBS))
def test_a_bad_tiles_db_gives_one_line_for_every_command(library, tmp_path, capsys, pool, kind):
    make, message = BAD_DBS[kind]
    make(library / "tiles.db")
    for suffix in ("-wal", "-shm"):
        (library / f"tiles.db{suffix}").unlink(missing_ok=True)
    before = digest(library)
    for argv in (["stats"], ["verify"], ["verify", "--repair"], ["ingest", pool[55]], ["query", "--hex", "336699"],
                 ["build", "--output", tmp_path / "staging"]):
        code, out, err = run_main([argv[0], "--library", library, *argv[1:]], capsys)
        assert_one_line_error(code, err, 2)
        assert message in err or "tiles.db" in err, (argv, err)
        assert digest(library) == before, argv


def test_a_newer_schema_is_read_but_never_written(library, capsys, pool):
    _sql(library / "tiles.db", "PRAGMA user_version = 99;")
    code, out, err = run_main(["stats", "--library", library], capsys)
    assert code == 0 and " tiles in " in out, err
    before = digest(library)
    code, out, err = run_main(["ingest", "--library", library, pool[55]], capsys)
    assert_one_line_error(code, err, 2, "newer than this builder's")
    assert digest(library) == before


def test_an_old_card_schema_is_read_by_readers_and_migrated_by_writers(library, capsys, pool):
    n = len(rows(library))
    _sql(library / "tiles.db", """
        CREATE TABLE old AS SELECT id, bucket_id, filepath, phash, mean_l, mean_a, mean_b FROM tiles;
        DROP TABLE tiles; DROP TABLE fetched; DROP TABLE meta; ALTER TABLE old RENAME TO tiles;
        CREATE INDEX idx_bucket ON tiles(bucket_id); CREATE INDEX idx_phash ON tiles(bucket_id, phash);
        PRAGMA user_version = 0;
    """)
    for argv in (["stats"], ["stats", "--json"], ["verify"], ["query", "--hex", "336699"]):
        code, out, err = run_main([argv[0], "--library", library, *argv[1:]], capsys)
        assert code == 0 and "Traceback" not in err, (argv, err)
    assert len(rows(library)[0]) == 7  # readers never migrate
    code, out, err = run_main(["ingest", "--library", library, pool[56]], capsys)
    assert code == 0, err
    assert len(rows(library)[0]) == len(db.TILE_COLUMNS) and len(rows(library)) == n + 1
    with Library.open(library, readonly=True) as lib:
        assert verify_library(lib).ok


# ------------------------------------------------------------------------------- planted symlinks


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim_home"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("precious")
    (victim / "sub" / "a.txt").write_text("also precious")
    Image.fromarray(np.full((256, 256, 3), 90, np.uint8)).save(victim / f"{uuid.uuid4()}.png")
    return victim


def test_a_temp_symlink_is_never_emptied(library, tmp_path, capsys, pool):
    victim = _victim(tmp_path)
    before = digest(victim)
    shutil.rmtree(library / "temp")
    (library / "temp").symlink_to(victim, target_is_directory=True)
    for argv in (["ingest", pool[55]], ["verify", "--repair"], ["harvest", "--source", "earth", "--zoom", "3",
                                                               "--max-tiles", "2"]):
        code, out, err = run_main([argv[0], "--library", library, *argv[1:]], capsys)
        assert_one_line_error(code, err, 2, "is a symlink")
    assert digest(victim) == before
    code, out, err = run_main(["verify", "--library", library], capsys)
    assert code == 1 and "unsafe_path" in out


def test_a_lock_symlink_is_never_written_through(library, tmp_path, capsys, pool):
    victim = _victim(tmp_path)
    before = digest(victim)
    (library / ".lock").unlink(missing_ok=True)
    (library / ".lock").symlink_to(victim / "notes.txt")
    code, out, err = run_main(["ingest", "--library", library, pool[55]], capsys)
    assert_one_line_error(code, err, 2, ".lock is a symlink")
    assert digest(victim) == before


def test_a_bucket_symlink_is_reported_and_never_written_through(library, tmp_path, capsys, pool):
    victim = _victim(tmp_path)
    before = digest(victim)
    (library / "bucket_4999").symlink_to(victim, target_is_directory=True)
    code, out, err = run_main(["verify", "--library", library], capsys)
    assert code == 1 and "unsafe_path" in out and "orphan_file" not in out, out
    for argv in (["verify", "--repair"], ["ingest", pool[55]]):  # writers: never through it
        code, out, err = run_main([argv[0], "--library", library, *argv[1:]], capsys)
        assert_one_line_error(code, err, 2, "bucket_4999 is a symlink: refusing to write through it")
    assert digest(victim) == before


def test_a_tile_that_is_a_symlink_is_never_read(library, tmp_path, capsys):
    victim = _victim(tmp_path)
    private = next(victim.glob("*.png"))
    tile_id, bucket = rows(library)[0][:2]
    tile = library / f"bucket_{bucket:04d}" / f"{tile_id}.png"
    tile.unlink()
    tile.symlink_to(private)
    code, out, err = run_main(["verify", "--library", library], capsys)
    assert code == 1 and "bad_image" in out and "a symlink" in out, out
    code, out, err = run_main(["build", "--library", library, "--output", tmp_path / "staging"], capsys)
    assert_one_line_error(code, err, 2, tile_id)
    assert "symbolic link" in err or "resolves outside the library" in err
    code, out, err = run_main(["verify", "--repair", "--library", library], capsys)
    assert code == 0, out + err
    assert private.is_file() and not tile.exists()


def test_init_refuses_a_folder_holding_other_files(tmp_path, capsys):
    victim = _victim(tmp_path)
    before = digest(victim)
    code, out, err = run_main(["init", "--library", victim], capsys)
    assert_one_line_error(code, err, 2, "refusing to initialise")
    assert digest(victim) == before and not (victim / "tiles.db").exists()


# -------------------------------------------------------------------------------- read-only folder


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop root for this test"
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.mark.slow
def test_read_only_library_readers_work_writers_get_one_line(pool):
    """Extends tests/test_library.py's read-only test (ingest, stats) to every other command,
    on a library whose last writer was SIGKILLed: its last commits are still in the WAL."""
    base = Path(tempfile.mkdtemp(prefix="mosaic_ro_"))  # /tmp/pytest-of-root is 0700: nobody can't enter it
    os.chmod(base, 0o755)
    root = base / "mosaic_library"
    try:
        Library.create(root).close()
        cmd = builder_argv("ingest", "--library", root, "--workers", "2", *pool)
        import random

        killed, *_ = run_and_kill(cmd, root, "commit", random.Random(1), 30.0, base / "log")
        assert killed
        committed = len(rows(root))
        assert committed > 0 and (root / "tiles.db-wal").stat().st_size > 0
        for p in [root, *root.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, 0o555 if p.is_dir() else 0o444)
        env = {**cli_env(), "HOME": str(base)}
        nobody = _as_nobody()
        res = run_cli("stats", "--library", root, "--json", env=env, prefix=nobody, cwd="/", timeout=120)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["tiles"] == committed  # rows still in the WAL are not hidden
        res = run_cli("verify", "--library", root, "--quick", env=env, prefix=nobody, cwd="/", timeout=120)
        assert res.returncode in (0, 1) and f"checked {committed} rows" in res.stdout, res.stderr
        for args, message in ((["verify", "--repair"], "read-only"), (["ingest", str(pool[0])], "read-only"),
                              (["harvest", "--source", "earth", "--zoom", "3", "--max-tiles", "2"], "read-only"),
                              (["init"], "already initialised")):
            res = run_cli(args[0], "--library", root, *args[1:], env=env, prefix=nobody, cwd="/", timeout=120)
            assert_one_line_error(res.returncode, res.stderr, 2, message)
        # Without the -shm the WAL cannot be read in a read-only folder: a clear error, never stale rows.
        os.chmod(root, 0o755)
        shutil.copy(root / "tiles.db-shm", base / "shm")
        (root / "tiles.db-shm").unlink()
        os.chmod(root, 0o555)
        res = run_cli("stats", "--library", root, env=env, prefix=nobody, cwd="/", timeout=120)
        assert_one_line_error(res.returncode, res.stderr, 2, "committed changes still in tiles.db-wal")
    finally:
        for p in [base, *base.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, 0o755)
        shutil.rmtree(base)


# ------------------------------------------------------------------------------------- full disk

SITECUSTOMIZE = textwrap.dedent('''
    """ENOSPC after a byte budget for files written under MOSAIC_FULL_DISK (tests only)."""
    import builtins, errno, io, os
    _root = os.environ["MOSAIC_FULL_DISK"]
    _budget = [int(os.environ["MOSAIC_FULL_DISK_BYTES"])]
    _open = io.open

    class _Full:
        def __init__(self, fh, path):
            self._fh, self._path = fh, path
        def write(self, data):
            _budget[0] -= len(data)
            if _budget[0] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)
            return self._fh.write(data)
        def __getattr__(self, name):
            return getattr(self._fh, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self._fh.close()

    def _patched(file, mode="r", *args, **kwargs):
        fh = _open(file, mode, *args, **kwargs)
        if any(m in mode for m in "wax") and str(os.fspath(file)).startswith(_root):
            return _Full(fh, os.fspath(file))
        return fh

    builtins.open = io.open = _patched
''')


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB filesystem (tmpfs) when this process may mount one, else ENOSPC injected
    into every Python-level write under the folder after 3 MB per process (SQLite's own
    writes cannot be reached that way).  ``MOSAIC_TEST_NO_MOUNT=1`` forces the second.

    Yields ``(folder, env, mounted)``: run the CLI with ``env`` and the library under ``folder``.
    """
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = not os.environ.get("MOSAIC_TEST_NO_MOUNT") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    env = cli_env()
    if not mounted:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env.update(PYTHONPATH=f"{site}{os.pathsep}{env['PYTHONPATH']}", MOSAIC_FULL_DISK=str(folder),
                   MOSAIC_FULL_DISK_BYTES=str(3 * 1024 * 1024))
    print("full disk:", "tmpfs 8 MB" if mounted else "injected ENOSPC after 3 MB per process")
    try:
        yield folder, env, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def assert_nothing_half_written(root: Path, expected_rows: int) -> None:
    assert list((root / "temp").iterdir()) == []  # emptied when the failed run closed the library
    assert len(rows(root)) == expected_rows
    with Library.open(root, readonly=True) as lib:
        report = verify_library(lib, deep=True)
    assert report.ok, report.summary()  # no row without file, no file without row


def test_a_full_disk_gives_one_line_and_leaves_nothing_half_written(small_disk, pool):
    folder, env, _mounted = small_disk
    root = folder / "mosaic_library"
    res = run_cli("init", "--library", root, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    res = run_cli("ingest", "--library", root, "--workers", "2", *pool[:12], env=env, timeout=120)  # ~2.4 MB: fits
    assert res.returncode == 0, res.stderr
    stored = len(rows(root))
    assert stored >= 10
    res = run_cli("ingest", "--library", root, "--workers", "2", *pool[12:60], env=env, timeout=120)  # ~9.5 MB: does not
    assert_one_line_error(res.returncode, res.stderr, 2, "No space left on device")
    assert_nothing_half_written(root, stored)
    # Make room and the same ingest goes through.
    with Library.open(root) as lib:
        for tile_id, bucket in lib.conn.execute("SELECT id, bucket_id FROM tiles LIMIT 5").fetchall():
            with lib.conn:
                lib.conn.execute("DELETE FROM tiles WHERE id = ?", (tile_id,))
            lib.tile_path(bucket, tile_id).unlink()
    res = run_cli("ingest", "--library", root, "--workers", "2", *pool[12:18], env=env, timeout=120)
    assert res.returncode == 0, res.stderr


def _gradients(folder: Path, n: int = 40) -> list[Path]:
    """Distinct smooth 256x256 tiles: a few KB each as PNG, so a nearly full disk takes them."""
    folder.mkdir()
    ramp = np.linspace(0, 255, 256)
    paths = []
    for i in range(n):
        angle = np.deg2rad(i * 9)
        plane = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
        arr = np.stack([(plane * (0.3 + i / 80)) % 256, np.full((256, 256), 40 + i * 5), 255 - plane % 256], -1)
        paths.append(folder / f"g{i:02d}.png")
        Image.fromarray(arr.astype(np.uint8)).save(paths[-1])
    return paths


def test_a_full_disk_at_commit_time_is_rolled_back(small_disk, tmp_path):
    """The tiles fit, SQLite's commit does not ("database or disk is full"): the batch's files
    go back out of the buckets, one line is printed, and a second verify is clean."""
    folder, env, mounted = small_disk
    root = folder / "mosaic_library"
    tiles = _gradients(tmp_path / "gradients")
    needed = sum(-(-p.stat().st_size // 4096) * 4096 for p in tiles)  # tmpfs allocates 4 KB pages

    def attempt(extra: int) -> subprocess.CompletedProcess:
        """A fresh library on a disk with room for the tiles plus ``extra`` bytes."""
        shutil.rmtree(root, ignore_errors=True)
        (folder / "filler").unlink(missing_ok=True)
        assert run_cli("init", "--library", root, env=env, timeout=120).returncode == 0
        stat = os.statvfs(folder)
        with open(folder / "filler", "wb") as fh:
            fh.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - needed - extra))
        return run_cli("ingest", "--library", root, "--workers", "2", *tiles, env=env, timeout=120)

    if not mounted:  # injected ENOSPC reaches Python's writes only: the worker's temp files
        assert run_cli("init", "--library", root, env=env, timeout=120).returncode == 0
        res = run_cli("ingest", "--library", root, "--workers", "2", *tiles,
                  env={**env, "MOSAIC_FULL_DISK_BYTES": str(needed // 4)}, timeout=120)
        assert_one_line_error(res.returncode, res.stderr, 2, "No space left on device")
        assert_nothing_half_written(root, 0)
        return
    seen = {}
    extra = 48 * 1024
    for _ in range(8):  # find the room where the PNGs fit and the WAL's pages do not
        res = attempt(extra)
        if res.returncode == 0:
            extra -= 16 * 1024
            continue
        assert_one_line_error(res.returncode, res.stderr, 2)
        assert_nothing_half_written(root, 0)
        assert list(root.glob("bucket_*/*.png")) == []  # renames undone
        if "database or disk is full" in res.stderr:
            break
        seen[extra] = res.stderr
        extra += 8 * 1024
    assert "error: SQLite: database or disk is full" in res.stderr, seen


# --------------------------------------------------------------------------- bad command-line values


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "--workers", "-3", "x.png"], "must be at least 1, got -3"),
        (["ingest", "--workers", "two", "x.png"], "not an integer: 'two'"),
        (["init", "--cap", "0"], "bucket cap must be at least 1, got 0"),
        (["init", "--cap", "-5"], "bucket cap must be at least 1, got -5"),
        (["init", "--seed", "-1"], "seed must be between 0 and 2**32 - 1, got -1"),
        (["init", "--seed", "4294967296"], "got 4294967296"),
        (["init", "--seed", "1", "--centroids", "c.npy"], "not allowed with argument"),
        (["stats", "--library", "FILE"], "is not a folder"),
        (["verify", "--library", "FILE"], "is not a folder"),
        (["ingest", "--library", "FILE", "x.png"], "is not a folder"),
        (["init", "--library", "FILE"], "exists and is not a folder"),
        (["harvest", "--zoom", "40"], "--zoom 40 is out of range"),
        (["harvest", "--threads", "-4"], "--threads must be an integer >= 1, got -4"),
        (["harvest", "--plan", "PLAN_MIN_GT_MAX"], "lon_min 20.0 must be less than lon_max 10.0"),
        (["harvest", "--source", "gopher://tiles/{z}/{x}/{y}"], "gopher"),
        (["harvest", "--source", "FILE"], "FILE"),
        (["query", "--rgb", "300", "0", "0"], "300"),
        (["query", "--hex", "zzzzzz"], "zzzzzz"),
        (["query", "--lab", "50", "nan", "0"], "nan"),
        (["mosaic", "FILE", "--output", "out.png", "--grid", "0x5"], "0x5"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(library, tmp_path, capsys, argv, message):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a library")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"name": "p", "regions": [{"name": "r", "bbox": [20, 0, 10, 5], "weight": 1}]}))
    subst = {"FILE": str(a_file), "PLAN_MIN_GT_MAX": str(plan), "x.png": str(tmp_path / "x.png")}
    argv = [subst.get(a, a) for a in argv]
    message = message.replace("FILE", str(a_file))
    if "--library" not in argv:
        argv[1:1] = ["--library", str(library) if argv[0] != "init" else str(tmp_path / "new_lib")]
    before = digest(library)
    code, out, err = run_main(argv, capsys)
    assert_one_line_error(code, err, 2, message)
    assert out == ""
    assert digest(library) == before


def test_a_16_bit_greyscale_png_keeps_its_grey_level(library, tmp_path):
    """Pillow's convert("RGB") clips 16-bit grey to white: such a tile would land in the white bucket."""
    rng = np.random.default_rng(5)
    grey16 = (rng.integers(0x3000, 0x5000, (256, 256))).astype(np.uint16)  # high bytes 48..79
    path = tmp_path / "grey16.png"
    Image.fromarray(grey16).save(path)
    assert Image.open(path).mode.startswith("I")
    before = {r[0] for r in rows(library)}
    res = run_cli("ingest", "--library", library, path, timeout=120)
    assert res.returncode == 0, res.stderr
    (new,) = [r for r in rows(library) if r[0] not in before]
    stored = np.asarray(Image.open(library / f"bucket_{new[1]:04d}" / f"{new[0]}.png"))
    assert stored.shape == (256, 256, 3) and np.array_equal(stored[..., 0], (grey16 >> 8).astype(np.uint8))
