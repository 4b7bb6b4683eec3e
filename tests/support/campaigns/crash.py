"""SIGKILL campaigns against real writers (``python -m builder ingest`` / ``harvest``).

Each round starts the real CLI in its own process group (so its process pool is in it),
kills the whole group at a random moment, and checks the library the way a user would find
it.  Kill moments are drawn from three triggers so the rare windows are hit too:

* ``time``     a uniformly random delay after the start (imports, decode, fetch, anything);
* ``scratch``  up to 0.4 s after the first tile lands in ``temp/`` (workers mid-batch);
* ``journal``  the instant ``temp/journal.json`` appears: between the batch's renames and
               its commit, or between the commit and the journal's removal;
* ``commit``   the instant a read-only connection sees the row count grow: right after a commit.

Right before each kill the committed ids are read through a read-only SQLite connection (the
snapshot); after it:

1. before any writer opens the library, every row a reader sees has its file;
2. every id of the snapshot is still there (tiles lost must stay 0);
3. the next writer's open empties ``temp/`` and leaves files == rows exactly;
4. no bucket over the cap, no phash twice in a bucket, ``verify`` clean;
5. harvest only: every stored tile's ``fetched`` row says ``accepted`` and vice versa, and
   (with the loopback tile server) no tile was ever served twice across all the kills.

:func:`burn_campaign` also counts what each kill costs the plan: after a kill the fetch
ledger's recovery releases every claim never requested and keeps the answers already fetched,
so only the requests on the wire stay ``claimed`` (at most one per fetch thread).
:func:`burn_scenario` is the plain version: a few kills right after a run's first commit.

Used by ``tests/test_crash.py`` and ``tests/test_harvest_kill.py`` (short, CI) and
``bench/kill_campaign.py`` (long, figures).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder.acquire.ledger import CLAIMED, FetchLedger
from builder.core.errors import LibraryError, LibraryLocked
from builder.core.layout import bucket_name, parse_bucket_dir
from builder.core.library import Library
from builder.ops.verify import verify_library
from tests.support.cli import builder_argv, cli_env
from tests.support.images import raw_png
from tests.support.kill import group_killed_on_exit, kill_group, start_group
from tests.support.paths import BLUEMARBLE, REPO

TRIGGERS = ("time", "scratch", "journal", "commit")


@dataclass
class Figures:
    """What a campaign did and found; ``violations`` and ``tiles_lost`` must stay empty/0."""

    writer: str = ""
    rounds: int = 0
    kills: int = 0
    finished: int = 0  # runs that completed before their kill moment (exit status checked)
    by_trigger: Counter = field(default_factory=Counter)
    mid_batch: int = 0  # kills that left a batch journal behind (replayed by the next open)
    scratch_cleaned: int = 0  # temp/ entries left by kills, removed by the next open
    orphans_rolled_back: int = 0  # files renamed into buckets whose rows never committed
    tiles_lost: int = 0
    evicted: int = 0  # synthetic tiles of the snapshot that gave way to a tile committed since
    rows: int = 0
    served_twice: int = 0  # harvest over HTTP: tiles the server answered 200 more than once
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    startup: float | None = None  # a writer's start-up here, measured at the first round (startup_seconds)

    def summary(self) -> str:
        triggers = ", ".join(f"{k} {v}" for k, v in sorted(self.by_trigger.items()))
        return (
            f"{self.writer}: {self.kills} kills survived ({triggers}), {self.finished} runs finished between kills, "
            f"{self.mid_batch} kills mid-batch (journal replayed), {self.orphans_rolled_back} uncommitted files "
            f"rolled back, {self.scratch_cleaned} scratch files cleaned, {self.rows} tiles at the end, "
            f"tiles lost {self.tiles_lost}, served twice {self.served_twice}, "
            f"violations {len(self.violations)}, {self.seconds:.0f} s (a writer starts in {self.startup or 0:.1f} s here)"
        )


# --------------------------------------------------------------------------- the tile pool


def make_tile_pool(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct 256x256 crops of the Blue Marble image as PNG files.

    The pipeline stores such plain RGB PNGs byte for byte, which lets a campaign tell stored
    inputs by their sha256 and offer each round fresh ones.
    """
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(BLUEMARBLE) as img:
        world = np.asarray(img.convert("RGB"))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        x = int(rng.integers(0, world.shape[1] - 256))
        y = int(rng.integers(0, world.shape[0] - 256))
        path = folder / f"pool_{i:05d}.png"
        path.write_bytes(raw_png(world[y:y + 256, x:x + 256]))
        paths.append(path)
    return paths


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- looking at a library


def ro_connect(root: Path) -> sqlite3.Connection:
    """A plain read-only connection, independent of builder.core.db (what a notebook user opens)."""
    return sqlite3.connect(f"{(root / 'tiles.db').resolve().as_uri()}?mode=ro", uri=True, timeout=30)


def committed_rows(root: Path) -> dict[str, tuple[int, str]]:
    """id -> (bucket_id, phash) of every committed row."""
    conn = ro_connect(root)
    try:
        return {i: (b, h) for i, b, h in conn.execute("SELECT id, bucket_id, phash FROM tiles")}
    finally:
        conn.close()


def row_count(root: Path) -> int:
    conn = ro_connect(root)
    try:
        return conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    finally:
        conn.close()


def bucket_files(root: Path) -> set[tuple[int, str]]:
    """(bucket_id, file name) of every entry in the bucket folders."""
    found = set()
    for entry in root.iterdir():
        bucket = parse_bucket_dir(entry.name)
        if bucket is not None and entry.is_dir():
            found.update((bucket, f.name) for f in entry.iterdir())
    return found


def open_writer(root: Path, timeout: float = 15.0) -> Library:
    """Open for writing, waiting for the killed group's last process to let go of the lock."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Library.open(root)
        except LibraryLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def check_after_kill(root: Path, snapshot: dict[str, tuple[int, str]], cap: int, figures: Figures,
                     harvest: bool = False, synthetic: frozenset[str] | set[str] = frozenset()) -> None:
    """Every invariant of the module docstring, in the order a user meets them.

    ``synthetic``: ids of the snapshot that are synthetic tiles; one may be gone only where a
    tile committed after the snapshot took its place (a real tile evicts a synthetic one).
    """
    bad = figures.violations
    label = f"round {figures.rounds}"
    # 1. A reader, before any writer has cleaned up, sees no row without its file.
    rows = committed_rows(root)
    for tile_id, (bucket, _h) in rows.items():
        if not (root / bucket_name(bucket) / f"{tile_id}.png").is_file():
            bad.append(f"{label}: reader sees row {tile_id} without its file")
    # 2. Nothing committed before the kill is gone.
    lost = set(snapshot) - set(rows)
    newcomers = {bucket for tile_id, (bucket, _h) in rows.items() if tile_id not in snapshot}
    evicted = {t for t in lost if t in synthetic and snapshot[t][0] in newcomers}
    lost -= evicted
    figures.evicted += len(evicted)
    figures.tiles_lost += len(lost)
    bad.extend(f"{label}: tile {t} committed before the kill is gone" for t in sorted(lost))
    # What the kill left behind, before recovery.
    temp = root / "temp"
    leftovers = list(temp.iterdir()) if temp.is_dir() else []
    figures.scratch_cleaned += len(leftovers)
    figures.mid_batch += (temp / "journal.json").exists()
    files = bucket_files(root)
    figures.orphans_rolled_back += len(files - {(b, f"{i}.png") for i, (b, _h) in rows.items()})
    # 3. The next writer's open replays the journal and empties temp/.
    lib = open_writer(root)
    try:
        if list(lib.temp_dir.iterdir()):
            bad.append(f"{label}: temp/ not empty after open: {sorted(p.name for p in lib.temp_dir.iterdir())[:5]}")
        rows = committed_rows(root)
        expected = {(b, f"{i}.png") for i, (b, _h) in rows.items()}
        files = bucket_files(root)
        if files != expected:
            bad.append(f"{label}: files != rows after open: {len(files - expected)} orphan files, "
                       f"{len(expected - files)} rows without file")
        # 4. Cap, duplicates, verify.
        per_bucket = Counter(b for b, _h in rows.values())
        over = {b: n for b, n in per_bucket.items() if n > cap}
        if over:
            bad.append(f"{label}: buckets over the cap {cap}: {over}")
        dups = [k for k, n in Counter(rows.values()).items() if n > 1]
        if dups:
            bad.append(f"{label}: phash twice in a bucket: {dups[:3]}")
        report = verify_library(lib, deep=False)
        if not report.ok:
            bad.append(f"{label}: verify: {report.summary()}")
        if harvest:
            check_fetched(lib, label, bad)
        figures.rows = len(rows)
    finally:
        lib.close()


def check_fetched(lib: Library, label: str, bad: list[str]) -> None:
    """Harvest's bookkeeping commits with its tiles: stored <=> ``fetched.status = 'accepted'``."""
    conn = lib.conn
    unmatched = conn.execute(
        "SELECT COUNT(*) FROM tiles t LEFT JOIN fetched f ON f.source = t.source AND f.z = t.z AND f.x = t.x "
        "AND f.y = t.y WHERE t.z IS NOT NULL AND (f.status IS NULL OR f.status != 'accepted')"
    ).fetchone()[0]
    accepted = conn.execute("SELECT COUNT(*) FROM fetched WHERE status = 'accepted'").fetchone()[0]
    stored = conn.execute("SELECT COUNT(*) FROM tiles WHERE z IS NOT NULL").fetchone()[0]
    if unmatched or accepted != stored:
        bad.append(f"{label}: fetched/tiles disagree: {unmatched} tiles without an accepted fetched row, "
                   f"{accepted} accepted rows for {stored} harvested tiles")


# --------------------------------------------------------------------------- running and killing


# A fresh ``python -m builder stats`` on an idle 2-core machine of this project's kind (measured:
# 0.3-0.35 s).  A slower start-up means a loaded machine, where every step of a writer is slower.
IDLE_STARTUP = 0.35


def startup_seconds(root: Path) -> float:
    """Wall time of a fresh ``python -m builder stats`` on ``root``: what a writer costs before it
    does any work on this machine now (imports, opening the library).  Campaigns stretch their
    kill windows by it (see :func:`run_and_kill`), so that on a loaded machine the kills still land
    in the work, not in start-up, and the events they wait for still come."""
    started = time.monotonic()
    subprocess.run(builder_argv("stats", "--library", root), env=cli_env(), cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.monotonic() - started


def run_and_kill(cmd: Sequence[str], root: Path, trigger: str, rng: random.Random, max_delay: float,
                 log: Path, startup: float = 0.0) -> tuple[bool, dict, int, str]:
    """Start ``cmd`` in a new process group and SIGKILL the group at a ``trigger`` moment.

    Returns ``(killed, snapshot, returncode, fired)``; ``fired`` is the trigger, or
    ``deadline`` when its event did not come within the window: ``startup`` (see
    :func:`startup_seconds`) plus ``max_delay``, stretched by how much slower than
    :data:`IDLE_STARTUP` the start-up was; a ``time`` kill falls in that window after start-up.
    The snapshot (committed rows) is read right before the kill, except for the ``journal``
    trigger, whose window is a few milliseconds: there it is the last one read while polling (at
    most 50 ms old, still before the kill).
    """
    with open(log, "wb") as err:
        proc = start_group(cmd, stderr=err)
    with group_killed_on_exit(proc):
        started = time.monotonic()
        journal, temp = root / "temp" / "journal.json", root / "temp"
        base = row_count(root)
        snapshot, read_at = committed_rows(root), started
        window = max_delay * max(1.0, startup / IDLE_STARTUP)
        fire_at = started + startup + rng.uniform(0.15, window) if trigger == "time" else None
        fresh = trigger != "journal"
        fired = "time" if trigger == "time" else "deadline"
        while proc.poll() is None:
            now = time.monotonic()
            if fire_at is None:
                if trigger == "journal" and journal.exists():
                    fire_at, fired = now + rng.uniform(0, 0.002), trigger
                elif trigger == "commit" and row_count(root) > base:
                    fire_at, fired = now, trigger
                elif trigger == "scratch" and any(p.suffix == ".png" for p in temp.iterdir()):
                    fire_at, fired = now + rng.uniform(0, 0.4), trigger
                elif now - started > startup + window:
                    fire_at = now
            if fire_at is not None and now >= fire_at:
                break
            if now - read_at > 0.05:
                snapshot, read_at = committed_rows(root), now
            time.sleep(0.0005 if trigger == "journal" else 0.003)
        if proc.poll() is not None:
            return False, {}, proc.returncode, fired
        if fresh:
            snapshot = committed_rows(root)
        kill_group(proc)
        return True, snapshot, proc.returncode, fired


def _offer(pool: Sequence[Path], pool_sha: dict[Path, str], stored: set[str], rng: random.Random,
           fresh: int, repeats: int) -> list[Path]:
    """Inputs for one ingest round: ``fresh`` not stored yet, plus ``repeats`` stored ones."""
    new = [p for p in pool if pool_sha[p] not in stored]
    old = [p for p in pool if pool_sha[p] in stored]
    offer = rng.sample(new, min(fresh, len(new))) + rng.sample(old, min(repeats, len(old)))
    rng.shuffle(offer)
    return offer


def _kill_round(cmd: list[str], root: Path, cap: int, rng: random.Random, max_delay: float, log: Path,
                figures: Figures, harvest: bool = False) -> tuple[str, bool]:
    """One round of a campaign: run ``cmd``, kill it at a random trigger, tally, check the library."""
    trigger = rng.choice(TRIGGERS)
    if figures.startup is None:
        figures.startup = startup_seconds(root)
    killed, snapshot, code, fired = run_and_kill(cmd, root, trigger, rng, max_delay, log, figures.startup)
    if killed:
        figures.kills += 1
        figures.by_trigger[fired] += 1
    else:
        figures.finished += 1
        if code != 0:
            figures.violations.append(f"round {figures.rounds}: {figures.writer} exited {code}: {log.read_text()[-500:]}")
    check_after_kill(root, snapshot, cap, figures, harvest=harvest)
    return trigger, killed


def ingest_campaign(root: Path, pool: Sequence[Path], kills: int, cap: int = 20, seed: int = 0,
                    max_delay: float = 2.2, fresh: int = 80, repeats: int = 360, workers: int = 2,
                    max_rounds: int | None = None, min_mid_batch: int = 0,
                    progress: Callable[[str], None] | None = None) -> Figures:
    """Kill ``python -m builder ingest --workers 2`` ``kills`` times; check after every kill.

    ``min_mid_batch``: keep going (up to ``max_rounds``) until that many kills landed inside a
    batch's store (journal on disk), the rarest and most telling moment.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    figures = Figures(writer="ingest")
    Library.create(root, cap=cap).close()
    pool_sha = {p: sha256(p) for p in pool}
    stored: set[str] = set()
    seen_files: set[Path] = set()
    log = root.parent / f"{root.name}.stderr"
    max_rounds = max_rounds or kills * 4
    while (figures.kills < kills or figures.mid_batch < min_mid_batch) and figures.rounds < max_rounds:
        figures.rounds += 1
        offer = _offer(pool, pool_sha, stored, rng, rng.randint(max(1, fresh // 4), fresh), repeats)
        cmd = builder_argv("ingest", "--library", root, "--workers", workers,
                           *offer)
        trigger, killed = _kill_round(cmd, root, cap, rng, max_delay, log, figures)
        for f in root.glob("bucket_*/*.png"):
            if f not in seen_files:
                seen_files.add(f)
                stored.add(sha256(f))
        if progress:
            progress(f"round {figures.rounds}: {trigger} {'kill' if killed else 'finished'}, {figures.rows} tiles")
    figures.seconds = time.monotonic() - started
    return figures


def harvest_campaign(root: Path, source: str, kills: int, cap: int = 6, seed: int = 0, max_delay: float = 4.0,
                     zoom: int = 12, threads: int = 4, batch: int = 40, max_rounds: int | None = None,
                     served_twice: Callable[[], int] | None = None,
                     progress: Callable[[str], None] | None = None) -> Figures:
    """Kill ``python -m builder harvest`` ``kills`` times; check after every kill.

    ``served_twice()`` (the loopback server's count of tiles answered 200 more than once) is
    checked after every round: a killed batch's tiles stay claimed and are never asked again.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    figures = Figures(writer="harvest")
    Library.create(root, cap=cap).close()
    log = root.parent / f"{root.name}.stderr"
    max_rounds = max_rounds or kills * 4
    while figures.kills < kills and figures.rounds < max_rounds:
        figures.rounds += 1
        cmd = builder_argv("harvest", "--library", root, "--source", source,
                           "--zoom", zoom, "--threads", threads, "--batch", batch, "--phase", "all",
                           "--patience", "1000", "--seed", str(rng.randrange(1000)))
        trigger, killed = _kill_round(cmd, root, cap, rng, max_delay, log, figures, harvest=True)
        if served_twice is not None:
            figures.served_twice = served_twice()
            if figures.served_twice:
                figures.violations.append(f"round {figures.rounds}: {figures.served_twice} tiles served twice")
        if progress:
            progress(f"round {figures.rounds}: {trigger} {'kill' if killed else 'finished'}, {figures.rows} tiles")
    figures.seconds = time.monotonic() - started
    return figures


def synthesize_campaign(root: Path, kills: int, max_uses: int = 2, seed: int = 0, max_delay: float = 4.0) -> Figures:
    """Kill ``python -m builder synthesize`` ``kills`` times on a library that already holds real
    tiles (``root``); check after every kill (synthetic tiles committed are never lost: synthesize
    evicts nothing).  Rounds go on past ``kills`` until some synthetic tile was committed between
    kills (on a loaded machine every kill may land before the first commit)."""
    started = time.monotonic()
    rng = random.Random(seed)
    figures = Figures(writer="synthesize")
    with Library.open(root, readonly=True) as lib:
        cap = lib.cap
        before = lib.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    log = root.parent / f"{root.name}.stderr"
    while (figures.kills < kills or figures.rows <= before) and figures.rounds < kills * 4:
        figures.rounds += 1
        cmd = builder_argv("synthesize", "--library", root, "--max-uses", max_uses,
                           "--seed", figures.rounds)
        _kill_round(cmd, root, cap, rng, max_delay, log, figures)
    figures.seconds = time.monotonic() - started
    return figures


def deep_verify(root: Path) -> str | None:
    """A full verify (decode every file) of the library at rest; None when clean."""
    with Library.open(root, readonly=True) as lib:
        report = verify_library(lib, deep=True, workers=2)
    return None if report.ok else report.summary()


# --------------------------------------------------------------------------- candidates burnt by kills


@dataclass
class BurnFigures(Figures):
    """A harvest campaign's cost to its plan: ``lost`` claims per kill (requests on the wire,
    claimed for good), and what the next open of the books made of the rest."""

    lost: list[int] = field(default_factory=list)
    unseen: int = 0  # lost claims the server never saw (killed between logging a request and sending it)
    released: int = 0  # claims never requested, released
    settled: int = 0  # no-tile and fault answers recorded from the logs
    replayed: int = 0  # fetched images stored by the next run instead of being asked for again


def claimed_keys(lib: Library, source: str) -> set[tuple[int, int, int]]:
    return {tuple(r) for r in lib.conn.execute(
        "SELECT z, x, y FROM fetched WHERE source = ? AND status = ?", (source, CLAIMED))}


def burn_campaign(root: Path, source: str, plan: Path, zoom: int, kills: int, threads: int,
                  requested: Callable[[], set], served_twice: Callable[[], int], batch: int = 20, seed: int = 0,
                  max_delay: float = 3.0, max_rounds: int | None = None,
                  progress: Callable[[str], None] | None = None) -> BurnFigures:
    """Kill ``python -m builder harvest --plan PLAN`` ``kills`` times; after each kill check the
    library (as :func:`harvest_campaign`), recover the fetch ledger and count the claims it keeps.

    ``requested()``: the loopback server's set of tiles it has seen a request for.  A kill may
    keep only claims whose request was on the wire: at most ``threads``, each one the server saw,
    except a request logged and not yet sent when the kill came.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    figures = BurnFigures(writer="harvest")
    Library.create(root).close()
    log = root.parent / f"{root.name}.stderr"
    burnt: set[tuple[int, int, int]] = set()
    max_rounds = max_rounds or kills * 4
    while figures.kills < kills and figures.rounds < max_rounds:
        figures.rounds += 1
        cmd = builder_argv("harvest", "--library", root, "--source", source,
                           "--plan", plan, "--zoom", zoom, "--threads", threads, "--batch", batch,
                           "--patience", "1000", "--seed", str(rng.randrange(1000)))
        trigger, killed = _kill_round(cmd, root, 100, rng, max_delay, log, figures, harvest=True)
        if served_twice():
            figures.violations.append(f"round {figures.rounds}: {served_twice()} tiles served twice")
        if killed:
            lib = open_writer(root)
            try:
                found = FetchLedger(lib.root, lib.conn, source).recover_inflight()
                pending = {r.ref.key for r in found.images}
                lost = claimed_keys(lib, source) - pending - burnt
            finally:
                lib.close()
            unseen = lost - requested()
            figures.lost.append(len(lost))
            figures.unseen += len(unseen)
            figures.released += found.released
            figures.settled += found.settled
            figures.replayed += len(found.images)
            if len(lost) > threads:
                figures.violations.append(f"round {figures.rounds}: {len(lost)} claims kept > {threads} threads")
            burnt |= lost
        if progress:
            progress(f"round {figures.rounds}: {trigger} {'kill' if killed else 'finished'}, {figures.rows} tiles, "
                     f"lost {figures.lost[-1] if killed else 0}")
    figures.seconds = time.monotonic() - started
    return figures


def burn_scenario(root: Path, source: str, kills: int = 3, zoom: int = 7, phase: str = "all") -> dict:
    """``kills`` harvests of ``--phase PHASE`` at ``zoom``, each SIGKILLed right after its first
    commit, then one run to the end: what the kills cost the plan (claims left for good)."""
    Library.create(root).close()
    cmd = builder_argv("harvest", "--library", root, "--source", source,
                       "--zoom", zoom, "--phase", phase, "--seed", "1")
    for _ in range(kills):
        base = row_count(root)
        proc = start_group(cmd)
        while row_count(root) <= base and proc.poll() is None:
            time.sleep(0.002)
        kill_group(proc)
    conn = ro_connect(root)
    try:
        claimed_after_kills = conn.execute("SELECT COUNT(*) FROM fetched WHERE status = 'claimed'").fetchone()[0]
    finally:
        conn.close()
    final = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=REPO)
    conn = ro_connect(root)
    try:
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM fetched GROUP BY status").fetchall())
        stored = conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    finally:
        conn.close()
    return {"claimed_after_kills": claimed_after_kills, "claimed_at_end": statuses.get(CLAIMED, 0),
            "tried": sum(statuses.values()), "stored": stored, "final_run": final.stdout.strip()[-120:]}


# --------------------------------------------------------------------------- maintenance: repair and recover
#
# ``verify --repair`` and ``recover`` are writers like the others: killed anywhere, no tile is lost.
# A tile is lost when no file of its id is left in the bucket folders or ``quarantine/``; after the
# next writer's open (replay) every row has its file and every file in a bucket folder its row.


def build_library(root: Path, n: int, seed: int = 0, cap: int = 100) -> dict[str, tuple[int, str]]:
    """A library of about ``n`` distinct Blue Marble tiles (ingested on two processes); its rows."""
    from builder.ops.ingest import ingest

    pool = make_tile_pool(root.parent / f"{root.name}_pool", n, seed=seed)
    with Library.create(root, cap=cap) as lib:
        ingest(lib, pool, workers=2, progress=False)
    return committed_rows(root)


def misfile(root: Path, count: int, seed: int = 0) -> list[str]:
    """Move ``count`` tiles (file and row) into the next bucket behind the library's back: wrong-bucket rows."""
    conn = sqlite3.connect(root / "tiles.db")
    try:
        rows = conn.execute("SELECT id, bucket_id FROM tiles ORDER BY id").fetchall()
        chosen = random.Random(seed).sample(rows, min(count, len(rows)))
        with conn:
            for tile_id, bucket in chosen:
                other = (bucket + 1) % 5000
                (root / bucket_name(other)).mkdir(exist_ok=True)
                os.replace(root / bucket_name(bucket) / f"{tile_id}.png", root / bucket_name(other) / f"{tile_id}.png")
                conn.execute("UPDATE tiles SET bucket_id = ?, filepath = ? WHERE id = ?",
                             (other, f"{root.name}/{bucket_name(other)}/{tile_id}.png", tile_id))
    finally:
        conn.close()
    return [tile_id for tile_id, _b in chosen]


def tile_copies(root: Path) -> Counter:
    """id -> number of files named ``<id>.png`` in the bucket folders and under ``quarantine/``."""
    found: Counter = Counter()
    for _bucket, name in bucket_files(root):
        found[name[:-4]] += name.endswith(".png")
    quarantine = root / "quarantine"
    if quarantine.is_dir():
        found.update(p.name[:-4] for p in quarantine.rglob("*.png"))
    return found


@dataclass
class MaintenanceFigures(Figures):
    """A maintenance campaign: ``tiles_before`` ids it started with, ``tiles_after`` ids at the end."""

    tiles_before: int = 0
    tiles_after: int = 0
    completed: int = 0  # runs that finished (exit 0) after the kills before them

    def summary(self) -> str:
        triggers = ", ".join(f"{k} {v}" for k, v in sorted(self.by_trigger.items()))
        return (f"{self.writer}: {self.kills} kills ({triggers}), {self.completed} runs completed after them, "
                f"{self.mid_batch} kills with a journal on disk, tiles before {self.tiles_before}, "
                f"after {self.tiles_after}, tiles lost {self.tiles_lost}, violations {len(self.violations)}, "
                f"{self.seconds:.0f} s")


def check_maintenance_kill(root: Path, expected: set[str], figures: Figures, label: str,
                           damaged: bool = False) -> None:
    """After a kill of ``verify --repair`` or ``recover``: no id of ``expected`` without a file; once
    a writer opened the library (replay), files == rows.  Opening needs a usable ``tiles.db``: a
    recover killed before its swap leaves the damaged one (``damaged``: that may be so), checked
    by the next run."""
    bad = figures.violations
    copies = tile_copies(root)
    lost = {t for t in expected if not copies.get(t)}
    figures.tiles_lost += len(lost)
    bad.extend(f"{label}: tile {t} has no file left" for t in sorted(lost)[:5])
    figures.mid_batch += (root / "temp" / "journal.json").exists()
    try:
        rows = committed_rows(root)
    except sqlite3.DatabaseError:
        return  # a recover killed before its swap: tiles.db is still the damaged file
    if (root / "tiles.db.recovered").exists():
        return
    for tile_id, (bucket, _h) in rows.items():  # a reader, before any writer cleaned up
        if not (root / bucket_name(bucket) / f"{tile_id}.png").is_file():
            bad.append(f"{label}: reader sees row {tile_id} without its file")
    try:
        lib = open_writer(root)  # replays the journal a kill left
    except (LibraryError, sqlite3.DatabaseError):
        if damaged:
            return
        raise
    try:
        rows = committed_rows(root)
        files = bucket_files(root)
        expected_files = {(b, f"{i}.png") for i, (b, _h) in rows.items()}
        if files != expected_files:
            bad.append(f"{label}: files != rows after open: {len(files - expected_files)} files without a row, "
                       f"{len(expected_files - files)} rows without a file")
        if set(rows) != expected:
            bad.append(f"{label}: ids differ after open: {len(expected - set(rows))} missing, "
                       f"{len(set(rows) - expected)} new")
    finally:
        lib.close()


def _kill_at(cmd: Sequence[str], root: Path, fire: Callable[[], bool], delay: float, log: Path,
             timeout: float = 120.0) -> tuple[bool, int]:
    """Run ``cmd`` in its own process group; SIGKILL the group ``delay`` seconds after ``fire()``
    first holds (polled every millisecond).  ``(killed, returncode)``."""
    with open(log, "wb") as err:
        proc = start_group(cmd, stderr=err)
    with group_killed_on_exit(proc):
        deadline, fire_at = time.monotonic() + timeout, None
        while proc.poll() is None:
            now = time.monotonic()
            if fire_at is None and fire():
                fire_at = now + delay
            if fire_at is not None and now >= fire_at:
                kill_group(proc)
                return True, proc.returncode
            if now > deadline:
                raise TimeoutError(f"{cmd[3]} ran for more than {timeout} s")
            time.sleep(0.001)
        return False, proc.returncode


def _journal_relocations(root: Path) -> list[tuple[str, int, int]]:
    try:
        body = json.loads((root / "temp" / "journal.json").read_text())
        return [tuple(r) for r in body.get("relocate", [])]
    except (OSError, ValueError, AttributeError):
        return []


def _relocated(root: Path, at_least: int) -> bool:
    """At least ``at_least`` of the batch's relocations have their new name (linked, or renamed)."""
    moves = _journal_relocations(root)
    return len(moves) > 0 and sum((root / bucket_name(dst) / f"{t}.png").exists() for t, _s, dst in moves) >= at_least


def _row_moved(root: Path) -> bool:
    """A row of the journal's batch names its new bucket: the batch committed."""
    moves = _journal_relocations(root)
    if not moves:
        return False
    tile_id, _src, dst = moves[-1]
    conn = ro_connect(root)
    try:
        row = conn.execute("SELECT bucket_id FROM tiles WHERE id = ?", (tile_id,)).fetchone()
    finally:
        conn.close()
    return row is not None and row[0] == dst


REPAIR_TRIGGERS = ("journal", "linking", "committed", "time")


def _repair_trigger(trigger: str, root: Path, rng: random.Random) -> Callable[[], bool]:
    """When to kill a repair: journal written, the k-th file of its batch linked, its rows
    committed, a random moment after the start."""
    if trigger == "journal":
        return lambda: (root / "temp" / "journal.json").exists()
    if trigger == "linking":
        k = rng.randint(1, 60)
        return lambda: _relocated(root, k)
    if trigger == "committed":
        return lambda: _row_moved(root)
    if trigger == "time":
        at = time.monotonic() + rng.uniform(0.5, 4.0)
        return lambda: time.monotonic() > at
    return lambda: False


def _maintenance_rounds(cmd: Sequence[str], root: Path, figures: MaintenanceFigures, kills: int, max_rounds: int,
                        rng: random.Random, log: Path, triggers: Sequence[str],
                        trigger_for: Callable[[str, Path, random.Random], Callable[[], bool]],
                        delay_for: Callable[[str, random.Random], float], on_kill: Callable[[str], None],
                        on_completed: Callable[[str, int], bool], progress: Callable[[str], None] | None) -> None:
    """The rounds of a maintenance campaign: run ``cmd``, kill it at a trigger drawn from
    ``triggers`` (no trigger once ``kills`` kills are done) and check the library (``on_kill``), or
    check the completed run (``on_completed``, which returns False when the round is not to be
    reported); until ``kills`` kills and a completed run after the last of them, or ``max_rounds``
    rounds.  (Ending on a kill would leave the library as the kill left it: for ``recover``, a
    damaged ``tiles.db`` that only the next run replaces.)"""
    killed = True
    while figures.rounds < max_rounds and (figures.kills < kills or killed):
        figures.rounds += 1
        trigger = rng.choice(triggers) if figures.kills < kills else "none"
        fire = trigger_for(trigger, root, rng)
        killed, code = _kill_at(cmd, root, fire, delay_for(trigger, rng), log)
        label = f"round {figures.rounds} ({trigger})"
        if killed:
            figures.kills += 1
            figures.by_trigger[trigger] += 1
            on_kill(label)
        else:
            figures.completed += 1
            if not on_completed(label, code):
                continue
        if progress:
            progress(f"{label}: {'kill' if killed else 'completed'}, lost {figures.tiles_lost}")
    figures.tiles_after = len(committed_rows(root))
    figures.rows = figures.tiles_after


def repair_campaign(root: Path, kills: int, misfiled: int = 300, seed: int = 0, max_rounds: int | None = None,
                    progress: Callable[[str], None] | None = None) -> MaintenanceFigures:
    """Kill ``python -m builder verify --repair`` of ``misfiled`` wrong-bucket rows at every step of
    its batches (journal written, files being linked, rows committed, a random moment), run it
    again after each kill until one run completes, and plant new wrong-bucket rows when it has:
    every id must keep its file, and the library its ids.  ``root`` holds a library already."""
    started = time.monotonic()
    rng = random.Random(seed)
    figures = MaintenanceFigures(writer="verify --repair")
    expected = set(committed_rows(root))
    figures.tiles_before = len(expected)
    log = root.parent / f"{root.name}.repair.stderr"
    cmd = builder_argv("verify", "--repair", "--library", root, "--workers", "2")
    misfile(root, misfiled, seed=rng.randrange(10**6))

    def completed(label: str, code: int) -> bool:
        if code not in (0, 1):
            figures.violations.append(f"{label}: exited {code}: {log.read_text()[-400:]}")
        rows = committed_rows(root)
        if set(rows) != expected:
            figures.violations.append(f"{label}: ids differ after a completed repair: "
                                      f"{len(expected - set(rows))} missing, {len(set(rows) - expected)} new")
            figures.tiles_lost += len(expected - set(rows))
        problem = deep_verify(root)
        if problem:
            figures.violations.append(f"{label}: verify after the repair: {problem}")
        if figures.kills < kills:
            misfile(root, misfiled, seed=rng.randrange(10**6))
        return True

    _maintenance_rounds(cmd, root, figures, kills, max_rounds or kills * 4, rng, log, REPAIR_TRIGGERS,
                        _repair_trigger, lambda trigger, rng: rng.uniform(0, 0.002) if trigger != "time" else 0,
                        lambda label: check_maintenance_kill(root, expected, figures, label), completed, progress)
    figures.seconds = time.monotonic() - started
    return figures


def damage_db(root: Path, how: str, rng: random.Random) -> None:
    """Damage ``tiles.db`` as a disk or a person would: ``truncate`` (to a random fraction of its
    pages), ``page`` (one page in the middle overwritten with random bytes), ``garbage`` (not SQLite)."""
    conn = sqlite3.connect(root / "tiles.db")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    path = root / "tiles.db"
    size = path.stat().st_size
    if how == "truncate":
        pages = size // 4096
        os.truncate(path, 4096 * rng.randint(2, max(2, pages // 2)))
    elif how == "page":
        with open(path, "r+b") as fh:
            fh.seek(4096 * rng.randint(2, max(2, size // 4096 - 2)))
            fh.write(rng.randbytes(4096))
    elif how == "garbage":
        path.write_bytes(rng.randbytes(4096))
    else:
        raise ValueError(how)
    for suffix in ("-wal", "-shm"):
        (root / f"tiles.db{suffix}").unlink(missing_ok=True)


def provenance(root: Path) -> dict[str, tuple]:
    """id -> (source, z, x, y, region, synthetic, derived_from) of every row."""
    conn = ro_connect(root)
    try:
        return {r[0]: tuple(r[1:]) for r in conn.execute(
            "SELECT id, source, z, x, y, region, synthetic, derived_from FROM tiles")}
    finally:
        conn.close()


RECOVER_TRIGGERS = ("building", "built", "swapped", "time")


def _recover_trigger(trigger: str, root: Path, rng: random.Random) -> Callable[[], bool]:
    """When to kill a recover: rebuilding in ``temp/``, rebuilt and not yet swapped in, swapped
    (repairing), a random moment after the start."""
    if trigger == "building":
        return lambda: (root / "temp" / "recover.db").exists()
    if trigger == "built":
        return lambda: (root / "tiles.db.recovered").exists()
    if trigger == "swapped":  # a damaged file newly set aside, the rebuilt one in place
        aside = len(list(root.glob("tiles.db.broken-*")))
        return lambda: ((root / "tiles.db").exists() and not (root / "tiles.db.recovered").exists()
                        and len(list(root.glob("tiles.db.broken-*"))) > aside)
    if trigger == "time":
        at = time.monotonic() + rng.uniform(0.5, 4.0)
        return lambda: time.monotonic() > at
    return lambda: False


def recover_campaign(root: Path, kills: int, release: Path | None = None, seed: int = 0,
                     max_rounds: int | None = None, progress: Callable[[str], None] | None = None) -> MaintenanceFigures:
    """Damage ``tiles.db``, kill ``python -m builder recover`` while it rebuilds (database being
    built in ``temp/``, built and waiting to be swapped in, swapped and repairing, a random moment),
    run it again until it completes, damage again; every id must keep its file, and a completed
    recover give back every id (with the release's provenance when ``release`` is given)."""
    started = time.monotonic()
    rng = random.Random(seed)
    figures = MaintenanceFigures(writer="recover")
    expected_rows = provenance(root)
    expected = set(expected_rows)
    figures.tiles_before = len(expected)
    log = root.parent / f"{root.name}.recover.stderr"
    cmd = builder_argv("recover", "--library", root, "--workers", "2")
    if release is not None:
        cmd += ["--release", str(release)]
    damage_db(root, rng.choice(("truncate", "page", "garbage")), rng)

    def delay(trigger: str, rng: random.Random) -> float:
        return rng.uniform(0, 0.3) if trigger == "building" else rng.uniform(0, 0.002) if trigger != "time" else 0

    def completed(label: str, code: int) -> bool:
        if code != 0:
            figures.violations.append(f"{label}: exited {code}: {log.read_text()[-400:]}")
            return False
        rows = provenance(root)
        if set(rows) != expected:
            figures.violations.append(f"{label}: ids differ after recover: {len(expected - set(rows))} missing")
            figures.tiles_lost += len(expected - set(rows))
        if release is not None and rows != expected_rows:
            wrong = sum(1 for t in expected if rows.get(t) != expected_rows[t])
            figures.violations.append(f"{label}: {wrong} tiles without their provenance from the release")
        if figures.kills < kills:
            damage_db(root, rng.choice(("truncate", "page", "garbage")), rng)
        return True

    _maintenance_rounds(cmd, root, figures, kills, max_rounds or kills * 4, rng, log, RECOVER_TRIGGERS,
                        _recover_trigger, delay,
                        lambda label: check_maintenance_kill(root, expected, figures, label, damaged=True),
                        completed, progress)
    figures.seconds = time.monotonic() - started
    return figures
