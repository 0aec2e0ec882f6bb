"""MMPR pair selection for one prompt (pure, seeded, no I/O).

Given the scored samples of one prompt, pick chosen/rejected pairs the way the
MMPR pipeline does: every (correct, incorrect) combination is a candidate; drop
a pair whose chosen answer is a substring of *any* final answer the rejected
one states (it may well be right: "2" vs "2 apples", or say it in an earlier
statement); drop a pair whose texts are identical up to case and whitespace
(zero signal: ms-swift deletes such rows, TRL trains on them silently);
exact-dedup on the texts; keep at most ``k`` with a seeded random choice.  With ``length_ratio`` set, candidates
whose lengths are within that ratio come first (RLAIF-V-style length balance).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from methods.quality import text_key


@dataclass(frozen=True)
class Scored:
    index: int
    text: str
    answer: str | None
    score: float
    correct: bool
    rule: str = ""
    #: every final answer the response states, in order (``methods.extract.extract_answers``)
    answers: tuple[str, ...] = ()
    #: its statements disagree with each other (``methods.consistency.conflicting``)
    conflicting: bool = False
    #: one of its statements matches the ground truth (the last one, or an earlier one)
    states_truth: bool = False

    @property
    def usable_chosen(self) -> bool:
        """Right, and states one answer only."""
        return self.correct and not self.conflicting

    @property
    def usable_rejected(self) -> bool:
        """Parsed, and no statement of it is the ground truth: a clean negative."""
        return self.answer is not None and not self.correct and not self.states_truth


def _norm(s: str | None) -> str:
    return " ".join((s or "").lower().split())


def _within(a: str, b: str, ratio: float) -> bool:
    la, lb = max(len(a), 1), max(len(b), 1)
    return max(la, lb) / min(la, lb) <= ratio


def select_pairs(chosen: Sequence[Scored], rejected: Sequence[Scored], k: int, seed: int,
                 length_ratio: float | None = None) -> list[tuple[Scored, Scored]]:
    """Up to ``k`` (chosen, rejected) pairs, deterministic for a given seed."""
    seen: set[tuple[str, str]] = set()
    candidates: list[tuple[Scored, Scored]] = []
    # normalised once per response, not once per candidate pair (32 samples: up to 256 pairs)
    rejected_keys = [(r, [_norm(a) for a in (r.answers or (r.answer,))], text_key(r.text)) for r in rejected]
    for c in chosen:
        ca, ck = _norm(c.answer), text_key(c.text)
        for r, r_answers, rk in rejected_keys:
            if ca and any(ca in a for a in r_answers):
                continue
            key = (c.text, r.text)
            if key in seen or ck == rk:
                continue
            seen.add(key)
            candidates.append((c, r))
    rng = random.Random(seed)
    rng.shuffle(candidates)
    if length_ratio is not None:
        # stable sort keeps the shuffled order inside each group
        candidates.sort(key=lambda p: not _within(p[0].text, p[1].text, length_ratio))
    return candidates[:k]
