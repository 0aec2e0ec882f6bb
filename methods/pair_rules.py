"""Rules on a chosen/rejected pair: identical texts, unbalanced lengths (pure).

A pair whose two texts are the same carries no preference; one whose lengths differ a
lot teaches a length preference instead of a content one.  ``methods.quality`` runs
them from the config (``check_pair``).
"""
from __future__ import annotations

from methods.verdict import Verdict, ok

def text_key(text: str) -> str:
    """Case-folded, whitespace-collapsed text: equal keys mean the same text for a pair."""
    return " ".join(text.casefold().split())


def same_text(a: str, b: str) -> bool:
    """Equal up to whitespace and case: a text pair that carries no preference signal."""
    return text_key(a) == text_key(b)


def identical(chosen: str, rejected: str) -> Verdict:
    """Fail when chosen and rejected are the same up to whitespace and case.

    Not for image-crop pairs, whose text is identical by design.  It cannot
    be switched off (:func:`methods.quality.resolve_rules`): ms-swift deletes such rows, and
    TRL / LLaMA-Factory silently train on them with zero signal.
    """
    if same_text(chosen, rejected):
        return Verdict("identical", False, "chosen and rejected are identical")
    return ok("identical")


def length_ratio(chosen: str, rejected: str, lo: float = 0.5, hi: float = 2.0) -> Verdict:
    """Fail when len(rejected)/len(chosen) (stripped chars) is outside [lo, hi].

    Unbalanced lengths teach a length preference instead of a content one
    (LLaVA-RLHF, RLAIF-V).
    """
    c, r = len(chosen.strip()), len(rejected.strip())
    if c == 0:
        return Verdict("length_ratio", False, "chosen is empty")
    ratio = r / c
    if not lo <= ratio <= hi:
        return Verdict("length_ratio", False, f"rejected/chosen length {ratio:.2f} outside [{lo:g}, {hi:g}]")
    return ok("length_ratio")
