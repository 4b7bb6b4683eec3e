"""Harvest throughput against the loopback tile server, by hand: ``python bench/harvest.py``.

For each added latency per tile (default 100 ms and 0) a fresh library harvests ``--tiles``
tiles (``--max-requests``, no faults) of real Blue Marble crops served as JPEG from a
:class:`tests.support.tileserver.TileServer` running in its own process (so the server does not
compete with harvest for this process's GIL), its cache warmed with exactly the tiles the
seeded sampler will ask for. Printed per latency: assigned (accepted + rejected) tiles/s,
the network ideal ``threads / latency``, and their ratio. At latency 0 the network ideal is
unbounded, so the same tiles are written to files and ``ingest``-ed into another fresh
library in the same run; the ratio harvest/ingest shows what the fetching costs on top of
the assignment pipeline. "fetching alone" is the same threads fetching the same tiles with
no pipeline: the network side's own ceiling.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from bench import common
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    import common  # type: ignore[no-redef]

from builder.acquire.harvest import harvest  # noqa: E402
from builder.acquire.sources import open_source  # noqa: E402
from builder.acquire.tiles import Sampler  # noqa: E402
from builder.core.library import Library  # noqa: E402
from builder.core.plans import load_plan  # noqa: E402
from builder.ops.ingest import ingest  # noqa: E402
from tests.support.tileserver import TileServer, distinct_tile  # noqa: E402


def serve(delay: float, tiles: list[tuple[int, int, int]], conn) -> None:
    """Server process: warm the tile cache, report the port, serve until told to stop."""
    for z, x, y in tiles:
        distinct_tile(z, x, y)
    with TileServer(distinct_tile, delay=delay, lifetime=3600) as server:
        conn.send(server.tile_template)
        conn.recv()


def planned_tiles(zoom: int, seed: int, n: int) -> list[tuple[int, int, int]]:
    return [(r.z, r.x, r.y) for r in Sampler(load_plan("1"), zoom, seed).sample(n)]


def run_harvest(workdir: Path, delay: float, args, mature: bool = False) -> tuple[dict, list[tuple[int, int, int]]]:
    """One harvest of ``args.tiles`` tiles.  ``mature``: the library already holds these very
    images (ingested from files first), so harvest rejects nearly every tile, as it does once a
    library has grown: the steady state where the network, not the CPU, should be the limit."""
    tiles = planned_tiles(args.zoom, args.seed, args.tiles)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(delay, tiles, child), daemon=True)
    proc.start()
    try:
        template = parent.recv()
        fetch_rate = fetch_only(template, tiles, args.threads)
        root = workdir / f"harvest_{int(delay * 1000)}ms{'_mature' if mature else ''}"
        if mature:
            Library.create(root).close()
            prefill = workdir / f"prefill_{int(delay * 1000)}ms"
            prefill.mkdir()
            for z, x, y in tiles:
                (prefill / f"{z}_{x}_{y}.jpg").write_bytes(distinct_tile(z, x, y))
            with Library.open(root) as lib:
                ingest(lib, [prefill], progress=False)
        with (Library.open(root) if mature else Library.create(root)) as lib:
            report = harvest(lib, template, "1", zoom=args.zoom, threads=args.threads, batch=args.batch,
                             max_requests=args.tiles, seed=args.seed, progress=False)
            fetched = [tuple(r) for r in lib.conn.execute("SELECT z, x, y FROM fetched")]
    finally:
        parent.send("stop")
        proc.join(timeout=10)
    return report.as_dict() | {"assigned": report.accepted + sum(report.rejected.values()),
                               "fetch_only": fetch_rate}, fetched


def fetch_only(template: str, tiles: list[tuple[int, int, int]], threads: int) -> float:
    """Tiles/s of the fetching alone (same source, same threads, no pipeline)."""
    source = open_source(template)
    try:
        with ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            got = sum(1 for data in pool.map(lambda t: source.fetch(*t), tiles) if data)
            seconds = time.perf_counter() - started
    finally:
        source.close()
    return got / seconds


def run_ingest(workdir: Path, tiles: list[tuple[int, int, int]]) -> float:
    folder = workdir / "files"
    folder.mkdir()
    for z, x, y in tiles:
        (folder / f"{z}_{x}_{y}.jpg").write_bytes(distinct_tile(z, x, y))
    with Library.create(workdir / "ingest_lib") as lib:
        started = time.perf_counter()
        report = ingest(lib, [folder], progress=False)
        seconds = time.perf_counter() - started
    return report.total / seconds


def main() -> None:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--delays", type=float, nargs="+", default=None, help="seconds added per tile (default 0.1 0)")
    parser.add_argument("--tiles", type=int, default=None, help="tiles fetched per run (default 1000; --quick 60)")
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--zoom", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.delays = args.delays or ([0.02, 0.0] if args.quick else [0.1, 0.0])
    args.tiles = args.tiles or (60 if args.quick else 1000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_harvest_") as tmp:
        workdir = Path(tmp)
        for delay, mature in [(d, m) for d in args.delays for m in (False, True)]:
            if mature and delay == 0:
                continue
            report, fetched = run_harvest(workdir, delay, args, mature=mature)
            rate = report["tiles_per_s"]
            label = "mature library" if mature else "fresh library"
            case = f"{label}, {delay * 1000:.0f} ms/tile, {args.threads} threads"
            common.log(f"{case}: {report['assigned']} tiles ({report['accepted']} accepted) in "
                       f"{report['seconds']:.2f} s; fetching alone {report['fetch_only']:.1f} tiles/s")
            if delay > 0:
                rows.append(common.Row("harvest", case, "network ideal threads/delay", args.threads / delay,
                                       "harvest", rate, "tiles/s", target=0.9 if mature else None,
                                       note="fresh: every tile accepted and PNG-encoded (CPU-bound)"
                                       if not mature else "tiles already held: nearly all rejected"))
                rows.append(common.Row("harvest", case, "fetching alone (same threads)", report["fetch_only"],
                                       "harvest", rate, "tiles/s"))
            else:
                ingest_rate = run_ingest(workdir, fetched)
                rows.append(common.Row("harvest", case, "ingest of the same tiles", ingest_rate,
                                       "harvest", rate, "tiles/s", target=0.8))
    common.report(rows)


if __name__ == "__main__":
    main()
