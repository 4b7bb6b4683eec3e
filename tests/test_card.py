"""The dataset card as ``build`` writes it: every code block in it runs, unchanged, against the library.

The card is the real output of ``build_staging`` (``README.md`` of a staging folder made from a
real small library).  Each fenced Python block is cut out of it and run in a fresh interpreter
from the folder that holds ``mosaic_library/``, as a card reader would, with the values of its
bare expressions echoed the way a notebook or the interactive prompt shows them (the block's
text is not changed: only how its expression statements are displayed).  Blocks that are not
Python (the folder tree) are recognised by their fence info string and must not parse as Python
code; a Python block that no test below claims fails :func:`test_every_python_block_is_run_by_a_test`.

The card loads ``load_dataset("USER/mosaic_library")`` when built without a repo id, so the
staging folder is written to ``USER/mosaic_library`` beside the library, where ``load_dataset``
finds it as a local folder (offline).
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

from builder.core.color import lab_to_rgb
from builder.core.errors import CentroidsError
from builder.core.layout import SHIPPED_CENTROIDS
from builder.core.library import Library
from builder.ops.ingest import ingest
from builder.publish import build_staging
from builder.publish.card import (
    CARD_TEMPLATE,
    PLACEHOLDER_REPO,
    CardStats,
    CardTemplateError,
    fill_template,
    render_card,
)
from tests.support.card import MARKERS, NOT_PYTHON_INFO, PYTHON_INFO, code_blocks, looks_like_python, python_block
from tests.support.images import real_crops
from tests.support.paths import REPO

# The seed card predates the Hub dataset and partial reads; its other snippets are the seed's.
NOT_IN_SEED = {"load_dataset", "metadata_config", "streaming_filters", "pyarrow_index", "duckdb"}
# The seed's cluster recipe saved over mosaic_library/centroids.npy, the library's identity; the
# card's saves beside it (its recipe lines are still the seed's: see the test below).
SAVED_ELSEWHERE = {"cluster_recipe"}

# Runs a block like the interactive prompt does: statements executed in order, the repr of each
# bare expression's value printed (``row["label"]`` shows its value, as in a notebook).
ECHO_RUNNER = r"""
import ast, sys
source = sys.stdin.read()
scope = {"__name__": "__main__"}
for node in ast.parse(source).body:
    if isinstance(node, ast.Expr):
        value = eval(compile(ast.Expression(node.value), "<card>", "eval"), scope)
        if value is not None:
            print(repr(value))
    else:
        exec(compile(ast.Module([node], type_ignores=[]), "<card>", "exec"), scope)
"""


def graded_to_bucket(crop: Image.Image, centroid_lab: np.ndarray) -> Image.Image:
    """A real crop colour-graded (per-channel gain) so its mean colour is the centroid's.

    The Blue Marble holds no muted-purple terrain, and the card's example hard-codes
    bucket 42, whose centroid is purple with the shipped centroids: real texture, graded.
    """
    arr = np.asarray(crop, dtype=np.float64)
    target = lab_to_rgb(centroid_lab)
    gain = target / np.maximum(arr.reshape(-1, 3).mean(0), 1.0)
    return Image.fromarray(np.clip(arr * gain, 0, 255).round().astype(np.uint8))


class CardLibrary(NamedTuple):
    base: Path  # the folder holding mosaic_library/: where a card reader runs the snippets
    card: str  # README.md of the staging folder build wrote
    in_42: int  # tiles in bucket 42, the card's load_bucket example


@pytest.fixture(scope="module")
def card_library(tmp_path_factory, bluemarble) -> CardLibrary:
    base = tmp_path_factory.mktemp("card")
    tiles = base / "tiles"
    tiles.mkdir()
    for i, crop in enumerate(real_crops(bluemarble, 120, seed=42)):
        crop.save(tiles / f"real_{i:03d}.png")
    centroid_42 = np.load(SHIPPED_CENTROIDS)[42]
    for i, crop in enumerate(real_crops(bluemarble, 12, seed=4242)):
        graded_to_bucket(crop, centroid_42).save(tiles / f"graded_{i:03d}.png")
    with Library.create(base / "mosaic_library") as lib:
        ingest(lib, [tiles], workers=1, progress=False)
        in_42 = lib.conn.execute("SELECT COUNT(*) FROM tiles WHERE bucket_id = 42").fetchone()[0]
    assert in_42 >= 3
    staging = base / PLACEHOLDER_REPO
    build_staging(base / "mosaic_library", staging)
    return CardLibrary(base, (staging / "README.md").read_text(encoding="utf-8"), in_42)


def reader_env(tmp_path: Path) -> dict[str, str]:
    """A card reader's environment: no project on the path, Hub offline, caches in tmp_path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_DATASETS_CACHE=str(tmp_path / "hf_cache"), HF_HUB_OFFLINE="1")
    return env


def run_block(code: str, cwd: Path, tmp_path: Path) -> list[str]:
    """Output lines of ``code`` run in a fresh interpreter from ``cwd`` (see :data:`ECHO_RUNNER`)."""
    res = subprocess.run(
        [sys.executable, "-c", ECHO_RUNNER],
        input=code,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=reader_env(tmp_path),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.splitlines()


# ------------------------------------------------------------------------------ the card's blocks


def test_every_python_block_is_run_by_a_test(card_library):
    """Each Python block matches exactly one marker (so one test below runs it); every other block
    has a non-Python info string and is not Python code in disguise."""
    blocks = code_blocks(card_library.card)
    assert len(blocks) >= len(MARKERS)
    claimed = []
    for block in blocks:
        if block.info in PYTHON_INFO:
            names = [name for name, marker in MARKERS.items() if marker in block.code]
            assert len(names) == 1, f"Python block claimed by {names or 'no test'}:\n{block.code}"
            claimed += names
        else:
            assert block.info in NOT_PYTHON_INFO, f"unknown fence info string {block.info!r}"
            assert not looks_like_python(block.code), f"Python code in a {block.info or 'plain'} block:\n{block.code}"
    assert sorted(claimed) == sorted(MARKERS)


def test_load_dataset_block(card_library, tmp_path):
    lines = run_block(python_block(card_library.card, "load_dataset"), card_library.base, tmp_path)
    with Library.open(card_library.base / "mosaic_library", readonly=True) as lib:
        bucket = lib.conn.execute("SELECT bucket_id FROM tiles ORDER BY bucket_id, id LIMIT 1").fetchone()[0]
    image, label, name = lines
    assert image.startswith("<PIL.") and "mode=RGB size=256x256" in image
    assert (label, name) == (str(bucket), repr(f"bucket_{bucket:04d}"))


def test_metadata_config_block(card_library, tmp_path):
    lines = run_block(python_block(card_library.card, "metadata_config"), card_library.base, tmp_path)
    with Library.open(card_library.base / "mosaic_library", readonly=True) as lib:
        tiles = lib.stats()["tiles"]
    assert lines == [f"{tiles} {card_library.in_42} 0"]  # bucket 42 is the example: it holds real tiles


def test_streaming_filters_block(card_library, tmp_path):
    lines = run_block(python_block(card_library.card, "streaming_filters"), card_library.base, tmp_path)
    assert lines == [f"{card_library.in_42} (256, 256)"]


def test_hub_blocks_name_the_repo_and_the_example_bucket(card_library):
    """The pyarrow and DuckDB blocks read through HfFileSystem: tests/test_release_hub.py runs them
    (with every other block) against a pushed repo."""
    block = python_block(card_library.card, "pyarrow_index")
    assert 'repo = "datasets/USER/mosaic_library"' in block and '("bucket", "==", 42)' in block
    assert "'hf://datasets/USER/mosaic_library/metadata/*.parquet'" in python_block(card_library.card, "duckdb")


def test_quick_queries_block(card_library, tmp_path):
    count, full, in_42 = run_block(python_block(card_library.card, "quick_queries"), card_library.base, tmp_path)
    with Library.open(card_library.base / "mosaic_library", readonly=True) as lib:
        counts, cap = lib.bucket_counts(), lib.cap
        ids_42 = {r[0] for r in lib.conn.execute("SELECT id FROM tiles WHERE bucket_id = 42")}
    assert count == f"({int(counts.sum())},)"
    assert ast.literal_eval(full) == [(b, int(n)) for b, n in enumerate(counts) if n >= cap]
    rows = ast.literal_eval(in_42)
    assert len(rows) == card_library.in_42 and {r[0] for r in rows} == ids_42
    assert all(r[1] == 42 and r[2] == f"mosaic_library/bucket_0042/{r[0]}.png" for r in rows)


def test_load_all_metadata_block(card_library, tmp_path):
    (line,) = run_block(python_block(card_library.card, "all_metadata"), card_library.base, tmp_path)
    with Library.open(card_library.base / "mosaic_library", readonly=True) as lib:
        tiles = lib.stats()["tiles"]
    assert line == f"Total tiles: {tiles}" and tiles > 100


def test_load_bucket_block(card_library, tmp_path):
    lines = run_block(python_block(card_library.card, "load_bucket"), card_library.base, tmp_path)
    assert lines == [f"({card_library.in_42}, 256, 256, 3)"]


def test_kdtree_query_block(card_library, tmp_path):
    lines = run_block(python_block(card_library.card, "kdtree_query"), card_library.base, tmp_path)
    centroids = np.load(card_library.base / "mosaic_library" / "centroids.npy")
    d = np.linalg.norm(centroids - np.array([60.0, -20.0, 30.0]), axis=1)
    assert lines == [f"Nearest bucket: {d.argmin()} (distance: {d.min():.2f})"]


@pytest.mark.slow
def test_cluster_recipe_block_writes_beside_the_library_and_never_touches_its_centroids(card_library, tmp_path):
    """The card's recipe (~50 s), run unchanged from the folder holding the library as the other
    snippets are: it writes centroids_regenerated.npy beside the library, compares it with the
    library's, and leaves mosaic_library/centroids.npy as it was, so the library still opens."""
    copy = tmp_path / "copy"
    shutil.copytree(card_library.base / "mosaic_library", copy / "mosaic_library")
    library_file = copy / "mosaic_library" / "centroids.npy"
    before = (library_file.read_bytes(), library_file.stat().st_mtime_ns)
    fitted, compared = run_block(python_block(card_library.card, "cluster_recipe"), copy, tmp_path)
    assert fitted.startswith("MiniBatchKMeans(") and "n_clusters=5000" in fitted  # kmeans.fit() echoes the model
    assert (library_file.read_bytes(), library_file.stat().st_mtime_ns) == before
    regenerated = np.load(copy / "centroids_regenerated.npy", allow_pickle=False)
    assert regenerated.shape == (5000, 3) and not np.array_equal(regenerated, np.load(library_file))
    gaps = np.sqrt(((regenerated[:, None, :] - np.load(library_file)[None, :, :]) ** 2).sum(-1)).min(axis=1)
    assert compared == (f"regenerated vs the library's centroids: mean distance {gaps.mean():.2f}, "
                        f"max {gaps.max():.2f} (LAB)")
    with Library.open(copy / "mosaic_library", readonly=True) as lib:
        assert lib.stats()["tiles"] > 100


def test_swapped_centroids_are_refused_naming_where_the_right_file_comes_from(card_library, tmp_path):
    """What a user who overwrote centroids.npy reads: the shipped file for a seed-0 library, with its
    sha256; for other centroids, the release's file and its sha256."""
    root = tmp_path / "mosaic_library"
    shutil.copytree(card_library.base / "mosaic_library", root)
    shipped = hashlib.sha256(SHIPPED_CENTROIDS.read_bytes()).hexdigest()
    np.save(root / "centroids.npy", np.load(SHIPPED_CENTROIDS)[::-1].copy(), allow_pickle=False)
    with pytest.raises(CentroidsError) as caught:
        Library.open(root, readonly=True)
    message = str(caught.value)
    assert "restore the original centroids.npy" in message and f"copy {SHIPPED_CENTROIDS} (sha256 {shipped})" in message
    other = tmp_path / "other"
    with Library.create(other, centroids=root / "centroids.npy"):
        pass  # a library made with other centroids
    expected = hashlib.sha256((other / "centroids.npy").read_bytes()).hexdigest()
    shutil.copy(SHIPPED_CENTROIDS, other / "centroids.npy")
    with pytest.raises(CentroidsError, match=f"the one with sha256 {expected}: the centroids.npy of the release"):
        Library.open(other)


def _code_lines(text: str) -> list[str]:
    """Code lines with white space folded and comments after code dropped."""
    lines = []
    for line in text.splitlines():
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else line
        folded = " ".join(code.split())
        if folded:
            lines.append(folded)
    return lines


@pytest.mark.parametrize("name", sorted(set(MARKERS) - NOT_IN_SEED - SAVED_ELSEWHERE))
def test_blocks_are_the_seed_cards_own_lines(card_library, name):
    """A default-cap library's card quotes the seed card's snippets (data/seed_dataset_card.md)
    line for line, as users know them (the seed's plain text lost their indentation)."""
    seed = _code_lines((REPO / "data" / "seed_dataset_card.md").read_text())
    wanted = _code_lines(python_block(card_library.card, name))
    starts = [i for i, line in enumerate(seed) if line == wanted[0]]
    assert any(seed[i : i + len(wanted)] == wanted for i in starts), wanted


def test_cluster_recipe_is_the_seeds_own_recipe_saved_beside_the_library(card_library):
    """The recipe is the seed card's, line for line, up to its result; the seed's last line saved
    that result over mosaic_library/centroids.npy, the card's saves it beside the library."""
    seed = _code_lines((REPO / "data" / "seed_dataset_card.md").read_text())
    block = _code_lines(python_block(card_library.card, "cluster_recipe"))
    recipe = block[: block.index("centroids = kmeans.cluster_centers_") + 1]
    starts = [i for i, line in enumerate(seed) if line == recipe[0]]
    assert any(seed[i : i + len(recipe)] == recipe for i in starts), recipe
    assert 'np.save("mosaic_library/centroids.npy", centroids)' in seed
    assert 'np.save("centroids_regenerated.npy", centroids)' in block
    assert not any("np.save" in line and "mosaic_library" in line for line in block)


# ------------------------------------------------------------------------------ the template


def test_the_built_card_has_no_placeholder_left(card_library):
    assert not re.search(r"\$\{?[A-Za-z_]", card_library.card)
    assert "HAVING n >= 100" in card_library.card


def test_a_library_with_its_own_cap_gets_it_in_the_card(tmp_path, bluemarble):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for i, crop in enumerate(real_crops(bluemarble, 6, seed=5)):
        crop.save(tiles / f"t{i}.png")
    with Library.create(tmp_path / "mosaic_library", cap=50) as lib:
        ingest(lib, [tiles], workers=1, progress=False)
    build_staging(tmp_path / "mosaic_library", tmp_path / "staging")
    card = (tmp_path / "staging" / "README.md").read_text()
    query = python_block(card, "quick_queries")
    assert "HAVING n >= 50\"" in query and "# Buckets fully populated at 50 images" in query
    assert "with up to 50 unique images per bucket" in card and "| Max tiles per bucket | 50 |" in card
    assert "100" not in query


STATS = CardStats(tiles=5, buckets_populated=2, buckets_full=0, cap=100, by_source={"earth": 5})


def test_a_placeholder_without_a_value_is_an_error_at_render_time():
    template = CARD_TEMPLATE.read_text() + "\nContact: $maintainer\n"
    with pytest.raises(CardTemplateError, match=r"no value for \$maintainer"):
        render_card(STATS, template=template)


def test_a_value_no_placeholder_uses_is_an_error():
    template = CARD_TEMPLATE.read_text().replace("${rows_per_group}", "100")
    with pytest.raises(CardTemplateError, match="values no placeholder uses: rows_per_group"):
        render_card(STATS, template=template)


def test_a_stray_dollar_is_an_error_and_a_doubled_one_is_literal():
    with pytest.raises(CardTemplateError, match=r"line 2: '\$5 a tile': a '\$' that starts no placeholder"):
        fill_template("Tiles: ${tiles}\n$5 a tile\n", {"tiles": "3"})
    assert fill_template("$$5 for ${n} tiles, $$HOME", {"n": "3"}) == "$5 for 3 tiles, $HOME"


def test_a_broken_template_fails_the_build_and_publishes_nothing(card_library, tmp_path, monkeypatch):
    import builder.publish.card as card

    broken = tmp_path / "card_template.md"
    broken.write_text(CARD_TEMPLATE.read_text() + "\n$maintainer\n")
    monkeypatch.setattr(card, "CARD_TEMPLATE", broken)
    with pytest.raises(CardTemplateError, match=r"no value for \$maintainer"):
        build_staging(card_library.base / "mosaic_library", tmp_path / "staging")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card_template.md"]
