"""``symbol = value`` answers to numeric questions (pure Python, no I/O).

Geometry and algebra sets answer "what is x?" / "find angle ABC" with an
equation as often as with a bare number: ``x = 2``, ``\\boxed{x=2}``,
``a = 2 cm``, ``\\angle ABC = 30^\\circ``.  For the numeric answer types the
matcher compares the *value* of such an answer (``methods.match``); this
module only recognises the shape.

An answer is a one-symbol equation when it is ``LHS = RHS`` with exactly one
``=`` (so ``x = 2, y = 3`` or ``x = 2 or x = -2`` are not: they state more
than one value), and LHS is one symbol: a letter or short name with an
optional subscript and prime (``x``, ``x_1``, ``AB``, ``h'``), optionally
preceded by an angle or segment marker (``\\angle ABC``, ``m\\angle A``,
``\\overline{AB}``, ``∠ABC``).  Whether RHS is a number is for the caller to
decide.  Two equations answer the same question only when their symbols
agree (:func:`symbol_key`: case, spaces, braces and the angle marker's
spelling ignored), so ``y = 2`` does not answer ground truth ``x = 2``.
"""
from __future__ import annotations

import re

__all__ = ["split_equation"]

_MARKER = r"(?:m\s*)?(?:\\(?:angle|measuredangle|overline|widehat|overarc)\s*|\u2220\s*)"
_SYMBOL = re.compile(
    rf"^(?:{_MARKER})?\{{?\s*[A-Za-z][A-Za-z0-9]{{0,5}}\s*\}}?(?:_\{{?[A-Za-z0-9]+\}}?)?'*$",
)
_NOT_EQUALITY = re.compile(r"[<>\u2260\u2264\u2265\u2248]|\\(?:neq|ne|leq|geq|le|ge|approx)\b")
_KEY_DROP = re.compile(r"[\s{}\\]|measuredangle|angle|overline|widehat|overarc|\u2220")


def symbol_key(lhs: str) -> str:
    """Comparable form of a symbol: ``\\angle ABC``, ``∠ABC`` and ``m\\angle abc`` -> ``abc``."""
    key = _KEY_DROP.sub("", lhs).casefold()
    return key[1:] if key.startswith("m") and ("angle" in lhs or "\u2220" in lhs) else key


def split_equation(answer: str) -> tuple[str, str] | None:
    """(symbol key, right-hand side) of a one-symbol equation answer, or None."""
    if answer.count("=") != 1 or _NOT_EQUALITY.search(answer) is not None:
        return None
    lhs, rhs = answer.split("=")
    lhs, rhs = lhs.strip(), rhs.strip()
    if not rhs or _SYMBOL.match(lhs) is None:
        return None
    return symbol_key(lhs), rhs
