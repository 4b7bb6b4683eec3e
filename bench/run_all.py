"""Run every benchmark in ``bench/`` one after another and print one table.

    python bench/run_all.py            # full sizes (a few minutes each)
    python bench/run_all.py --quick    # smoke run: tiny sizes, figures meaningless
    python bench/run_all.py --only ingest,build

Each ``bench/*.py`` (except the helpers and the by-hand campaigns listed in :data:`BY_HAND`)
runs in its own process, with ``--quick`` passed on when given (a script that does not take
``--quick`` yet gets its own small options from :data:`QUICK_FALLBACK`).  Benches that report through
:func:`bench.common.report` land in the combined table; a bench that prints something else is
shown verbatim; one that fails or times out is listed with the end of its output.  The
benches the project expects (:data:`EXPECTED`) are listed as MISSING when their script is
absent, never skipped silently.  Exit status: 1 if a bench failed or timed out (or, with
``--strict``, if one is missing or printed no table), else 0.  No figure is ever asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    from bench import common
except ModuleNotFoundError:  # run as a script
    import common  # type: ignore[no-redef]

BENCH_DIR = Path(__file__).resolve().parent
EXPECTED = ("ingest", "build", "harvest", "mosaic")
HELPERS = {"common", "run_all", "__init__", "conftest", "card_recipe"}
BY_HAND = {
    "kill_campaign": "crash-safety campaign, not a timing bench (tests/test_crash.py is its CI form)",
    "scale": "libraries of 5k/25k/100k tiles: GBs of disk, tens of minutes (its --quick runs in tests/test_bench_smoke.py)",
    "partial": "a 25,000-tile release on the local Hub: 2 GB, 20 minutes the first time (its --quick runs in "
               "tests/test_bench_smoke.py)",
    "demo": "the whole demo, a minute and a half on two idle cores (tests/test_demo.py runs the demo)",
}
TAIL_LINES = 25
# Benches that do not take ``--quick`` (yet): the tiny sizes it stands for, in their own options
# ("{tmp}" is a scratch folder of the run).  Used only while the script lacks ``--quick``.
QUICK_FALLBACK: dict[str, list[str]] = {}


@dataclass
class Outcome:
    """What running one bench script gave."""

    name: str
    status: str  # ok | no-table | failed | timeout | skipped | missing
    seconds: float = 0.0
    rows: list = field(default_factory=list)
    output: str = ""
    detail: str = ""


def discover(bench_dir: Path = BENCH_DIR) -> list[str]:
    """Bench names (file stems) in ``bench_dir``, helpers excluded, sorted with EXPECTED first."""
    found = sorted(p.stem for p in bench_dir.glob("*.py") if p.stem not in HELPERS)
    return sorted(found, key=lambda n: (EXPECTED.index(n) if n in EXPECTED else len(EXPECTED), n))


def takes_quick(script: Path) -> bool:
    """Whether a bench script declares ``--quick``, itself or through ``common.base_parser``
    (read from its source: no process needed)."""
    text = script.read_text(encoding="utf-8", errors="replace")
    return '"--quick"' in text or "common.base_parser(" in text


def quick_args(name: str, script: Path, tmp: str) -> list[str]:
    """``--quick``, or the bench's own small options while it lacks ``--quick``."""
    if takes_quick(script) or name not in QUICK_FALLBACK:
        return ["--quick"]
    return [arg.replace("{tmp}", tmp) for arg in QUICK_FALLBACK[name]]


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_bench(name: str, quick: bool, timeout: float, extra: list[str], bench_dir: Path = BENCH_DIR) -> Outcome:
    """Run ``bench/<name>.py`` in a fresh process; collect its rows from ``$MOSAIC_BENCH_JSON``."""
    script = bench_dir / f"{name}.py"
    with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        env = {**os.environ, common.JSON_ENV: str(rows_file), "PYTHONPATH": str(common.REPO)}
        argv = [sys.executable, str(script), *(quick_args(name, script, tmp) if quick else []), *extra]
        common.log(f"running {name}: {' '.join(argv[1:])}")
        started = time.perf_counter()
        try:
            proc = subprocess.run(argv, env=env, cwd=str(common.REPO), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode("utf-8", "replace")
            return Outcome(name, "timeout", time.perf_counter() - started, output=output,
                           detail=f"no result after {timeout:.0f} s")
        seconds = time.perf_counter() - started
        output = proc.stdout.decode("utf-8", "replace")
        rows = []
        if rows_file.is_file():
            rows = [common.Row.from_dict(json.loads(line)) for line in rows_file.read_text().splitlines() if line]
    if proc.returncode != 0:
        return Outcome(name, "failed", seconds, rows, output, f"exit status {proc.returncode}")
    if not rows:
        return Outcome(name, "no-table", seconds, output=output,
                       detail="ran, but reported no rows through bench.common.report (output below)")
    return Outcome(name, "ok", seconds, rows, output)


def run_all(names: list[str], quick: bool, timeout: float, include_by_hand: bool = False,
            extra: dict[str, list[str]] | None = None, bench_dir: Path = BENCH_DIR) -> list[Outcome]:
    present = discover(bench_dir)
    outcomes = []
    for name in names:
        if name not in present:
            outcomes.append(Outcome(name, "missing", detail=f"bench/{name}.py does not exist (yet)"))
        elif name in BY_HAND and not include_by_hand:
            outcomes.append(Outcome(name, "skipped", detail=f"by hand: {BY_HAND[name]}"))
        else:
            outcomes.append(run_bench(name, quick, timeout, (extra or {}).get(name, []), bench_dir))
    return outcomes


def summary(outcomes: list[Outcome], quick: bool) -> str:
    rows = [row for o in outcomes for row in o.rows]
    lines = [f"all benches{' (--quick: smoke run, figures meaningless)' if quick else ''}; "
             f"{common.machine_note()}", ""]
    lines.append(common.format_table(rows) if rows else "(no bench reported table rows)")
    met = sum(r.status == "met" for r in rows)
    missed = [f"{r.bench}/{r.case}" for r in rows if r.status == "MISSED"]
    lines += ["", f"targets: {met} met, {len(missed)} missed" + (f" ({'; '.join(missed)})" if missed else "")]
    lines += ["", "benches:"]
    for o in outcomes:
        took = f"{o.seconds:6.1f} s" if o.seconds else "      -"
        lines.append(f"  {o.name:22s} {o.status.upper() if o.status != 'ok' else 'ok':9s} {took}  "
                     f"{len(o.rows)} rows  {o.detail}".rstrip())
    for o in outcomes:
        if o.status in ("no-table", "failed", "timeout") and o.output.strip():
            lines += ["", f"--- {o.name}: {o.status}, last lines of its output ---", tail(o.output)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every bench (smoke run)")
    parser.add_argument("--only", default=None, help="comma-separated bench names (default: all found + expected)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per bench (default 900, quick 300)")
    parser.add_argument("--include-by-hand", action="store_true", help=f"also run {', '.join(sorted(BY_HAND))}")
    parser.add_argument("--strict", action="store_true", help="exit 1 when an expected bench is missing or "
                        "prints no table")
    parser.add_argument("--list", action="store_true", help="list the benches and exit")
    args = parser.parse_args(argv)
    found = discover()
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else \
        list(dict.fromkeys([*EXPECTED, *found]))
    if args.list:
        for name in names:
            state = "missing" if name not in found else ("by hand" if name in BY_HAND else "runs")
            print(f"{name:22s} {state}")
        return 0
    timeout = args.timeout or (300.0 if args.quick else 900.0)
    outcomes = run_all(names, args.quick, timeout, args.include_by_hand)
    print(summary(outcomes, args.quick), flush=True)
    bad = [o for o in outcomes if o.status in ("failed", "timeout")]
    if args.strict:
        bad += [o for o in outcomes if o.status in ("missing", "no-table")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
