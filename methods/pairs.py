"""MMPR pair selection for one prompt (pure, seeded, no I/O).

Given the scored samples of one prompt, pick chosen/rejected pairs the way the
MMPR pipeline does: every (correct, incorrect) combination is a candidate; drop
a pair whose chosen answer is a substring of *any* final answer the rejected
one states (it may well be right: "2" vs "2 apples", or say it in an earlier
statement); drop a pair whose texts are identical up to case and whitespace
(zero signal: ms-swift deletes such rows, TRL trains on them silently);
exact-dedup on the texts; keep at most ``k`` with a seeded random choice.  With ``length_ratio`` set, candidates
whose lengths are within that ratio come first (RLAIF-V-style length balance).

With ``max_per_response`` set (``scoring.max_pairs_per_response``), no response is in more than
that many of the pairs, and the pairs are spread over the responses level by level: a response's
second pair is taken only once no candidate pairs two responses that have none (``levelled``).
A DPO set that reuses one chosen answer across eight pairs teaches less than one that uses eight
different answers; adaptive sampling stops on the same cap (``methods.adaptive.pairs_possible``),
and the selection always reaches the most pairs the cap allows (up to ``k``), so a prompt the
sampler stopped as having enough pairs gets them.
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
                 length_ratio: float | None = None,
                 max_per_response: int | None = None) -> list[tuple[Scored, Scored]]:
    """Up to ``k`` (chosen, rejected) pairs, deterministic for a given seed; with
    ``max_per_response``, each response in at most that many of them (``levelled``)."""
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
    if max_per_response is None:
        return candidates[:k]
    return levelled(candidates, k, max_per_response)


def _key(p: Scored, side: str) -> tuple[str, int]:
    return side, p.index


def levelled(candidates: Sequence[tuple[Scored, Scored]], k: int, cap: int) -> list[tuple[Scored, Scored]]:
    """Up to ``k`` of ``candidates`` (in their order of preference) with each response in at most
    ``cap`` pairs, as many as that allows.

    Pair by pair, the first candidate whose responses are in the fewest pairs so far (the larger
    of the two counts, then their sum) is taken: a response's second pair comes only once no
    candidate joins two responses without one.  Then, while fewer than ``k`` are taken, an
    augmenting path (as in a max flow: add a pair, drop one taken, add another, ... ending at a
    response below the cap) adds one more -- the greedy picks can stop short of the most pairs
    the cap allows (3 x 3 responses, cap 2: 5 of 6 for some orders).  Returned in the
    candidates' order."""
    deg: dict[tuple[str, int], int] = {}
    taken: set[int] = set()
    while len(taken) < k:
        best, best_key = None, (cap, 2 * cap)
        for i, (c, r) in enumerate(candidates):
            dc, dr = deg.get(_key(c, "c"), 0), deg.get(_key(r, "r"), 0)
            if i not in taken and dc < cap and dr < cap and (max(dc, dr), dc + dr) < best_key:
                best, best_key = i, (max(dc, dr), dc + dr)
                if best_key == (0, 0):
                    break
        if best is None:
            break
        taken.add(best)
        c, r = candidates[best]
        deg[_key(c, "c")] = deg.get(_key(c, "c"), 0) + 1
        deg[_key(r, "r")] = deg.get(_key(r, "r"), 0) + 1
    while len(taken) < k and _augment(candidates, taken, deg, cap):
        pass
    return [candidates[i] for i in sorted(taken)]


def _augment(candidates: Sequence[tuple[Scored, Scored]], taken: set[int], deg: dict, cap: int) -> bool:
    """One augmenting path (breadth first, candidates in order): taken grows by one; False when
    there is none (``taken`` is then the largest set the cap allows)."""
    by_chosen: dict[tuple, list[int]] = {}
    by_rejected: dict[tuple, list[int]] = {}
    for i, (c, r) in enumerate(candidates):
        by_chosen.setdefault(_key(c, "c"), []).append(i)
        by_rejected.setdefault(_key(r, "r"), []).append(i)
    frontier = [ck for ck in by_chosen if deg.get(ck, 0) < cap]
    came: dict[tuple, tuple | None] = {ck: None for ck in frontier}  # node -> (edge, previous node)
    while frontier:
        nxt = []
        for ck in frontier:
            for i in by_chosen[ck]:
                rk = _key(candidates[i][1], "r")
                if i in taken or rk in came:
                    continue
                came[rk] = (i, ck)
                if deg.get(rk, 0) < cap:
                    _flip(candidates, taken, deg, came, rk)
                    return True
                for j in by_rejected[rk]:  # leave r through a taken pair, to its chosen
                    ck2 = _key(candidates[j][0], "c")
                    if j in taken and ck2 not in came:
                        came[ck2] = (j, rk)
                        nxt.append(ck2)
        frontier = nxt
    return False


def _flip(candidates, taken: set[int], deg: dict, came: dict, end: tuple) -> None:
    """Apply the path ending at rejected ``end``: its untaken pairs are taken, its taken ones dropped."""
    node = end
    while came[node] is not None:
        i, prev = came[node]
        taken.symmetric_difference_update({i})
        node = prev
    deg[end] = deg.get(end, 0) + 1
    deg[node] = deg.get(node, 0) + 1
