"""The fetch-run driver's one rule for booking a batch (:func:`builder.fetchrun.split_answers`),
shared by harvest and the atlas: what is released, what is settled to a status, what goes to the
run's own hooks, and when the source's failing streak ends.  The driver itself runs in every
harvest and atlas test."""

from __future__ import annotations

from builder.fetchrun import split_answers
from builder.ledger import FetchResult, Prior
from builder.regions import TileRef


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
