"""The batched fast paths (chunked worker analysis, batched LAB, RLE PNG encoding) give exactly,
bit for bit, what the card's per-tile recipe gives: skimage rgb2lab, cKDTree, imagehash."""

import io

import imagehash
import numpy as np
from PIL import Image
from skimage.color import rgb2lab

from builder.assign.pipeline import CHUNK_MAX, Candidate, Worker, chunked, read_candidate
from builder.core.color import rgb_to_lab
from builder.core.decode import encode_png
from tests.support.images import jpeg_bytes, png_bytes, png_chunk, real_crops
from tests.support.recipe import card_recipe


def test_batched_lab_is_bit_identical_to_skimage_per_colour():
    rng = np.random.default_rng(3)
    # Means of a 64x64 resize are multiples of 1/4096; add whole colours and the extremes.
    means = np.concatenate([
        rng.integers(0, 255 * 4096, (4000, 3)) / 4096.0,
        rng.integers(0, 256, (1000, 3)).astype(np.float64),
        np.array([[0.0, 0, 0], [255.0, 255, 255], [10.3, 0.0, 255.0]]),
    ])
    ref = np.array([rgb2lab((m / 255.0).reshape(1, 1, 3)).reshape(3) for m in means])
    assert np.array_equal(rgb_to_lab(means), ref)
    assert all(np.array_equal(rgb_to_lab(m), r) for m, r in zip(means[:50], ref[:50]))


def test_chunked_worker_matches_the_cards_recipe_exactly(make_library, bluemarble, tmp_path):
    lib = make_library(cap=1000)
    crops = real_crops(bluemarble, 40, seed=21)
    candidates = []
    for i, crop in enumerate(crops):
        data = png_bytes(crop) if i % 3 else jpeg_bytes(crop)
        path = tmp_path / f"t{i}.img"
        path.write_bytes(data)
        candidates.append(Candidate(str(path), path=str(path)) if i % 2 else Candidate(f"t{i}", data=data))
    worker = Worker(str(lib.root), lib.centroids, lib.cap, None)
    analyses = [an for part in chunked(candidates, 16) for an in worker.analyse_many(part)]
    assert len(analyses) == len(candidates)
    for cand, an in zip(candidates, analyses):
        img = Image.open(io.BytesIO(read_candidate(cand))).convert("RGB")
        bucket, lab, phash = card_recipe(img, lib.centroids)
        assert an.reason is None and an.bucket_id == bucket
        assert an.lab == tuple(float(v) for v in lab)  # bit for bit, not approximately
        assert an.phash == phash
        stored = Image.open(lib.temp_dir / f"{an.tile_id}.png")
        assert stored.format == "PNG" and np.array_equal(np.asarray(stored.convert("RGB")), np.asarray(img))
    assert CHUNK_MAX >= 16


def test_chunk_verdicts_keep_order_and_reasons(make_library, bluemarble, tmp_path):
    lib = make_library()
    good = png_bytes(real_crops(bluemarble, 1, seed=4)[0])
    candidates = [
        Candidate("empty", data=b""),
        Candidate("good", data=good),
        Candidate("missing", path=str(tmp_path / "nope.png")),
        Candidate("html", data=b"<html>no</html>"),
    ]
    out = Worker(str(lib.root), lib.centroids, lib.cap, None).analyse_many(candidates)
    assert [a.reason for a in out] == ["empty", None, "unreadable", "not_image"]


def test_rle_png_encoding_is_lossless(bluemarble):
    for crop in real_crops(bluemarble, 5, seed=8):
        data = encode_png(crop)
        back = Image.open(io.BytesIO(data))
        assert back.format == "PNG" and back.mode == "RGB"
        assert np.array_equal(np.asarray(back), np.asarray(crop))


def test_read_candidate_reads_the_whole_file(tmp_path):
    path = tmp_path / "x.png"
    payload = bytes(range(256)) * 1000
    path.write_bytes(payload)
    assert read_candidate(Candidate("x", path=str(path))) == payload


def _stream_batches(bluemarble):
    data = [png_bytes(c) for c in real_crops(bluemarble, 50, seed=31)]
    # Later batches repeat earlier tiles (duplicates across batches) and cap=3 fills buckets.
    spans = [(0, 20), (10, 35), (30, 50), (0, 50)]
    return [[Candidate(f"{k}:{i}", data=data[i]) for i in range(a, b)] for k, (a, b) in enumerate(spans)]


def _verdicts(outcomes):
    """What must not depend on the overlap: which tiles are kept, where, with which hash.

    The label of a rejection may: a tile that is both a duplicate and in a bucket that fills
    up is called whichever its first check finds, and with the overlap the worker has not yet
    seen the previous batch's rows, so the parent's re-check (cap first) names it.
    """
    return [(o.name, o.accepted, o.bucket_id, o.phash if o.accepted else None, o.tile_id is not None)
            for o in outcomes]


def test_process_stream_gives_the_same_verdicts_as_batch_by_batch(make_library, bluemarble):
    from builder.assign.pipeline import Pipeline

    batches = _stream_batches(bluemarble)
    one, two = make_library("one", cap=3), make_library("two", cap=3)
    with Pipeline(one, workers=2) as pipe:
        sequential = [pipe.process(batch) for batch in batches]
    with Pipeline(two, workers=2) as pipe:
        streamed = list(pipe.process_stream(iter(batches)))
    assert [_verdicts(o) for o in streamed] == [_verdicts(o) for o in sequential]
    rows = "SELECT bucket_id, phash FROM tiles ORDER BY 1, 2"
    assert one.conn.execute(rows).fetchall() == two.conn.execute(rows).fetchall()
    assert {o.reason for batch in streamed for o in batch} >= {None, "duplicate", "bucket_full"}
    assert {o.reason for batch in streamed + sequential for o in batch} <= {None, "duplicate", "bucket_full"}
    assert list(two.temp_dir.iterdir()) == []


def test_closing_a_stream_early_leaves_no_staged_files(make_library, bluemarble):
    from builder.assign.pipeline import Pipeline

    batches = _stream_batches(bluemarble)
    lib = make_library()
    with Pipeline(lib, workers=2) as pipe:
        stream = pipe.process_stream(batches)
        first = next(stream)  # the second batch is in the workers' hands now
        stream.close()
        assert list(lib.temp_dir.iterdir()) == []
    assert lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0] == sum(o.accepted for o in first)


def _with_chunk_after_ihdr(data: bytes, kind: bytes, body: bytes) -> bytes:
    return data[:33] + png_chunk(kind, body) + data[33:]


def test_stored_form_fast_decoder_gives_pillows_pixels(bluemarble):
    """libspng decodes a tile in the stored form (plain 8-bit RGB 256x256 PNG); the pixels are
    Pillow's, with colour-space hints too, and anything else takes Pillow's path."""
    from builder.core.decode import decode_tile, is_stored_form

    crops = real_crops(bluemarble, 30, seed=5)
    datas = [png_bytes(c) for c in crops]
    datas.append(_with_chunk_after_ihdr(datas[0], b"gAMA", (45455).to_bytes(4, "big")))
    for data in datas:
        assert is_stored_form(data)
        tile = decode_tile(data)
        assert tile.png_passthrough and not tile.resized and tile.image.mode == "RGB"
        assert np.array_equal(np.asarray(tile.image), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    rgba = png_bytes(crops[0].convert("RGBA"))
    small = png_bytes(crops[0].resize((128, 128)))
    text = _with_chunk_after_ihdr(datas[0], b"tEXt", b"Comment\x00hello")
    for other in (rgba, small, text, jpeg_bytes(crops[0])):
        assert not is_stored_form(other)


def test_stored_form_with_a_damaged_chunk_gets_pillows_verdict(bluemarble):
    """libspng ignores CRCs; the fast path checks them, so a flipped byte inside the image data
    never reaches it, and the tile is judged by Pillow as before (corrupt: never stored)."""
    from builder.core.decode import decode_tile, is_stored_form
    from builder.core.errors import ImageRejected

    data = bytearray(png_bytes(real_crops(bluemarble, 1, seed=6)[0]))
    data[len(data) // 2] ^= 0xFF
    assert not is_stored_form(bytes(data))
    try:
        decode_tile(bytes(data))
    except ImageRejected as exc:
        assert exc.reason == "corrupt"
    else:
        raise AssertionError("a PNG with a damaged IDAT was decoded")


def test_phash_settles_near_ties_with_scipys_dct():
    """Patterns whose DCT coefficients tie at the median (uniform, one-directional ramps and
    stripes, a checkerboard) hash exactly as imagehash does."""
    from builder.assign.phash import phash_batch

    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    stripes = np.tile(((np.arange(256) // 16) % 2 * 200).astype(np.uint8), (256, 1))
    checker = ((np.add.outer(np.arange(256) // 32, np.arange(256) // 32) % 2) * 255).astype(np.uint8)
    greys = [ramp, ramp.T, stripes, stripes.T, checker, np.full((256, 256), 7, np.uint8)]
    tiles = [Image.fromarray(np.stack([g, g, g], -1)) for g in greys]
    tiles += [Image.new("RGB", (256, 256), (v, 255 - v, v // 2)) for v in range(0, 256, 51)]
    assert phash_batch(tiles) == [str(imagehash.phash(t, hash_size=8)) for t in tiles]
