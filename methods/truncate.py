"""DropoutNTP prefix: cut the chosen response to its first ``ratio`` (pure).

MMPR's DropoutNTP (arXiv 2411.10442) keeps the first half of the chosen
response and lets the model continue it *without the image*; the rejected
answer is prefix + continuation.  The released code cuts by whitespace-split
words (``text.split()``, keep ``int(n_words * ratio)``, re-join with spaces).

Differences from the reference, on purpose:

* The prefix is a slice of the *original* text ending at the last kept word
  (no re-joining), so newlines, indentation and double spaces survive and
  ``chosen.startswith(prefix)`` holds exactly -- the rejected answer then
  shares its first part with the chosen one byte for byte.  The prefix never
  ends in whitespace; the continuation supplies the next separator.
* The number of kept words is clamped to ``1 .. n_words - 1``: a prefix must
  keep something of the answer and leave something for the continuation to
  generate.  Texts with fewer than 2 words can't be cut and give ``None``.
* ``int(n * ratio)`` is kept exactly as the reference computes it (so e.g.
  ``int(100 * 0.29) == 28`` because of binary floating point).

Words are maximal runs of non-whitespace, the same split as ``str.split()``
(``\\S+`` in ``re`` uses the same Unicode whitespace definition).  CJK text
without spaces is one "word" per run, exactly as in the reference; use
:func:`truncate_tokens` for it.
"""
from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

_WORD = re.compile(r"\S+")

TokenSpans = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class Truncation:
    """Where a response was cut; stored in DropoutNTP provenance.

    ``prefix == text[:cut_chars]``; ``cut_words`` whitespace-split words are
    in the prefix out of ``total_words`` in the text.
    """

    prefix: str
    cut_words: int
    cut_chars: int
    total_words: int


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) \
            or not math.isfinite(ratio) or not 0 < ratio < 1:
        raise ValueError(f"ratio must be a number in the open interval (0, 1), got {ratio!r}")
    return float(ratio)


def _word_ends(text: str) -> list[int]:
    """End offset of every whitespace-delimited word, in order."""
    return [m.end() for m in _WORD.finditer(text)]


def _cut(text: str, ends: list[int], keep: int) -> Truncation:
    keep = min(max(keep, 1), len(ends) - 1)
    cut = ends[keep - 1]
    return Truncation(prefix=text[:cut], cut_words=keep, cut_chars=cut, total_words=len(ends))


def truncate_words(text: str, ratio: float) -> Optional[Truncation]:
    """Keep the first ``int(n_words * ratio)`` words of ``text`` (at least 1,
    at most ``n_words - 1``); ``None`` when the text has fewer than 2 words.
    """
    ratio = _check_ratio(ratio)
    ends = _word_ends(text)
    if len(ends) < 2:
        return None
    return _cut(text, ends, int(len(ends) * ratio))


def truncate_tokens(text: str, ratio: float,
                    tokenize: Callable[[str], TokenSpans]) -> Optional[Truncation]:
    """Cut after ``int(n_tokens * ratio)`` tokens, moved back to a word end.

    ``tokenize`` returns ``(start, end)`` character offsets per token, like a
    Hugging Face fast tokenizer's ``offset_mapping`` (see
    :func:`hf_token_spans`).  Zero-width spans (special tokens) are ignored.
    If the token cut falls inside a word, the prefix ends at the previous
    word instead, so it never ends mid-word; the same 1 .. n_words - 1 clamp
    as :func:`truncate_words` applies.  ``None`` when the text has fewer
    than 2 words.
    """
    ratio = _check_ratio(ratio)
    ends = _word_ends(text)
    if len(ends) < 2:
        return None
    token_ends = [end for start, end in tokenize(text) if end > start]
    k = int(len(token_ends) * ratio)
    cut = token_ends[k - 1] if k >= 1 else 0
    # number of words that end at or before the token cut = words fully kept
    kept = bisect.bisect_right(ends, cut)
    return _cut(text, ends, kept)


def hf_token_spans(tokenizer) -> Callable[[str], TokenSpans]:
    """``tokenize`` callable for :func:`truncate_tokens` from a HF fast tokenizer."""
    def spans(text: str) -> TokenSpans:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(s) for s in enc["offset_mapping"]]
    return spans
