"""The release journey, as a user runs it, every step a fresh process against the local Hub:

``init`` -> ``harvest --source earth`` -> synthesize -> ``verify`` -> ``build`` -> ``push`` -> in a fresh
process ``load_dataset("user/mosaic_library", config)`` for each config equals the library (ids,
labels, image bytes, flags) -> ``query --hub`` -> ``restore --hub --buckets`` equals those buckets and
the sources of their synthetic tiles, and ``verify`` passes on it ->
``restore --hub`` of everything equals the library -> every Python block of the pushed card runs
against the pushed repo (but the card's k-means recipe, which reads nothing of the repo and takes
about 50 s: ``tests/test_card.py`` runs it).

Synthesize runs through its API (``builder.ops.synthesize.synthesize``, a fresh process) for 40 empty
buckets instead of the CLI's every empty bucket (about 4,900 here: minutes; ``tests/test_demo.py``
runs that one), so the journey stays under a minute and a half of CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.campaigns.restore import library_state
from tests.support.card import MARKERS, PYTHON_INFO, code_blocks
from tests.support.paths import REPO

REPO_ID = "user/mosaic_library"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

SYNTHESIZE = """
import sys
import numpy as np
from builder.core.library import Library
from builder.ops.synthesize import synthesize
with Library.open(sys.argv[1]) as lib:
    empty = [int(b) for b in np.flatnonzero(lib.bucket_counts() == 0)]
    print(synthesize(lib, buckets=empty[::100][:40], progress=False).summary())
"""

LOAD_EVERY_CONFIG = """
import hashlib, json, sys
import datasets
out = {}
for config in ("default", "synthetic", "metadata"):
    ds = datasets.load_dataset(sys.argv[1], config, split="train")
    assert ds.features["label"].num_classes == 5000 and ds.features["label"].names[42] == "bucket_0042"
    if "image" in ds.features:
        ds = ds.cast_column("image", datasets.Image(decode=False))
    rows = []
    for row in ds:
        image = row.pop("image", None)
        if image is not None:
            row["image_sha256"] = hashlib.sha256(image["bytes"]).hexdigest()
        rows.append(row)
    out[config] = {"features": list(ds.features), "rows": rows}
json.dump(out, open(sys.argv[2], "w"))
"""


def run(env: dict, *args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode == 0, f"{args[:4]}: {result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_release_journey_from_harvest_to_a_reader_of_the_hub(local_hub, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTEST"))}
    env.update(local_hub.env(), PYTHONPATH=str(REPO))
    builder = [sys.executable, "-m", "builder"]
    lib, staging = tmp_path / "work" / "mosaic_library", tmp_path / "work" / "staging"

    run(env, *builder, "init", "--library", str(lib))
    out = run(env, *builder, "harvest", "--library", str(lib), "--source", "earth", "--zoom", "6", "--max-tiles", "80",
              "--workers", "1", "--threads", "4")
    assert "80 accepted" in out
    assert "40 synthetic tiles" in run(env, sys.executable, "-c", SYNTHESIZE, str(lib))
    assert "no problems" in run(env, *builder, "verify", "--library", str(lib))
    run(env, *builder, "build", "--library", str(lib), "--output", str(staging))
    pushed = run(env, *builder, "push", "--library", str(lib), "--output", str(staging), "--repo-id", REPO_ID)
    assert pushed.splitlines()[-1].startswith("uploaded ") and "staging" not in pushed  # current: not rebuilt
    source = library_state(lib)
    real = {i for i, row in source["rows"].items() if row[-2] == 0}

    # a reader of the Hub, in a fresh process: every config equals the library
    loaded_file = tmp_path / "loaded.json"
    run(env, sys.executable, "-c", LOAD_EVERY_CONFIG, REPO_ID, str(loaded_file))
    loaded = json.loads(loaded_file.read_text())
    for config, wanted in (("default", real), ("synthetic", set(source["rows"]) - real),
                           ("metadata", set(source["rows"]))):
        rows = loaded[config]["rows"]
        assert sorted(r["id"] for r in rows) == sorted(wanted), config
        for row in rows:
            assert row["label"] == source["rows"][row["id"]][1]
            if config != "metadata":
                assert row["image_sha256"] == hashlib.sha256(source["files"][row["id"]]).hexdigest()
            else:
                assert row["synthetic"] is (row["id"] not in real)
    assert "image" not in loaded["metadata"]["features"] and loaded["metadata"]["features"][-2:] == [
        "synthetic", "derived_from"]
    # and load_dataset(staging folder) gives the very same rows and features as the Hub
    staged_file = tmp_path / "staged.json"
    run(env, sys.executable, "-c", LOAD_EVERY_CONFIG, str(staging), str(staged_file))
    assert json.loads(staged_file.read_text()) == loaded

    # query --hub: the library's own nearest populated buckets and tiles, no image fetched
    local_hub.reset_counters()
    remote = json.loads(run(env, *builder, "query", "--hub", REPO_ID, "--hex", "2e5b8a", "-k", "3", "--paths", "100",
                            "--json"))
    assert local_hub.served_bytes("data/*") + local_hub.served_bytes("synthetic/*") == 0
    local = json.loads(run(env, *builder, "query", "--library", str(lib), "--hex", "2e5b8a", "-k", "3", "--populated",
                           "--paths", "100", "--json"))
    assert [(b["bucket_id"], b["count"], sorted(zip(b["tiles"], b["kinds"]))) for b in remote["buckets"]] == [
        (b["bucket_id"], b["count"], sorted((Path(t).stem, k) for t, k in zip(b["tiles"], b["kinds"])))
        for b in local["buckets"]]

    # restore --hub --buckets: exactly those buckets' tiles, and the real tiles their synthetic ones
    # were made from (a synthetic bucket is added whose source is in another bucket); verify passes
    made = sorted({row[1] for row in source["rows"].values() if row[-2] == 1 and row[-1]
                   and source["rows"][row[-1]][1] != row[1]})
    chosen = sorted({b["bucket_id"] for b in remote["buckets"]} | {made[0]})
    part = tmp_path / "part" / "mosaic_library"
    restored = json.loads(run(env, *builder, "restore", "--hub", REPO_ID, "--buckets", ",".join(map(str, chosen)),
                              "--library", str(part), "--json"))
    in_chosen = {i for i, row in source["rows"].items() if row[1] in chosen}
    sources = {source["rows"][i][-1] for i in in_chosen if source["rows"][i][-2] == 1 and source["rows"][i][-1]}
    assert sources - in_chosen and restored["sources"] == len(sources - in_chosen)
    state = library_state(part)
    assert state["rows"] == {i: source["rows"][i] for i in in_chosen | sources}
    assert state["files"] == {i: source["files"][i] for i in in_chosen | sources}
    assert "no problems" in run(env, *builder, "verify", "--library", str(part))

    # restore --hub of everything: the library, fetch ledger included
    reader = tmp_path / "reader"
    run(env, *builder, "restore", "--hub", REPO_ID, "--library", str(reader / "mosaic_library"))
    assert library_state(reader / "mosaic_library") == source

    # every Python block of the pushed card, unchanged, from the folder that holds the restored library
    card = local_hub.files(REPO_ID)["README.md"].decode()
    assert f'load_dataset("{REPO_ID}", split="train")' in card and "USER/mosaic_library" not in card
    blocks = [b.code for b in code_blocks(card) if b.info in PYTHON_INFO]
    skipped = [code for code in blocks if MARKERS["cluster_recipe"] in code]
    assert len(skipped) == 1 and len(blocks) >= len(MARKERS)
    outputs = {}
    for code in blocks:
        if code in skipped:
            continue
        # the synthetic section's block (only in a card with synthetic tiles) has no marker of its own
        name = next((n for n, marker in MARKERS.items() if marker in code), "synthetic")
        outputs[name] = run(env, sys.executable, "-c", code, cwd=reader).split()
    example = int(card.split("SELECT * FROM tiles WHERE bucket_id = ")[1].split('"')[0])
    in_example = [i for i in real if source["rows"][i][1] == example]
    assert in_example and outputs["pyarrow_index"] == [str(len(in_example)), f"[{example}]"]
    assert outputs["streaming_filters"] == [str(len(in_example)), "(256,", "256)"]
    assert outputs["metadata_config"][:2] == [str(len(source["rows"])), str(
        sum(1 for row in source["rows"].values() if row[1] == example))]
    assert "synthetic" in outputs  # the synthetic config's block ran too
    top = " ".join(outputs["duckdb"])
    assert top.startswith("[(") and top.count("(") == 5
