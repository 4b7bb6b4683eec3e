"""Synthetic tiles in the published dataset: the ``default`` config stays real tiles only (the very
bytes of a library without synthetic tiles), the ``synthetic`` config holds them with
``derived_from``, the card says so, and ``restore`` brings both back."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from builder.core.library import Library
from builder.ops.synthesize import synthesize
from builder.publish import build_staging
from mosaic_library import MosaicLibrary
from tests.support.libraries import build_published_library, copy_library
from tests.support.publish import db_rows


@pytest.fixture(scope="module")
def libraries(library_factory, tmp_path_factory) -> tuple[Path, Path]:
    """The same real library twice: as it is, and with synthetic tiles for 30 empty buckets."""
    real = library_factory(build_published_library, n_ingest=30, n_harvest=8)
    mixed = copy_library(real, tmp_path_factory.mktemp("synthds") / "mixed" / "mosaic_library")
    with Library.open(mixed) as lib:
        empty = [int(b) for b in np.flatnonzero(lib.bucket_counts() == 0)]
        report = synthesize(lib, max_uses=2, buckets=empty[::150][:30], progress=False)
    assert report.made == 30 and report.flat < 30
    return real, mixed


@pytest.fixture(scope="module")
def stagings(libraries, tmp_path_factory) -> tuple[Path, Path]:
    real, mixed = libraries
    out = tmp_path_factory.mktemp("synthstaging")
    return build_staging(real, out / "real").output, build_staging(mixed, out / "mixed").output


def _load(staging: Path, tmp_path: Path, *config: str) -> datasets.Dataset:
    """``load_dataset(staging[, config])`` with a cache of its own (nothing served from another run's)."""
    return datasets.load_dataset(str(staging), *config, split="train", cache_dir=str(tmp_path / "hf_cache"))


def test_default_config_is_real_tiles_only_byte_for_byte(stagings):
    real, mixed = stagings
    files = sorted(p.relative_to(real) for p in (real / "data").iterdir())
    assert files == sorted(p.relative_to(mixed) for p in (mixed / "data").iterdir())
    for name in files:
        assert (real / name).read_bytes() == (mixed / name).read_bytes(), name
    assert not (real / "synthetic").exists()
    assert sorted(p.name for p in (mixed / "synthetic").iterdir()) == ["train-00000-of-00001.parquet"]


def test_load_dataset_gives_real_by_default_and_synthetic_by_name(stagings, libraries, tmp_path):
    _real, mixed_staging = stagings
    rows = db_rows(libraries[1] / "tiles.db")
    real_ids = {i for i, r in rows.items() if r["synthetic"] == 0}
    synthetic_ids = {i for i, r in rows.items() if r["synthetic"] == 1}
    default = _load(mixed_staging, tmp_path)
    assert set(default["id"]) == real_ids and "derived_from" not in default.features
    synthetic = _load(mixed_staging, tmp_path, "synthetic")
    assert set(synthetic["id"]) == synthetic_ids and len(synthetic_ids) == 30
    assert synthetic.features["label"].num_classes == 5000
    for row in synthetic.select_columns(["id", "label", "derived_from", "source"]):
        assert row["derived_from"] == rows[row["id"]]["derived_from"]
        assert row["derived_from"] is None or row["derived_from"] in real_ids
        assert row["label"] == rows[row["id"]]["bucket_id"] and row["source"] == "synthetic"


def test_the_builder_script_has_a_synthetic_config(libraries, tmp_path):
    _real, mixed = libraries
    rows = db_rows(mixed / "tiles.db")
    for config, flag in (("default", 0), ("synthetic", 1)):
        builder = MosaicLibrary(config_name=config, data_dir=str(mixed), cache_dir=str(tmp_path / "cache"))
        builder.download_and_prepare()
        ds = builder.as_dataset(split="train")
        assert set(ds["id"]) == {i for i, r in rows.items() if r["synthetic"] == flag}
        assert ("derived_from" in ds.features) == bool(flag)


def test_the_card_counts_the_synthetic_tiles_and_lists_their_config(stagings):
    real, mixed = stagings
    plain = (real / "README.md").read_text()
    card = (mixed / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in header["configs"]] == ["default", "synthetic", "metadata"]
    assert header["configs"][1]["data_files"] == [{"split": "train", "path": "synthetic/train-*"}]
    assert [c["config_name"] for c in yaml.safe_load(plain.split("---")[1])["configs"]] == ["default", "metadata"]
    assert "Synthetic tiles" not in plain and "**30 synthetic tiles**" in card
    block = card.split("### Synthetic tiles")[1].split("```python\n")[1].split("```")[0]
    assert block.startswith("from datasets import load_dataset") and '"synthetic"' in block
    # the headline figures are the real tiles' (the default config), the same as without synthetic tiles
    headline = [line for line in plain.splitlines() if line.startswith("**")][0]
    assert headline in card


def test_restore_round_trips_the_synthetic_config(stagings, libraries, tmp_path):
    from builder.ops.verify import verify_library
    from builder.publish.restore import restore_library

    _real, mixed_staging = stagings
    target = tmp_path / "restored" / "mosaic_library"
    restore_library(mixed_staging, target)
    with Library.open(target, readonly=True) as lib:
        assert verify_library(lib, deep=True, workers=1, progress=False).ok
    before, after = db_rows(libraries[1] / "tiles.db"), db_rows(target / "tiles.db")
    assert set(after) == set(before)
    for tile_id, row in before.items():
        assert (after[tile_id]["synthetic"], after[tile_id]["derived_from"]) == (row["synthetic"], row["derived_from"])
        assert (target / f"bucket_{row['bucket_id']:04d}" / f"{tile_id}.png").read_bytes() == \
            (libraries[1] / f"bucket_{row['bucket_id']:04d}" / f"{tile_id}.png").read_bytes()


def test_the_cards_synthetic_snippet_runs(stagings, tmp_path):
    """The card's synthetic block, unchanged, from the folder that holds ``USER/mosaic_library``."""
    import subprocess
    import sys

    from tests.support.publish import fake_token_env

    _real, mixed = stagings
    shutil.copytree(mixed, tmp_path / "USER" / "mosaic_library")
    card = (mixed / "README.md").read_text()
    block = card.split("### Synthetic tiles")[1].split("```python\n")[1].split("```")[0]
    code = block.replace('synthetic[0]["derived_from"]', 'print(synthetic.num_rows, "derived_from" in synthetic[0]);'
                                                           ' synthetic[0]["derived_from"]')
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=fake_token_env(tmp_path, HF_HUB_OFFLINE="1"), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["30", "True"]


def test_push_dry_run_of_a_library_with_synthetic_tiles_lists_every_config(libraries, stagings, tmp_path):
    """The demo's library runs synthesize: its release must publish (was: refused as foreign files)."""

    from builder.publish import plan_upload
    from tests.support.cli import run_cli
    from tests.support.publish import FAKE_TOKEN, fake_token_env

    _real, mixed = libraries
    out = tmp_path / "staging"
    result = run_cli("push", "--library", mixed, "--output", out, "--repo-id", "alice/mosaic", "--dry-run",
                     env=fake_token_env(tmp_path))
    assert result.returncode == 0, result.stderr
    listed = [line.split()[-1] for line in result.stdout.splitlines()[1:-1]]
    assert listed == [item.path_in_repo for item in plan_upload(out)]
    folders = {name.split("/")[0] for name in listed if "/" in name}
    assert folders == {"data", "synthetic", "metadata"}
    assert {"README.md", "bucket_index.parquet", "release.json", "tiles.db", "centroids.npy"} <= set(listed)
    assert FAKE_TOKEN not in result.stdout + result.stderr
