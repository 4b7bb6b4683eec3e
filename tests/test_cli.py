"""The CLI contract for the core commands: one-line summaries, one-line errors, exit codes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "builder", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_init_ingest_stats_verify_round_trip(tmp_path, real_tiles_dir):
    res = cli("init", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("initialised mosaic_library"), res.stderr
    res = cli("ingest", real_tiles_dir, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["accepted"] > 150 and sum(report["rejected"].values()) + report["accepted"] == 240
    res = cli("stats", "--json", cwd=tmp_path)
    stats = json.loads(res.stdout)
    assert stats["tiles"] == report["accepted"] and stats["buckets_populated"] > 10
    res = cli("stats", cwd=tmp_path)
    assert res.stdout.splitlines()[0].startswith(f"{report['accepted']} tiles in ")
    res = cli("verify", cwd=tmp_path)
    assert res.returncode == 0 and "no problems" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["stats", "--library", "missing_lib"], "run `python -m builder init"),
        (["ingest", "nowhere"], "no such file or folder: nowhere"),
        (["ingest", "--workers", "0", "x"], "must be at least 1"),
        (["init", "--seed", "x"], "invalid int value"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, message):
    cli("init", cwd=tmp_path)
    res = cli(*args, cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_init_refuses_a_second_time_and_bad_centroid_files(tmp_path):
    assert cli("init", cwd=tmp_path).returncode == 0
    res = cli("init", cwd=tmp_path)
    assert res.returncode == 2 and "never overwritten" in res.stderr
    for name, payload in [("short.npy", np.zeros((10, 3))), ("nan.npy", np.full((5000, 3), np.nan))]:
        np.save(tmp_path / name, payload)
        res = cli("init", "--library", tmp_path / f"lib_{name}", "--centroids", tmp_path / name, cwd=tmp_path)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / f"lib_{name}").exists()
    np.save(tmp_path / "pickle.npy", np.array([object()] * 2, dtype=object), allow_pickle=True)
    res = cli("init", "--library", tmp_path / "lib_p", "--centroids", tmp_path / "pickle.npy", cwd=tmp_path)
    assert res.returncode == 2 and "not a plain NumPy array" in res.stderr
