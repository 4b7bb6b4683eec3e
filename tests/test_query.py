"""Colour queries against a brute-force search, on a real library of Blue Marble tiles."""

import json

import numpy as np
import pytest
from skimage.color import rgb2lab

from builder.cli import main
from builder.core.errors import UsageError
from builder.core.library import Library
from builder.core.query import lab_from_hex, lab_from_rgb, nearest_buckets, parse_hex, parse_lab, parse_rgb
from tests.support.libraries import build_earth_library


@pytest.fixture(scope="module")
def library(tmp_path_factory, bluemarble):
    root = build_earth_library(tmp_path_factory.mktemp("query") / "mosaic_library", bluemarble, n=80, seed=3)
    with Library.open(root, readonly=True) as lib:
        yield lib


def brute_force(centroids, lab, k, allowed=None):
    """Every centroid's distance to every colour, sorted: the reference for the KD-tree."""
    ids = np.arange(len(centroids)) if allowed is None else np.asarray(allowed)
    d = np.sqrt(((lab[:, None, :] - centroids[ids][None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(d, order, axis=1)


def test_batch_query_matches_brute_force(library):
    rng = np.random.default_rng(0)
    lab = rgb2lab(rng.integers(0, 256, (500, 1, 3)).astype(np.uint8)).reshape(-1, 3)
    found = nearest_buckets(library, lab, k=7)
    ids, dist = brute_force(library.centroids, lab, 7)
    assert found.bucket_ids.shape == (500, 7)
    assert np.array_equal(found.bucket_ids, ids)
    assert np.allclose(found.distances, dist, atol=1e-9)
    assert np.array_equal(found.counts, library.bucket_counts()[ids])


def test_populated_query_matches_brute_force_over_populated_buckets(library):
    counts = library.bucket_counts()
    populated = np.flatnonzero(counts)
    assert len(populated) > 10
    rng = np.random.default_rng(1)
    lab = rgb2lab(rng.integers(0, 256, (300, 1, 3)).astype(np.uint8)).reshape(-1, 3)
    found = nearest_buckets(library, lab, k=4, populated=True)
    ids, dist = brute_force(library.centroids, lab, 4, allowed=populated)
    assert np.array_equal(found.bucket_ids, ids)
    assert np.allclose(found.distances, dist, atol=1e-9)
    assert (found.counts > 0).all()


def test_rgb_and_hex_helpers_agree_with_skimage():
    rgb = np.array([[255, 128, 0], [0, 0, 0], [12, 200, 99]])
    ref = rgb2lab((rgb / 255.0).reshape(-1, 1, 3)).reshape(-1, 3)
    assert np.allclose(lab_from_rgb(rgb), ref, atol=1e-9)
    assert np.allclose(lab_from_hex(["#ff8000", "000000", "0CC863"]), ref, atol=1e-9)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: parse_rgb(["256", "0", "0"]), "R must be within 0..255, got '256'"),
        (lambda: parse_rgb(["1.5", "0", "0"]), "R is not an integer"),
        (lambda: parse_lab(["101", "0", "0"]), "L must be within 0..100, got '101'"),
        (lambda: parse_lab(["50", "nan", "0"]), "a* must be finite"),
        (lambda: parse_lab(["50", "0", "-300"]), "b* must be within -128..128"),
        (lambda: parse_hex("12345"), "not a RRGGBB hex colour: '12345'"),
        (lambda: parse_hex("gg0000"), "not a RRGGBB hex colour: 'gg0000'"),
    ],
)
def test_bad_colours_raise_usage_errors(call, message):
    with pytest.raises(UsageError, match=message.replace("*", r"\*").replace(".", r"\.")):
        call()


def test_cli_lists_buckets_with_derived_tile_paths(library, capsys):
    counts = library.bucket_counts()
    bucket = int(np.argmax(counts))
    target = library.centroids[bucket]
    # A row whose filepath column lies: the CLI must show the derived path, never this one.
    tile_id = library.conn.execute("SELECT id FROM tiles WHERE bucket_id = ? LIMIT 1", (bucket,)).fetchone()[0]
    with Library.open(library.root) as writer, writer.conn:
        writer.conn.execute("UPDATE tiles SET filepath = '../../etc/passwd' WHERE id = ?", (tile_id,))
    argv = ["query", "--library", str(library.root), "--lab", *(f"{v:.6f}" for v in target), "-k", "3", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    first = out["buckets"][0]
    assert first["bucket_id"] == bucket and first["distance"] < 1e-4 and first["count"] == counts[bucket]
    ids = [r[0] for r in library.conn.execute("SELECT id FROM tiles WHERE bucket_id = ? ORDER BY rowid", (bucket,))]
    assert len(ids) > 5 and first["tiles"] == [str(library.tile_path(bucket, i)) for i in ids[:5]]  # --paths 5
    assert first["kinds"] == ["real"] * 5 and (first["real"], first["synthetic"]) == (counts[bucket], 0)
    assert all("passwd" not in p for b in out["buckets"] for p in b["tiles"])
    assert len(out["buckets"]) == 3
    assert main([*argv, "--paths", "1000"]) == 0  # every path
    assert json.loads(capsys.readouterr().out)["buckets"][0]["tiles"] == [str(library.tile_path(bucket, i)) for i in ids]

    assert main(["query", "--library", str(library.root), "--hex", "#1e3c78", "-k", "2", "--populated"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("rgb #1e3c78 = LAB (") and "2 nearest buckets, 2 populated" in text[0]
    listed = [line.strip() for line in text[1:] if not line.strip().startswith(("bucket_", "..."))]
    assert listed and all(line.endswith(".png") for line in listed)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rgb", "300", "0", "0"], "error: R must be within 0..255, got '300'"),
        (["--lab", "120", "0", "0"], "error: L must be within 0..100, got '120'"),
        (["--hex", "xyz"], "error: not a RRGGBB hex colour: 'xyz'"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(library, capsys, args, message):
    assert main(["query", "--library", str(library.root), *args]) == 2
    err = capsys.readouterr().err
    assert err.strip() == message and err.count("\n") == 1


@pytest.fixture(scope="module")
def synthetic_library(tmp_path_factory, bluemarble):
    """Three real tiles, and synthetic tiles in the five buckets nearest #2e8b57 (each source used
    once, so two of them are flat one-colour tiles)."""
    from builder.ops.ingest import ingest
    from builder.ops.synthesize import synthesize
    from tests.support.images import real_crops

    base = tmp_path_factory.mktemp("query_synthetic")
    (base / "in").mkdir()
    for i, crop in enumerate(real_crops(bluemarble, 3, seed=8)):
        crop.save(base / "in" / f"t{i}.png")
    root = base / "mosaic_library"
    with Library.create(root) as lib:
        assert ingest(lib, [base / "in"], workers=1, progress=False).accepted == 3
        near = [int(b) for b in nearest_buckets(lib, lab_from_hex("2e8b57"), k=5).bucket_ids[0]]
        made = synthesize(lib, max_uses=1, buckets=near, progress=False)
        assert made.made == 5 and made.flat == 2
    return root


def test_query_marks_synthetic_and_flat_tiles_and_takes_real_only(synthetic_library, capsys):
    lib_arg = ["--library", str(synthetic_library)]
    assert main(["query", *lib_arg, "--hex", "2e8b57", "--json"]) == 0
    buckets = json.loads(capsys.readouterr().out)["buckets"]
    with Library.open(synthetic_library, readonly=True) as lib:
        flat = {b for (b,) in lib.conn.execute("SELECT bucket_id FROM tiles WHERE synthetic = 1 AND derived_from IS NULL")}
    assert len(flat) == 2
    for b in buckets:
        assert (b["count"], b["real"], b["synthetic"]) == (1, 0, 1)
        assert b["kinds"] == ["synthetic, flat" if b["bucket_id"] in flat else "synthetic"]
    assert main(["query", *lib_arg, "--hex", "2e8b57"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].endswith("5 nearest buckets, 5 populated, 0 real tiles, 5 synthetic")
    paths = [line for line in text[1:] if line.startswith("    ")]
    assert len(paths) == 5 and all(line.endswith(("  [synthetic]", "  [synthetic, flat]")) for line in paths)
    assert sum(line.endswith("[synthetic, flat]") for line in paths) == 2

    assert main(["query", *lib_arg, "--hex", "2e8b57", "--real-only", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"]["real_only"] is True and all(b["count"] == 0 and b["tiles"] == [] for b in out["buckets"])
    assert main(["query", *lib_arg, "--hex", "2e8b57", "--real-only", "--populated", "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["real"] for b in out["buckets"]] == [1, 1, 1] and all(b["kinds"] == ["real"] for b in out["buckets"])
    assert not {b["bucket_id"] for b in out["buckets"]} & {b["bucket_id"] for b in buckets}


def test_stats_opens_with_real_coverage_then_what_synthetic_tiles_add(synthetic_library, capsys):
    assert main(["stats", "--library", str(synthetic_library), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["tiles_real"], stats["tiles_synthetic"], stats["buckets_real"], stats["buckets_synthetic_only"]) \
        == (3, 5, stats["buckets_populated"] - 5, 5)
    assert stats["tiles"] == 8 and stats["by_region"] == {"(none)": 3}  # the old keys stay; regions are real tiles
    assert main(["stats", "--library", str(synthetic_library)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    real = stats["buckets_real"]
    assert first == (f"3 real tiles in {real}/5000 buckets ({real / 5000:.1%}), 0 full at cap 100; synthetic tiles "
                     f"add 5 tiles and 5 buckets ({real + 5}/5000, {(real + 5) / 5000:.1%}, with them)")
