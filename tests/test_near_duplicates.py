"""``--near-duplicate-radius R``: tiles of a bucket whose pHashes differ in at most R bits are
duplicates, except that flat tiles (whose hashes are noise) are held to identical hashes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from builder.assign.phash import MIN_HASH_CONTRAST, contrast, hamming, phash
from builder.assign.pipeline import Candidate, Pipeline
from builder.core.errors import UsageError
from builder.ops.ingest import ingest
from tests.support.images import png_bytes, real_crops


def _textured_pair(bluemarble):
    """A real crop and the same crop with +-3 levels of noise: a couple of bits apart, one bucket."""
    crop = real_crops(bluemarble, 1, seed=21)[0]
    arr = np.asarray(crop).astype(int)
    noisy = np.clip(arr + np.random.default_rng(0).integers(-3, 4, arr.shape), 0, 255).astype(np.uint8)
    return crop, Image.fromarray(noisy)


def _flat_pair():
    """Two unrelated flat tiles (different faint gradients and noise), the closest pair of hashes among 120."""
    x = np.arange(256)
    rng = np.random.default_rng(1)
    tiles = []
    for _ in range(120):
        gx, gy = rng.uniform(-3, 3, 2)
        g = gx * (x[None, :] / 255.0 - 0.5) + gy * (x[:, None] / 255.0 - 0.5)
        noise = rng.normal(0, 0.4, (256, 256, 1))
        arr = np.clip(np.array((40, 90, 160))[None, None, :] + g[..., None] + noise, 0, 255).round().astype(np.uint8)
        tiles.append(Image.fromarray(arr))
    hashes = [phash(t) for t in tiles]
    _d, i, j = min((hamming(hashes[i], hashes[j]), i, j) for i, j in itertools.combinations(range(len(tiles)), 2)
                   if hashes[i] != hashes[j])
    return tiles[i], tiles[j]


def _store(lib, images, radius):
    with Pipeline(lib, workers=1, near_duplicate_radius=radius) as pipe:
        return pipe.process([Candidate(f"t{i}.png", data=png_bytes(img)) for i, img in enumerate(images)])


def test_a_near_copy_is_a_duplicate_within_the_radius_only(make_library, bluemarble):
    a, b = _textured_pair(bluemarble)
    distance = hamming(phash(a), phash(b))
    assert 0 < distance <= 4 and contrast(a) >= MIN_HASH_CONTRAST and contrast(b) >= MIN_HASH_CONTRAST
    exact = _store(make_library("exact"), [a, b], radius=0)
    assert [o.accepted for o in exact] == [True, True] and exact[0].bucket_id == exact[1].bucket_id
    near = _store(make_library("near"), [a, b], radius=distance)
    assert [o.accepted for o in near] == [True, False] and near[1].reason == "duplicate"
    # across batches too: the committed tile is read back from its file for the check
    lib = make_library("across")
    assert _store(lib, [a], radius=distance)[0].accepted
    assert _store(lib, [b], radius=distance)[0].reason == "duplicate"
    assert _store(lib, [b], radius=distance - 1)[0].accepted


def test_flat_tiles_do_not_knock_out_unrelated_tiles(make_library):
    a, b = _flat_pair()
    distance = hamming(phash(a), phash(b))
    assert contrast(a) < MIN_HASH_CONTRAST and contrast(b) < MIN_HASH_CONTRAST
    # Unrelated flat tiles come this close in a few dozen: a radius that large would, unguarded,
    # refuse a flat tile for another that only shares its lack of structure.
    assert distance <= 20
    out = _store(make_library(), [a, b], radius=distance)
    assert [o.accepted for o in out] == [True, True] and out[0].bucket_id == out[1].bucket_id
    # identical hashes are still duplicates, flat or not (the card's rule)
    again = _store(make_library("again"), [a, a.transpose(Image.Transpose.FLIP_LEFT_RIGHT).transpose(
        Image.Transpose.FLIP_LEFT_RIGHT)], radius=distance)
    assert [o.accepted for o in again] == [True, False]


def test_ingest_takes_the_radius_and_bad_values_are_one_line_errors(make_library, bluemarble, tmp_path, cli):
    a, b = _textured_pair(bluemarble)
    folder = tmp_path / "in"
    folder.mkdir()
    a.save(folder / "a.png")
    b.save(folder / "b.png")
    lib = make_library()
    report = ingest(lib, [folder], workers=1, near_duplicate_radius=8)
    assert report.accepted == 1 and report.rejected == {"duplicate": 1}
    for bad in (-1, 65, 2.5, True):
        with pytest.raises(UsageError, match="--near-duplicate-radius must be an integer within 0..64"):
            ingest(lib, [folder], near_duplicate_radius=bad)
    lib.close()
    for command in (["ingest", str(folder)], ["harvest", "--source", "earth", "--zoom", "3"], ["synthesize"]):
        res = cli(*command, "--library", lib.root, "--near-duplicate-radius", "65")
        assert res.returncode == 2, (command, res.stderr)
        assert res.stderr.strip() == "error: --near-duplicate-radius must be an integer within 0..64, got 65", command
