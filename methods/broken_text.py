"""Rules for broken samples: empty, cut at the token limit, out of bounds, bad characters,
no final answer.

A chosen response must never be garbage; these are the cheap checks of what decoding can
break (``methods.quality`` runs them from the config).
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Any, Callable, Iterable, Optional

from methods.verdict import Verdict, ok, verdict

def never_ends(text: str, finish_reason: Optional[str] = None,
               fail_on: Iterable[str] = ("length",)) -> Verdict:
    """Fail when generation stopped on the token limit (cut mid-thought)."""
    if finish_reason is not None and finish_reason in set(fail_on):
        return Verdict("never_ends", False, f"finish_reason={finish_reason!r}")
    return ok("never_ends")


def empty(text: str) -> Verdict:
    """Fail on an empty or whitespace-only text."""
    if not text or not text.strip():
        return Verdict("empty", False, "empty or whitespace-only")
    return ok("empty")


def length_bounds(text: str, min_chars: int = 1, max_chars: Optional[int] = None,
                  min_tokens: Optional[int] = None, max_tokens: Optional[int] = None,
                  num_tokens: Optional[int] = None) -> Verdict:
    """Character bounds always; token bounds only when ``num_tokens`` is known."""
    problems = []
    n = len(text)
    if min_chars is not None and n < min_chars:
        problems.append(f"{n} chars < min_chars {min_chars}")
    if max_chars is not None and n > max_chars:
        problems.append(f"{n} chars > max_chars {max_chars}")
    if num_tokens is not None:
        if min_tokens is not None and num_tokens < min_tokens:
            problems.append(f"{num_tokens} tokens < min_tokens {min_tokens}")
        if max_tokens is not None and num_tokens > max_tokens:
            problems.append(f"{num_tokens} tokens > max_tokens {max_tokens}")
    return verdict("length_bounds", problems)


@functools.lru_cache(maxsize=16)
def _bad_char_pattern(allowed: str) -> re.Pattern:
    """C0/C1 controls, lone surrogates and U+FFFD, minus ``allowed``."""
    bad = [chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(c) not in allowed]
    return re.compile("[" + "".join(re.escape(c) for c in bad) + "\ud800-\udfff\ufffd]")


def bad_characters(text: str, allowed_controls: str = "\n\t", max_count: int = 0) -> Verdict:
    """Fail on control characters, lone surrogates and U+FFFD replacement chars.

    These come from broken byte-level decoding (a multi-byte character split
    by the token limit, a bad detokenizer) and poison tokenizers downstream.
    """
    found = _bad_char_pattern(allowed_controls).findall(text)
    if len(found) <= max_count:
        return ok("bad_characters")
    counts = Counter(found).most_common(3)
    listing = ", ".join(f"U+{ord(c):04X} x{k}" for c, k in counts)
    return Verdict("bad_characters", False, f"{len(found)} bad characters ({listing})")


def missing_final_answer(text: str, extractor: Optional[Callable[[str], Any]] = None) -> Verdict:
    """Fail when ``extractor(text)`` finds no answer (None or blank string).

    The extractor is the one configured for the prompt template (e.g.
    ``functools.partial(methods.extract.extract_answer, style="boxed")``).
    """
    if extractor is None:
        raise ValueError("missing_final_answer needs an extractor callable")
    answer = extractor(text)
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return Verdict("missing_final_answer", False, "no parseable final answer")
    return ok("missing_final_answer")
