"""An installed copy works on its own: the wheel `pip install .` builds carries the shipped data,
``mosaic_library.py`` and the console script, and runs the demo from a folder far from the checkout.

The wheel is built as ``pip install .`` builds it (an isolated build; setuptools comes from the
package index) from a copy of the checkout's sources, so the checkout gets no ``build/``.  It is
installed, without dependencies, into a fresh virtual environment; that environment then sees the
running interpreter's packages through a ``.pth`` file, written after the install so that pip
never sees (or touches) what the running environment has installed.  Resolving the dependencies
themselves from the index takes minutes; ``scripts/setup.sh`` does it from the same metadata on
every fresh machine (CI included), with ``pip install -e .[test]``.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.support.paths import REPO

# What a wheel is built from (pyproject.toml names the rest: packages, the data mapping).
SOURCES = ("pyproject.toml", "README.md", "requirements.txt", "requirements-test.txt", "mosaic_library.py",
           "builder", "data")


def run(cmd, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.mark.slow
def test_an_installed_copy_runs_the_demo_from_another_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    # No PYTHONPATH anywhere below: it would show pip (and the installed copy) the checkout.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", src], tmp_path, clean)
    (wheel,) = (tmp_path / "dist").glob("mosaic_library-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"builder/data/{p.relative_to(REPO / 'data')}" for p in (REPO / "data").rglob("*") if p.is_file()}
    assert shipped <= names and "builder/data/centroids.npy" in shipped and "mosaic_library.py" in names
    assert {"builder/__main__.py", "builder/cli/__init__.py", "builder/publish/__init__.py"} <= names
    # Every file of the package that is not Python source ships too (the DZI viewer's script, say).
    package_files = {str(p.relative_to(REPO)) for p in (REPO / "builder").rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert package_files <= names, sorted(package_files - names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, clean)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        tmp_path, clean)
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, clean)
                .stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_running_env_packages.pth").write_text("\n".join(sorted(deps)) + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**clean, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    where = run([python, "-c", "import builder, mosaic_library; from builder.core.layout import DATA_DIR, "
                 "SHIPPED_CENTROIDS; print(builder.__file__, mosaic_library.__file__, DATA_DIR, "
                 "SHIPPED_CENTROIDS.is_file(), sep='\\n')"], elsewhere, env).stdout.split()
    assert where == [str(site / "builder" / "__init__.py"), str(site / "mosaic_library.py"),
                     str(site / "builder" / "data"), "True"]

    help_text = run([venv / "bin" / "mosaic-library", "--help"], elsewhere, env).stdout
    assert help_text.startswith("usage: mosaic-library") and "demo" in help_text

    demo = run([python, "-m", "builder", "demo", "--max-tiles", "30", "--workers", "1", "--no-synthesize"], elsewhere, env)
    lines = demo.stdout.splitlines()
    assert "with the shipped centroids (seed 0)" in lines[0]
    assert any(line.startswith("demo done in ") for line in lines)
    assert "  python -m builder stats --library demo_output/mosaic_library" in lines  # what to run next
    out = elsewhere / "demo_output"
    assert (out / "mosaic_library" / "centroids.npy").read_bytes() == (REPO / "data" / "centroids.npy").read_bytes()
    assert (out / "mosaic.png").is_file() and (out / "report" / "index.html").is_file()
    assert sorted((out / "staging" / "data").glob("train-*.parquet"))
    # The Deep Zoom output inlines the shipped viewer script: it must be found in the installed copy.
    run([python, "-m", "builder", "mosaic", REPO / "data" / "sample_target.jpg", "--library", out / "mosaic_library",
         "--output", elsewhere / "deep.dzi", "--grid", "8x6"], elsewhere, env)
    assert (elsewhere / "deep.dzi").is_file() and "OpenSeadragon" in (elsewhere / "deep.html").read_text()
