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
    max_pairs_per_response: Optional[int] = Field(3, ge=1, description=(
        "Most pairs of one method one response may be part of (chosen or rejected): pairs are spread over the "
        "responses level by level, and adaptive sampling stops once max_pairs_per_prompt pairs fit under it; "
        "null = no cap (max_pairs_per_prompt right x wrong combinations picked at random, a chosen reused in any "
        "number of them)"))
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
    # one cap for the stop rule and the pair selection (it limited the stop rule only)
    "generate.adaptive.max_reuse": "scoring.max_pairs_per_response",
}


def _parent(data: dict, path: list[str], create: bool = False) -> dict | None:
    """The mapping that holds ``path``'s last key (copied on the way, so ``data``'s own nested
    mappings are never changed), or None when it is not there."""
    node = data
    for name in path[:-1]:
        child = node.get(name)
        if hasattr(child, "model_dump"):  # a section object given in Python
            child = child.model_dump(exclude_unset=True)
        if not isinstance(child, dict):
            if not create or child is not None:
                return None
            child = {}
        node[name] = child = dict(child)
        node = child
    return node


def _is_set(data: Any, path: list[str]) -> bool:
    for name in path:
        if not isinstance(data, dict) or name not in data:
            return False
        data = data[name]
    return True


def move_old_keys(data: Any) -> Any:
    """``data`` (a raw config mapping) with the keys of ``MOVED`` at their new place; a key set
    at both places is a config error naming both."""
    if not isinstance(data, dict) or not any(_is_set(data, k.split(".")) for k in MOVED):
        return data
    data = dict(data)
    for old, new in MOVED.items():
        opath, npath = old.split("."), new.split(".")
        if not _is_set(data, opath):
            continue
        value = _parent(data, opath).pop(opath[-1])
        target = _parent(data, npath, create=True)
        if npath[-1] in target:
            raise ValueError(f"{old} and {new} are both set: {old} is the old name of {new}, keep only {new}")
        target[npath[-1]] = value
        log.warning("config: %s is now %s (read as %s; rename it in your config)", old, new, new)
    return data
