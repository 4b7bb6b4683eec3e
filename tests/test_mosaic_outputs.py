"""A mosaic's outputs never overwrite its input and never leave debris, and the read commands
(``mosaic``, ``report``, ``query``) work on a library whose disk is really full: real processes,
real files, a real full tmpfs, SIGKILLs at moments found by polling the output folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from builder.core.layout import PNG_SIGNATURE, SAMPLE_TARGET
from tests.support.campaigns.mosaic import mosaic_campaign, output_digest, scratch_entries
from tests.support.full_disk import run_on_full_disk
from tests.support.libraries import build_earth_library


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dead_pid() -> int:
    """The pid of a process that has ended (its scratch files are a killed run's)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def small_library(library_factory) -> Path:
    return library_factory(build_earth_library, n=40, seed=4)


# ------------------------------------------------------------------------------ input is never the output


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(small_library, tmp_path, cli):
    photo = tmp_path / "photo.png"
    Image.open(SAMPLE_TARGET).convert("RGB").resize((120, 120)).save(photo)
    before = sha(photo)
    os.link(photo, tmp_path / "hardlink.png")
    (tmp_path / "symlink.png").symlink_to(photo)
    pyramid = tmp_path / "deep_files" / "0"
    pyramid.mkdir(parents=True)
    shutil.copy(photo, pyramid / "0_0.png")  # a picture inside the pyramid a .dzi output would replace
    cases = [(photo, photo), (photo, tmp_path / "hardlink.png"), (tmp_path / "symlink.png", photo),
             (pyramid / "0_0.png", tmp_path / "deep.dzi")]
    for source, output in cases:
        res = cli("mosaic", "--library", small_library, source, "--output", output, "--grid", "4x4", "--tile-size", "8")
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert lines[0] == f"error: --output {output} would overwrite the input {source}: choose another output name"
        assert sha(photo) == before and sha(pyramid / "0_0.png") == before
    assert not (tmp_path / "deep.dzi").exists() and scratch_entries(tmp_path) == []
    res = cli("mosaic", "--library", small_library, photo, "--output", tmp_path / "other.png", "--grid", "4x4",
              "--tile-size", "8")
    assert res.returncode == 0 and sha(photo) == before, res.stderr


# ------------------------------------------------------------------------------ debris of killed runs


def test_the_next_run_removes_what_killed_runs_left_and_nothing_else(small_library, tmp_path, cli):
    out = tmp_path / "out"
    source = tmp_path / "src"
    res = cli("mosaic", "--library", small_library, SAMPLE_TARGET, "--output", source / "staged.dzi", "--grid", "6x6",
              "--tile-size", "32")
    assert res.returncode == 0, res.stderr
    out.mkdir()
    gone = dead_pid()
    # A killed PNG stream, a killed run's old pyramid, and a staged Deep Zoom output killed while it
    # was being installed (its descriptor already gone from the folder): all of killed mosaics.
    (out / f".m.png.{gone}.part").write_bytes(PNG_SIGNATURE + b"\0" * 100)
    (out / f".empty.png.{gone}.part").write_bytes(b"")
    shutil.copytree(source / "staged_files", out / f".m_files.{gone}.old")
    stage = out / f".deep.dzi.{gone}.part"
    stage.mkdir()
    shutil.copytree(source / "staged_files", stage / "deep_files")
    shutil.copy(source / "staged.html", stage / "deep.html")
    shutil.copy(source / "staged.dzi", stage / "deep.dzi")
    # Not provably a mosaic's: a user's file in a scratch-like name, a folder holding a foreign file,
    # and the scratch of a process that still runs (this one).
    (out / f".notes.png.{gone}.part").write_text("my notes")
    shutil.copytree(source / "staged_files", out / f".x_files.{gone}.old")
    (out / f".x_files.{gone}.old" / "README.txt").write_text("mine")
    (out / f".live.png.{os.getpid()}.part").write_bytes(PNG_SIGNATURE)
    kept = {f".notes.png.{gone}.part", f".x_files.{gone}.old", f".live.png.{os.getpid()}.part"}

    res = cli("mosaic", "--library", small_library, SAMPLE_TARGET, "--output", out / "m.png", "--grid", "6x6",
              "--tile-size", "16")
    assert res.returncode == 0, res.stderr
    assert set(scratch_entries(out)) == kept
    assert (out / ".notes.png." f"{gone}.part").read_text() == "my notes"
    # The interrupted installation was finished: the staged output is in place, whole.
    assert output_digest(out / "deep.dzi") is not None
    assert (out / "deep.dzi").read_bytes() == (source / "staged.dzi").read_bytes()
    assert sorted(p.relative_to(out / "deep_files") for p in (out / "deep_files").rglob("*")) == \
        sorted(p.relative_to(source / "staged_files") for p in (source / "staged_files").rglob("*"))
    with Image.open(out / "m.png") as img:
        img.load()
        assert img.size == (96, 96)


@pytest.mark.slow
def test_killed_png_and_dzi_mosaics_leave_the_old_or_the_new_output_whole(earth_library, tmp_path):
    for output, triggers in ((tmp_path / "m.png", ("writing", "installed")),
                             (tmp_path / "m.dzi", ("staged", "writing"))):
        found = mosaic_campaign(earth_library, output, kills=2, seed=3, triggers=triggers)
        assert found.violations == [] and found.debris_after_next == 0, found.summary()
        assert found.kills + found.finished == 2 and found.kills >= 1, found.summary()
        assert found.old_whole + found.new_whole + found.mid_install == found.kills


# ------------------------------------------------------------------------------ a full disk


@pytest.mark.slow
def test_read_commands_work_on_a_library_whose_disk_is_full(small_library, tmp_path):
    gone = dead_pid()
    prepare = (
        "for p in (lib / '.cache').glob('mosaic_thumbs64.*'): p.unlink()  # the mosaic must decode and cache\n"
        f"(lib / '.cache' / '.mosaic_thumbs64.v2.generation.{gone}.part').write_bytes(b'')  # a killed run's\n"
    )
    out = tmp_path / "out"
    report = run_on_full_disk(small_library, tmp_path, [
        ["mosaic", "--library", "{library}", str(SAMPLE_TARGET), "--output", str(out / "m.png"), "--grid", "8x8",
         "--tile-size", "16"],
        ["mosaic", "--library", "{library}", str(SAMPLE_TARGET), "--output", str(out / "m.dzi"), "--grid", "8x8",
         "--tile-size", "16"],
        ["report", "--library", "{library}", "--output", str(out / "report")],
        ["query", "--library", "{library}", "--hex", "2e8b57", "--populated"],
        ["stats", "--library", "{library}"],
    ], prepare=prepare)
    assert report["free_before"] == 0
    for run in report["runs"]:
        assert run["returncode"] == 0, run
    png, dzi, rep, query, _stats = report["runs"]
    for run in (png, dzi):  # the cache update is skipped with one warning line; the mosaic is made
        warnings = run["stderr"].strip().splitlines()
        assert len(warnings) == 1 and "mosaic thumbnail cache" in warnings[0] and "not updated" in warnings[0]
        assert "No space left on device" in warnings[0]
    assert rep["stderr"] == "" and sum(line.startswith("  bucket_") for line in query["stdout"].splitlines()) == 5
    with Image.open(out / "m.png") as img:
        img.load()
        assert img.size == (128, 128)
    assert output_digest(out / "m.dzi") is not None and (out / "report" / "index.html").is_file()
    # Nothing half-written and no empty scratch left in .cache/; the killed run's scratch is gone.
    assert not [name for name in report["cache"] if name.endswith(".part")], report["cache"]
    assert report["free_after"] >= report["free_before"]
