"""decontaminate: prompts that are (nearly) benchmark test items are removed before generation.

``decontaminate.references`` lists the benchmark sets, each configured like a source and read
by the same readers with the same image-root checks (``pipeline.sources.references``).  A
prompt is contaminated when

* **image_question**: one of its images matches a reference item's image (pHash within
  ``image_distance`` bits and the colour check) and its question matches the item's
  (normalised 3-gram Jaccard >= ``question_threshold``); or
* **ngram**: its question shares a word n-gram (``n`` = 13, as in the GPT-3 and Llama reports)
  with a reference question, unless the n-gram is boilerplate: found in ``boilerplate_items``
  or more reference items, or in a prompt template or a short-answer suffix.  A 13-gram of a
  templated benchmark ("the bar chart shows lengths in m what is the value of bar") never
  removes a prompt by itself.

Each rule is switched and tuned on its own.  Contaminated prompts are quarantined as
``contaminated`` (the reference set, its item and the rule in the detail) and counted per
reference set and rule (``contaminated.<set>.<rule>``); the dataset card lists the reference
sets with a hash of their files and these counts.  The stage is on when references are
configured; the index is built once per worker process.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Iterable, Iterator

import pyarrow as pa
from pydantic import Field

from pipeline.config.settings import Section, SourceConfig
from pipeline.core.stage import RowStage, StageContext, prefixed
from schemas import PROMPT_SCHEMA

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.settings import PipelineConfig


class ImageQuestionRule(Section):
    enabled: bool = Field(True, description="Remove prompts whose image and question both match a reference item")
    image_distance: int = Field(10, ge=0, le=32, description="Images match within this many pHash bits")
    colour_tolerance: float = Field(50.0, ge=0, description=(
        "...and when their 8x8 colour thumbnails differ by at most this much in any cell (as dedup.colour_tolerance)"))
    question_threshold: float = Field(0.9, gt=0, le=1, description=(
        "Questions match at this Jaccard similarity of their normalised word 3-grams"))


class NgramRule(Section):
    enabled: bool = Field(True, description="Remove prompts whose question shares a long n-gram with a reference question")
    n: int = Field(13, ge=4, description="Words per n-gram, after normalising and stripping short-answer suffixes")
    boilerplate_items: int = Field(5, ge=2, description=(
        "An n-gram found in at least this many items of one reference set is boilerplate and never removes a prompt "
        "(nor does one found in a prompt template or a short-answer suffix)"))
    boilerplate_prompts: int = Field(3, ge=2, description=(
        "...nor one found in at least this many training prompts (a question template of the training data, e.g. "
        "'the bar chart shows lengths in m what is the value of bar'); a benchmark question copied this often is "
        "left to the image_question rule and dedup"))


class DecontaminateConfig(Section):
    references: list[SourceConfig] = Field(default_factory=list, description=(
        "Benchmark sets to keep out of the data, each configured like a source (name, format, path, fields, "
        "image_root, ...); the stage runs when this is not empty"))
    image_question: ImageQuestionRule = Field(default_factory=ImageQuestionRule, description=(
        "The image + question rule"))
    ngram: NgramRule = Field(default_factory=NgramRule, description="The question n-gram rule")


GRAMS_SCHEMA = pa.schema([("position", pa.int32()), ("gram", pa.int64()), ("reference", pa.string()),
                          ("item", pa.string()), ("counts_only", pa.bool_())])
SIDE = "ngram_hits"


class DecontaminateStage(RowStage):
    name = "decontaminate"
    Config = DecontaminateConfig
    after = ("dedup",)
    uses = ("templates",)
    opt_in = True
    input_schema = PROMPT_SCHEMA
    output_schema = PROMPT_SCHEMA
    #: n-gram hits wait for the count of training prompts holding each n-gram (boilerplate)
    merges = True

    @classmethod
    def enabled_by(cls, config: "PipelineConfig") -> bool:
        return bool(config.decontaminate.references)

    @classmethod
    def check_config(cls, config: "PipelineConfig") -> None:
        names = [r.name for r in config.decontaminate.references]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"decontaminate.references: names must be unique, duplicated: {dup}")

    def index(self):
        from pipeline.config.templates import SHORT_ANSWER_SUFFIXES, template_table
        from pipeline.sources.references import Rules, index_for

        s = self.section
        rules = Rules(s.image_question.enabled, s.image_question.image_distance, s.image_question.colour_tolerance,
                      s.image_question.question_threshold, s.ngram.enabled, s.ngram.n, s.ngram.boilerplate_items)
        texts = [t.text for t in template_table(self.config.templates).values()]
        return index_for(s.references, rules, SHORT_ANSWER_SUFFIXES, texts)

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        """image_question hits go at once; n-gram hits are written as keys and, once the driver
        has counted the training prompts holding each n-gram, the partition is redone with the
        prompts whose n-grams are not boilerplate (``_ngram``)."""
        index = self.index()
        for i, row in enumerate(rows):
            decided = row.pop("_ngram", None)
            hit = index.match(row["question"], row.get("choices") or [], [im["bytes"] for im in row["images"]])
            grams = hit.grams if hit is not None and hit.rule == "ngram" else \
                index.grams(index.tokens(row["question"], row.get("choices") or [])) if hit is not None else []
            for gram, ref, item in grams:  # every training prompt holding the n-gram counts towards boilerplate
                ctx.side(SIDE, GRAMS_SCHEMA, {"position": i, "gram": gram, "reference": ref, "item": item,
                                              "counts_only": hit.rule != "ngram"})
            if hit is not None and hit.rule == "image_question":
                self._remove(row, ctx, hit.reference, hit.rule, hit.detail)
                continue
            if decided:
                self._remove(row, ctx, decided["reference"], "ngram", decided["detail"])
                continue
            ctx.stats.inc("clean")
            yield row

    @staticmethod
    def _remove(row: dict, ctx: StageContext, reference: str, rule: str, detail: str) -> None:
        ctx.stats.inc(f"contaminated.{reference}.{rule}")
        ctx.quarantine(row, "contaminated", f"reference {reference}, rule {rule}: {detail}")

    def redo_rows(self, rows: list[dict], extra: tuple[str, ...]) -> list[dict]:
        decided = {d["position"]: d for d in json.loads(extra[0])["ngram"]}
        return [{**r, "_ngram": decided.get(i)} for i, r in enumerate(rows)]

    def redo_partitions(self, planned: list[tuple[str, tuple[str, ...]]], out_dir: str
                        ) -> dict[str, tuple[str, ...]]:
        """Partitions with a prompt holding a reference n-gram that fewer than
        ``ngram.boilerplate_prompts`` training prompts hold."""
        from pipeline.files import storage

        tables = []
        for k, (name, _) in enumerate(planned):
            uri = storage.join(out_dir, "side", SIDE, f"{name}.parquet")
            if storage.exists(uri):
                t = storage.read_table(uri)
                tables.append(t.append_column("part", pa.array([k] * t.num_rows, pa.int32())))
        if not tables:
            return {}
        hits = pa.concat_tables(tables)
        counted = {}
        for g, part, pos in zip(*(hits[c].to_pylist() for c in ("gram", "part", "position"))):
            counted.setdefault(g, set()).add((part, pos))
        limit = self.section.ngram.boilerplate_prompts
        n = self.section.ngram.n
        decided: dict[int, dict[int, dict]] = {}
        cols = ("gram", "part", "position", "reference", "item", "counts_only")
        for g, part, pos, ref, item, counts_only in zip(*(hits[c].to_pylist() for c in cols)):
            if not counts_only and len(counted[g]) < limit and pos not in decided.get(part, {}):
                decided.setdefault(part, {})[pos] = {
                    "position": pos, "reference": ref,
                    "detail": f"shares a {n}-word n-gram with reference item {item!r} of {ref} "
                              f"({len(counted[g])} training prompt(s) hold it)"}
        return {planned[part][0]: (*planned[part][1], json.dumps({"ngram": sorted(d.values(), key=lambda x: x["position"])},
                                                                   sort_keys=True))
                for part, d in decided.items()}
    @classmethod
    def summarize(cls, counters: dict) -> dict:
        hits = prefixed(counters, "contaminated.")
        by_ref: dict[str, dict[str, int]] = {}
        for key, n in hits.items():
            ref, rule = key.rsplit(".", 1)
            by_ref.setdefault(ref, {})[rule] = int(n)
        return {"clean": counters.get("clean", 0), "contaminated": by_ref} if counters else {}

    @classmethod
    def summary_line(cls, summary: dict) -> str | None:
        if not summary:
            return None
        per = "; ".join(f"{ref}: " + ", ".join(f"{rule} {n}" for rule, n in sorted(rules.items()))
                        for ref, rules in sorted(summary["contaminated"].items())) or "none"
        return f"contaminated prompts removed: {per}"

    @classmethod
    def card_section(cls, config: "PipelineConfig", summary: dict) -> str | None:
        from pipeline.sources.references import fingerprint

        s = config.decontaminate
        lines = [f"- Benchmark contamination (`decontaminate`): prompts whose image and question match a reference "
                 f"item ({'on' if s.image_question.enabled else 'off'}), or whose question shares a non-boilerplate "
                 f"{s.ngram.n}-word n-gram with one ({'on' if s.ngram.enabled else 'off'}), were removed. Reference sets:"]
        for ref in s.references:
            hits = summary.get("contaminated", {}).get(ref.name, {})
            lines.append(f"  - `{ref.name}`: {ref.format} `{ref.path}` (files sha256 {fingerprint(ref)}): "
                         f"image_question {hits.get('image_question', 0)}, ngram {hits.get('ngram', 0)} prompts removed")
        return "\n".join(lines)
