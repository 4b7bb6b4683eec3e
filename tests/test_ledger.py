"""The fetch ledger on a real library: statuses, claim/record/release/settle, and recovery from the
in-flight logs a killed run leaves (real files, cut records included), for ``fetched`` and for
another ledger table with the same columns."""

from __future__ import annotations

import os

import pytest

from builder.acquire.ledger import (
    ACCEPTED,
    CLAIMED,
    NO_TILE,
    TRANSIENT_STATUSES,
    Claim,
    FetchLedger,
    FetchResult,
    Prior,
    Status,
    fault,
    is_transient,
    parse_status,
    read_batch_log,
    rejected,
)
from builder.acquire.tiles import TileRef, tile_centre
from builder.core.errors import LibraryError
from builder.core.stats import status_counts_by_region
from tests.support.tileserver import distinct_tile

SOURCE = "http://tiles.example/{z}/{x}/{y}.png"


def ref(x: int, y: int = 5, z: int = 9, region: str = "Somewhere") -> TileRef:
    return TileRef(z, x, y, region, *tile_centre(z, x, y))


def rows(lib, table: str = "fetched") -> dict:
    return {(z, x, y): (status, tried_at) for z, x, y, status, tried_at in lib.conn.execute(
        f"SELECT z, x, y, status, tried_at FROM {table} WHERE source = ?", (SOURCE,))}


def inflight(lib) -> list[str]:
    folder = lib.root / "inflight"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_statuses_are_built_and_parsed_in_one_place():
    assert rejected("bucket_full") == "rejected:bucket_full" and fault("http_503") == "fault:http_503"
    for text, parsed in [("claimed", Status("claimed")), ("accepted", Status("accepted")), ("none", Status("none")),
                         ("unused", Status("unused")), ("rejected:blank", Status("rejected", "blank")),
                         ("fault:timeout", Status("fault", "timeout"))]:
        assert parse_status(text) == parsed
    for bad in ("", "fault", "fault:", "rejected", "accepted:x", "pending", "claimed:fault:x"):
        with pytest.raises(ValueError):
            parse_status(bad)
    assert is_transient("fault:http_503") and is_transient("fault:connection")
    assert not is_transient("fault:bad_size") and not is_transient("rejected:blank") and not is_transient("none")
    assert all(is_transient(s) for s in TRANSIENT_STATUSES) and list(TRANSIENT_STATUSES) == sorted(TRANSIENT_STATUSES)


def test_a_batch_claimed_recorded_released_and_settled(make_library):
    lib = make_library()
    ledger = FetchLedger(lib.root, lib.conn, SOURCE)
    batch = [Claim(ref(x)) for x in range(4)]
    log = ledger.claim(batch)
    assert {k: s for k, (s, _) in rows(lib).items()} == {(9, x, 5): CLAIMED for x in range(4)}
    assert inflight(lib) == [log.path.name]
    contents = read_batch_log(log.path)
    assert contents.source == SOURCE and list(contents.claims) == [(9, x, 5) for x in range(4)]
    with lib.conn:
        ledger.record(lib.conn, [(ref(0), ACCEPTED, "2024-01-01T00:00:00+00:00"), (ref(1), NO_TILE, "t1"),
                                 (ref(2), fault("timeout"), "t2")])
        ledger.release(lib.conn, [ref(3)])
    ledger.settle(log)
    assert rows(lib) == {(9, 0, 5): (ACCEPTED, "2024-01-01T00:00:00+00:00"), (9, 1, 5): (NO_TILE, "t1"),
                         (9, 2, 5): ("fault:timeout", "t2")}
    assert inflight(lib) == []
    assert ledger.known(9) == {(9, 0, 5), (9, 1, 5), (9, 2, 5)} and ledger.known(10) == set()
    assert [(r.x, r.status) for r in ledger.transient(9)] == [(2, "fault:timeout")]
    assert status_counts_by_region(lib.conn) == {"Somewhere": {ACCEPTED: 1, NO_TILE: 1, "fault:timeout": 1}}
    assert lib.stats()["fetched_by_region"] == status_counts_by_region(lib.conn)


def test_a_claim_that_fails_to_commit_leaves_no_log(make_library):
    lib = make_library()
    ledger = FetchLedger(lib.root, lib.conn, SOURCE)
    ledger.claim([Claim(ref(1))])
    with pytest.raises(Exception, match="UNIQUE"):  # the same tile twice: the insert fails
        ledger.claim([Claim(ref(2)), Claim(ref(1))])
    assert len(inflight(lib)) == 1 and set(rows(lib)) == {(9, 1, 5)}


def test_recovery_releases_unrequested_claims_settles_answers_and_replays_images(make_library):
    """What a run killed mid-batch left: every claim is resolved from its log, and only the one
    whose request was on the wire (requested, no answer) stays claimed."""
    lib = make_library()
    with lib.conn:
        lib.conn.execute("INSERT INTO fetched (source, z, x, y, status, region, tried_at) VALUES (?, 9, 50, 5, 'fault:http_503', 'Somewhere', 'old')", (SOURCE,))
        lib.conn.execute("INSERT INTO fetched (source, z, x, y, status, region, tried_at) VALUES (?, 9, 60, 5, 'claimed', 'Somewhere', 'legacy')", (SOURCE,))
    ledger = FetchLedger(lib.root, lib.conn, SOURCE)
    image = distinct_tile(9, 3, 5)
    claims = [Claim(ref(x)) for x in range(7)] + [Claim(ref(50), Prior("fault:http_503", "old"))]
    log = ledger.claim(claims)
    # The fetch threads got this far when the process died:
    log.requested(ref(1))  # on the wire
    for x, result in [(2, FetchResult(ref(2), None, None, "", "t2")),           # no tile
                      (3, FetchResult(ref(3), image, None, "", "t3")),           # an image
                      (4, FetchResult(ref(4), None, "http_503", "503 x5", "t4")),  # a fault
                      (5, FetchResult(ref(5), started=False))]:                  # cut short (budget)
        log.requested(ref(x))
        log.answered(result)
    log.requested(ref(6))
    head = b"A 9 6 5 %d t6 image\n" % len(image)
    os.write(log._fd, head + image[: len(image) // 2])  # killed half way through a large write
    log.close()
    # An unrelated log: another source's batch waits for a run of its own.
    other = FetchLedger(lib.root, lib.conn, "earth").claim([Claim(ref(7))])
    other.close()

    again = FetchLedger(lib.root, lib.conn, SOURCE)
    found = again.recover_inflight()
    assert (found.released, found.settled, found.lost) == (3, 2, 2)  # 0, 5, 50 | 2, 4 | 1, 6
    assert [(r.ref, r.data, r.at) for r in found.images] == [(ref(3), image, "t3")]
    state = rows(lib)
    assert (9, 0, 5) not in state and (9, 5, 5) not in state
    assert state[(9, 50, 5)] == ("fault:http_503", "old")  # the retried tile's fault is back
    assert state[(9, 1, 5)][0] == state[(9, 6, 5)][0] == CLAIMED  # requests that were on the wire
    assert state[(9, 2, 5)] == (NO_TILE, "t2") and state[(9, 4, 5)] == ("fault:http_503", "t4")
    assert state[(9, 3, 5)][0] == CLAIMED  # until the caller stores the replayed image
    assert state[(9, 60, 5)] == (CLAIMED, "legacy")  # no log lists it: left alone
    assert len(inflight(lib)) == 2  # the replay's log and the other source's
    with lib.conn:
        again.record(lib.conn, [(ref(3), ACCEPTED, "t3")])
    for replayed in found.logs:
        again.settle(replayed)
    assert inflight(lib) == [other.path.name]
    assert again.recover_inflight().as_dict() == {"released": 0, "settled": 0, "replayed": 0, "lost": 0}
    assert lib.conn.execute("SELECT status FROM fetched WHERE source = 'earth'").fetchone() == (CLAIMED,)
    assert FetchLedger(lib.root, lib.conn, "earth").recover_inflight().released == 1
    assert inflight(lib) == []


def test_a_log_cut_inside_its_header_is_dropped(make_library):
    lib = make_library()
    ledger = FetchLedger(lib.root, lib.conn, SOURCE)
    log = ledger.claim([Claim(ref(1))])
    log.close()
    data = log.path.read_bytes()
    log.path.write_bytes(data[: len(data) // 2])  # the claim's transaction never began
    with lib.conn:
        lib.conn.execute("DELETE FROM fetched")
    assert ledger.recover_inflight().as_dict() == {"released": 0, "settled": 0, "replayed": 0, "lost": 0}
    assert inflight(lib) == []


def test_retract_takes_back_recorded_faults(make_library):
    lib = make_library()
    with lib.conn:
        lib.conn.execute("INSERT INTO fetched (source, z, x, y, status, region, tried_at) VALUES (?, 9, 8, 5, 'fault:timeout', 'Somewhere', 'old')", (SOURCE,))
    ledger = FetchLedger(lib.root, lib.conn, SOURCE)
    log = ledger.claim([Claim(ref(7)), Claim(ref(8), Prior("fault:timeout", "old"))])
    with lib.conn:
        ledger.record(lib.conn, [(ref(7), fault("http_503"), "t"), (ref(8), fault("http_503"), "t")])
    ledger.settle(log)
    with lib.conn:
        ledger.retract(lib.conn, [(ref(7), fault("http_503"), None),
                                  (ref(8), fault("http_503"), Prior("fault:timeout", "old"))])
    assert rows(lib) == {(9, 8, 5): ("fault:timeout", "old")}


def test_another_ledger_table_keeps_its_own_books(make_library):
    """A second purpose (the colour atlas's overview tiles, say) in a table of the same columns:
    its claims, logs and recovery never touch ``fetched``."""
    lib = make_library()
    with lib.conn:
        lib.conn.execute("CREATE TABLE overview_fetched AS SELECT * FROM fetched WHERE 0")
        lib.conn.execute("CREATE UNIQUE INDEX overview_key ON overview_fetched(source, z, x, y)")
    harvest_books = FetchLedger(lib.root, lib.conn, SOURCE)
    atlas_books = FetchLedger(lib.root, lib.conn, SOURCE, table="overview_fetched", stored_in=None)
    harvest_log = harvest_books.claim([Claim(ref(1))])
    atlas_log = atlas_books.claim([Claim(ref(1)), Claim(ref(2))])
    harvest_log.close()
    atlas_log.close()
    assert atlas_log.path.name.startswith("overview_fetched-")
    assert atlas_books.recover_inflight().released == 2  # nothing was requested
    assert rows(lib, "overview_fetched") == {} and set(rows(lib)) == {(9, 1, 5)}
    assert len(inflight(lib)) == 1  # harvest's log is harvest's business
    assert status_counts_by_region(lib.conn, "overview_fetched") == {}
    with pytest.raises(LibraryError, match="not a ledger table"):
        FetchLedger(lib.root, lib.conn, SOURCE, table="fetched; DROP TABLE tiles")
    with pytest.raises(LibraryError, match="lacks the ledger columns"):
        FetchLedger(lib.root, lib.conn, SOURCE, table="meta")


def test_the_inflight_folder_is_never_written_through_a_symlink(make_library, tmp_path):
    lib = make_library()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (lib.root / "inflight").symlink_to(elsewhere)
    with pytest.raises(LibraryError, match="symlink"):
        FetchLedger(lib.root, lib.conn, SOURCE).claim([Claim(ref(1))])
    assert list(elsewhere.iterdir()) == [] and rows(lib) == {}
