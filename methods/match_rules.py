"""The matching rules, one function per way an answer can equal a ground truth (pure).

Every rule is ``rule(pred, gt, options) -> score`` (1.0 for a match, 0.0 for none; ANLS is
continuous), and ``RULES_BY_TYPE`` says which rules an answer type runs, cheapest first.
Which rules run depends on the answer type so that a rule meant for one kind of answer
cannot produce false positives on another (``methods.match`` explains each rule and runs
them: ``match_answer``).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, NamedTuple

from rapidfuzz.distance import Levenshtein

from methods.answer_text import CACHE_SIZE, canon, clean
from methods.equations import split_equation
from methods.maths import LATEX_HINT, math_equal
from methods.multiple_choice import resolve_option
from methods.numbers import Num, numbers_match, parse_number
from methods.vqa_eval import vqa_normalize

#: ChartQA relaxed accuracy tolerance
RELAXED_TOL = 0.05


# --------------------------------------------------------------------------
# yes / no
# --------------------------------------------------------------------------
_YES_NO_HEAD = re.compile(r"^(yes|no|yeah|yep|yup|nope|true|false)\b")
_YES_NO_BOTH = re.compile(r"^(?:yes|no)\s*(?:/|,|or|and)\s*(?:yes|no)\b")
_POLARITY = {"yes": "yes", "yeah": "yes", "yep": "yes", "yup": "yes", "no": "no", "nope": "no",
             "true": "yes", "false": "no"}


@lru_cache(maxsize=CACHE_SIZE)
def _yes_no(s: str, true_false: bool) -> str | None:
    """"yes" / "no" from the leading word ("Yes, it is" -> yes); None for "yes or no".

    "true"/"false" count only with ``true_false`` (ScienceQA-style T/F data)."""
    c = canon(s)
    m = _YES_NO_HEAD.match(c)
    if m is None:
        return None
    word = m.group(1)
    if word in ("true", "false") and not true_false:
        return None
    if _YES_NO_BOTH.match(c) is not None:
        return None
    return _POLARITY[word]


# --------------------------------------------------------------------------
# ANLS
# --------------------------------------------------------------------------
def anls_score(pred: str, gt: str, cutoff: float = 0.5) -> float:
    """ANLS of one pair: ``1 - Levenshtein(p, g) / max(len p, len g)`` on lowercased,
    whitespace-collapsed strings (markdown, quotes and a final period stripped
    like every rule here); 0 when below ``cutoff`` (DocVQA's 0.5; a value
    exactly at the cutoff is kept).

    Never ``dist / len`` -- that inverts the score (the reference code's bug)."""
    a, b = canon(pred), canon(gt)
    if not a and not b:
        return 1.0
    score = 1.0 - Levenshtein.normalized_distance(a, b)
    return score if score >= cutoff else 0.0


# --------------------------------------------------------------------------
# rules: (pred, gt, options) -> score
# --------------------------------------------------------------------------
class RuleOptions(NamedTuple):
    choices: tuple[str, ...]
    rel_tol: float
    relaxed: bool
    true_false: bool
    anls_cutoff: float


def _rule_exact(pred: str, gt: str, o: RuleOptions) -> float:
    return 1.0 if canon(pred) == canon(gt) else 0.0


def _rule_vqa(pred: str, gt: str, o: RuleOptions) -> float:
    return 1.0 if vqa_normalize(pred) == vqa_normalize(gt) else 0.0


def _rule_vqa_non_numeric_gt(pred: str, gt: str, o: RuleOptions) -> float:
    """String fallback for numeric types when this ground truth is not a number ("2 or 3")."""
    return 0.0 if value_of(gt) is not None else _rule_vqa(pred, gt, o)


@lru_cache(maxsize=CACHE_SIZE)
def value_of(s: str) -> tuple[str | None, Num] | None:
    """(symbol, number) of a number (symbol None) or a one-symbol equation ``x = 2`` (methods.equations)."""
    p = parse_number(s)
    if p is not None:
        return None, p
    eq = split_equation(clean(s))
    if eq is not None and (p := parse_number(eq[1])) is not None:
        return eq[0], p
    return None


def _values_match(pred: str, gt: str, tol: float, relaxed: bool) -> bool:
    """Numbers equal; an equation's value counts, but two equations must name the same symbol."""
    p, g = value_of(pred), value_of(gt)
    if p is None or g is None or (p[0] is not None and g[0] is not None and p[0] != g[0]):
        return False
    return numbers_match(p[1], g[1], tol, relaxed)


def _rule_numeric(pred: str, gt: str, o: RuleOptions) -> float:
    return 1.0 if _values_match(pred, gt, o.rel_tol, False) else 0.0


def _rule_relaxed(pred: str, gt: str, o: RuleOptions) -> float:
    return 1.0 if _values_match(pred, gt, RELAXED_TOL, True) else 0.0


def _rule_choice(pred: str, gt: str, o: RuleOptions) -> float:
    g = resolve_option(gt, o.choices)
    if g < 0:
        return 0.0
    return 1.0 if resolve_option(pred, o.choices) == g else 0.0


def _rule_yes_no(pred: str, gt: str, o: RuleOptions) -> float:
    g = _yes_no(gt, o.true_false)
    return 1.0 if g is not None and _yes_no(pred, o.true_false) == g else 0.0


def _rule_anls(pred: str, gt: str, o: RuleOptions) -> float:
    return anls_score(pred, gt, o.anls_cutoff)


def _rule_math(pred: str, gt: str, o: RuleOptions) -> float:
    return 1.0 if math_equal(pred, gt) else 0.0


def _rule_math_if_latex(pred: str, gt: str, o: RuleOptions) -> float:
    """Numeric types: call the slow symbolic checker only for LaTeX the number parser can't read."""
    if parse_number(pred) is not None and parse_number(gt) is not None:
        return 0.0
    if LATEX_HINT.search(clean(pred)) is None and LATEX_HINT.search(clean(gt)) is None:
        return 0.0
    return _rule_math(pred, gt, o)


_Rule = Callable[[str, str, RuleOptions], float]
_NUMERIC_RULES = (("exact", _rule_exact), ("numeric", _rule_numeric),
                  ("vqa_norm", _rule_vqa_non_numeric_gt), ("math", _rule_math_if_latex))
#: rules per answer type, cheapest first (matching stops at the first 1.0)
RULES_BY_TYPE: dict[str, tuple[tuple[str, _Rule], ...]] = {
    "multiple_choice": (("exact", _rule_exact), ("choice", _rule_choice)),
    "integer": _NUMERIC_RULES,
    "number": _NUMERIC_RULES,
    "yes_no": (("exact", _rule_exact), ("yes_no", _rule_yes_no)),
    "word": (("exact", _rule_exact), ("vqa_norm", _rule_vqa)),
    "text": (("exact", _rule_exact), ("vqa_norm", _rule_vqa)),
    "anls": (("exact", _rule_exact), ("anls", _rule_anls)),
    "math": (("exact", _rule_exact), ("numeric", _rule_numeric), ("math", _rule_math)),
    "open": (),
}
RELAXED_NUMERIC_RULES = _NUMERIC_RULES[:2] + (("relaxed_numeric", _rule_relaxed),) + _NUMERIC_RULES[2:]
