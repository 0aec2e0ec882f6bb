"""The outcome of one quality rule (``methods.quality``, ``methods.repetition``)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """Outcome of one rule; ``reason`` is empty when it passed."""

    rule: str
    passed: bool
    reason: str = ""


def ok(rule: str) -> Verdict:
    return Verdict(rule, True, "")


def verdict(rule: str, problems: list[str]) -> Verdict:
    return Verdict(rule, not problems, "; ".join(problems))
