"""Which option of a multiple-choice question an answer names (pure).

An answer names an option by its letter ("B", "(B)", "B. blue", "the answer is B") or by
the option's text ("blue", or a number equal to the option's); one that names two
different options ("A or B") names none and counts as wrong.  Used for the answer and
the ground truth alike by the ``choice`` rule (``methods.match_rules``), which is correct
when both designate the same option.
"""
from __future__ import annotations

import re
from functools import lru_cache

from methods.answer_text import CACHE_SIZE, canon, clean
from methods.extract import clean_answer
from methods.numbers import numbers_match, parse_number
from methods.vqa_eval import vqa_normalize

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_AMBIGUOUS = -2   # the answer names several different options
_UNRESOLVED = -1
_MC_PREFIX = re.compile(
    r"^(?:(?:the|my)\s+)?(?:(?:final|correct|right|best)\s+)?(?:answer|option|choice)\b"
    r"(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?\s*[:\-]?\s*",
    re.IGNORECASE | re.ASCII,
)
_MC_BARE = re.compile(r"^[(\[]?([A-Za-z])[)\]]?[.:)]?$")
_MC_PAREN = re.compile(r"^[(\[]([A-Za-z])[)\]]")
_MC_DELIM = re.compile(r"^([A-Za-z])(?:[.:)]|\s+[-\u2013])(?:\s|$)")
_MC_SPACE = re.compile(r"^([A-Z])\s+(\S.*)$", re.DOTALL)
_MC_HEAD = re.compile(r"^([A-Z])(?![A-Za-z0-9])")
_MC_TWO = re.compile(
    r"^[(\[]?([A-Za-z])[)\]]?[.:]?\s*(?:,|/|&|;|\bor\b|\band\b)\s*"
    r"(?:(?:option|choice)\s+)?[(\[]?([A-Za-z])[)\]]?(?![A-Za-z])",
    re.IGNORECASE | re.ASCII,  # ASCII: no Kelvin sign / long s matching [A-Za-z]
)
_MC_BOTH = re.compile(r"^(?:both|either)\s+", re.IGNORECASE | re.ASCII)


def _option_key(s: str) -> str:
    """Key for comparing an answer with an option's text: case, punctuation and articles ignored."""
    return vqa_normalize(s)


def _letter_index(letter: str, n_choices: int) -> int:
    idx = _LETTERS.index(letter.upper())
    return idx if (n_choices == 0 or idx < n_choices) else _UNRESOLVED


def _letter_of(s: str, choices: tuple[str, ...], explicit: bool) -> int:
    """Option index named by letter at the start of ``s``; _UNRESOLVED if none.

    "B", "(B)", "[b]", "B.", "B:", "B) blue", "B. blue" all name B.  "B blue"
    (letter, space, text) names B only after an explicit "answer is"/"option"
    prefix or when the text is option B's text -- otherwise "A dog" would be
    read as option A.
    """
    n = len(choices)
    for pattern in (_MC_BARE, _MC_PAREN, _MC_DELIM):
        m = pattern.match(s)
        if m is not None:
            return _letter_index(m.group(1), n)
    if explicit:
        m = _MC_HEAD.match(s)
        if m is not None:
            return _letter_index(m.group(1), n)
    m = _MC_SPACE.match(s)
    if m is not None and choices:
        idx = _letter_index(m.group(1), n)
        if idx >= 0 and _option_key(m.group(2)) == _option_key(choices[idx]):
            return idx
    return _UNRESOLVED


def _names_two_options(s: str, n_choices: int) -> bool:
    """True for answers that start with two *different* valid letters: "A or B",
    "A and C", "B, C", "(A)/(B)" (after "both"/"either" is dropped)."""
    m = _MC_TWO.match(_MC_BOTH.sub("", s))
    if m is None:
        return False
    a, b = m.group(1).upper(), m.group(2).upper()
    return a != b and (n_choices == 0 or max(_LETTERS.index(a), _LETTERS.index(b)) < n_choices)


def _text_option(s: str, choices: tuple[str, ...]) -> int:
    """Index of the option whose text the answer is (VQA-normalised, or numerically equal)."""
    key = _option_key(s)
    if not key:
        return _UNRESOLVED
    hits = [i for i, c in enumerate(choices) if _option_key(c) == key]
    if len(hits) == 1:
        return hits[0]
    if hits:
        return hits[0] if all(canon(choices[i]) == canon(choices[hits[0]]) for i in hits) else _AMBIGUOUS
    p = parse_number(s)
    if p is not None:
        hits = [i for i, c in enumerate(choices)
                if (g := parse_number(c)) is not None and numbers_match(p, g, 1e-9, False)]
        if len(hits) == 1:
            return hits[0]
    return _UNRESOLVED


@lru_cache(maxsize=CACHE_SIZE)
def resolve_option(s: str, choices: tuple[str, ...]) -> int:
    """The option index an answer (or a ground truth) designates.

    Returns an index, _UNRESOLVED (no option recognisable) or _AMBIGUOUS (the
    answer names two different options, which counts as wrong).  Order: a bare
    letter; the text of an option (so an option literally reading "Both A and
    B" still resolves); two letters named -> ambiguous; a leading letter.
    """
    s = clean(s)
    explicit = False
    while True:
        m = _MC_PREFIX.match(s)
        if m is None or m.end() == 0:
            break
        s, explicit = clean_answer(s[m.end():]), True
    m = _MC_BARE.match(s)
    if m is not None:
        return _letter_index(m.group(1), len(choices))
    if choices:
        idx = _text_option(s, choices)
        if idx != _UNRESOLVED:
            return idx
    if _names_two_options(s, len(choices)):
        return _AMBIGUOUS
    return _letter_of(s, choices, explicit)
