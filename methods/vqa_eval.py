"""The official VQA evaluation's answer normalisation, with its quirks (pure).

VQAv2's ``vqaEval.py`` compares answers after its own punctuation handling, number words
to digits, articles dropped and contractions restored; matching ``word`` and ``text``
answers the way the benchmark scores them means doing exactly that, quirks included
(``none`` becomes ``0``).  Kept apart from the matching rules (``methods.match_rules``)
because multiple-choice option texts are compared in this normal form too
(``methods.multiple_choice``); its word tables are ``methods.vqa_tables``.
"""
from __future__ import annotations

import re
from functools import lru_cache

from methods.answer_text import CACHE_SIZE, clean
from methods.vqa_tables import CONTRACTIONS, NUMBER_WORDS

_ARTICLES = frozenset(("a", "an", "the"))
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
              ">", "<", "@", "`", ",", "?", "!")
_VQA_PUNCT_RE = re.compile("[" + re.escape("".join(_VQA_PUNCT)) + "]")
_VQA_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
_VQA_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")


def _vqa_punctuation(s: str) -> str:
    """VQA's processPunctuation: a mark is deleted if it touches a space (or the text has
    a digit-comma-digit), else replaced by a space; periods not followed by a digit go."""
    if _VQA_PUNCT_RE.search(s) is not None:
        comma_digits = _VQA_COMMA_DIGITS.search(s) is not None
        out = s
        for p in _VQA_PUNCT:
            if p in s:
                glue = "" if (comma_digits or p + " " in s or " " + p in s) else " "
                out = out.replace(p, glue)
        s = out
    return _VQA_PERIOD.sub("", s)


@lru_cache(maxsize=CACHE_SIZE)
def vqa_normalize(s: str) -> str:
    """The VQA-eval normal form: punctuation handled, lowercased, number words to digits,
    articles dropped, contractions restored ("dont" -> "don't")."""
    s = _vqa_punctuation(clean(s).replace("\n", " ").replace("\t", " "))
    words = []
    for w in s.lower().split():
        w = NUMBER_WORDS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(CONTRACTIONS.get(w, w))
    return " ".join(words)
