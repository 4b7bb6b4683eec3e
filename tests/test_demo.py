"""``demo`` end to end, small: every artefact it promises exists and is what it claims to be."""

import json
import sqlite3

import pyarrow.parquet as pq
import pytest
from PIL import Image

from builder.cli import main
from builder.cli.workflow import MOSAIC_GRID, MOSAIC_TILE
from tests.support.html import Links


@pytest.mark.slow
def test_demo_runs_the_whole_job_offline_and_again(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--max-tiles", "40", "--workers", "1", "--no-synthesize"]) == 0
    lines = capsys.readouterr().out.splitlines()
    done = next(i for i, line in enumerate(lines) if line.startswith("demo done in "))
    steps = [line.split("]")[0].lstrip("[") for line in lines[:done]]
    assert steps == ["init", "harvest", "verify", "build", "report", "mosaic"]
    assert "earth zoom 6: 40 accepted" in lines[1]
    assert "no problems" in lines[2]
    assert str(out / "mosaic.png") in lines[done]
    # The summary names what to run next on the library it made, with --library (not the default path).
    assert lines[done + 1] == "next, explore the library:"
    assert f"  python -m builder stats --library {out / 'mosaic_library'}" in lines[done + 2:]
    assert all(f"--library {out / 'mosaic_library'}" in line for line in lines[done + 2:] if "python -m builder" in line)

    root = out / "mosaic_library"
    with sqlite3.connect(root / "tiles.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0] == 40
        assert {r[0] for r in conn.execute("SELECT DISTINCT source FROM tiles")} == {"earth"}

    staging = out / "staging"
    shards = sorted((staging / "data").glob("train-*.parquet"))
    assert shards and sum(pq.ParquetFile(s).metadata.num_rows for s in shards) == 40
    assert (staging / "README.md").is_file() and (staging / "centroids.npy").is_file() and (staging / "tiles.db").is_file()

    index = out / "report" / "index.html"
    parser = Links()
    parser.feed(index.read_text(encoding="utf-8"))
    assert parser.urls and all((index.parent / link).is_file() for link in parser.urls)

    with Image.open(out / "mosaic.png") as img:
        img.load()
        assert img.format == "PNG" and img.size == (MOSAIC_GRID[0] * MOSAIC_TILE, MOSAIC_GRID[1] * MOSAIC_TILE)

    # A second run reuses the library (already at --max-tiles) and rebuilds the rest.  With --json
    # stdout is one JSON object and the step lines go to stderr.
    assert main(["demo", "--output", str(out), "--max-tiles", "40", "--workers", "1", "--json", "--no-synthesize"]) == 0
    captured = capsys.readouterr()
    again = captured.err.splitlines()
    assert again[0].startswith("[init] reusing the library") and "[harvest] skipped" in again[1]
    assert "no problems" in again[2]
    result = json.loads(captured.out)
    assert [s["step"] for s in result["steps"]] == ["init", "harvest", "verify", "build", "report", "mosaic"]
    assert result["mosaic"] == str(out / "mosaic.png") and result["library"] == str(root)
    with sqlite3.connect(root / "tiles.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0] == 40


@pytest.mark.slow
def test_demo_synthesizes_every_empty_bucket_and_compares_the_mosaics(tmp_path, capsys):
    """The default demo fills every bucket the harvest left empty with flagged synthetic tiles and
    shows the difference: the real-only mosaic falls back in more cells than the one using them."""
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--max-tiles", "40", "--workers", "2", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    # Not on a terminal: the synthesis shows it is alive in lines of its own, first to last.
    progress = [line for line in captured.err.splitlines() if line.startswith("[synthesize]") and " of " in line
                and "tiles (" in line]
    assert len(progress) >= 2 and progress[0].startswith("[synthesize] 0 of ")
    done, total = progress[-1].split("]")[1].split(" tiles")[0].split(" of ")
    assert done.strip().replace(",", "") == total.strip().replace(",", "")
    # Both mosaics' fidelity side by side, in the compare line and the JSON.
    compare = result["steps"][-1]["summary"]
    fidelity, real_only = result["figures"]["fidelity"], result["figures"]["fidelity_real_only"]
    assert (f"with synthetic tiles {fidelity['delta_e2000']:.2f} / {fidelity['ssim']:.3f}, real tiles only "
            f"{real_only['delta_e2000']:.2f} / {real_only['ssim']:.3f}") in compare
    assert result["next"][0] == f"python -m builder stats --library {out / 'mosaic_library'}"
    assert [s["step"] for s in result["steps"]] == ["init", "harvest", "synthesize", "verify", "build", "report",
                                                    "mosaic", "compare"]
    figures = result["figures"]
    assert figures["buckets_covered"] == 5000 and figures["buckets_covered_real"] < 100
    assert figures["fallback_cells"] == 0 < figures["fallback_cells_real_only"]
    assert figures["synthetic_cells"] > 0 and "no problems" in result["steps"][3]["summary"]
    assert (out / "mosaic_real_only.png").is_file() and (out / "staging" / "synthetic").is_dir()
    # The library itself (verified deep above): every bucket holds a tile, almost all of them
    # textured (the uses per source follow from the need), the uses spread evenly.
    with sqlite3.connect(out / "mosaic_library" / "tiles.db") as conn:
        assert conn.execute("SELECT COUNT(DISTINCT bucket_id) FROM tiles").fetchone()[0] == 5000
        synthetic, flat = conn.execute("SELECT COUNT(*), SUM(derived_from IS NULL) FROM tiles "
                                       "WHERE synthetic = 1").fetchone()
        uses = [n for (n,) in conn.execute("SELECT COUNT(*) FROM tiles WHERE synthetic = 1 "
                                            "AND derived_from IS NOT NULL GROUP BY derived_from")]
    assert flat <= 0.05 * synthetic
    assert max(uses) <= -(-synthetic // len(uses)) + 1  # about ceil(wanted / sources)


def test_demo_bad_options_are_one_line(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "d"), "--zoom", "15"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --zoom for the demo must be within 2..10 (the embedded image's detail), got 15"
    assert not (tmp_path / "d").exists()
