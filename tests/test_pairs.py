"""MMPR pair selection for one prompt (methods.pairs): the rules, table-driven."""
from __future__ import annotations

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
