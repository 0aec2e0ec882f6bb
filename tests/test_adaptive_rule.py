"""The adaptive-sampling stopping rule (``methods.adaptive``), table-driven.

Each case feeds a prompt's samples round by round, as the engine does, and
checks how many more are asked for after every round and why it stopped.
Samples are given as a string: R right, W wrong, F unparseable (format
error), C right but stating conflicting answers, G an open-prompt response
that passes DropoutNTP's selection rules, B one that does not.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from methods.adaptive import PromptSampler, StopRule, pairs_possible
from methods.pairs import Scored

ROUNDS = (4, 8, 16, 32)


@dataclass
class Sample:
    kind: str
    num_tokens: int = 10
    finish_reason: str = "stop"

    @property
    def text(self) -> str:
        return self.kind


def _score(samples):
    out = []
    for i, s in enumerate(samples):
        if s.kind == "F":
            out.append(Scored(i, s.text, None, 0.0, False))
        else:
            out.append(Scored(i, s.text, s.kind, 1.0 if s.kind in "RC" else 0.0, s.kind in "RC",
                              conflicting=s.kind == "C", states_truth=s.kind in "RC"))
    return out


def _run(draws: str, has_gt: bool = True, **rule) -> tuple[list[int], str | None, int]:
    """Feed ``draws`` round by round; returns (samples asked for after each round, stop reason,
    samples drawn)."""
    sampler = PromptSampler(StopRule(rounds=rule.pop("rounds", ROUNDS), **rule), has_gt,
                            score=_score, accept=lambda c: c.kind == "G")
    drawn: list[Sample] = []
    asks = []
    want = sampler.first_count()
    while want:
        assert len(drawn) + want <= len(draws), f"asked for more samples than the case provides: {draws}"
        drawn += [Sample(k) for k in draws[len(drawn):len(drawn) + want]]
        want = sampler.next_count(drawn)
        asks.append(want)
    return asks, sampler.outcome.stop_reason, len(drawn)


@pytest.mark.parametrize("draws, rule, asks, reason, drawn", [
    # p = 0.5: 2 right x 2 wrong after round 1 is 4 pairs; 4 x 4 after round 2 is 16 >= 15
    ("RWRW" "RWRW", {}, [4, 0], "enough_pairs", 8),
    # "both": one right and one wrong is enough
    ("RWRW", {"stop": "both"}, [0], "enough_pairs", 4),
    ("RRRR" "RRRW", {"stop": "both", "all_right_after": 8}, [4, 0], "enough_pairs", 8),
    ("RRRR" "RRRW" "WRWR" "WRWR", {"stop": "both", "min_each": 3, "all_right_after": None},
     [4, 8, 0], "enough_pairs", 16),
    # too easy: every sample right after the first round -> MMPR drops it anyway
    ("RRRR", {"all_right_after": 4}, [0], "all_right", 4),
    ("RRRR" "RRRR", {}, [4, 0], "all_right", 8),
    # a format error is not "all right": the prompt goes on
    ("RRRF" "RRRR" "RRRRRRRR" + "R" * 16, {}, [4, 8, 16, 0], "budget", 32),
    # a conflicting right answer is not a usable chosen, nor all-right
    ("CCCC" + "C" * 28, {}, [4, 8, 16, 0], "all_wrong", 32),
    # hard prompt: no right sample within the budget
    ("W" * 32, {}, [4, 8, 16, 0], "all_wrong", 32),
    ("W" * 8, {"all_wrong_after": 8}, [4, 0], "all_wrong", 8),
    # p ~ 0.1: one right sample, pairs capped by reuse (1 x 4 < 15): budget spent
    ("WWWW" "WRWW" + "W" * 24, {}, [4, 8, 16, 0], "budget", 32),
    # rounds clipped at a budget below the schedule's end
    ("RWRW" "WWWR", {"rounds": (4, 6)}, [2, 0], "budget", 6),
    # no ground truth: one at a time until a response passes the selection rules
    ("G", {}, [0], "no_gt_chosen", 1),
    ("BBG", {}, [1, 1, 0], "no_gt_chosen", 3),
    ("BBBB", {}, [1, 1, 1, 0], "no_gt_cap", 4),
    ("BB", {"no_gt_max": 2}, [1, 0], "no_gt_cap", 2),
])
def test_stop_rule(draws, rule, asks, reason, drawn):
    has_gt = not set(draws) <= set("GB")
    got_asks, got_reason, got_drawn = _run(draws, has_gt, **rule)
    assert (got_asks, got_reason, got_drawn) == (asks, reason, drawn)


@pytest.mark.parametrize("right, wrong, reuse, pairs", [
    (4, 4, 4, 16), (1, 31, 4, 4), (31, 1, 4, 4), (2, 2, 4, 4), (3, 5, 4, 12), (8, 8, 1, 8), (0, 9, 4, 0),
])
def test_pairs_possible(right, wrong, reuse, pairs):
    assert pairs_possible(right, wrong, reuse) == pairs


def test_outcome_records_rounds_and_tokens():
    sampler = PromptSampler(StopRule(rounds=ROUNDS), True, score=_score)
    drawn = [Sample("W", num_tokens=5)] * 4
    assert sampler.next_count(drawn) == 4
    drawn = drawn + [Sample("R", num_tokens=7)] * 4
    sampler.next_count(drawn)
    o = sampler.outcome
    assert o.rounds == [4, 8] and o.round_tokens == [20, 28] and (o.right, o.wrong) == (4, 4)
