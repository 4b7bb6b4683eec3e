"""Every bench script runs in ``--quick`` mode and prints its table with ratio columns; the runner
collects tables, lists missing benches and shows failures.  No timing is asserted anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import common
from bench.run_all import BY_HAND, EXPECTED, QUICK_FALLBACK, discover, quick_args, run_all, summary, takes_quick

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = [name for name in discover() if name not in BY_HAND]


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_runs_in_quick_mode_and_prints_ratios(name, tmp_path):
    rows_file = tmp_path / "rows.jsonl"
    env = {**os.environ, "MOSAIC_BENCH_CACHE": str(tmp_path / "cache"), common.JSON_ENV: str(rows_file),
           "PYTHONPATH": str(REPO)}
    script = REPO / "bench" / f"{name}.py"
    args = quick_args(name, script, str(tmp_path))  # --quick, or its small options while it lacks --quick
    proc = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{name} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "ratio" in proc.stdout.lower(), proc.stdout
    if name in ("ingest", "build"):  # ours report through bench.common: check the rows themselves
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
        assert rows and all(r["bench"] == name for r in rows)
        assert all(r["base_value"] > 0 and r["value"] > 0 and r["ratio"] > 0 for r in rows)
        header = next(line for line in proc.stdout.splitlines() if line.startswith("bench "))
        for column in ("baseline", "base", "value", "ratio", "target", "status"):
            assert column in header.split()
        assert {r["status"] for r in rows} <= {"met", "MISSED", "-"}


@pytest.mark.slow
def test_scale_bench_quick_times_every_command_at_two_sizes(tmp_path):
    """bench/scale.py --quick: libraries of 300 and 1,500 real-imagery tiles, every command a fresh
    process that succeeds, and a row of figures per command and size (never a time asserted)."""
    from bench import scale

    env = {**os.environ, "MOSAIC_SCALE_CACHE": str(tmp_path / "scale"), "PYTHONPATH": str(REPO)}
    results = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--quick", "--results", str(results)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    figures = json.loads(results.read_text())
    assert sorted(int(n) for n in figures) == list(scale.QUICK_SIZES)
    for n, by_command in figures.items():
        assert by_command["_tiles"]["tiles"] == int(n)  # the library holds what was asked for
        assert set(scale.COMMANDS) <= set(by_command)
        for name in scale.COMMANDS:
            assert by_command[name]["seconds"] > 0 and by_command[name]["maxrss_mb"] > 0
    assert "ratio time/tile" in proc.stdout and "ratio" in proc.stdout.lower()


@pytest.mark.slow
def test_partial_bench_quick_measures_every_reader_beside_a_snapshot(tmp_path):
    """bench/partial.py --quick: a 300-tile release pushed to the local Hub, every reader a fresh
    process that succeeds, a bytes row and a time row per reader (never a figure asserted)."""
    rows_file = tmp_path / "rows.jsonl"
    env = {**os.environ, common.JSON_ENV: str(rows_file), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "partial.py"), "--quick", "--cache",
                           str(tmp_path / "cache")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    cases = {r["case"].rsplit(": ", 1)[0] for r in rows}
    assert len(rows) == 2 * len(cases) == 16 and all(r["baseline"] == "full snapshot" for r in rows)
    assert all(r["base_value"] > 0 and r["value"] > 0 for r in rows)
    assert {r["unit"] for r in rows} == {"MB", "s"} and "ratio" in proc.stdout


def test_expected_benches_are_present():
    assert {"ingest", "build"} <= set(discover())


def test_every_bench_takes_quick_or_has_small_options_in_the_runner():
    """A new bench must take --quick; the fallback list only covers scripts written before the rule."""
    lacking = {name for name in SCRIPTS if not takes_quick(REPO / "bench" / f"{name}.py")}
    assert lacking <= set(QUICK_FALLBACK), f"bench scripts without --quick: {sorted(lacking - set(QUICK_FALLBACK))}"
    assert takes_quick(REPO / "bench" / "ingest.py") and takes_quick(REPO / "bench" / "build.py")


def _fake_bench(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(body))


def test_runner_collects_tables_and_reports_missing_failed_and_tableless_benches(tmp_path):
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    _fake_bench(bench_dir, "ingest", """
        import sys
        from bench import common
        quick = "--quick" in sys.argv
        common.report([common.Row("ingest", "fake", "base", 10.0, "ours", 50.0, "tiles/s", target=5.0,
                                  note="quick" if quick else "full")])
    """)
    _fake_bench(bench_dir, "build", "raise SystemExit('boom: build broke')\n")
    _fake_bench(bench_dir, "mosaic", "print('mosaic: 3.0 s, ratio 4x')\n")
    outcomes = run_all(list(EXPECTED), quick=True, timeout=120, bench_dir=bench_dir)
    by_name = {o.name: o for o in outcomes}
    assert by_name["ingest"].status == "ok" and by_name["ingest"].rows[0].ratio == 5.0
    assert by_name["ingest"].rows[0].note == "quick"  # --quick was passed on
    assert by_name["build"].status == "failed" and "boom" in by_name["build"].output
    assert by_name["mosaic"].status == "no-table"
    assert by_name["harvest"].status == "missing"
    text = summary(outcomes, quick=True)
    assert "fake" in text and "met" in text
    assert "MISSING" in text and "harvest" in text
    assert "FAILED" in text and "boom: build broke" in text
    assert "mosaic: 3.0 s, ratio 4x" in text  # a table-less bench is shown verbatim


def test_row_ratio_direction_and_status():
    rate = common.Row("b", "c", "base", 100.0, "ours", 250.0, "tiles/s", target=2.0)
    time_row = common.Row("b", "c", "base", 9.0, "ours", 3.0, "s", higher_is_better=False, target=4.0)
    assert rate.ratio == 2.5 and rate.status == "met"
    assert time_row.ratio == 3.0 and time_row.status == "MISSED"
    table = common.format_table([rate, time_row])
    assert "2.50x" in table and "MISSED" in table
