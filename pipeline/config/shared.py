"""Shared config sections: settings that several stages read, each of which says so.

A stage reads its own section and the shared ones it declares in ``Stage.uses``
(``pipeline.core.settings_view``), and its hash covers them.  ``scoring`` decides
which responses are right: the correctness pairs, DropoutNTP on correct responses,
the image-crop texts and adaptive sampling's stopping rule all score with it, so
they can never disagree about a response.

``MOVED`` lists keys that earlier versions kept in a stage's section: a config that
still sets one is read as if it set the new key, with a warning naming it.
"""
from __future__ import annotations

import logging
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from pipeline.config.sections import Section

log = logging.getLogger(__name__)


class ScoringConfig(Section):
    """How responses are scored against the ground truth, and how many pairs one prompt may give:
    shared by correctness, dropout_ntp (on_correct), image_crop and generate's adaptive sampling."""
    threshold: float = Field(0.9, ge=0, le=1, description=(
        "A response is correct when its match score is above this (exact and rule matches score 1, ANLS between 0 "
        "and 1)"))
    max_pairs_per_prompt: int = Field(15, ge=1, description=(
        "Most right x wrong pairs made from one prompt's responses (also the pair budget adaptive sampling "
        "stops at)"))
    numeric_rel_tol: float = Field(1e-3, ge=0, description="Relative tolerance of numeric matches (0.001 = 0.1%)")
    anls_cutoff: float = Field(0.5, ge=0, le=1, description=(
        "ANLS answers (answer_type anls) scoring below this similarity score 0 (DocVQA's 0.5)"))
    extraction: Optional[Literal["final_answer", "boxed", "think", "any"]] = Field(None, description=(
        "How final answers are read from responses: final_answer, boxed, think, any; null = the style of the "
        "prompt's template"))


class RLPromptsConfig(Section):
    """Which prompts the RL exports (trl_grpo, swift_grpo, verl) keep, by the pass rate the build
    measured (the prompt table): a difficulty band as in MMPR-Tiny's [0.2, 0.8], and a seeded
    train/validation split stratified by source and pass-rate bin."""
    band: tuple[float, float] = Field((0.0, 1.0), description=(
        "Keep prompts whose pass rate lies in [low, high] (both included); [0, 1] keeps every prompt with "
        "ground truth"))
    min_samples: int = Field(1, ge=1, description=(
        "Keep only prompts with at least this many samples drawn (adaptive sampling may stop a prompt early: "
        "its rate is then less certain)"))
    validation_fraction: float = Field(0.0, ge=0, lt=1, description=(
        "Fraction of the kept prompts in a validation split, drawn by the seed within each source and "
        "pass-rate bin (0 = train only)"))

    @field_validator("band")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1] <= 1:
            raise ValueError(f"rl_prompts.band must satisfy 0 <= low <= high <= 1, got {list(v)}")
        return v


#: old key -> new key, for configs written for earlier versions
MOVED = {
    **{f"correctness.{k}": f"scoring.{k}"
       for k in ("threshold", "max_pairs_per_prompt", "numeric_rel_tol", "anls_cutoff", "extraction")},
    "write.exports": "export.formats",
}


def move_old_keys(data: Any) -> Any:
    """``data`` (a raw config mapping) with the keys of ``MOVED`` at their new place; a key set
    at both places is a config error naming both."""
    if not isinstance(data, dict) or not any(isinstance(data.get(k.split(".")[0]), dict)
                                             and k.split(".")[1] in data[k.split(".")[0]] for k in MOVED):
        return data
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, new in MOVED.items():
        (osec, okey), (nsec, nkey) = old.split("."), new.split(".")
        if not isinstance(data.get(osec), dict) or okey not in data[osec]:
            continue
        current = data.get(nsec)
        if hasattr(current, "model_dump"):  # a section object given in Python
            current = current.model_dump(exclude_unset=True)
        target = data[nsec] = dict(current or {})
        if nkey in target:
            raise ValueError(f"{old} and {new} are both set: {old} is the old name of {new}, keep only {new}")
        target[nkey] = data[osec].pop(okey)
        log.warning("config: %s is now %s (read as %s; rename it in your config)", old, new, new)
    return data
