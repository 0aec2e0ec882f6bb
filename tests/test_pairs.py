"""MMPR pair selection for one prompt (methods.pairs): the rules, table-driven."""
from __future__ import annotations

from collections import Counter

import pytest

from methods.pairs import Scored, select_pairs


def s(i, text, answer, correct):
    return Scored(i, text, answer, 1.0 if correct else 0.0, correct)


RIGHT = [s(0, "Two circles.\nFinal answer: 2", "2", True), s(1, "I count 2.\nFinal answer: 2", "2", True)]
WRONG = [s(2, "Three circles.\nFinal answer: 3", "3", False), s(3, "Four.\nFinal answer: 4", "4", False)]


@pytest.mark.parametrize("chosen, rejected, k, expected", [
    pytest.param(RIGHT, WRONG, 15, 4, id="all-combinations"),
    pytest.param(RIGHT, WRONG, 3, 3, id="capped-at-k"),
    pytest.param(RIGHT, [], 15, 0, id="no-wrong-no-pair"),
    pytest.param([], WRONG, 15, 0, id="no-right-no-pair"),
    # the rejected answer contains the chosen one ("2 apples" may well be right): dropped
    pytest.param(RIGHT, [s(4, "It is 2 apples.\nFinal answer: 2 apples", "2 apples", False)], 15, 0,
                 id="chosen-answer-substring-of-rejected"),
    # exact duplicates of texts give one pair
    pytest.param([RIGHT[0], s(5, RIGHT[0].text, "2", True)], [WRONG[0], s(6, WRONG[0].text, "3", False)], 15, 1,
                 id="exact-dedup"),
])
def test_select_pairs_rules(chosen, rejected, k, expected):
    pairs = select_pairs(chosen, rejected, k, seed=1)
    assert len(pairs) == expected
    assert all(c.correct and not r.correct for c, r in pairs)
    assert len({(c.text, r.text) for c, r in pairs}) == len(pairs)


def test_selection_is_seeded_and_covers_the_candidates():
    right = [s(i, f"right {i}\nFinal answer: 2", "2", True) for i in range(6)]
    wrong = [s(10 + i, f"wrong {i}\nFinal answer: {5 + i}", str(5 + i), False) for i in range(6)]
    a = select_pairs(right, wrong, 15, seed=7)
    assert a == select_pairs(right, wrong, 15, seed=7)
    assert a != select_pairs(right, wrong, 15, seed=8)
    seen = set()
    for seed in range(50):
        seen.update((c.index, r.index) for c, r in select_pairs(right, wrong, 15, seed=seed))
    assert len(seen) == 36, "a seeded random choice, not always the first combinations"


def test_length_balance_prefers_rejected_of_similar_length():
    chosen = [s(0, "x" * 100, "a", True)]
    rejected = [s(1, "y" * 400, "b", False), s(2, "z" * 110, "c", False), s(3, "w" * 20, "d", False)]
    pairs = select_pairs(chosen, rejected, 1, seed=3, length_ratio=1.5)
    assert [r.index for _, r in pairs] == [2]
    # without the option, any may come first
    firsts = {select_pairs(chosen, rejected, 1, seed=sd)[0][1].index for sd in range(30)}
    assert firsts == {1, 2, 3}


# -- the per-response cap (scoring.max_pairs_per_response) ----------------------------------------
def _responses(n_right: int, n_wrong: int) -> tuple[list[Scored], list[Scored]]:
    """Distinct right and wrong responses whose answers never contain each other."""
    right = [s(i, f"Right, way {i}.\nFinal answer: A", "A", True) for i in range(n_right)]
    wrong = [s(100 + i, f"Wrong, way {i}.\nFinal answer: B{i}", f"B{i}", False) for i in range(n_wrong)]
    return right, wrong


def _uses(pairs) -> Counter:
    return Counter([("chosen", c.index) for c, _ in pairs] + [("rejected", r.index) for _, r in pairs])


@pytest.mark.parametrize("n_right, n_wrong, k, cap, expected", [
    # the most pairs the cap allows: min(R * min(cap, W), W * min(cap, R)), at most k
    pytest.param(1, 31, 15, 4, 4, id="one-right-answer-in-4-pairs-not-15"),
    pytest.param(31, 1, 15, 4, 4, id="one-wrong-answer-in-4-pairs"),
    pytest.param(2, 8, 15, 4, 8, id="two-right-each-in-4"),
    pytest.param(4, 4, 15, 4, 15, id="16-possible-k-15"),
    pytest.param(3, 3, 15, 2, 6, id="3x3-cap-2-all-6"),  # a greedy pass alone finds 5 for some orders
    pytest.param(5, 5, 15, 3, 15, id="5x5-cap-3"),
    pytest.param(8, 8, 15, 1, 8, id="cap-1-a-matching"),
    pytest.param(1, 31, 15, None, 15, id="no-cap-one-chosen-in-15"),
    pytest.param(0, 5, 15, 4, 0, id="no-right"),
])
def test_the_cap_is_kept_and_reached(n_right, n_wrong, k, cap, expected):
    right, wrong = _responses(n_right, n_wrong)
    for seed in range(20):
        pairs = select_pairs(right, wrong, k, seed=seed, max_per_response=cap)
        assert len(pairs) == expected
        assert len({(c.index, r.index) for c, r in pairs}) == len(pairs)
        if cap is not None and pairs:
            assert max(_uses(pairs).values()) <= cap


@pytest.mark.parametrize("n_right, n_wrong, k, cap, most", [
    # levelled: no response's (L+1)-th pair before every pairable response has L
    pytest.param(3, 10, 15, 4, 4, id="right-side-levelled"),
    pytest.param(6, 6, 6, 4, 1, id="k-equals-a-matching-one-each"),
    pytest.param(4, 12, 12, 8, 3, id="12-over-4-chosen-3-each"),
])
def test_pairs_are_spread_level_by_level(n_right, n_wrong, k, cap, most):
    right, wrong = _responses(n_right, n_wrong)
    for seed in range(10):
        uses = _uses(select_pairs(right, wrong, k, seed=seed, max_per_response=cap))
        assert max(v for (side, _), v in uses.items() if side == "chosen") == most


def test_the_capped_selection_is_seeded():
    right, wrong = _responses(6, 9)
    picks = {seed: select_pairs(right, wrong, 15, seed=seed, max_per_response=4) for seed in range(6)}
    assert all(select_pairs(right, wrong, 15, seed=seed, max_per_response=4) == p for seed, p in picks.items())
    assert len({tuple((c.index, r.index) for c, r in p) for p in picks.values()}) > 1  # the seed matters
    # the rules still apply under the cap: a rejected whose answer contains the chosen's is never paired
    trap = s(200, "It is A or B.\nFinal answer: A or B", "A or B", False)
    assert all(r is not trap for _, r in select_pairs(right, wrong + [trap], 15, seed=1, max_per_response=4))


def test_distinct_counters_and_the_diversity_summary():
    from stages.correctness import CorrectnessStage, count_distinct

    right, wrong = _responses(2, 8)
    counters: Counter = Counter()
    pairs = [("correctness", c, r) for c, r in select_pairs(right, wrong, 15, seed=3, max_per_response=4)]
    pairs += [("format", right[0], s(300, "no answer", None, False))]
    count_distinct(pairs, lambda key, n=1: counters.update({key: n}))
    assert counters == {"distinct.correctness.chosen": 2, "distinct.correctness.rejected": 8,
                        "distinct.format.chosen": 1, "distinct.format.rejected": 1}
    counters.update({"responses": 10, "pairs.correctness": 8, "pairs.format": 1, "sampled_tokens": 1000})
    d = CorrectnessStage.summarize(dict(counters))["diversity"]
    assert d == {"correctness": {"distinct_chosen": 2, "distinct_rejected": 8, "pairs_per_chosen": 4.0,
                                 "pairs_per_rejected": 1.0},
                 "format": {"distinct_chosen": 1, "distinct_rejected": 1, "pairs_per_chosen": 1.0,
                            "pairs_per_rejected": 1.0},
                 "tokens_per_chosen": 500.0}
    line = CorrectnessStage.summary_line(CorrectnessStage.summarize(dict(counters)))
    assert "correctness pairs per distinct chosen 4.00, per distinct rejected 1.00, 500 generated tokens" in line
