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
from typing import Callable, NamedTuple, Sequence

from rapidfuzz.distance import Levenshtein

from methods.answer_text import CACHE_SIZE, canon, clean
from methods.equations import split_equation
from methods.extract import clean_answer
from methods.maths import LATEX_HINT, SCORING_ERRORS, math_equal
from methods.numbers import Num, numbers_match, parse_number
from methods.vqa_tables import CONTRACTIONS, NUMBER_WORDS

__all__ = [
    "MatchResult", "match_answer", "infer_answer_type", "parse_number",
    "vqa_normalize", "anls_score", "ANSWER_TYPES", "SCORING_ERRORS",
]

ANSWER_TYPES = (
    "auto", "multiple_choice", "integer", "number", "yes_no", "word",
    "text", "anls", "math", "open",
)
#: ChartQA relaxed accuracy tolerance
RELAXED_TOL = 0.05


@dataclass(frozen=True)
class MatchResult:
    """Best score over rules and ground truths, whether it counts as correct, and the rule that gave it."""

    score: float
    correct: bool
    rule: str


_NO_MATCH = MatchResult(0.0, False, "none")


# --------------------------------------------------------------------------
# VQA normalisation (the official VQA evaluation, with its quirks)
# --------------------------------------------------------------------------
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
# multiple choice
# --------------------------------------------------------------------------
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
def _resolve_option(s: str, choices: tuple[str, ...]) -> int:
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
class _Opts(NamedTuple):
    choices: tuple[str, ...]
    rel_tol: float
    relaxed: bool
    true_false: bool
    anls_cutoff: float


def _rule_exact(pred: str, gt: str, o: _Opts) -> float:
    return 1.0 if canon(pred) == canon(gt) else 0.0


def _rule_vqa(pred: str, gt: str, o: _Opts) -> float:
    return 1.0 if vqa_normalize(pred) == vqa_normalize(gt) else 0.0


def _rule_vqa_non_numeric_gt(pred: str, gt: str, o: _Opts) -> float:
    """String fallback for numeric types when this ground truth is not a number ("2 or 3")."""
    return 0.0 if _value(gt) is not None else _rule_vqa(pred, gt, o)


@lru_cache(maxsize=CACHE_SIZE)
def _value(s: str) -> tuple[str | None, Num] | None:
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
    p, g = _value(pred), _value(gt)
    if p is None or g is None or (p[0] is not None and g[0] is not None and p[0] != g[0]):
        return False
    return numbers_match(p[1], g[1], tol, relaxed)


def _rule_numeric(pred: str, gt: str, o: _Opts) -> float:
    return 1.0 if _values_match(pred, gt, o.rel_tol, False) else 0.0


def _rule_relaxed(pred: str, gt: str, o: _Opts) -> float:
    return 1.0 if _values_match(pred, gt, RELAXED_TOL, True) else 0.0


def _rule_choice(pred: str, gt: str, o: _Opts) -> float:
    g = _resolve_option(gt, o.choices)
    if g < 0:
        return 0.0
    return 1.0 if _resolve_option(pred, o.choices) == g else 0.0


def _rule_yes_no(pred: str, gt: str, o: _Opts) -> float:
    g = _yes_no(gt, o.true_false)
    return 1.0 if g is not None and _yes_no(pred, o.true_false) == g else 0.0


def _rule_anls(pred: str, gt: str, o: _Opts) -> float:
    return anls_score(pred, gt, o.anls_cutoff)


def _rule_math(pred: str, gt: str, o: _Opts) -> float:
    return 1.0 if math_equal(pred, gt) else 0.0


def _rule_math_if_latex(pred: str, gt: str, o: _Opts) -> float:
    """Numeric types: call the slow symbolic checker only for LaTeX the number parser can't read."""
    if parse_number(pred) is not None and parse_number(gt) is not None:
        return 0.0
    if LATEX_HINT.search(clean(pred)) is None and LATEX_HINT.search(clean(gt)) is None:
        return 0.0
    return _rule_math(pred, gt, o)


_Rule = Callable[[str, str, _Opts], float]
_NUMERIC_RULES = (("exact", _rule_exact), ("numeric", _rule_numeric),
                  ("vqa_norm", _rule_vqa_non_numeric_gt), ("math", _rule_math_if_latex))
#: rules per answer type, cheapest first (matching stops at the first 1.0)
_RULES_BY_TYPE: dict[str, tuple[tuple[str, _Rule], ...]] = {
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
_RELAXED_NUMERIC_RULES = _NUMERIC_RULES[:2] + (("relaxed_numeric", _rule_relaxed),) + _NUMERIC_RULES[2:]


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
    nums = [v[1] if (v := _value(g)) is not None else None for g in gts]
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
        rules = _RELAXED_NUMERIC_RULES
    else:
        try:
            rules = _RULES_BY_TYPE[answer_type]
        except KeyError:
            raise ValueError(f"unknown answer type {answer_type!r}; known: {ANSWER_TYPES}") from None
    if not rules:
        return _NO_MATCH
    opts = _Opts(tuple(choices) if has_choices else (), rel_tol, relaxed, true_false, anls_cutoff)
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
