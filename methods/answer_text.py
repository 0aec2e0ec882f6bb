"""Light cleaning of an answer shared by every matching rule (``methods.match``, ``methods.numbers``)."""
from __future__ import annotations

import re
from functools import lru_cache

from methods.extract import clean_answer

#: entries of each per-string cache of the matcher
CACHE_SIZE = 1 << 16

_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mathbf|operatorname)\s*\{([^{}]*)\}")
_LATEX_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_LATEX_SPACES = re.compile(r"\\[,;:! ]|\\q?quad")
_WS = re.compile(r"\s+")


@lru_cache(maxsize=CACHE_SIZE)
def clean(s: str) -> str:
    """Answer without presentation: markdown, quotes, math delimiters, ``\\text{}``, final period."""
    s = clean_answer(s)
    if "\\" in s:
        s = _LATEX_TEXT.sub(r"\1", s)
        s = _LATEX_DEGREE.sub("°", s)
        s = _LATEX_SPACES.sub(" ", s)
        s = s.replace("\\%", "%").replace("\\$", "$").replace("\\left", "").replace("\\right", "")
        s = clean_answer(s)
    return s


@lru_cache(maxsize=CACHE_SIZE)
def canon(s: str) -> str:
    """Cleaned, case-folded, whitespace-collapsed: the key of the ``exact`` rule."""
    return _WS.sub(" ", clean(s)).casefold()
