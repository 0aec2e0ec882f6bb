"""filter: no repetitive or broken sample reaches the dataset (docs/architecture.md, "The methods").

Every pair's chosen and rejected texts go through the rules of
``methods.quality`` (Gopher-style repetition, generation loops, never-ending
generations, empty/garbled text, bounds, language mismatch), and the pair
through pair rules (identical texts, rejected/chosen length ratio).  Each
verdict is recorded in ``provenance.filters`` and counted per rule.
``identical`` cannot be switched off: no text-contrast pair may have the same
chosen and rejected text up to case and whitespace (ms-swift deletes such
rows; TRL and LLaMA-Factory silently train on zero signal).  The pair stages
never make one either (``methods.quality.same_text``), so a run without the
filter stage is safe too.

A failed rule on *chosen* removes the pair.  A failed rule on *rejected* keeps
the pair when ``keep_pairs_with_bad_rejected`` is on and the rejected text is
still a real negative (a repetitive answer is a fine negative; an empty one
is not).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterable, Iterator

from pydantic import Field, model_validator

from methods.extract import extract_answer
from methods.quality import check_pair, check_text, same_text
from pipeline.config.settings import Section
from pipeline.core import graph
from pipeline.core.stage import RowStage, StageContext, prefixed
from pipeline.config.templates import extraction_style
from schemas import PAIR_SCHEMA
from schemas.records import turn_text

class FilterConfig(Section):
    rules: dict[str, Any] = Field(default_factory=dict, description=(
        "Single-text rules: rule name -> params dict, true or false (methods.quality.DEFAULT_RULES)"))
    pair_rules: dict[str, Any] = Field(default_factory=dict, description=(
        "Pair rules (identical, length_ratio) -> params dict, true or false"))
    require_final_answer: bool = Field(True, description=(
        "Require a parseable final answer in chosen responses of correctness/format pairs"))
    keep_pairs_with_bad_rejected: bool = Field(True, description=(
        "Keep a pair whose rejected text failed a rule that still leaves it a valid negative (repetition, "
        "never_ends...); empty or garbled rejected texts always drop the pair"))
    per_method: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "Overrides of rules per pair method (e.g. dropout_ntp: {never_ends: false})"))
    per_source: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "Overrides of rules per source (they win over per_method)"))

    @model_validator(mode="after")
    def _known_rules(self) -> "FilterConfig":
        from methods.quality import resolve_rules

        known = graph.method_names()
        bad = sorted(set(self.per_method) - set(known))
        if bad:
            raise ValueError(f"per_method: unknown method(s) {bad}; known: {known}")
        for rules in [self.rules, *self.per_method.values(), *self.per_source.values()]:
            resolve_rules(rules)
        resolve_rules(self.pair_rules, pair=True)
        return self


#: a rejected text failing these is not a negative at all: the pair goes
ALWAYS_DROP = {"empty", "bad_characters"}
#: rejected/chosen character-length ratio buckets for the report
RATIO_BUCKETS = ((0.5, "<0.5"), (0.8, "0.5-0.8"), (1.25, "0.8-1.25"), (2.0, "1.25-2"), (float("inf"), ">=2"))


def ratio_bucket(chosen: str, rejected: str) -> str:
    r = len(rejected.strip()) / max(len(chosen.strip()), 1)
    return next(label for bound, label in RATIO_BUCKETS if r < bound)


def _verdicts(target: str, verdicts) -> list[dict]:
    return [{"rule": v.rule, "target": target, "passed": v.passed, "reason": v.reason} for v in verdicts]


class FilterStage(RowStage):
    name = "filter"
    #: the pair stages, through grounding when it runs (a disabled grounding is looked through)
    after = ("grounding",)
    Config = FilterConfig
    uses = ("templates",)  # the extraction style of a pair's template (require_final_answer)
    input_schema = PAIR_SCHEMA
    output_schema = PAIR_SCHEMA

    @classmethod
    def summarize(cls, f: dict) -> dict:
        if not f:
            return {}
        return {
            "failed_rules": prefixed(f, "filter."),
            "removed_pairs": prefixed(f, "removed."),
            "kept_pairs": prefixed(f, "kept."),
            "length_ratio_before": prefixed(f, "length_ratio.before."),
            "length_ratio_after": prefixed(f, "length_ratio.after."),
        }

    @classmethod
    def summary_line(cls, s: dict) -> str:
        return (f"filter removed {sum(s['removed_pairs'].values())} pairs; failed rules {s['failed_rules']}; "
                f"rejected/chosen length ratio after: {s['length_ratio_after']}")

    def _rules(self, method: str, source: str) -> dict:
        fc = self.config.filter
        return {**fc.rules, **fc.per_method.get(method, {}), **fc.per_source.get(source, {})}

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        fc = self.config.filter
        for row in rows:
            method, prov = row["method"], dict(row["provenance"])
            chosen, rejected = turn_text(row["chosen"]), turn_text(row["rejected"])
            rules = self._rules(method, row["source"])
            bucket = ratio_bucket(chosen, rejected)
            ctx.stats.inc(f"length_ratio.before.{bucket}")
            chosen_rules = dict(rules)
            extractor = None
            if fc.require_final_answer and method in ("correctness", "format"):
                style = extraction_style(self.config, prov.get("template_id"))
                chosen_rules["missing_final_answer"] = True
                extractor = partial(extract_answer, style=style)
            vc = check_text(chosen, chosen_rules, prov.get("chosen_finish_reason"), prov.get("chosen_tokens"),
                            question=row["question"], extractor=extractor)
            if method == "image_crop" and same_text(chosen, rejected):
                vr, vp = [], []  # same text by design: the image is the contrast
            else:
                vr = check_text(rejected, rules, prov.get("rejected_finish_reason"), prov.get("rejected_tokens"),
                                question=row["question"])
                vp = check_pair(chosen, rejected, fc.pair_rules)
            prov["filters"] = _verdicts("chosen", vc) + _verdicts("rejected", vr) + _verdicts("pair", vp)
            failed_c = [v.rule for v in vc if not v.passed]
            failed_r = [v.rule for v in vr if not v.passed]
            failed_p = [v.rule for v in vp if not v.passed]
            for target, failed in (("chosen", failed_c), ("rejected", failed_r), ("pair", failed_p)):
                for rule in failed:
                    ctx.stats.inc(f"filter.{target}.{rule}")
            drop = bool(failed_c or failed_p) or (
                bool(failed_r) and (not fc.keep_pairs_with_bad_rejected or ALWAYS_DROP & set(failed_r)))
            if drop:
                ctx.stats.inc(f"removed.{method}")
                continue
            ctx.stats.inc(f"kept.{method}")
            ctx.stats.inc(f"length_ratio.after.{bucket}")
            yield {**row, "provenance": prov}
