"""Secrets: the Hub token (and a token in a tile source's URL) never appears in anything the
builder prints, logs with ``-v``, writes into the library, the staging folder, the card, the
caches, or uploads.

One session, every command a user runs, each in a fresh process with ``HF_TOKEN`` set and
``-v``; the source URL carries its own ``access_token`` and the server answers with faults so
retries and their log lines happen.  Then every byte written under the test's folder, and
every file the (local) Hub received, is searched for both secrets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.campaigns.crash import make_tile_pool
from tests.support.cli import cli_env, run_cli
from tests.support.localhub import LocalHub
from tests.support.tileserver import Rates, TileServer, distinct_tile

# Every command in a fresh process, with a faulty tile server and the local Hub: about half a minute.
pytestmark = pytest.mark.slow

HUB_TOKEN = "hf_" + "Kq7Zp2Lm9Xv4" * 3
URL_TOKEN = "urlsecret" + "Tz8Wq3" * 4


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: every cache and home under tmp_path, so it is searched too."""
    settings = {"HF_TOKEN": HUB_TOKEN, "HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf_home"),
                "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache"), "XDG_CACHE_HOME": str(tmp_path / "xdg_cache"),
                "MPLCONFIGDIR": str(tmp_path / "mpl"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return cli_env(without=("HF_", "HUGGINGFACE_"), **{**settings, **extra})


def leaks(text: str) -> list[str]:
    return [name for name, secret in (("HF_TOKEN", HUB_TOKEN), ("URL token", URL_TOKEN)) if secret in text]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Every command, -v, HF_TOKEN set; returns (base folder, {command: result}, faults served,
    the local Hub's requests, the files it holds)."""
    base = tmp_path_factory.mktemp("secrets")
    (base / "home").mkdir()
    pool = make_tile_pool(base / "tiles", 40, seed=8)
    lib, staging = base / "mosaic_library", base / "staging"
    results = {}
    faults = Rates({"503": 0.15, "429": 0.1, "reset": 0.05}, seed=3, max_per_tile=1)
    # the Hub keeps its repos under base too, so the search of every written file covers them
    with TileServer(distinct_tile, faults=faults, lifetime=600) as server, LocalHub(base / "hub", token=HUB_TOKEN) as hub:
        env = env_for(base, **hub.env(token=False))
        source = f"{server.tile_template}?access_token={URL_TOKEN}"
        commands = {
            "init": ["init", "--library", lib],
            "ingest": ["ingest", "--library", lib, base / "tiles"],
            "harvest": ["harvest", "--library", lib, "--source", source, "--zoom", "12", "--max-tiles", "25",
                        "--threads", "4", "--batch", "10", "--seed", "1"],
            "stats": ["stats", "--library", lib],
            "verify": ["verify", "--library", lib],
            "query": ["query", "--library", lib, "--hex", "336699", "--populated"],
            "mosaic": ["mosaic", pool[0], "--library", lib, "--output", base / "mosaic.png", "--grid", "6x6"],
            "build": ["build", "--library", lib, "--output", staging],
            "push --dry-run": ["push", "--library", lib, "--output", staging, "--repo-id", "alice/mosaic", "--dry-run"],
            "push": ["push", "--library", lib, "--output", staging, "--repo-id", "alice/mosaic"],
            "restore": ["restore", staging, "--library", base / "restored"],
        }
        for name, args in commands.items():
            results[name] = run_cli("-v", *args, cwd=base, env=env, timeout=600)
        faults_served = server.outcome_counts()
        requests = hub.requests
        uploaded = hub.files("alice/mosaic")
    return base, results, faults_served, requests, uploaded


def test_every_command_ran(session):
    _base, results, faults_served, requests, uploaded = session
    for name, res in results.items():
        assert res.returncode == 0, f"{name}: {res.stdout[-500:]} {res.stderr[-2000:]}"
    assert sum(n for kind, n in faults_served.items() if kind != "ok") > 0  # retries were logged
    assert "README.md" in uploaded and any(p.endswith(".parquet") for p in uploaded)
    # the token was sent to the Hub and accepted, and never sent to LFS storage
    assert any(r.method == "POST" and r.path.endswith("/commit/main") and r.auth == "valid" for r in requests)
    assert all(r.auth == "valid" for r in requests if r.origin == "hub")
    assert any(r.origin == "cdn" for r in requests) and all(r.auth == "none" for r in requests if r.origin == "cdn")


@pytest.mark.parametrize("command", ["init", "ingest", "harvest", "stats", "verify", "query", "mosaic", "build",
                                     "push --dry-run", "push", "restore"])
def test_nothing_printed_or_logged_holds_a_secret(session, command):
    _base, results, *_ = session
    res = results[command]
    assert leaks(res.stdout) == [] and leaks(res.stderr) == [], res.stdout[-300:] + res.stderr[-1000:]


def test_no_file_written_anywhere_holds_a_secret(session):
    base, *_ = session
    written = [p for p in base.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(written) > 100
    assert any(p.name == "README.md" for p in written) and (base / "staging" / "tiles.db").is_file()
    found = [(str(p.relative_to(base)), leak) for p in written
             for leak in leaks(p.read_bytes().decode("latin-1"))]
    assert found == []


def test_nothing_uploaded_holds_a_secret(session):
    _base, _results, _faults, _requests, uploaded = session
    assert [(path, leak) for path, data in uploaded.items() for leak in leaks(data.decode("latin-1"))] == []
