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
