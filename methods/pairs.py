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


def _nodes(candidates: Sequence[tuple[Scored, Scored]]) -> list[tuple[int, int]]:
    """Each candidate as (chosen node, rejected node): small ints, chosen and rejected apart."""
    ids: dict[tuple[str, int], int] = {}
    return [(ids.setdefault(("c", c.index), len(ids)), ids.setdefault(("r", r.index), len(ids)))
            for c, r in candidates]


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
    edges = _nodes(candidates)
    n_nodes = 1 + max((max(e) for e in edges), default=-1)
    deg, room = [0] * n_nodes, [0] * n_nodes
    for a, b in edges:
        room[a] += 1
        room[b] += 1
    # no set can be larger: every response in at most min(cap, its candidates) pairs, each pair has a chosen
    chosen_nodes = {a for a, _ in edges}
    bound = min(k, sum(min(cap, room[a]) for a in chosen_nodes),
                sum(min(cap, room[b]) for b in {b for _, b in edges}))
    taken: set[int] = set()
    floor = (0, 0)  # a candidate's key only grows with the degrees: no pick is below the last one
    while len(taken) < bound:
        best, best_key = -1, (cap, 2 * cap)
        for i, (a, b) in enumerate(edges):
            da, db = deg[a], deg[b]
            if da < cap and db < cap and (max(da, db), da + db) < best_key and i not in taken:
                best, best_key = i, (max(da, db), da + db)
                if best_key == floor:
                    break
        if best < 0:
            break
        floor = best_key
        taken.add(best)
        deg[edges[best][0]] += 1
        deg[edges[best][1]] += 1
    while len(taken) < bound and _augment(edges, chosen_nodes, taken, deg, cap):
        pass
    return [candidates[i] for i in sorted(taken)]


def _augment(edges: list[tuple[int, int]], chosen_nodes: set[int], taken: set[int], deg: list[int],
             cap: int) -> bool:
    """One augmenting path (breadth first, candidates in order): taken grows by one; False when
    there is none (``taken`` is then the largest set the cap allows)."""
    by_node: dict[int, list[int]] = {}
    for i, (a, b) in enumerate(edges):
        by_node.setdefault(a, []).append(i)
        by_node.setdefault(b, []).append(i)
    frontier = sorted(a for a in chosen_nodes if deg[a] < cap)
    came: dict[int, tuple[int, int] | None] = {a: None for a in frontier}  # node -> (edge, previous node)
    while frontier:
        nxt = []
        for a in frontier:
            for i in by_node[a]:
                b = edges[i][1]
                if i in taken or b in came:
                    continue
                came[b] = (i, a)
                if deg[b] < cap:
                    _flip(taken, deg, came, b)
                    return True
                for j in by_node[b]:  # leave the rejected through a taken pair, to its chosen
                    a2 = edges[j][0]
                    if j in taken and a2 not in came:
                        came[a2] = (j, b)
                        nxt.append(a2)
        frontier = nxt
    return False


def _flip(taken: set[int], deg: list[int], came: dict, end: int) -> None:
    """Apply the path ending at rejected ``end``: its untaken pairs are taken, its taken ones dropped."""
    node = end
    while came[node] is not None:
        i, prev = came[node]
        taken.symmetric_difference_update({i})
        node = prev
    deg[end] += 1
    deg[node] += 1
