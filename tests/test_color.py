"""Colour maths against the reference implementations (skimage, the card's recipe)."""

import numpy as np
import pytest
from skimage.color import rgb2lab

from builder.core.color import (
    CENTROIDS_SHAPE,
    CentroidIndex,
    hex_to_rgb,
    load_centroids,
    make_centroids,
    nearest_brute,
    rgb_to_lab,
)
from builder.core.errors import CentroidsError
from builder.core.layout import SHIPPED_CENTROIDS


def test_rgb_to_lab_matches_skimage_on_random_and_extreme_colours():
    rng = np.random.default_rng(0)
    rgb = np.concatenate([rng.uniform(0, 255, (20000, 3)), [[0, 0, 0], [255, 255, 255], [1, 1, 1], [255, 0, 255]]])
    ours = rgb_to_lab(rgb)
    ref = rgb2lab((rgb / 255.0).reshape(-1, 1, 3)).reshape(-1, 3)
    assert np.abs(ours - ref).max() < 1e-9


def test_shipped_centroids_are_the_cards_shape_and_finite():
    c = load_centroids(SHIPPED_CENTROIDS)
    assert c.shape == CENTROIDS_SHAPE and c.dtype == np.float64
    assert np.isfinite(c).all()
    assert c[:, 0].min() >= 0 and c[:, 0].max() <= 100


@pytest.mark.slow
def test_make_centroids_is_reproducible_for_a_seed():
    a = make_centroids(seed=3, n_colours=20000, n_clusters=50)
    b = make_centroids(seed=3, n_colours=20000, n_clusters=50)
    c = make_centroids(seed=4, n_colours=20000, n_clusters=50)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_kdtree_batch_assignment_equals_brute_force():
    c = load_centroids(SHIPPED_CENTROIDS)
    rng = np.random.default_rng(1)
    lab = rgb_to_lab(rng.uniform(0, 255, (3000, 3)))
    idx, dist = CentroidIndex(c).assign_lab(lab)
    d2 = ((lab[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    assert np.array_equal(idx, d2.argmin(1))
    assert np.allclose(dist, np.sqrt(d2.min(1)))


def test_small_batches_get_the_reference_distances_bit_for_bit_from_every_thread():
    """The direct search (batches of up to 64 colours: every ingest chunk) gives the very floats of
    the card-style ``((lab - c) ** 2).sum(-1)``, ties to the lower id, and threads sharing one
    index (atlas folds tiles on a thread a core) each get their own working space."""
    from concurrent.futures import ThreadPoolExecutor

    c = load_centroids(SHIPPED_CENTROIDS)
    rng = np.random.default_rng(2)
    batches = [rgb_to_lab(rng.uniform(0, 255, (int(n), 3))) for n in rng.integers(1, 65, 24)]
    batches.append(np.concatenate([c[:32], c[:32] + 1e-9]))  # on a centroid, and a hair off it
    d2s = [((lab[:, None, :] - c[None, :, :]) ** 2).sum(-1) for lab in batches]

    def reference(d2, k):
        order = np.argsort(d2, axis=1, kind="stable")[:, :k]
        return np.sqrt(np.take_along_axis(d2, order, axis=1)), order

    for lab, d2 in zip(batches, d2s):
        for k in (1, 3):
            dist, ids = nearest_brute(c, lab, k)
            ref_dist, ref_ids = reference(d2, k)
            assert np.array_equal(ids, ref_ids) and np.array_equal(dist, ref_dist)
    index = CentroidIndex(c)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(index.assign_lab, batches * 8))
    for d2, (ids, dist) in zip(d2s * 8, got):
        assert np.array_equal(ids, d2.argmin(1)) and np.array_equal(dist, np.sqrt(d2.min(1)))


@pytest.mark.parametrize(
    "payload, message",
    [
        (np.zeros((4999, 3)), "shape"),
        (np.full((5000, 3), np.nan), "NaN"),
        (np.zeros((5000, 3)), "distinct"),
    ],
)
def test_bad_centroid_files_are_refused(tmp_path, payload, message):
    path = tmp_path / "centroids.npy"
    np.save(path, payload)
    with pytest.raises(CentroidsError, match=message):
        load_centroids(path)


def test_pickled_centroids_are_never_unpickled(tmp_path):
    path = tmp_path / "centroids.npy"
    np.save(path, np.array([{"evil": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(CentroidsError, match="not a plain NumPy array"):
        load_centroids(path)


def test_hex_parsing():
    assert hex_to_rgb("0a0B0c") == (10, 11, 12)
    with pytest.raises(ValueError, match="zz0000"):
        hex_to_rgb("zz0000")
