"""The CLI contract: one-line summaries, one-line errors, exit codes, ``--json`` on every
command from one report protocol, one meaning of ``--workers``, and a ``--help`` that imports
none of the heavy libraries."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from builder.cli import COMMANDS, build_parser, main
from builder.core.layout import SAMPLE_TARGET
from tests.support.cli import bare_env, builder_argv
from tests.support.paths import REPO


@pytest.mark.slow
def test_init_ingest_stats_verify_round_trip(tmp_path, real_tiles_dir, cli):
    res = cli("init")
    assert res.returncode == 0 and res.stdout.startswith("initialised mosaic_library"), res.stderr
    res = cli("ingest", real_tiles_dir, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["accepted"] > 150 and sum(report["rejected"].values()) + report["accepted"] == 240
    res = cli("stats", "--json")
    stats = json.loads(res.stdout)
    assert stats["tiles"] == report["accepted"] and stats["buckets_populated"] > 10
    res = cli("stats")
    assert res.stdout.splitlines()[0].startswith(f"{report['accepted']} tiles in ")
    res = cli("verify")
    assert res.returncode == 0 and "no problems" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["stats", "--library", "missing_lib"], "`python -m builder init --library missing_lib`"),
        (["stat"], "invalid choice: 'stat' is not a command; did you mean `stats`?"),
        (["-v", "qurey", "--hex", "336699"], "invalid choice: 'qurey' is not a command; did you mean `query`?"),
        (["ingest", "nowhere"], "no such file or folder: nowhere"),
        (["ingest", "--workers", "0", "x"], "argument --workers: must be at least 1, got 0"),
        (["init", "--seed", "x"], "argument --seed: not an integer: 'x'"),
        (["harvest", "--rate", "fast"], "argument --rate: not a number: 'fast'"),
        (["query", "--hex", "336699", "-k", "0"], "argument -k: must be at least 1, got 0"),
        (["verify", "--workers", "1.5"], "argument --workers: not an integer: '1.5'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, message, cli):
    cli("init")
    res = cli(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_init_refuses_a_second_time_and_bad_centroid_files(tmp_path, cli):
    assert cli("init").returncode == 0
    res = cli("init")
    assert res.returncode == 2 and "never overwritten" in res.stderr
    for name, payload in [("short.npy", np.zeros((10, 3))), ("nan.npy", np.full((5000, 3), np.nan))]:
        np.save(tmp_path / name, payload)
        res = cli("init", "--library", tmp_path / f"lib_{name}", "--centroids", tmp_path / name)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / f"lib_{name}").exists()
    np.save(tmp_path / "pickle.npy", np.array([object()] * 2, dtype=object), allow_pickle=True)
    res = cli("init", "--library", tmp_path / "lib_p", "--centroids", tmp_path / "pickle.npy")
    assert res.returncode == 2 and "not a plain NumPy array" in res.stderr


# --------------------------------------------------------------------------- --help stays light

HEAVY = ("numpy", "scipy", "PIL", "sklearn", "skimage", "datasets", "pyarrow", "requests", "huggingface_hub", "tqdm")


def imported_modules(*args: str) -> set[str]:
    """Every module a fresh ``python -X importtime -m builder ARGS`` imports (its stderr report)."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "builder", *args], capture_output=True,
                         text=True, cwd=REPO, env=bare_env(), timeout=60)
    assert res.returncode == 0 and "usage:" in res.stdout, res.stderr[-2000:]
    lines = [line.split("|") for line in res.stderr.splitlines() if line.startswith("import time:")]
    return {parts[2].strip() for parts in lines if len(parts) == 3}


@pytest.mark.parametrize("command", ["", *COMMANDS, "(bare)"])
def test_help_imports_none_of_the_heavy_libraries(command):
    """``--help`` of the CLI and of each command, and a bare ``python -m builder`` (which prints the help)."""
    modules = imported_modules() if command == "(bare)" else imported_modules(*([command] if command else []),
                                                                             "--help")
    assert "builder.cli" in modules and (command in ("", "(bare)") or f"builder.cli.{command}" in modules)
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"--help of {command or 'the CLI'} imports {heavy[:10]}"


# --------------------------------------------------------------------------- one protocol, one meaning


def subparsers() -> dict:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


def test_every_command_has_json_and_pool_options_mean_one_thing():
    commands = subparsers()
    assert list(commands) == list(COMMANDS)
    for name, parser in commands.items():
        options = {opt: action for action in parser._actions for opt in action.option_strings}
        assert "--json" in options, name
        if "--workers" in options:
            assert "worker processes" in options["--workers"].help, name
        if "--threads" in options:
            assert "threads" in options["--threads"].help, name
    with_workers = {n for n, p in commands.items() if any("--workers" in a.option_strings for a in p._actions)}
    with_threads = {n for n, p in commands.items() if any("--threads" in a.option_strings for a in p._actions)}
    assert with_workers == {"ingest", "harvest", "synthesize", "verify", "recover", "demo"}
    assert with_threads == {"harvest", "atlas", "mosaic", "report", "demo"}


def run_json(capsys, *argv) -> tuple[int, dict, str]:
    """``main([... , "--json"])`` in this process: exit code, the parsed JSON, stderr."""
    code = main([*map(str, argv), "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_every_command_prints_json(tmp_path, capsys, real_tiles_dir):
    lib = tmp_path / "mosaic_library"
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for path in sorted(real_tiles_dir.glob("*.png"))[:24]:
        shutil.copy(path, tiles / path.name)
    (tiles / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    code, init, _ = run_json(capsys, "init", "--library", lib)
    assert code == 0 and init == {"library": str(lib), "centroids": 5000, "origin": init["origin"], "cap": 100}
    code, ingest, err = run_json(capsys, "ingest", "--library", lib, tiles, "--workers", "1")
    assert code == 1 and err.startswith("error: 1 of 25 inputs unusable")  # the broken file, on stderr
    assert ingest["accepted"] + sum(ingest["rejected"].values()) == 25
    code, stats, _ = run_json(capsys, "stats", "--library", lib)
    assert code == 0 and stats["tiles"] == ingest["accepted"]
    code, query, _ = run_json(capsys, "query", "--library", lib, "--hex", "336699", "-k", "2")
    assert code == 0 and query["query"]["input"] == "rgb #336699" and len(query["buckets"]) == 2

    victim = next(lib.glob("bucket_*/*.png"))
    victim.unlink()
    code, verify, _ = run_json(capsys, "verify", "--library", lib, "--quick")
    assert code == 1 and verify["problems"] == {"missing_file": 1} and "after_repair" not in verify
    code, repair, _ = run_json(capsys, "verify", "--library", lib, "--quick", "--repair")
    assert code == 0 and repair["problems"] == {"missing_file": 1}
    assert repair["after_repair"]["problems"] == {} and repair["after_repair"]["rows"] == ingest["accepted"] - 1

    staging = tmp_path / "staging"
    code, build, _ = run_json(capsys, "build", "--library", lib, "--output", staging)
    assert code == 0 and build["output"] == str(staging) and build["rows"] == ingest["accepted"] - 1
    code, push, _ = run_json(capsys, "push", "--library", lib, "--output", staging, "--repo-id", "alice/m",
                             "--dry-run")
    assert code == 0 and push["dry_run"] is True and push["built"] is None  # staging was current
    assert {item["path_in_repo"] for item in push["plan"]} >= {"README.md", "tiles.db", "centroids.npy"}
    code, restore, _ = run_json(capsys, "restore", staging, "--library", tmp_path / "restored")
    assert code == 0 and restore["tiles"] == build["rows"]
    code, report, _ = run_json(capsys, "report", "--library", lib, "--output", tmp_path / "report", "--threads", "1")
    assert code == 0 and (tmp_path / "report" / "index.html").is_file() and report["index"].endswith("index.html")
    code, mosaic, _ = run_json(capsys, "mosaic", "--library", lib, SAMPLE_TARGET, "--output", tmp_path / "m.png",
                               "--grid", "4x3", "--tile-size", "8")
    assert code == 0 and (mosaic["cols"], mosaic["rows"], mosaic["width"]) == (4, 3, 32)
    assert (tmp_path / "m.png").is_file()


# --------------------------------------------------------------------------- meeting people where they are


def test_a_bare_call_lists_every_command_and_a_typo_names_the_closest(tmp_path, cli):
    res = cli()
    assert res.returncode == 0 and res.stdout.startswith("usage: python -m builder") and res.stderr == ""
    listed = {line.split()[0] for line in res.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert set(COMMANDS) <= listed
    res = cli("frobnicate")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: python -m builder: invalid choice: 'frobnicate' is not a command; the commands are "
        + ", ".join(COMMANDS)]


def test_a_closed_pipe_ends_the_command_quietly(tmp_path, cli):
    """``query ... | head``: the reader went away; no ``error: Broken pipe``, the status of a SIGPIPE."""
    assert cli("init").returncode == 0
    proc = subprocess.Popen(builder_argv("query", "--hex", "2e8b57", "-k", "20"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=bare_env())
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_a_missing_library_points_to_the_libraries_nearby_before_init(tmp_path, cli):
    demo_library = tmp_path / "demo_output" / "mosaic_library"
    assert cli("init", "--library", demo_library, cwd=tmp_path).returncode == 0
    # A release beside it (tiles.db and centroids.npy too, with its card) is not offered as a library.
    tile = tmp_path / "tile.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(tile)
    assert cli("ingest", "--library", demo_library, tile, cwd=tmp_path).returncode == 0
    staging = tmp_path / "demo_output" / "staging"
    assert cli("build", "--library", demo_library, "--output", staging, cwd=tmp_path).returncode == 0
    assert (staging / "tiles.db").is_file() and (staging / "centroids.npy").is_file()
    res = cli("stats", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: no library at mosaic_library; libraries nearby: demo_output/mosaic_library: pass one with "
        "`--library demo_output/mosaic_library` (or create a new one here with "
        "`python -m builder init --library mosaic_library`)"]
    assert not (tmp_path / "mosaic_library").exists()
    res = cli("stats", "--library", demo_library, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("1 tile in 1/5000 buckets"), res.stderr


def test_two_inits_at_once_the_loser_names_the_file_that_exists(tmp_path):
    """Both start before either has written anything; one wins, the other is told centroids.npy exists
    (never about a scratch file), every time."""
    for round_no in range(4):
        root = tmp_path / f"race{round_no}"
        procs = [subprocess.Popen(builder_argv("init", "--library", root), cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bare_env())
                 for _ in range(2)]
        results = [(proc.wait(timeout=120), *proc.communicate()) for proc in procs]
        assert sorted(code for code, _out, _err in results) == [0, 2], results
        (loser_err,) = [err for code, _out, err in results if code == 2]
        assert loser_err.startswith(f"error: {root} is already initialised: {root / 'centroids.npy'} ")
        assert len(loser_err.strip().splitlines()) == 1 and ".part" not in loser_err
        assert sorted(p.name for p in (root / "temp").iterdir()) == []


def test_names_are_printed_escaped_so_no_line_can_be_forged(tmp_path, real_tiles_dir, cli):
    """A file named ``a\nerror: forged.png`` (and one with a terminal escape) in every message that
    names it, through the real CLI: ingest's rejections and error line, verify's problems, a missing
    library; each stays one line, its control characters escaped."""
    forged = "a\nerror: forged.png"
    escape = "b\x1b[2Jc.png"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / forged).write_bytes(b"not an image at all")
    (inputs / escape).write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    shutil.copy(sorted(real_tiles_dir.glob("*.png"))[0], inputs / "good.png")
    assert cli("init").returncode == 0
    res = cli("ingest", inputs, "--workers", "1")
    assert res.returncode == 1
    everything = res.stdout + res.stderr
    assert not any(line.startswith(("error: forged", "forged")) for line in everything.splitlines())
    assert "\x1b" not in everything and "a\\nerror: forged.png" in everything and "b\\x1b[2Jc.png" in everything
    (error_line,) = res.stderr.strip().splitlines()
    assert error_line.startswith("error: 2 of 3 inputs unusable (corrupt 1, not_image 1)")

    bucket = next((tmp_path / "mosaic_library").glob("bucket_*"))
    (bucket / forged).write_bytes(b"stray")  # a file with no row: verify names it
    res = cli("verify", "--quick")
    assert res.returncode == 1 and "a\\nerror: forged.png" in res.stdout
    assert not any(line.startswith("error: forged") for line in (res.stdout + res.stderr).splitlines())

    res = cli("stats", "--library", "lib\nerror: forged")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "lib\\nerror: forged" in res.stderr


def test_counts_agree_with_their_nouns(tmp_path, real_tiles_dir, cli):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(real_tiles_dir.glob("*.png"))[0], one / "t.png")
    assert cli("init").returncode == 0
    assert cli("ingest", one, "--workers", "1").returncode == 0
    res = cli("stats")
    assert res.stdout.splitlines()[0].startswith("1 tile in 1/5000 buckets (0.0%)")
    assert res.stdout.splitlines()[1] == "  (no region: ingested): 1 real tile"
