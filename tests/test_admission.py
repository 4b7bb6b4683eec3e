"""Admission (``builder.assign.admission``), the pure rules the pipeline judges every verdict by: one table
row per rule, then batches of verdicts through ``admit`` and ``record`` as the pipeline runs them.
The pipeline's own tests (test_ingest, test_near_duplicates, test_synthesize) check the same rules
on real tiles, SQLite and files."""

from __future__ import annotations

import pytest

from builder.assign.admission import BucketState, Decision, Rules, Verdict, admit, record
from builder.assign.phash import MIN_HASH_CONTRAST

A, B, C = "a" * 16, "b" * 16, "c" * 16
NEAR_2 = f"{int(A, 16) ^ 0b11:016x}"  # 2 bits from A
NEAR_3 = f"{int(A, 16) ^ 0b111:016x}"  # 3 bits from A
TEXTURED = MIN_HASH_CONTRAST + 10.0
FLAT = MIN_HASH_CONTRAST / 2
CAP = 3
RULES = Rules(cap=CAP, min_contrast=MIN_HASH_CONTRAST)
NEAR = Rules(cap=CAP, near_duplicate_radius=2, min_contrast=MIN_HASH_CONTRAST)


def bucket(real: tuple[str, ...] = (), synthetic: tuple[tuple[str, str], ...] = (), near=()) -> BucketState:
    """A bucket holding real tiles with the pHashes ``real`` and the synthetic ``(id, pHash)``,
    newest first."""
    hashes = set(real) | {h for _i, h in synthetic}
    return BucketState(len(real) + len(synthetic), len(real), hashes, set(real), list(synthetic), list(near))


def textured(tile_hash: str) -> tuple[int, bool, bool]:
    return (int(tile_hash, 16), False, False)


# (rule, verdict, synthetic?, bucket, rules, decision)
CASES = [
    ("a worker's refusal stands", Verdict("blank"), False, bucket(), RULES, Decision("blank")),
    ("a worker's duplicate stands", Verdict("duplicate", A), False, bucket(), RULES, Decision("duplicate")),
    ("room: accepted", Verdict(None, A), False, bucket((B,)), RULES, Decision(None)),
    ("cap: a real tile counts real tiles", Verdict(None, A), False, bucket((B, C, "d" * 16)), RULES,
     Decision("bucket_full")),
    ("cap: synthetic tiles never refuse a real one (the newest gives way)", Verdict(None, A), False,
     bucket((B,), (("s2", "2" * 16), ("s1", "1" * 16))), RULES, Decision(None, ("s2",))),
    ("cap: a synthetic tile counts every tile", Verdict(None, A), True,
     bucket((B,), (("s2", "2" * 16), ("s1", "1" * 16))), RULES, Decision("bucket_full")),
    ("cap: a synthetic tile with room", Verdict(None, A), True, bucket((B,), (("s1", C),)), RULES, Decision(None)),
    ("duplicate: the same pHash as a real tile", Verdict(None, A), False, bucket((A,)), RULES, Decision("duplicate")),
    ("duplicate: a synthetic tile against a real one", Verdict(None, A), True, bucket((A,)), RULES,
     Decision("duplicate")),
    ("duplicate: a synthetic tile against a synthetic one", Verdict(None, A), True, bucket((), (("s1", A),)), RULES,
     Decision("duplicate")),
    ("twin: a real tile's synthetic twin gives way, below the cap too", Verdict(None, A), False,
     bucket((), (("s2", B), ("s1", A))), RULES, Decision(None, ("s1",))),
    ("twin: of two twins the newest gives way", Verdict(None, A), False,
     bucket((), (("s3", B), ("s2", A), ("s1", A))), RULES, Decision(None, ("s2",))),
    ("twin: before the newest synthetic tile at the cap", Verdict(None, A), False,
     bucket((C,), (("s2", B), ("s1", A))), RULES, Decision(None, ("s1",))),
    ("near: within the radius of a textured real tile", Verdict(None, NEAR_2, TEXTURED), False,
     bucket((A,), near=[textured(A)]), NEAR, Decision("duplicate")),
    ("near: outside the radius", Verdict(None, NEAR_3, TEXTURED), False, bucket((A,), near=[textured(A)]), NEAR,
     Decision(None)),
    ("near: the held tile is flat", Verdict(None, NEAR_2, TEXTURED), False,
     bucket((A,), near=[(int(A, 16), True, False)]), NEAR, Decision(None)),
    ("near: the candidate is flat", Verdict(None, NEAR_2, FLAT), False, bucket((A,), near=[textured(A)]), NEAR,
     Decision(None)),
    ("near: no contrast known", Verdict(None, NEAR_2), False, bucket((A,), near=[textured(A)]), NEAR, Decision(None)),
    ("near: a real tile is not refused by a synthetic one", Verdict(None, NEAR_2, TEXTURED), False,
     bucket((), (("s1", A),), near=[(int(A, 16), False, True)]), NEAR, Decision(None)),
    ("near: a synthetic tile is refused by a synthetic one", Verdict(None, NEAR_2, TEXTURED), True,
     bucket((), (("s1", A),), near=[(int(A, 16), False, True)]), NEAR, Decision("duplicate")),
    ("near: radius 0 compares identical hashes only", Verdict(None, NEAR_2, TEXTURED), False,
     bucket((A,), near=[textured(A)]), RULES, Decision(None)),
]


@pytest.mark.parametrize(("verdict", "synthetic", "state", "rules", "decision"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_each_rule(verdict, synthetic, state, rules, decision):
    before = BucketState(state.total, state.real, set(state.hashes), set(state.real_hashes), list(state.synthetic),
                         list(state.near))
    assert admit(verdict, synthetic, state, rules) == decision
    assert state == before  # admit only judges


def run_batch(state: BucketState, verdicts: list[tuple[Verdict, bool]], rules: Rules = RULES) -> list[Decision]:
    """The pipeline's loop over one bucket: judge, then keep the state in step."""
    decisions = []
    for verdict, synthetic in verdicts:
        decision = admit(verdict, synthetic, state, rules)
        record(state, verdict, synthetic, decision, rules)
        decisions.append(decision)
    return decisions


def test_a_batch_sees_its_own_earlier_tiles():
    state = bucket()
    decisions = run_batch(state, [(Verdict(None, A), False), (Verdict(None, A), False), (Verdict(None, B), True),
                                  (Verdict(None, B), True), (Verdict(None, C), False), (Verdict(None, "d" * 16), False)])
    assert [d.reason for d in decisions] == [None, "duplicate", None, "duplicate", None, "bucket_full"]
    assert (state.total, state.real, state.real_hashes) == (3, 2, {A, C})


def test_a_full_bucket_evicts_its_synthetic_tiles_newest_first_and_never_twice():
    state = bucket((), (("s3", "3" * 16), ("s2", "2" * 16), ("s1", "1" * 16)))
    decisions = run_batch(state, [(Verdict(None, A), False), (Verdict(None, B), False), (Verdict(None, C), False),
                                  (Verdict(None, "d" * 16), False)])
    assert [d.evict for d in decisions] == [("s3",), ("s2",), ("s1",), ()]
    assert decisions[-1].reason == "bucket_full"
    assert (state.total, state.real, state.synthetic) == (3, 3, [])


def test_a_twin_gives_way_below_the_cap_and_the_bucket_keeps_its_count():
    state = bucket((A,), (("s1", C),))
    decisions = run_batch(state, [(Verdict(None, C), False), (Verdict(None, C), True), (Verdict(None, B), True)])
    assert decisions == [Decision(None, ("s1",)), Decision("duplicate"), Decision(None)]
    assert (state.total, state.real, state.synthetic) == (3, 2, [])


def test_a_full_bucket_of_this_batchs_synthetic_tiles_refuses_a_real_one():
    """Only committed synthetic tiles give way: the batch's own are not in ``synthetic``."""
    state = bucket((A,))
    decisions = run_batch(state, [(Verdict(None, B), True), (Verdict(None, C), True), (Verdict(None, "d" * 16), False)])
    assert [d.reason for d in decisions] == [None, None, "bucket_full"]


def test_accepted_tiles_join_the_near_duplicate_entries():
    state = bucket()
    decisions = run_batch(state, [(Verdict(None, A, TEXTURED), False), (Verdict(None, NEAR_2, TEXTURED), False),
                                  (Verdict(None, NEAR_3, FLAT), False)], NEAR)
    assert [d.reason for d in decisions] == [None, "duplicate", None]
    assert state.near == [textured(A), (int(NEAR_3, 16), True, False)]
