"""The fetch-run driver's one rule for booking a batch (:func:`builder.acquire.run.split_answers`),
shared by harvest and the atlas: what is released, what is settled to a status, what goes to the
run's own hooks, and when the source's failing streak ends; and what the engine under it counts.
The driver itself runs in every harvest and atlas test."""

from __future__ import annotations

from builder.acquire.engine import FetchEngine
from builder.acquire.ledger import Claim, FetchLedger, FetchResult, Prior
from builder.acquire.run import split_answers
from builder.acquire.sources import FolderSource, fault_counts
from builder.acquire.tiles import TileRef
from tests.support.tileserver import distinct_tile


def ref(x: int) -> TileRef:
    return TileRef(6, x, 27, "test", 0.0, 0.0)


IMAGE = FetchResult(ref(1), b"jpeg", None, "", "t")
NO_TILE = FetchResult(ref(2), None, None, "", "t")
FAULT = FetchResult(ref(3), None, "http_503", "503", "t")
UNSTARTED = FetchResult(ref(4), started=False)
RETRIED = Prior("fault:timeout", "earlier")


def test_a_live_source_settles_no_tile_and_faults_and_releases_only_the_unstarted():
    answers = split_answers([IMAGE, NO_TILE, FAULT, UNSTARTED], down=False,
                            prior=lambda key: RETRIED if key == ref(3)[:3] else None)
    assert answers.images == [IMAGE]
    assert answers.settled == [("none", NO_TILE), ("fault:http_503", FAULT)]
    assert answers.released == [UNSTARTED]
    assert answers.faulted == [(ref(3), "fault:http_503", RETRIED)]
    assert answers.answered and answers.results == [IMAGE, NO_TILE, FAULT, UNSTARTED]


def test_once_the_source_is_down_its_faults_are_released_not_recorded():
    answers = split_answers([NO_TILE, FAULT, UNSTARTED], down=True)
    assert answers.settled == [("none", NO_TILE)] and answers.faulted == []
    assert answers.released == [FAULT, UNSTARTED]


def test_only_faults_do_not_end_the_failing_streak():
    assert not split_answers([FAULT, UNSTARTED], down=False).answered
    assert split_answers([FAULT, NO_TILE], down=False).answered
    assert split_answers([FAULT, IMAGE], down=False).answered


def test_the_engine_counts_what_a_local_source_answers(make_library, tmp_path):
    """A source answers and counts nothing; the engine counts each fetch of a source that does not
    retry as one request, its fault under its kind, and every tile's outcome."""
    root = tmp_path / "tiles"
    (root / "6" / "10").mkdir(parents=True)
    (root / "6" / "10" / "20.jpg").write_bytes(distinct_tile(6, 10, 20))
    (root / "6" / "10" / "21.jpg").write_bytes(b"<html>not a tile</html>")
    lib = make_library()
    with FolderSource(root) as source:
        ledger = FetchLedger(lib.root, lib.conn, source.name)
        with FetchEngine(source, ledger, threads=2) as engine:
            engine.submit([Claim(TileRef(6, 10, y, "r", 0.0, 0.0)) for y in (20, 21, 22)])
            _batch, results = engine.next_results()
    assert [(r.data is not None, r.fault) for r in results] == [(True, None), (False, "not_image"), (False, None)]
    assert dict(engine.stats) == {"request": 3, "ok": 1, "not_image": 1, "failed": 1, "missing": 1}
    assert engine.requests() == 3 and fault_counts(engine.stats) == {"not_image": 1}
