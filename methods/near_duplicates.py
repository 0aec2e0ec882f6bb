"""Near-duplicate prompts from their keys: candidates by shared keys, a check per pair, one kept per cluster.

A prompt is a near-duplicate of another when **all** of these hold:

* the ground truths agree (the same normalised answers, or both have none);
* the questions match (the same normalised text and choices, or a MinHash estimate of their
  3-gram Jaccard at least ``threshold``);
* the images match one to one, in order (pHash within ``k`` bits and the colour check;
  ``methods.image_hash``).

Generic questions ("How many circles are there?") put many prompts in one question group;
the image check keeps prompts whose images differ apart.

**Candidates** are found without comparing every pair: prompts are grouped by each of their
question keys (the exact key and the 16 LSH band keys), mixed with the answer key and the
number of images, and only pairs inside a group whose first images are within ``k`` bits are
checked.  A group larger than ``MAX_GROUP`` (one generic question asked of a million images)
is split by the eight 8-bit blocks of the first image's pHash first: two hashes within 7 bits
share a block, so that split misses nothing up to k = 7 and, measured on the sample's
perturbations, almost nothing at k = 10.

**Representatives**: prompts are taken in their stable order (``rank``, the caller's sort by
``prompt_id``); a prompt is dropped when it matches an earlier prompt that is kept, and names
the first such one.  A prompt that matches only dropped ones is kept, so a chain never
removes a prompt unlike its representative.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from methods.image_hash import hamming

#: groups above this size are split by pHash blocks before pairs are compared
MAX_GROUP = 2048
_MIX_A, _MIX_N = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)


@dataclass(frozen=True)
class Match:
    """``drop`` is a near-duplicate of ``keep`` (row indices), with the distances found."""
    drop: int
    keep: int
    image_bits: tuple[int, ...]
    colour: tuple[float, ...]
    jaccard: float


def group_columns(answer_key: np.ndarray, n_images: np.ndarray, question_keys: np.ndarray) -> np.ndarray:
    """(n, c) uint64 grouping keys: each question key column mixed with the answer key and the
    image count (a collision only adds a candidate, which the pair check refuses)."""
    a = np.asarray(answer_key).astype(np.uint64)[:, None]
    m = np.asarray(n_images).astype(np.uint64)[:, None]
    q = np.asarray(question_keys).astype(np.uint64).reshape(len(a), -1)
    with np.errstate(over="ignore"):
        return q ^ (a * _MIX_A) ^ ((m + np.uint64(1)) * _MIX_N)


def _runs(col: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Indices of rows sharing a value with one other row ((p, 2) array) and larger groups."""
    order = np.argsort(col, kind="stable")
    s = col[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    sizes = np.diff(np.r_[starts, len(s)])
    two = starts[sizes == 2]
    pairs = np.stack([order[two], order[two + 1]], axis=1) if len(two) else np.zeros((0, 2), np.int64)
    big = [order[st:st + n] for st, n in zip(starts[sizes > 2], sizes[sizes > 2])]
    return pairs, big


def _group_pairs(idx: np.ndarray, phash: np.ndarray, k: int) -> list[np.ndarray]:
    """Pairs (p, 2) inside one group whose first pHashes are within ``k`` bits; a group over
    ``MAX_GROUP`` is compared inside each of its sub-groups by each 8-bit pHash block."""
    if len(idx) <= MAX_GROUP:
        return _all_pairs(idx, phash, k)
    out = []
    for shift in range(0, 64, 8):
        block = (phash[idx] >> np.uint64(shift)) & np.uint64(0xFF)
        for b in np.unique(block):
            sub = idx[block == b]
            if len(sub) > 1:
                out += _all_pairs(sub, phash, k)
    return out


def _all_pairs(idx: np.ndarray, phash: np.ndarray, k: int) -> list[np.ndarray]:
    out = []
    for start in range(0, len(idx), MAX_GROUP):  # rows of the distance matrix, a block at a time
        rows = idx[start:start + MAX_GROUP]
        d = hamming(phash[rows][:, None], phash[idx][None, :])
        i, j = np.nonzero(d <= k)
        i, j = rows[i], idx[j]
        keep = i < j
        out.append(np.stack([i[keep], j[keep]], axis=1))
    return out


def candidate_pairs(groups: np.ndarray, first_phash: np.ndarray, k: int) -> np.ndarray:
    """(p, 2) unique row pairs (i < j) that share a grouping key and whose first images are
    within ``k`` bits (``first_phash``: 0 for prompts without images)."""
    phash = np.asarray(first_phash, np.uint64)
    found = [np.zeros((0, 2), np.int64)]
    for c in range(groups.shape[1]):
        pairs, big = _runs(groups[:, c])
        if len(pairs):
            close = hamming(phash[pairs[:, 0]], phash[pairs[:, 1]]) <= k
            found.append(np.sort(pairs[close], axis=1))
        for idx in big:
            found += _group_pairs(np.sort(idx), phash, k)
    allp = np.concatenate(found).astype(np.int64)
    return np.unique(allp, axis=0) if len(allp) else allp


def representatives(n: int, rank: np.ndarray, pairs: np.ndarray,
                    check: Callable[[int, int], Match | None]) -> list[Match]:
    """The prompts to drop: pairs taken in ``rank`` order of their later prompt; each checked
    (``check(keep, drop)``) only while its earlier prompt is still kept."""
    rank = np.asarray(rank)
    if not len(pairs):
        return []
    a, b = pairs[:, 0], pairs[:, 1]
    swap = rank[a] > rank[b]
    early, late = np.where(swap, b, a), np.where(swap, a, b)
    order = np.lexsort((rank[early], rank[late]))
    dropped: dict[int, Match] = {}
    for e, l in zip(early[order].tolist(), late[order].tolist()):
        if l in dropped or e in dropped:
            continue
        m = check(e, l)
        if m is not None:
            dropped[l] = m
    return sorted(dropped.values(), key=lambda m: rank[m.drop])
