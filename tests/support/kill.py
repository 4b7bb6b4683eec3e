"""Killing what a test started: ``python -m builder`` runs in their own process group (so the pool
of worker processes a run starts dies with it), and forked writers armed to die at a chosen step.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.cli import cli_env
from tests.support.paths import REPO


def start_group(argv: Sequence[str], *, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env: Mapping[str, str] | None = None, cwd: Path | str = REPO, text: bool = False) -> subprocess.Popen:
    """Start ``argv`` as the leader of a new process group (a new session), stdin closed; ``env``
    defaults to :func:`tests.support.cli.cli_env`."""
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=text, cwd=cwd,
                            env=dict(env) if env is not None else cli_env(), start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``proc``'s whole process group (gone already is fine) and reap ``proc``."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait()


@contextmanager
def group_killed_on_exit(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Leave no run behind: an exception (a failed assertion, a timeout, Ctrl-C) kills ``proc``'s
    group whatever the state of its leader; a normal exit kills it if it still runs."""
    try:
        yield proc
    except BaseException:
        kill_group(proc)
        raise
    finally:
        if proc.poll() is None:
            kill_group(proc)


def sigkill_self() -> None:
    """SIGKILL this process (a forked writer armed to die at a chosen step of its work)."""
    os.kill(os.getpid(), signal.SIGKILL)


def die_on_call(module: object, name: str, call: int) -> None:
    """Patch ``module.name`` so that its ``call``-th call (1-based) SIGKILLs this (child) process."""
    real, calls = getattr(module, name), []

    def patched(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            sigkill_self()
        return real(*args, **kwargs)

    setattr(module, name, patched)


def die_on_unlink(doomed: Callable[[pathlib.Path], bool]) -> None:
    """Patch ``Path.unlink`` in this (child) process: removing a path for which ``doomed(path)``
    holds SIGKILLs the process instead."""
    real_unlink = pathlib.Path.unlink

    def unlink(self, *args, **kwargs):
        if doomed(self):
            sigkill_self()
        return real_unlink(self, *args, **kwargs)

    pathlib.Path.unlink = unlink
