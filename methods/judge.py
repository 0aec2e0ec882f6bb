"""Judge prompts and robust score parsing (pure, no I/O).

LLaVA-RLHF showed that a reward model given extra facts (captions, ground
truth) catches hallucinations a plain one rewards.  The rubric therefore has a
``{facts}`` slot.  Parsing never guesses: an output without a clear score in
range gives ``None`` (the stage retries once, then records it as missing).
"""
from __future__ import annotations

import re
from typing import Sequence

DEFAULT_RUBRIC = (
    "You are grading an answer to a question about an image.\n"
    "Question: {question}\n"
    "{facts}"
    "Answer to grade: {response}\n"
    "Rate the answer's correctness and faithfulness to the image (and the facts, when given) "
    "on a scale of {low} to {high}. Longer is not better. "
    "Reply with a line of the form 'Score: <number>'."
)

_LABELLED = re.compile(r"(?:score|rating|grade)\s*(?:is|of|=|:)?\s*\**\s*(-?\d+(?:\.\d+)?)\s*\**"
                       r"(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_FRACTION = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE = re.compile(r"^\s*\**\s*(-?\d+(?:\.\d+)?)\s*\**\s*\.?\s*$")


def format_facts(ground_truth: Sequence[str] | None, facts: str | None, use: Sequence[str]) -> str:
    lines = []
    if "ground_truth" in use and ground_truth:
        lines.append(f"Reference answer: {' / '.join(ground_truth)}")
    if "facts" in use and facts:
        lines.append(f"Facts about the image: {facts}")
    return "".join(f"{ln}\n" for ln in lines)


def build_judge_prompt(question: str, response: str, facts_text: str, rubric: str | None = None,
                       score_range: tuple[float, float] = (1, 10)) -> str:
    low, high = score_range
    return (rubric or DEFAULT_RUBRIC).format(question=question, response=response, facts=facts_text,
                                             low=f"{low:g}", high=f"{high:g}")


def parse_score(text: str | None, score_range: tuple[float, float] = (1, 10)) -> float | None:
    """The judge's score, or None when there is no unambiguous one in range.

    Accepts "Score: 7", "**Rating:** 8/10", "score = 6.5", "7 out of 10", a bare
    "9".  The last labelled score wins (judges often restate it at the end); a
    fraction is rescaled to the range when its denominator is not the range's
    top; out-of-range numbers are rejected, never clipped.
    """
    if not text:
        return None
    low, high = score_range
    candidates = [(m.group(1), m.group(2)) for m in _LABELLED.finditer(text)]
    if not candidates:
        candidates = [(m.group(1), m.group(2)) for m in _FRACTION.finditer(text)]
    if not candidates:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        m = _BARE.match(lines[-1]) if lines else None
        candidates = [(m.group(1), None)] if m else []
    if not candidates:
        return None
    value, denom = candidates[-1]
    score = float(value)
    if denom is not None and float(denom) != high:
        if float(denom) <= 0:
            return None
        score = low + (high - low) * score / float(denom)
    return score if low <= score <= high else None
