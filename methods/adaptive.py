"""Adaptive sampling: when has a prompt drawn enough samples? (pure, no I/O)

Fixed-N sampling (MMPR: 32 per prompt) pays for every sample of every prompt,
then throws most of them away: at most 15 pairs are kept, and prompts whose
samples are all right or all wrong give no correctness pair at all.  A
``PromptSampler`` draws a prompt's samples in rounds (cumulative counts such
as 4, 8, 12, 16, 24, 32) and looks at them after each round:

* with ground truth, the responses are scored (the correctness scorer, handed
  in as ``score``) and the prompt stops as soon as its pairs have what they
  need: ``stop: pairs`` -- enough distinct right x wrong combinations for
  ``max_pairs`` when each response may be used in at most ``max_reuse``
  pairs (the cap the pair selection keeps: ``methods.pairs.select_pairs``,
  ``scoring.max_pairs_per_response``; None: no cap) -- or ``stop: both`` -- at least ``min_each`` right and ``min_each``
  wrong answers.  It gives up when every sample is right after
  ``all_right_after`` samples (too easy: MMPR drops such prompts anyway), and
  when none is right after ``all_wrong_after`` (or the whole budget);
* without ground truth, samples are drawn one at a time until one passes
  DropoutNTP's selection rules (``accept``), at most ``no_gt_max``.

Sample i of a prompt is the same whatever round draws it (the engine gives it
the seed ``seed + i``), so an adaptive run's responses are exactly the first
ones a fixed-N run draws; only how many differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

@dataclass(frozen=True)
class StopRule:
    #: cumulative sample counts after each round; the last one is the budget
    rounds: tuple[int, ...]
    stop: Literal["pairs", "both"] = "pairs"
    max_pairs: int = 15
    max_reuse: int | None = 8
    min_each: int = 1
    all_right_after: int | None = 8
    all_wrong_after: int | None = None
    no_gt_max: int = 4

    @property
    def budget(self) -> int:
        return self.rounds[-1]


def pairs_possible(right: int, wrong: int, max_reuse: int | None) -> int:
    """Distinct right x wrong pairs when every response is in at most ``max_reuse`` of them
    (the largest such set of edges of the complete bipartite graph; None: no cap)."""
    if max_reuse is None:
        return right * wrong
    return min(right * min(max_reuse, wrong), wrong * min(max_reuse, right))


@dataclass
class Outcome:
    """What the sampler drew and why it stopped (the stage records it)."""
    #: cumulative samples after each round
    rounds: list[int] = field(default_factory=list)
    #: tokens generated in each round
    round_tokens: list[int] = field(default_factory=list)
    stop_reason: str | None = None
    right: int = 0
    wrong: int = 0


def first_round(rule: StopRule, rate: float | None) -> int:
    """The first round of a prompt whose pass rate an earlier build measured (``generate.prior``):
    the smallest round at which a prompt right at ``rate`` has what ``rule`` stops on (expected
    right and wrong counts, rounded down), so the prompt skips the rounds that would only show it
    has not enough yet.  No such round (a rate of 0 or 1, or too skewed for the budget), or no
    rate: the first configured round, as without a prior.  The samples drawn are still the first
    ones a fixed-N run draws; this saves rounds (scoring passes, re-admissions into the engine),
    not samples: a prompt that would have had enough before that round draws up to it."""
    if rate is None:
        return rule.rounds[0]
    for r in rule.rounds:
        right, wrong = int(rate * r), int((1 - rate) * r)
        if rule.stop == "pairs":
            enough = right and wrong and pairs_possible(right, wrong, rule.max_reuse) >= rule.max_pairs
        else:
            enough = right >= rule.min_each and wrong >= rule.min_each
        if enough:
            return r
    return rule.rounds[0]


class PromptSampler:
    """How many more samples one prompt draws, round after round.

    ``score`` (prompts with ground truth) maps responses to scored responses
    (``methods.pairs.Scored``: ``usable_chosen``, ``usable_rejected``, ``answer``);
    ``accept`` (prompts without) says whether one response passes the selection
    rules.  The engine calls ``next_count`` with every completion so far each time
    a round is complete.
    """

    def __init__(self, rule: StopRule, has_ground_truth: bool,
                 score: Callable[[Sequence], Sequence] | None = None,
                 accept: Callable[[object], bool] | None = None, first: int | None = None) -> None:
        self.rule, self.has_gt = rule, has_ground_truth
        self.score, self.accept = score, accept
        #: the first round of a prompt with ground truth (``first_round``: from a prior pass rate)
        self.first = first if first in rule.rounds else rule.rounds[0]
        self.outcome = Outcome()
        self._seen = 0
        self._unparsed = 0

    def first_count(self) -> int:
        return self.first if self.has_gt else 1

    def next_count(self, completions: Sequence) -> int:
        """More samples to draw after a round (0: the prompt is done)."""
        new = list(completions[self._seen:])
        self._seen = len(completions)
        o = self.outcome
        o.rounds.append(len(completions))
        o.round_tokens.append(sum(c.num_tokens for c in new))
        if self.has_gt:
            o.stop_reason = self._decide_gt(new, len(completions))
        else:
            o.stop_reason = self._decide_open(new, len(completions))
        if o.stop_reason:
            return 0
        if not self.has_gt:
            return 1
        return next(r for r in self.rule.rounds if r > len(completions)) - len(completions)

    def _decide_gt(self, new: Sequence, drawn: int) -> str | None:
        rule, o = self.rule, self.outcome
        for s in self.score(new):
            o.right += s.usable_chosen
            o.wrong += s.usable_rejected
            self._unparsed += s.answer is None
        if rule.stop == "pairs":
            enough = o.right and o.wrong and pairs_possible(o.right, o.wrong, rule.max_reuse) >= rule.max_pairs
        else:
            enough = o.right >= rule.min_each and o.wrong >= rule.min_each
        if enough:
            return "enough_pairs"
        all_right = o.right == drawn and not self._unparsed
        if all_right and rule.all_right_after is not None and drawn >= rule.all_right_after:
            return "all_right"
        if not o.right and rule.all_wrong_after is not None and drawn >= rule.all_wrong_after:
            return "all_wrong"
        if drawn >= rule.budget:
            return "all_wrong" if not o.right else "budget"
        return None

    def _decide_open(self, new: Sequence, drawn: int) -> str | None:
        if any(self.accept(c) for c in new):
            return "no_gt_chosen"
        return "no_gt_cap" if drawn >= min(self.rule.no_gt_max, self.rule.budget) else None
