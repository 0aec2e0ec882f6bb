"""Responses that state several final answers (pure Python, no I/O).

A sampled response sometimes states its final answer more than once
(``Final answer: 80%.\\nFinal answer: 95Final answer: 40%``).  Scoring only
the last statement lets such a response become a *chosen* when its last value
happens to be right, although it also asserts wrong values -- a trainer would
learn to hedge.  And a *rejected* whose earlier statement is the ground truth
(``Final answer: in the centre.\\nFinal answer: yes``, truth "in the centre")
is no clean negative.  Repeating the same value (``80%`` then ``80 %.``) is
fine: values are compared with the answer type's own matching rules, so
``B`` and ``B. red`` or ``2`` and ``x = 2`` are one answer.
"""
from __future__ import annotations

from typing import Sequence

from methods.extract import clean_answer
from methods.match import match_answer


def _key(answer: str) -> str:
    return " ".join(clean_answer(answer).casefold().split())


def same_answer(a: str, b: str, answer_type: str, choices: Sequence[str] | None = None, **match_kw) -> bool:
    """Whether two stated answers say the same thing under ``answer_type``'s rules (either direction)."""
    if _key(a) == _key(b):
        return True
    return (match_answer(a, (b,), answer_type, choices, **match_kw).correct
            or match_answer(b, (a,), answer_type, choices, **match_kw).correct)


def conflicting(answers: Sequence[str], answer_type: str, choices: Sequence[str] | None = None,
                **match_kw) -> bool:
    """True when the statements do not all agree with the last one (the extracted answer)."""
    if len(answers) < 2:
        return False
    last = answers[-1]
    return any(not same_answer(a, last, answer_type, choices, **match_kw) for a in answers[:-1])


def states_any(answers: Sequence[str], truths: Sequence[str], answer_type: str,
               choices: Sequence[str] | None = None, **match_kw) -> bool:
    """True when any statement matches any of ``truths`` (the ground truths)."""
    return any(match_answer(a, truths, answer_type, choices, **match_kw).correct for a in answers)
