"""Every code snippet of the dataset card runs unchanged against a library built by ingest.

The snippets are the card's (../shared/seed/dataset_card.md), with the indentation the
card's plain-text rendering lost put back; each runs in a fresh interpreter from the
folder that holds ``mosaic_library/``, as a card reader would.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from builder.color import lab_to_rgb
from builder.library import SHIPPED_CENTROIDS, Library
from tests.conftest import REPO, real_crops

QUICK_QUERIES = '''
import sqlite3
conn = sqlite3.connect("mosaic_library/tiles.db")
# Total tile count
conn.execute("SELECT COUNT(*) FROM tiles").fetchone()
# Buckets fully populated at 100 images
conn.execute(
    "SELECT bucket_id, COUNT(*) as n FROM tiles GROUP BY bucket_id HAVING n >= 100"
).fetchall()
# All tiles in bucket 42
conn.execute("SELECT * FROM tiles WHERE bucket_id = 42").fetchall()
'''

LOAD_METADATA = '''
import sqlite3
import numpy as np
conn = sqlite3.connect("mosaic_library/tiles.db")
rows = conn.execute("SELECT id, bucket_id, filepath, mean_l, mean_a, mean_b FROM tiles").fetchall()
print(f"Total tiles: {len(rows)}")
'''

LOAD_BUCKET = '''
from PIL import Image
import numpy as np
import sqlite3, os
def load_bucket(base_dir, bucket_id, db_path="mosaic_library/tiles.db"):
    conn = sqlite3.connect(db_path)
    rows = conn.execute(
        "SELECT filepath FROM tiles WHERE bucket_id = ?", (bucket_id,)
    ).fetchall()
    images = []
    for (fp,) in rows:
        img = Image.open(os.path.join(base_dir, fp)).convert("RGB")
        images.append(np.array(img))
    return np.stack(images) # shape: (N, 256, 256, 3)
imgs = load_bucket(".", bucket_id=42)
print(imgs.shape)
'''

KDTREE_QUERY = '''
from scipy.spatial import cKDTree
import numpy as np
centroids = np.load("mosaic_library/centroids.npy")
tree = cKDTree(centroids)
# Find the bucket closest to a target LAB color
target_lab = np.array([60.0, -20.0, 30.0]) # e.g. greenish mid-tone
dist, bucket_id = tree.query(target_lab)
print(f"Nearest bucket: {bucket_id} (distance: {dist:.2f})")
'''

CLUSTER_RECIPE = '''
import numpy as np
from skimage.color import rgb2lab
from sklearn.cluster import MiniBatchKMeans
random_rgb = np.random.randint(0, 255, (500000, 1, 3), dtype=np.uint8)
random_lab = rgb2lab(random_rgb).reshape(-1, 3)
kmeans = MiniBatchKMeans(n_clusters=5000, batch_size=10000, n_init=3)
kmeans.fit(random_lab)
centroids = kmeans.cluster_centers_
np.save("mosaic_library/centroids.npy", centroids)
'''


def graded_to_bucket(crop: Image.Image, centroid_lab: np.ndarray) -> Image.Image:
    """A real crop colour-graded (per-channel gain) so its mean colour is the centroid's.

    The Blue Marble holds no muted-purple terrain, and the card's example hard-codes
    bucket 42, whose centroid is purple with the shipped centroids: real texture, graded.
    """
    arr = np.asarray(crop, dtype=np.float64)
    target = lab_to_rgb(centroid_lab)
    gain = target / np.maximum(arr.reshape(-1, 3).mean(0), 1.0)
    return Image.fromarray(np.clip(arr * gain, 0, 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def card_library(tmp_path_factory, bluemarble):
    base = tmp_path_factory.mktemp("card")
    tiles = base / "tiles"
    tiles.mkdir()
    for i, crop in enumerate(real_crops(bluemarble, 120, seed=42)):
        crop.save(tiles / f"real_{i:03d}.png")
    centroid_42 = np.load(SHIPPED_CENTROIDS)[42]
    for i, crop in enumerate(real_crops(bluemarble, 12, seed=4242)):
        graded_to_bucket(crop, centroid_42).save(tiles / f"graded_{i:03d}.png")
    with Library.create(base / "mosaic_library") as lib:
        lib.ingest([tiles], workers=1)
        in_42 = lib.conn.execute("SELECT COUNT(*) FROM tiles WHERE bucket_id = 42").fetchone()[0]
    assert in_42 >= 3
    return base, in_42


def run_snippet(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd)


def test_quick_queries(card_library):
    base, _ = card_library
    res = run_snippet(QUICK_QUERIES + "\nprint(conn.execute('SELECT * FROM tiles WHERE bucket_id = 42').fetchall()[0][:3])", base)
    assert res.returncode == 0, res.stderr
    assert "bucket_0042" in res.stdout


def test_load_all_metadata(card_library):
    base, _ = card_library
    res = run_snippet(LOAD_METADATA, base)
    assert res.returncode == 0, res.stderr
    n = int(res.stdout.strip().rsplit(" ", 1)[1])
    with Library.open(base / "mosaic_library", readonly=True) as lib:
        assert n == lib.stats()["tiles"] > 100


def test_load_bucket(card_library):
    base, in_42 = card_library
    res = run_snippet(LOAD_BUCKET, base)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"({in_42}, 256, 256, 3)"


def test_kdtree_query(card_library):
    base, _ = card_library
    res = run_snippet(KDTREE_QUERY, base)
    assert res.returncode == 0, res.stderr
    centroids = np.load(base / "mosaic_library" / "centroids.npy")
    d = np.linalg.norm(centroids - np.array([60.0, -20.0, 30.0]), axis=1)
    assert res.stdout.strip() == f"Nearest bucket: {d.argmin()} (distance: {d.min():.2f})"


@pytest.mark.slow  # the card's MiniBatchKMeans over 5,000 clusters: about a minute on 2 idle cores
def test_cluster_recipe_runs_and_the_library_then_refuses_the_new_centroids(card_library, tmp_path):
    """The card's recipe overwrites centroids.npy with an unseeded run: it runs unchanged, and
    the library then refuses to assign with the wrong centroids instead of misfiling tiles."""
    import shutil

    from builder.errors import CentroidsError

    base, _ = card_library
    copy = tmp_path / "copy"
    shutil.copytree(base / "mosaic_library", copy / "mosaic_library")
    res = run_snippet(CLUSTER_RECIPE, copy)
    assert res.returncode == 0, res.stderr
    assert np.load(copy / "mosaic_library" / "centroids.npy").shape == (5000, 3)
    with pytest.raises(CentroidsError, match="restore the original centroids.npy"):
        Library.open(copy / "mosaic_library")


def _code_lines(text: str) -> list[str]:
    """Code lines with white space folded and comments after code dropped."""
    lines = []
    for line in text.splitlines():
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else line
        folded = " ".join(code.split())
        if folded:
            lines.append(folded)
    return lines


@pytest.mark.parametrize("snippet", [QUICK_QUERIES, LOAD_METADATA, LOAD_BUCKET, KDTREE_QUERY, CLUSTER_RECIPE])
def test_snippets_are_the_cards_own_lines(snippet):
    """The snippets above are the seed card's (data/seed_dataset_card.md), line for line."""
    card = _code_lines((REPO / "data" / "seed_dataset_card.md").read_text())
    wanted = _code_lines(snippet)
    starts = [i for i, line in enumerate(card) if line == wanted[0]]
    assert any(card[i:i + len(wanted)] == wanted for i in starts), wanted
