"""The dataset card's ingest recipe, literally, one tile at a time: the baseline of ``bench/ingest.py``.

Run as a fresh process the way a user runs ``python -m builder ingest``::

    python bench/card_recipe.py FOLDER LIBRARY     # PNG/JPEG files of FOLDER into a new LIBRARY

It creates ``LIBRARY`` (the same schema and pragmas as the project, ``builder.core.db``, so only the
per-tile way of working differs), reads the shipped centroids, and runs the card's six steps for
each tile in turn: PIL open, 64x64 resize, mean, ``skimage.color.rgb2lab``, ``cKDTree.query``,
cap check, ``imagehash.phash``, duplicate check, then step 6 as the card does it: the card
*moves the downloaded file* into its bucket, so a 256x256 RGB PNG input is stored as its own
bytes (copied, since the bench reruns on the same inputs) and only other input (JPEG, another
size or mode) is encoded with ``img.save``; one INSERT + commit per tile.  The KD-tree is built
once, as the card's harvester would.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from builder.core import db  # noqa: E402
from builder.core.layout import SHIPPED_CENTROIDS  # noqa: E402

CARD_CAP = 100
SUFFIXES = (".png", ".jpg", ".jpeg")


def card_recipe_ingest(paths: list[Path], root: Path, centroids: np.ndarray) -> Counter:
    """The card's six steps for each tile in turn; returns the stored ``(bucket_id, phash)`` rows.

    Same schema and pragmas as the project (``builder.core.db``), so only the per-tile way of
    working differs.  The KD-tree is built once, as the card's harvester would.  A 256x256 RGB
    PNG is stored as its own bytes (the card moves the downloaded file); other input is encoded.
    """
    import imagehash
    from PIL import Image
    from scipy.spatial import cKDTree
    from skimage.color import rgb2lab

    root.mkdir(parents=True)
    temp = root / "temp"
    temp.mkdir()
    conn = db.connect(root / "tiles.db")
    db.create_schema(conn)
    tree = cKDTree(centroids)
    stored: Counter = Counter()
    try:
        for path in paths:
            source = Image.open(path)
            as_downloaded = source.format == "PNG" and source.mode == "RGB" and source.size == (256, 256)
            img = source.convert("RGB")
            mean = np.array(img.resize((64, 64))).reshape(-1, 3).mean(0)  # 1-2. resize, mean
            lab = rgb2lab((mean / 255.0).reshape(1, 1, 3)).reshape(3)
            _dist, bucket = tree.query(lab)  # 3. nearest centroid
            bucket = int(bucket)
            (count,) = conn.execute("SELECT COUNT(*) FROM tiles WHERE bucket_id = ?", (bucket,)).fetchone()
            if count >= CARD_CAP:  # 4. bucket full
                continue
            tile_hash = str(imagehash.phash(img, hash_size=8))  # 5. pHash, duplicate check
            if conn.execute(
                "SELECT 1 FROM tiles WHERE bucket_id = ? AND phash = ? LIMIT 1", (bucket, tile_hash)
            ).fetchone():
                continue
            tile_id = str(uuid.uuid4())  # 6. the file into its bucket, insert + commit
            folder = root / f"bucket_{bucket:04d}"
            folder.mkdir(exist_ok=True)
            staged = temp / f"{tile_id}.png"
            if as_downloaded:  # the card moves the downloaded PNG: its bytes are the tile
                shutil.copyfile(path, staged)
            else:
                img.save(staged)
            os.replace(staged, folder / f"{tile_id}.png")
            conn.execute(
                "INSERT INTO tiles (id, bucket_id, filepath, phash, mean_l, mean_a, mean_b) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tile_id, bucket, f"{root.name}/bucket_{bucket:04d}/{tile_id}.png", tile_hash, *map(float, lab)),
            )
            conn.commit()
            stored[(bucket, tile_hash)] += 1
    finally:
        conn.close()
    return stored


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python bench/card_recipe.py FOLDER LIBRARY", file=sys.stderr)
        return 2
    folder, root = Path(argv[0]), Path(argv[1])
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    stored = card_recipe_ingest(paths, root, np.load(SHIPPED_CENTROIDS, allow_pickle=False))
    print(f"card recipe: {sum(stored.values())} of {len(paths)} tiles stored")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
