"""Reading part of a release from the Hub: bytes and time, each beside a full snapshot download.

    python bench/partial.py              # a 25,000-tile release (bench/scale.py's library, ~2 GB)
    python bench/partial.py --quick      # 300 tiles: a smoke run, figures meaningless
    python bench/partial.py --tiles 5000

The library is ``bench/scale.py``'s (real-imagery tiles spread over the buckets, cached under
``--cache``, by default scale's own cache); ``python -m builder build`` makes its staging folder with the default shards (64 MB)
and ``push`` uploads it to the local Hub of the tests (``tests/support/localhub.py``: real HTTP,
``Range`` reads, every byte it serves counted).  Each reader is one fresh process with an empty
Hugging Face cache of its own, as a user's first read is:

* **full snapshot**: ``huggingface_hub.snapshot_download`` of the whole repo (the baseline);
* **default config**: ``load_dataset(repo, split="train")``;
* **metadata config**: ``load_dataset(repo, "metadata", split="train")``;
* **one bucket**: ``python -m builder restore --hub --buckets B`` of the fullest bucket and of a
  median one (scale's libraries spread their tiles evenly: at 25,000 tiles the fullest holds 19,
  the median 5, and both share their 100-row row group with other buckets): ``release.json``, the
  bucket index, ``centroids.npy``, the shard's footer, the small columns of the bucket's row group
  and the bucket's own image span (``builder/publish/spans.py``); for comparison, on the fullest
  bucket, the card's pyarrow snippet (bucket index, then ``HfFileSystem`` without read-ahead: one
  footer and the bucket's whole row group), and ``load_dataset(repo, streaming=True,
  filters=[("label", "==", B)])``, which reads every file's footer;
* **colour query**: ``python -m builder query --hub`` of a colour whose nearest populated buckets
  hold at least 20 tiles (ids and rows, no image);
* **10-bucket restore**: ``python -m builder restore --hub --buckets`` of the ten fullest buckets.

Bytes are everything the Hub served the reader (API answers, redirects, payload); ratios are the
snapshot's bytes (or seconds) over the reader's: above 1 means less than a full download.  A
bucket's own Parquet bytes are its image span plus its share (by rows) of its row group's other
column chunks.  The issue's targets: one bucket at most 1.5x its own Parquet bytes plus 1 MB; a colour query under
5 MB plus the tiles it returns (it returns ids, no image); the metadata config under 1% of the
release's bytes.  Each target is turned into the ratio it needs against the snapshot.  Times on
this shared 2-core machine are loose; the bytes are exact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from bench import common, scale
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path, the repo is not (yet)
    import common  # type: ignore[no-redef]
    import scale  # type: ignore[no-redef]

REPO = common.REPO
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REPO_ID = "user/mosaic_library"
MB = 1e6

SNAPSHOT = """
import sys
from huggingface_hub import snapshot_download
print(snapshot_download(sys.argv[1], repo_type="dataset"))
"""
LOAD = """
import sys
from datasets import load_dataset
ds = load_dataset(sys.argv[1], *sys.argv[2:], split="train")
print(ds.num_rows)
"""
STREAM_BUCKET = """
import sys
from datasets import load_dataset
rows = list(load_dataset(sys.argv[1], split="train", streaming=True, filters=[("label", "==", int(sys.argv[2]))]))
print(len(rows))
"""
# The card's pyarrow block, the repo and bucket given on the command line.
CARD_BUCKET = """
import sys
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import HfFileSystem

fs = HfFileSystem()
repo = f"datasets/{sys.argv[1]}"
with fs.open(f"{repo}/bucket_index.parquet") as fh:
    index = pq.read_table(fh, filters=[("bucket", "==", int(sys.argv[2])), ("config", "==", "default")])
parts = []
for where in index.to_pylist():
    with fs.open(f"{repo}/{where['file']}", "rb", cache_type="none") as fh:
        group = pq.ParquetFile(fh, pre_buffer=False).read_row_group(where["row_group"], use_threads=False)
    parts.append(group.slice(where["first_row"], where["rows"]))
print(pa.concat_tables(parts).num_rows)
"""


def own_bytes(staging: Path, index, bucket: int) -> float:
    """A bucket's own bytes in the default config: its image span, and its share (by rows) of the
    other column chunks of each row group holding it."""
    import pyarrow.parquet as pq

    from builder.publish.index import select
    from builder.publish.spans import image_chunk

    group_rows: dict[tuple[str, int], int] = {}
    for row in select(index, list(range(5000)), ["default"]).to_pylist():
        key = (row["file"], row["row_group"])
        group_rows[key] = group_rows.get(key, 0) + row["rows"]
    own = 0.0
    for row in select(index, [bucket], ["default"]).to_pylist():
        metadata = pq.ParquetFile(staging / row["file"]).metadata
        _offset, images = image_chunk(metadata, row["row_group"])
        others = row["length"] - images
        own += row["image_length"] + others * row["rows"] / group_rows[(row["file"], row["row_group"])]
    return own


def bucket_plan(staging: Path) -> dict:
    """From the staging folder's index: the fullest and a median bucket with their own bytes, the
    ten fullest, and a colour whose nearest populated buckets hold at least 20 tiles."""
    import numpy as np

    from builder.core.color import lab_to_rgb, load_centroids, rgb_to_hex
    from builder.core.query import PopulatedIndex
    from builder.publish.index import bucket_counts, read_index

    index = read_index(staging / "bucket_index.parquet")
    counts = bucket_counts(index, "default")
    order = sorted(counts, key=lambda b: (-counts[b], b))
    fullest, median = order[0], order[len(order) // 2]
    centroids = load_centroids(staging / "centroids.npy")
    all_counts = np.zeros(len(centroids), dtype=np.int64)
    for bucket, n in bucket_counts(index, "metadata").items():
        all_counts[bucket] = n
    colour = rgb_to_hex(lab_to_rgb(centroids[median]))  # a colour of the release
    lab = centroids[median]
    k, tiles = 1, 0
    while tiles < 20:
        near = PopulatedIndex(centroids, all_counts).query(lab.reshape(1, 3), k).bucket_ids[0]
        tiles = sum(int(all_counts[b]) for b in near)
        k += 1
    return {"fullest": fullest, "fullest_tiles": counts[fullest], "fullest_own": own_bytes(staging, index, fullest),
            "median": median, "median_tiles": counts[median], "median_own": own_bytes(staging, index, median),
            "ten": order[:10], "colour": colour, "k": k - 1, "query_tiles": tiles}


def served_parts(hub) -> str:
    """Where a reader's bytes went: the shards (payload), the index, the centroids, the rest (API, manifest)."""
    total = hub.served_bytes()
    shards = sum(hub.served_bytes(f"{folder}/*") for folder in ("data", "synthetic", "metadata"))
    index, centroids = hub.served_bytes("bucket_index.parquet"), hub.served_bytes("centroids.npy")
    return (f"shards {shards / MB:.3f} MB, index {index / MB:.3f}, centroids {centroids / MB:.3f}, "
            f"the rest {(total - shards - index - centroids) / MB:.3f}")


def run_reader(hub, name: str, argv: list[str], work: Path) -> tuple[float, int, str]:
    """One reader in a fresh process with an empty cache: (seconds, bytes the Hub served it, where they went)."""
    home = work / "clients" / name.replace(" ", "_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTEST"))}
    env.update(hub.env(home=home), PYTHONPATH=str(REPO))
    hub.reset_counters()
    measured = common.run_measured(argv, env=env, cwd=str(work))
    if measured["returncode"] != 0:
        raise SystemExit(f"{name} failed:\n{measured['output'][-3000:]}")
    served = hub.served_bytes()
    parts = served_parts(hub)
    common.log(f"{name}: {served / MB:,.2f} MB in {measured['seconds']:.1f} s ({parts})")
    shutil.rmtree(home, ignore_errors=True)
    return measured["seconds"], served, parts


def main() -> None:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=25_000, help="library size (default 25,000)")
    parser.set_defaults(cache=scale.DEFAULT_CACHE)  # bench/scale.py's libraries, shared with it
    args = parser.parse_args()
    tiles = 300 if args.quick else args.tiles
    from builder.core.summary import plural
    from tests.support.localhub import LocalHub

    root = dict(scale.make_libraries(args.cache, [tiles]))[tiles]
    work = Path(tempfile.mkdtemp(prefix="bench_partial_"))
    try:
        staging = work / "staging"
        py = sys.executable
        subprocess.run([py, "-m", "builder", "build", "--library", str(root), "--output", str(staging), "--num-proc",
                        "2"], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                       stdout=subprocess.DEVNULL)
        release_bytes = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and p.name != ".mosaic_build.json")
        plan = bucket_plan(staging)
        with LocalHub(work / "hub") as hub:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTEST"))}
            env.update(hub.env(home=work / "pusher"), PYTHONPATH=str(REPO))
            subprocess.run([py, "-m", "builder", "push", "--library", str(root), "--output", str(staging),
                            "--repo-id", REPO_ID], check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
            builder = [py, "-m", "builder"]
            snapshot = run_reader(hub, "full snapshot", [py, "-c", SNAPSHOT, REPO_ID], work)
            one = [*builder, "restore", "--hub", REPO_ID, "--buckets"]
            cases = [
                ("default config", [py, "-c", LOAD, REPO_ID], None),
                ("metadata config", [py, "-c", LOAD, REPO_ID, "metadata"], 0.01 * release_bytes),
                (f"fullest bucket ({plural(plan['fullest_tiles'], 'tile')}, own {plan['fullest_own'] / MB:.2f} MB), restore",
                 [*one, str(plan["fullest"]), "--library", str(work / "fullest" / "lib")],
                 1.5 * plan["fullest_own"] + 1 * MB),
                (f"median bucket ({plural(plan['median_tiles'], 'tile')}, own {plan['median_own'] / MB:.2f} MB), restore",
                 [*one, str(plan["median"]), "--library", str(work / "median" / "lib")],
                 1.5 * plan["median_own"] + 1 * MB),
                (f"fullest bucket ({plural(plan['fullest_tiles'], 'tile')}), card's pyarrow (its row group)",
                 [py, "-c", CARD_BUCKET, REPO_ID, str(plan["fullest"])], None),
                (f"fullest bucket ({plural(plan['fullest_tiles'], 'tile')}), streaming filters=",
                 [py, "-c", STREAM_BUCKET, REPO_ID, str(plan["fullest"])], None),
                (f"colour query ({plan['query_tiles']} tiles, k={plan['k']})",
                 [*builder, "query", "--hub", REPO_ID, "--hex", plan["colour"], "-k", str(plan["k"])], 5 * MB),
                ("10-bucket restore", [*builder, "restore", "--hub", REPO_ID, "--buckets",
                                       ",".join(map(str, plan["ten"])), "--library", str(work / "part" / "lib")], None),
            ]
            rows = []
            for case, argv, budget in cases:
                seconds, served, parts = run_reader(hub, case, argv, work)
                target = snapshot[1] / budget if budget else None
                note = "; ".join(([f"budget {budget / MB:,.2f} MB"] if budget else []) + [parts])
                rows.append(common.Row("partial", f"{case}: bytes", "full snapshot", snapshot[1] / MB, "reader",
                                       served / MB, "MB", higher_is_better=False, target=target, note=note))
                rows.append(common.Row("partial", f"{case}: time", "full snapshot", snapshot[0], "reader", seconds,
                                       "s", higher_is_better=False))
        title = (f"partial reads of a {tiles:,}-tile release ({release_bytes / MB:,.1f} MB; {common.machine_note()}; "
                 "shared machine: times are loose, bytes exact)")
        common.report(rows, title)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
