"""Score an extracted answer against ground truths (pure Python, no I/O).

MMPR labels a sampled response *correct* when the best score over several
matching rules, and over all acceptable ground truths, is above 0.9.  This
module is that scorer.  Which rules run depends on the answer type, so that a
rule meant for one kind of answer cannot produce false positives on another
(VQA punctuation stripping, for example, would make ``(1,2)`` equal ``12`` --
harmless for VQA words, wrong for maths).

Rules and their names (``MatchResult.rule``):

``exact``            case-insensitive equality after stripping markdown, quotes,
                     ``$..$`` and a trailing period (every type except ``open``).
``vqa_norm``         the standard VQA-eval normalisation (punctuation, articles,
                     number words, contractions): ``word``, ``text``, and
                     ground truths of numeric types that are not numbers.
``choice``           option letter / option text resolution (``multiple_choice``).
``numeric``          numbers equal within ``rel_tol`` after unit stripping; the value
                     of a one-symbol equation counts (``x = 2`` answers ``2``).
``relaxed_numeric``  ChartQA relaxed accuracy (5%), only with ``relaxed=True``.
``yes_no``           leading yes/no (``"Yes, it is"``) -- ``yes_no``.
``anls``             1 - normalised Levenshtein distance (``anls``).
``math``             symbolic equivalence with ``math_verify`` (``math``, and
                     LaTeX-looking answers of numeric types).

Scores are 1.0 for every rule except ``anls``, which is continuous.  A result is
``correct`` when ``score > threshold`` (strictly, as the reference does); exact
and rule matches score 1.0, so they are correct for any threshold below 1.0.

This module infers the answer type and runs the rules (``match_answer``); the
rules and which types run them are ``methods.match_rules``, reading an option
out of an answer ``methods.multiple_choice``, the VQA normal form
``methods.vqa_eval``.

Behaviour decisions (see also the docstrings of the rule functions):

* Percent: ``30%`` equals ``30`` and ``30 percent``; it also equals ``0.3`` when
  exactly one side carries the percent sign and the other has no unit (both
  conventions occur in chart datasets).  ``30`` vs ``0.3`` without any percent
  sign is wrong.
* Units: a single trailing unit token (``cm``, ``kg``, ``°``, ``degrees``,
  ``apples``...) and a currency prefix are ignored when only one side has a
  unit; when both sides have units that differ (``5 cm`` vs ``5 m``) the
  numbers do not match.
* Integers: two integer literals must be equal in strict mode (a 1e-3
  tolerance would let 2018 match 2019); tolerance applies once either side
  has a decimal point, fraction or exponent.  Year-like ground truths
  (integer 1000..2100) need an exact value even with ``relaxed=True``.
* Equations: for the numeric types (and ``math``'s numeric rule) an answer
  ``x = 2``, ``\\boxed{x=2}``, ``a = 2 cm`` or ``\\angle ABC = 30^\\circ`` is
  compared by its value (``methods.equations``); ``x = 2, y = 3`` is no one
  value and never matches.  A ground truth ``x=2`` is numeric too (inferred
  ``integer``) and accepts ``2``; ``y = 2`` does not answer it.
* Multiple choice: a response that names two different options (``A or B``,
  ``A and C``, ``B, C``) is wrong.  When a response gives a letter and a text
  (``B. red``) the letter wins.
* VQA normalisation maps ``none`` to ``0`` like the official VQA evaluation.
* Yes/no: the leading word decides (``yes``, ``yeah``, ``yep``, ``yup``,
  ``no``, ``nope``); ``true``/``false`` only with ``true_false=True``;
  ``yes or no`` is wrong.  Declare ``answer_type="yes_no"`` for True/False
  ground truths -- inference only recognises yes/no.
* Maths: ``math_verify`` runs with its own 5 s SIGALRM timeouts in the main
  thread on POSIX, and with timeouts disabled elsewhere (the signal cannot be
  armed outside the main thread).  In the main thread it therefore replaces
  any SIGALRM handler/alarm of the caller for the duration of the call.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from methods.answer_text import CACHE_SIZE, canon, clean
from methods.maths import LATEX_HINT, SCORING_ERRORS
from methods.match_rules import (  # noqa: F401 -- anls_score and RELAXED_TOL: part of this module's API
    RELAXED_NUMERIC_RULES, RELAXED_TOL, RULES_BY_TYPE, RuleOptions, anls_score, value_of)
from methods.numbers import parse_number
from methods.vqa_eval import vqa_normalize

__all__ = [
    "MatchResult", "match_answer", "infer_answer_type", "parse_number",
    "vqa_normalize", "anls_score", "ANSWER_TYPES", "SCORING_ERRORS",
]

ANSWER_TYPES = (
    "auto", "multiple_choice", "integer", "number", "yes_no", "word",
    "text", "anls", "math", "open",
)


@dataclass(frozen=True)
class MatchResult:
    """Best score over rules and ground truths, whether it counts as correct, and the rule that gave it."""

    score: float
    correct: bool
    rule: str


_NO_MATCH = MatchResult(0.0, False, "none")


# --------------------------------------------------------------------------
# answer type inference
# --------------------------------------------------------------------------
_MC_LETTER_GT = re.compile(r"^[(\[]?[A-Z][)\]]?[.:)]?$")


@lru_cache(maxsize=CACHE_SIZE)
def _infer(gts: tuple[str, ...], has_choices: bool) -> str:
    if has_choices:
        return "multiple_choice"
    gts = tuple(g for g in gts if g and clean(g))
    if not gts:
        return "open"
    cleaned = [clean(g) for g in gts]
    if all(_MC_LETTER_GT.match(c) for c in cleaned):
        return "multiple_choice"
    if all(canon(g) in ("yes", "no") for g in gts):
        return "yes_no"
    nums = [v[1] if (v := value_of(g)) is not None else None for g in gts]
    if all(n is not None for n in nums):
        return "integer" if all(n.int_literal and n.unit is None for n in nums) else "number"
    if any(LATEX_HINT.search(c) for c in cleaned):
        return "math"
    if all(len(c.split()) == 1 for c in cleaned):
        return "word"
    return "text"


def infer_answer_type(ground_truths: Sequence[str], choices: Sequence[str] | None = None) -> str:
    """The answer type for ``answer_type="auto"``.

    Options given, or every ground truth an upper-case letter (MathVista-style
    options inside the question) -> ``multiple_choice``; all yes/no ->
    ``yes_no``; all plain integers (number words count: VQA's "two") ->
    ``integer``; all numbers, possibly with a unit or percent -> ``number``;
    LaTeX markup -> ``math``; single words -> ``word``; else ``text``.  No
    usable ground truth -> ``open``.  ``anls`` is never inferred: it is a
    property of the dataset (documents), so sources declare it.
    """
    return _infer(tuple(ground_truths), choices is not None and len(choices) > 0)


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------
def match_answer(
    pred: str | None,
    ground_truths: Sequence[str],
    answer_type: str = "auto",
    choices: Sequence[str] | None = None,
    *,
    threshold: float = 0.9,
    rel_tol: float = 1e-3,
    relaxed: bool = False,
    true_false: bool = False,
    anls_cutoff: float = 0.5,
) -> MatchResult:
    """Best score of ``pred`` over the rules of ``answer_type`` and over all ground truths.

    ``pred`` None (no parseable answer) or an ``open`` question never matches.
    ``correct`` is ``score > threshold``; rule matches score 1.0.  Rules run
    cheapest first across all ground truths and stop at the first 1.0, so the
    slow symbolic maths check only runs when nothing cheaper matched.
    """
    if isinstance(ground_truths, str):
        ground_truths = (ground_truths,)
    if pred is None or ground_truths is None or len(ground_truths) == 0:
        return _NO_MATCH
    has_choices = choices is not None and len(choices) > 0  # not "if choices": numpy arrays
    if answer_type == "auto":
        answer_type = _infer(tuple(ground_truths), has_choices)
    if answer_type in ("integer", "number") and relaxed:
        rules = RELAXED_NUMERIC_RULES
    else:
        try:
            rules = RULES_BY_TYPE[answer_type]
        except KeyError:
            raise ValueError(f"unknown answer type {answer_type!r}; known: {ANSWER_TYPES}") from None
    if not rules:
        return _NO_MATCH
    opts = RuleOptions(tuple(choices) if has_choices else (), rel_tol, relaxed, true_false, anls_cutoff)
    best, best_rule = 0.0, "none"
    for name, rule in rules:
        for gt in ground_truths:
            if gt is None:
                continue
            score = rule(pred, gt, opts)
            if score > best:
                best, best_rule = score, name
                if best >= 1.0:
                    return MatchResult(1.0, 1.0 > threshold, name)
    return MatchResult(best, best > threshold, best_rule)
