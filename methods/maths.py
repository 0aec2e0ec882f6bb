"""Symbolic maths equivalence with ``math_verify`` (``\\frac{1}{2}`` == ``0.5``).

Exceptions from the parser or sympy make a "no match" but are counted in
``SCORING_ERRORS`` by where they happened, so a scoring bug or timeout shows in
the run report instead of passing for a wrong answer.
"""
from __future__ import annotations

import os
import re
import threading
from collections import Counter
from functools import lru_cache

from methods.extract import clean_answer

#: exceptions turned into "no match", by where they happened
SCORING_ERRORS: Counter = Counter()

LATEX_HINT = re.compile(r"\\[a-zA-Z]|\^|_\{|\{")


def _math_timeout() -> int | None:
    """math_verify's timeouts use SIGALRM, which only works in the main thread on POSIX;
    elsewhere (Ray/worker threads, Windows) they must be disabled or the call raises."""
    if os.name == "posix" and threading.current_thread() is threading.main_thread():
        return 5
    return None


@lru_cache(maxsize=8192)
def _math_parse(s: str) -> tuple:
    """math_verify.parse of the answer as inline maths, () when unparsable.

    The answer is wrapped in ``$...$`` first: unwrapped, math_verify's
    expression fallback reads ``2\\sqrt{3}`` as ``2``.  Cached: the same ground
    truth is verified against up to 32 samples."""
    try:
        from math_verify import parse
    except ImportError:  # pragma: no cover - dependency declared, but keep matching usable
        return ()
    timeout = _math_timeout()
    for text in ((s,) if "$" in s else (f"${s}$", s)):
        try:
            parsed = parse(text, parsing_timeout=timeout)
        except Exception as e:  # noqa: BLE001 - parser bugs and timeouts are "unparsable"
            SCORING_ERRORS[f"math_parse.{type(e).__name__}"] += 1
            parsed = []
        if parsed:
            return tuple(parsed)
    return ()


def math_equal(pred: str, gt: str) -> bool:
    """Symbolic equivalence (``\\frac{1}{2}`` == ``0.5``, ``\\sqrt{2}/2`` == ``\\frac{\\sqrt{2}}{2}``)."""
    gold, target = _math_parse(clean_answer(gt)), _math_parse(clean_answer(pred))
    if not gold or not target:
        return False
    try:
        from math_verify import verify
        return bool(verify(list(gold), list(target), timeout_seconds=_math_timeout()))
    except Exception as e:  # noqa: BLE001 - sympy can raise anything on odd input
        SCORING_ERRORS[f"math_verify.{type(e).__name__}"] += 1
        return False
