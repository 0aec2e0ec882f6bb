"""The language rule: a response in another script than its question (pure).

A Chinese question answered in English teaches the wrong language whatever the answer
says.  Cheap script detection, not language identification: Unicode ranges weighted per
letter, markup and maths removed first (``methods.quality`` runs ``language_mismatch``).
"""
from __future__ import annotations

import bisect
import re
from collections import Counter
from typing import Optional

from methods.verdict import Verdict, ok

# (first code point, last code point, script); sorted, non-overlapping
_SCRIPT_RANGES = sorted([
    (0x00C0, 0x024F, "Latin"), (0x1E00, 0x1EFF, "Latin"),
    (0x0370, 0x03FF, "Greek"), (0x1F00, 0x1FFF, "Greek"),
    (0x0400, 0x052F, "Cyrillic"),
    (0x0530, 0x058F, "Armenian"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"), (0x0750, 0x077F, "Arabic"), (0x08A0, 0x08FF, "Arabic"),
    (0xFB50, 0xFDFF, "Arabic"), (0xFE70, 0xFEFF, "Arabic"),
    (0x0900, 0x097F, "Devanagari"), (0x0980, 0x09FF, "Bengali"),
    (0x0B80, 0x0BFF, "Tamil"), (0x0E00, 0x0E7F, "Thai"), (0x10A0, 0x10FF, "Georgian"),
    (0x1100, 0x11FF, "Hangul"), (0x3130, 0x318F, "Hangul"), (0xAC00, 0xD7AF, "Hangul"),
    (0x3040, 0x30FF, "CJK"), (0x31F0, 0x31FF, "CJK"), (0x3400, 0x4DBF, "CJK"),
    (0x4E00, 0x9FFF, "CJK"), (0xF900, 0xFAFF, "CJK"), (0x20000, 0x2FFFF, "CJK"),
])
_RANGE_STARTS = [r[0] for r in _SCRIPT_RANGES]
#: a CJK/Hangul character carries about a word; weigh it like 3 Latin letters
_SCRIPT_WEIGHT = {"CJK": 3, "Hangul": 3}
_MARKUP = re.compile(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]"
                     r"|\\[A-Za-z]+|https?://\S+", re.S)
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def script_counts(text: str) -> Counter:
    """Weighted letter counts per Unicode script, ignoring code, maths and URLs.

    Markup is removed first so a Chinese question answered with LaTeX-heavy
    reasoning isn't read as Latin.  Letters outside the table are ignored.
    """
    text = _MARKUP.sub(" ", text)
    counts: Counter = Counter()
    latin = len(_ASCII_LETTER.findall(text))
    if latin:
        counts["Latin"] = latin
    for ch in _NON_ASCII.findall(text):
        cp = ord(ch)
        i = bisect.bisect_right(_RANGE_STARTS, cp) - 1
        if i >= 0 and cp <= _SCRIPT_RANGES[i][1] and ch.isalpha():
            script = _SCRIPT_RANGES[i][2]
            counts[script] += _SCRIPT_WEIGHT.get(script, 1)
    return counts


def dominant_script(text: str, min_letters: int = 20, min_share: float = 0.8) -> Optional[str]:
    """The script holding ``min_share`` of at least ``min_letters`` weighted
    letters, or None (undetectable: too short, or mixed)."""
    counts = script_counts(text)
    total = sum(counts.values())
    if total < min_letters:
        return None
    script, count = counts.most_common(1)[0]
    return script if count / total >= min_share else None


def language_mismatch(text: str, question: Optional[str] = None, min_letters: int = 20,
                      min_share: float = 0.8) -> Verdict:
    """Fail when the response is clearly in another script than the question.

    Pass the user's question as asked (before an English chain-of-thought
    instruction is appended), or every non-Latin question looks mixed.
    Cheap script detection, not language identification: English vs French
    both read as Latin.  Passes whenever either side is undetectable (no
    question, maths only, short, or mixed -- e.g. an English answer quoting
    Chinese text from the image), so it only catches clear switches such as
    a Chinese question answered in English.
    """
    if question is None:
        return ok("language_mismatch")
    q = dominant_script(question, min_letters, min_share)
    r = dominant_script(text, min_letters, min_share)
    if q is not None and r is not None and q != r:
        return Verdict("language_mismatch", False, f"question is {q}, response is {r}")
    return ok("language_mismatch")
