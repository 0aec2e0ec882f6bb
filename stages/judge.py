"""judge: score chosen and rejected with an LLM/VLM through vLLM (optional stage).

Each response is scored with a rubric prompt that can carry facts (ground
truth, captions) as in LLaVA-RLHF's factually augmented reward.  Unparseable
output is retried once with another seed and then recorded as missing
(``None``), never guessed.  Threshold rules (minimum chosen score, chosen must
beat rejected by a margin) drop pairs; pairs with a missing score are kept and
counted, since a missing score is no evidence against them.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Literal, Optional

from pydantic import Field, field_validator

from methods.judge import build_judge_prompt, format_facts, parse_score
from pipeline.config.settings import Section
from pipeline.engine.engine import GenRequest
from pipeline.sources.images import image_uuid, to_pil
from pipeline.core.seeds import derive_seed
from pipeline.core.stage import EngineStage, StageContext
from schemas import PAIR_SCHEMA
from schemas.records import turn_text, user_turn


class JudgeConfig(Section):
    """Optional LLM/VLM judge (LLaVA-RLHF-style factually augmented scoring)."""
    model: Optional[str] = Field(None, description=(
        "Judge model (local folder or hub id); null = the policy model of this run"))
    rubric: Optional[str] = Field(None, description=(
        "Rubric template with {question}, {facts} and {response} placeholders; null = the built-in one"))
    facts: list[Literal["ground_truth", "facts"]] = Field(
        default_factory=lambda: ["ground_truth", "facts"],
        description="What the judge is told as facts: the ground truth and/or the source's facts field")
    with_image: bool = Field(True, description="Show the image to the judge (VLM judges)")
    score_range: tuple[float, float] = Field((1, 10), description=(
        "The scores the rubric asks for [lowest, highest]; a reply outside it is no score"))
    min_chosen_score: Optional[float] = Field(None, description=(
        "Drop pairs whose chosen scores below this (null = off)"))
    margin: Optional[float] = Field(None, description=(
        "Drop pairs where chosen does not outscore rejected by this much (null = off)"))
    max_tokens: int = Field(64, ge=1, description="Most new tokens of a judge reply")
    temperature: float = Field(0.0, ge=0, description=(
        "Sampling temperature of the judge (0 = greedy; an unparseable reply is retried once with another seed)"))

    @field_validator("rubric")
    @classmethod
    def _rubric(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and "{response}" not in v:
            raise ValueError("rubric must contain a {response} placeholder")
        return v


def threshold_verdict(chosen: float | None, rejected: float | None, min_chosen: float | None,
                      margin: float | None) -> str | None:
    """The rule that removes the pair, or None to keep it (missing scores never remove)."""
    if min_chosen is not None and chosen is not None and chosen < min_chosen:
        return "min_chosen_score"
    if margin is not None and chosen is not None and rejected is not None and chosen - rejected < margin:
        return "margin"
    return None


class JudgeStage(EngineStage):
    name = "judge"
    streams = False  # a retry round for the outputs it could not parse: one partition at a time
    after = ("filter",)
    Config = JudgeConfig
    #: model: the judge when judge.model is null; sources: their processor settings then
    uses = ("model", "sources", "run.seed", "engine.batch_invariant")
    input_schema = PAIR_SCHEMA
    output_schema = PAIR_SCHEMA

    def engine_config(self):
        j = self.config.judge
        if not j.model:
            return self.config
        # the policy model's stops are its chat template's: another model brings its own EOS
        judge_model = self.config.model.model_copy(update={"path": j.model, "stop": [], "stop_token_ids": []})
        return self.config.model_copy(update={"model": judge_model})

    def requests_for(self, row: dict, target: str, attempt: int, stops: dict | None = None) -> GenRequest:
        from vllm import SamplingParams

        j = self.config.judge
        prov = row["provenance"]
        text = turn_text(row[target])
        facts = format_facts(prov.get("ground_truth"), prov.get("facts"), j.facts)
        prompt = build_judge_prompt(row["question"], text, facts, j.rubric, tuple(j.score_range))
        images = [to_pil(im) for im in row["images"]] if j.with_image else []
        seed = derive_seed(self.config.run.seed, row["id"], "judge", target, attempt)
        params = SamplingParams(n=1, temperature=j.temperature if attempt == 0 else max(j.temperature, 0.7),
                                max_tokens=j.max_tokens, seed=seed, **(stops or {}))
        msg = user_turn(prompt, len(images))
        msg["content"] = [{"type": "image"} if p["type"] == "image" else p for p in msg["content"]]
        # a source's processor settings are tuned for the policy model: a separate judge model gets none
        mm_kwargs = None if j.model else self.config.source_mm_kwargs(row["source"])
        return GenRequest([msg], images, params, mm_processor_kwargs=mm_kwargs,
                          image_uuids=[image_uuid(im) for im in row["images"]] if images else None)

    def score(self, rows: list[dict], ctx: StageContext) -> dict[tuple[int, str], float | None]:
        """Scores per (row index, target); one retry for unparseable outputs."""
        j = self.config.judge
        jobs = []
        for i, row in enumerate(rows):
            jobs.append((i, "chosen"))
            if not (row["method"] == "image_crop" and turn_text(row["chosen"]) == turn_text(row["rejected"])):
                jobs.append((i, "rejected"))
        scores: dict[tuple[int, str], float | None] = {}
        for attempt in (0, 1):
            if not jobs:
                break
            results = ctx.engine.generate([self.requests_for(rows[i], t, attempt, ctx.engine.stop_kwargs)
                                           for i, t in jobs])
            retry = []
            for job, res in zip(jobs, results):
                text = res.completions[0].text if res.completions else None
                if res.completions:
                    ctx.stats.inc("tokens_generated", res.completions[0].num_tokens)
                s = parse_score(text, tuple(j.score_range))
                scores[job] = s
                if s is None:
                    retry.append(job)
            if attempt == 0:
                ctx.stats.inc("judge.retried", len(retry))
            jobs = retry
        return scores

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        j = self.config.judge
        rows = list(rows)
        if not rows:
            return
        scores = self.score(rows, ctx)
        for i, row in enumerate(rows):
            c = scores.get((i, "chosen"))
            r = scores.get((i, "rejected"))
            prov = dict(row["provenance"])
            prov["judge_chosen_score"], prov["judge_rejected_score"] = c, r
            ctx.stats.inc("judge.scored", (c is not None) + (r is not None))
            ctx.stats.inc("judge.missing", (c is None) + (r is None and (i, "rejected") in scores))
            removed_by = threshold_verdict(c, r, j.min_chosen_score, j.margin)
            if removed_by:
                ctx.stats.inc(f"removed.judge.{removed_by}")
                continue
            ctx.stats.inc(f"kept.{row['method']}")
            yield {**row, "provenance": prov}
