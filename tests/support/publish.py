"""Publishing as a user does it: a fake token to catch leaks, a release read back in a fresh
``datasets`` process, a tiles table read as plain SQLite, a release resealed as a hostile one would be."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from builder.core import db
from tests.support.cli import cli_env

FAKE_TOKEN = "hf_fake_secret_value"


def db_rows(db_path: Path) -> dict[str, dict]:
    """Every tiles row by id, all columns."""
    conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        cur = conn.execute(f"SELECT {', '.join(db.TILE_COLUMNS)} FROM tiles")
        return {row[0]: dict(zip(db.TILE_COLUMNS, row)) for row in cur}
    finally:
        conn.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_token_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a fresh Python process: repo importable, no Hugging Face setting of
    this machine, caches in tmp_path, the fake token set so any leak of it can be detected."""
    settings = {"HF_HOME": str(tmp_path / "hf_home"), "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets_cache"),
                "HF_TOKEN": FAKE_TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1"}
    return cli_env(without=("HF_", "HUGGINGFACE_"), **{**settings, **extra})


LOAD_SCRIPT = r"""
import hashlib, json, sys
import datasets
staging, out = sys.argv[1], sys.argv[2]
ds = datasets.load_dataset(staging, split="train")
label = ds.features["label"]
first = ds[0]["image"]
raw = ds.cast_column("image", datasets.Image(decode=False))
rows = []
for row in raw:
    image = row.pop("image")
    row["image_sha256"] = hashlib.sha256(image["bytes"]).hexdigest()
    rows.append(row)
json.dump({
    "features": {k: type(v).__name__ for k, v in ds.features.items()},
    "features_dict": ds.features.to_dict(),
    "dtypes": {k: getattr(v, "dtype", None) for k, v in ds.features.items()},
    "label_names": label.names,
    "num_rows": ds.num_rows,
    "first_image": [first.size, first.mode],
    "rows": rows,
}, open(out, "w"))
"""


def load_in_fresh_process(staging: Path, tmp_path: Path) -> dict:
    """``datasets.load_dataset(staging)`` in a new interpreter; rows with image sha256s."""
    out = tmp_path / f"loaded_{staging.name}.json"
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(staging), str(out)],
        env=fake_token_env(tmp_path, HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert FAKE_TOKEN not in result.stdout + result.stderr
    return json.loads(out.read_text())


def reseal(folder: Path) -> None:
    """Rewrite a release's manifest to vouch for its files as they are now (what a hostile release would do)."""
    from builder.publish.manifest import describe

    release = json.loads((folder / "release.json").read_text())
    for name in release["files"]:
        release["files"][name] = describe(folder / name)
    (folder / "release.json").write_text(json.dumps(release))
