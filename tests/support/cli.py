"""The command line in fresh processes: ``python -m builder ...`` as a user runs it.

:func:`run_cli` is the one runner (the ``cli`` fixture is it, run in the test's tmp_path with a
bare environment); :func:`builder_argv` is the argument list for ``Popen`` (runs a test kills).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.support.paths import REPO

# Variables pytest and coverage set for themselves: a user's shell has none of them.
TEST_RUNNER_PREFIXES = ("PYTEST", "COV_")


def cli_env(*, without: Iterable[str] = (), **extra: str) -> dict[str, str]:
    """This process's environment without the test runner's variables (and any whose name starts
    with a prefix in ``without``), the checkout under test on ``PYTHONPATH``, then ``extra``."""
    drop = (*TEST_RUNNER_PREFIXES, *without)
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def offline_env(**extra: str) -> dict[str, str]:
    """:func:`cli_env` without any Hugging Face setting of this machine, and offline: a command that
    reaches for the Hub fails instead of fetching."""
    return cli_env(without=("HF_",), HF_HUB_OFFLINE="1", **extra)


def bare_env(**extra: str) -> dict[str, str]:
    """The least a command needs: the checkout on ``PYTHONPATH`` and a system ``PATH`` (no HOME, no
    token, no cache settings of this machine), then ``extra``."""
    return {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **extra}


def builder_argv(*args: object, prefix: Iterable[str] = ()) -> list[str]:
    """``[*prefix, python, -m, builder, *args]`` with every argument as a string."""
    return [*map(str, prefix), sys.executable, "-m", "builder", *map(str, args)]


def run_cli(*args: object, cwd: Path | str = REPO, env: Mapping[str, str] | None = None, timeout: float = 300,
            prefix: Iterable[str] = ()) -> subprocess.CompletedProcess:
    """Run ``python -m builder ARGS`` to the end in a fresh process (``env`` defaults to
    :func:`cli_env`); stdout and stderr captured as text.  ``timeout`` only guards against a hang."""
    return subprocess.run(builder_argv(*args, prefix=prefix), capture_output=True, text=True, cwd=cwd,
                          env=dict(env) if env is not None else cli_env(), timeout=timeout)
