"""Numbers in answers: parse "1,234.5 cm", "twenty-one", "$3", "45%" and compare them
(relative tolerance, ChartQA-style relaxed accuracy, exact for year-like integers)."""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import NamedTuple

from methods.answer_text import CACHE_SIZE, canon
from methods.vqa_tables import NUMBER_WORDS

class Num(NamedTuple):
    value: float
    unit: str | None       # canonical unit, "%" for percent, "$" for dollars
    int_literal: bool      # written as a plain integer (no point, fraction, exponent)


_ONES_RE = "one|two|three|four|five|six|seven|eight|nine"
_NUMBER_WORD_RE = (
    "(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:[- ](?:" + _ONES_RE + "))?"
    "|zero|" + _ONES_RE + "|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen"
    "|seventeen|eighteen|nineteen"
)
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_NUMBER_RE = re.compile(
    r"^(?P<sign>[-+\u2212\u2013])?\s*(?P<cur>[$\u20ac\u00a3\u00a5\u20b9])?\s*(?:"
    rf"(?P<fn>{_NUM})\s*/\s*(?P<fd>{_NUM})"
    rf"|\\[dt]?frac\s*\{{\s*(?P<ln>{_NUM})\s*\}}\s*\{{\s*(?P<ld>{_NUM})\s*\}}"
    r"|\\[dt]?frac(?P<sn>\d)(?P<sd>\d)"
    rf"|(?P<num>{_NUM})(?:e(?P<exp>[-+\u2212]?\d+)"
    r"|\s*(?:x|\u00d7|\*|\\times|\\cdot|\u00b7)\s*10\s*\^\s*\{?\s*(?P<exp2>[-+\u2212]?\d+)\s*\}?)?"
    r"|(?P<word>" + _NUMBER_WORD_RE + r")(?![a-z])"
    r")\s*(?P<scale>thousand|million|billion|trillion)?"
    r"\s*(?P<unit>[^\W\d_%\u00b0\u00ba$\u20ac\u00a3][^\s]{0,14}|[%\u00b0\u00ba$\u20ac\u00a3][^\s]{0,14})?$",
)
_APPROX = re.compile(r"^(?:approximately|approx\.?|about|around|roughly|nearly|almost|~|\u2248|\u2243)\s*")
_SCALES = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
_UNIT_CANON = {
    "%": "%", "percent": "%", "pct": "%", "percentage": "%",
    "\u00b0": "deg", "\u00ba": "deg", "deg": "deg", "degree": "deg", "degrees": "deg",
    "$": "$", "dollar": "$", "dollars": "$", "usd": "$",
    "\u20ac": "eur", "eur": "eur", "euro": "eur", "euros": "eur",
    "\u00a3": "gbp", "gbp": "gbp", "\u00a5": "yen", "yen": "yen", "\u20b9": "inr", "inr": "inr",
    "m": "m", "meter": "m", "meters": "m", "metre": "m", "metres": "m",
    "cm": "cm", "centimeter": "cm", "centimeters": "cm", "centimetre": "cm", "centimetres": "cm",
    "mm": "mm", "millimeter": "mm", "millimeters": "mm",
    "km": "km", "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km",
    "kg": "kg", "kilogram": "kg", "kilograms": "kg", "g": "g", "gram": "g", "grams": "g",
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "min": "min", "mins": "min", "minute": "min", "minutes": "min",
    "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "yr": "year", "yrs": "year", "year": "year", "years": "year",
    "in": "in", "inch": "in", "inches": "in", "ft": "ft", "foot": "ft", "feet": "ft",
}


def _canon_unit(unit: str | None, currency: str | None) -> str | None:
    """Canonical unit name; unknown words lose a plural "s" so "apples" == "apple"."""
    if unit:
        unit = unit.rstrip(".,;:)")
        if unit in _UNIT_CANON:
            return _UNIT_CANON[unit]
        if unit.startswith(("\u00b0", "\u00ba")):  # "°c" -> "deg c" family: keep the scale letter
            return "deg" + unit[1:]
        if len(unit) > 3 and unit.endswith("s"):
            return unit[:-1]
        return unit or None
    if currency:
        return _UNIT_CANON.get(currency, currency)
    return None


def _word_number(word: str) -> int | None:
    """"two" -> 2, "twenty-five" / "twenty five" -> 25 (VQA's digits map, extended)."""
    if word in NUMBER_WORDS and word != "none":
        return int(NUMBER_WORDS[word])
    parts = re.split(r"[- ]", word)
    if len(parts) == 2 and parts[0] in _TENS and parts[1] in NUMBER_WORDS:
        ones = int(NUMBER_WORDS[parts[1]])
        if 1 <= ones <= 9:
            return _TENS[parts[0]] + ones
    return None


def _float(text: str) -> float:
    return float(text.replace(",", ""))


@lru_cache(maxsize=CACHE_SIZE)
def parse_number(s: str) -> Num | None:
    """A number with its unit from an answer string, or None.

    Accepts thousands separators (``1,000``), decimals, signs (incl. U+2212),
    fractions (``3/10``, ``\\frac{3}{10}``), scientific notation (``1e3``,
    ``1.2 x 10^3``, ``1.2 \\times 10^{3}``), scale words (``1.2 million``),
    number words (``two``, ``twenty-five``), a currency prefix and one
    trailing unit token (``%``, ``cm``, ``°``, ``degrees``...).  Anything more
    (``2 or 3``, ``1:2``, ``x = 5``) is not a number.
    """
    s = canon(s)
    if not s or len(s) > 64:
        return None
    s = _APPROX.sub("", s).replace("per cent", "percent")
    m = _NUMBER_RE.match(s)
    if m is None:
        return None
    g = m.group
    int_literal = False
    try:
        if g("num") is not None:
            num = g("num")
            value = _float(num)
            exp = g("exp") or g("exp2")
            if exp is not None:
                value *= 10.0 ** int(exp.replace("\u2212", "-"))
            else:
                int_literal = "." not in num
        elif g("fn") is not None:
            value = _float(g("fn")) / _float(g("fd"))
        elif g("ln") is not None:
            value = _float(g("ln")) / _float(g("ld"))
        elif g("sn") is not None:
            value = int(g("sn")) / int(g("sd"))
        else:
            word_value = _word_number(g("word"))
            if word_value is None:
                return None
            value, int_literal = float(word_value), True
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    if g("scale"):
        value *= _SCALES[g("scale")]
        int_literal = False
    if g("sign") and g("sign") != "+":
        value = -value
    if not math.isfinite(value):
        return None
    return Num(value, _canon_unit(g("unit"), g("cur")), int_literal)


def _close(a: float, b: float, tol: float) -> bool:
    """|a - b| within ``tol`` relative to the ground truth ``b`` (absolute 1e-12 floor for b == 0)."""
    return abs(a - b) <= tol * abs(b) + 1e-12


def _is_year_like(g: Num) -> bool:
    return g.int_literal and g.unit is None and 1000 <= g.value <= 2100


def numbers_match(p: Num, g: Num, tol: float, relaxed: bool) -> bool:
    """Numeric equality with the unit, percent, integer and year rules of the module docstring."""
    if p.unit is not None and g.unit is not None and p.unit != g.unit:
        return False
    candidates = [p.value]
    if g.unit == "%" and p.unit is None:
        candidates.append(p.value * 100.0)      # GT "30%", answer "0.3"
    elif p.unit == "%" and g.unit is None:
        candidates.append(p.value / 100.0)      # GT "0.3", answer "30%"
    if _is_year_like(g) or (not relaxed and p.int_literal and g.int_literal):
        return any(c == g.value for c in candidates)
    return any(_close(c, g.value, tol) for c in candidates)
