"""Gopher's n-gram repetition rule: the share of a text's characters in repeated n-grams.

Rae et al. 2021 ("Scaling Language Models", MassiveText quality filter, appendix A)
measure the characters covered by the most common n-gram (n = 2..4) and by n-grams that
repeat an earlier one (n = 5..10) and drop documents above fixed fractions.  A model
caught in a loop writes exactly such text; ``repeated_ngram_fraction`` is the rule the
``filter`` stage runs (``methods.quality``), the helpers are its measures.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Mapping

from methods.verdict import Verdict, ok, verdict

#: Gopher: "fraction of characters in duplicate n-grams" (n -> max fraction)
GOPHER_DUP_NGRAM: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
#: Gopher: "fraction of characters in the most common n-gram" (n -> max fraction)
GOPHER_TOP_NGRAM: dict[int, float] = {2: 0.20, 3: 0.18, 4: 0.16}

_WORD = re.compile(r"\w+")


def words_of(text: str) -> list[str]:
    """Case-folded word tokens (runs of letters/digits; punctuation dropped).

    Dropping punctuation makes "mat." and "mat" the same word, so a looping
    sentence repeats exactly.  CJK without spaces is one token per run, so the
    n-gram rules are blind to it; the substring rules are not.
    """
    return _WORD.findall(text.casefold())


def top_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters covered by the most common *repeated* n-gram / word characters.

    Counts every occurrence (as Gopher and datatrove do) and only n-grams
    seen at least twice: an n-gram occurring once is not repetition, and
    counting it would fail every short answer.
    """
    total = sum(map(len, words))
    if total == 0 or len(words) < n:
        return 0.0
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    gram, count = max(counts.items(), key=lambda kv: (sum(map(len, kv[0])) * kv[1], kv[1]))
    if count < 2:
        return 0.0
    return min(1.0, sum(map(len, gram)) * count / total)


def dup_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters in n-grams that repeat an earlier n-gram / word characters.

    datatrove's reading of Gopher: scan left to right; an n-gram already seen
    marks its n words as duplicate and the scan jumps past it, so each
    character counts once and first occurrences never count.
    """
    total = sum(map(len, words))
    if total == 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    dup_chars, i = 0, 0
    while i <= len(words) - n:
        gram = tuple(words[i:i + n])
        if gram in seen:
            dup_chars += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return dup_chars / total


def _thresholds(name: str, value) -> dict[int, float]:
    """Accept {n: frac} (YAML/JSON keys may be strings) or [[n, frac], ...]."""
    items = value.items() if isinstance(value, Mapping) else value
    try:
        out = {int(n): float(f) for n, f in items}
    except (TypeError, ValueError):
        raise ValueError(f"{name} must map n -> fraction, got {value!r}") from None
    if any(n < 1 or not 0 <= f <= 1 for n, f in out.items()):
        raise ValueError(f"{name} needs n >= 1 and fractions in [0, 1], got {value!r}")
    return out


def repeated_ngram_fraction(text: str,
                            dup_ngram_thresholds: Mapping = GOPHER_DUP_NGRAM,
                            top_ngram_thresholds: Mapping = GOPHER_TOP_NGRAM,
                            min_words: int = 50) -> Verdict:
    """Gopher n-gram repetition: fail when any fraction exceeds its threshold.

    Fractions are over word characters (whitespace and punctuation excluded
    in numerator and denominator alike).  Texts under ``min_words`` words pass.
    """
    top = sorted(_thresholds("top_ngram_thresholds", top_ngram_thresholds).items())
    dup = sorted(_thresholds("dup_ngram_thresholds", dup_ngram_thresholds).items())
    words = words_of(text)
    if len(words) < min_words:
        return ok("repeated_ngram_fraction")
    problems = []
    for n, limit in top:
        frac = top_ngram_char_fraction(words, n)
        if frac > limit:
            problems.append(f"top_ngram_frac {frac:.2f} > {limit:.2f} for n={n}")
    for n, limit in dup:
        frac = dup_ngram_char_fraction(words, n)
        if frac > limit:
            problems.append(f"dup_ngram_frac {frac:.2f} > {limit:.2f} for n={n}")
    return verdict("repeated_ngram_fraction", problems)
