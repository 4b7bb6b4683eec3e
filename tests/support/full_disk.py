"""Run commands on a library whose disk is really full: a small tmpfs, filled to the last byte.

:func:`run_on_full_disk` re-runs this module under ``unshare --user --map-root-user --mount`` (a
private mount namespace, no root needed where user namespaces are allowed), which mounts a tmpfs,
copies the library onto it, fills the rest with a file until the kernel says ``ENOSPC``, runs the
commands (``{library}`` in them is the library on the full disk) and reports, as JSON, each one's
exit status and output, the free bytes before and after, and the files left in the library's
``.cache/``.  The tmpfs goes away with the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.cli import builder_argv, cli_env
from tests.support.paths import REPO


def run_on_full_disk(library: Path, work: Path, commands: list[list[str]], prepare: str = "",
                     size_mb: int | None = None) -> dict:
    """Copy ``library`` onto a full tmpfs under ``work`` and run ``commands`` (argument lists for
    ``python -m builder``; ``{library}`` stands for the copy) there; ``prepare`` is Python run with
    ``lib`` (the copy's Path) before the disk is filled.  Returns the report (see the module doc)."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to mount a private tmpfs"
    size = size_mb or max(4, int(sum(f.stat().st_size for f in library.rglob("*") if f.is_file()) / 2**20 * 1.6) + 2)
    job = work / "full_disk.json"
    job.write_text(json.dumps({"library": str(library), "mount": str(work / "mnt"), "size_mb": size,
                               "commands": commands, "prepare": prepare}))
    res = subprocess.run([unshare, "--user", "--map-root-user", "--mount", sys.executable, "-m", "tests.support.full_disk",
                          str(job)], capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=600)
    assert res.returncode == 0, f"full-disk run failed ({res.returncode}): {res.stderr[-3000:]}"
    return json.loads(res.stdout)


def _free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _fill(path: Path) -> None:
    """Write zeros into ``path`` until the file system refuses one more byte."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as fh:
        for size in (65536, 4096, 1):
            try:
                while True:
                    fh.write(chunk[:size])
            except OSError:
                continue


def _inside(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    mount = Path(job["mount"])
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={job['size_mb']}m", "tmpfs", str(mount)], check=True)
    lib = mount / Path(job["library"]).name
    shutil.copytree(job["library"], lib, symlinks=True)
    if job["prepare"]:
        exec(job["prepare"], {"lib": lib, "Path": Path, "os": os})  # noqa: S102 - the test's own setup code
    _fill(mount / "filler")
    report = {"free_before": _free(mount), "runs": []}
    for command in job["commands"]:
        argv = [arg.replace("{library}", str(lib)) for arg in command]
        res = subprocess.run(builder_argv(*argv), capture_output=True, text=True, cwd=REPO,
                             env=cli_env(), timeout=300)
        report["runs"].append({"argv": command, "returncode": res.returncode, "stdout": res.stdout,
                               "stderr": res.stderr})
    report["free_after"] = _free(mount)
    cache = lib / ".cache"
    report["cache"] = {p.name: p.stat().st_size for p in cache.iterdir()} if cache.is_dir() else {}
    print(json.dumps(report))


if __name__ == "__main__":
    _inside(sys.argv[1])
