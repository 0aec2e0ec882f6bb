"""generate: sample N chain-of-thought responses per prompt with vLLM.

Responses are stored stripped of surrounding whitespace (the chat template
renders an assistant turn as "Assistant: <text>", so the model's leading space
belongs to the template, not to the answer).

The question is wrapped in the configured CoT template (short-answer suffixes
stripped) and rendered through the model's chat template with its image(s).
With ``generate.adaptive.enabled`` the samples are drawn in rounds and a
prompt stops as soon as its pairs have what they need (``methods.adaptive``;
README "Adaptive sampling"): the rounds of every prompt go through the same
engine stream, so scoring one prompt's round never idles the engine.

The N samples of a prompt are described by one ``SamplingParams(n=N)``
seeded from the prompt's ``prompt_id``; the engine sends them as N requests
with seeds ``seed + i`` (what vLLM's own n-fan-out gives sample i; recorded
per response; seeds are hashed, so two prompts never share a random stream),
so the same config gives the same responses regardless of partitioning or
which engine ran it -- and regardless of batching on CPU, or on GPU with
``engine.batch_invariant`` (README, "Reproducibility").
"""
from __future__ import annotations

from typing import Iterable, Iterator, Literal, Optional

from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer, model_validator

from methods import scoring
from methods.adaptive import PromptSampler, StopRule, first_round
from methods.prior import judge
from methods.prompt_stats import scoring_settings
from methods.grounding import sampled_score
from methods.quality import usable_as_dropout_chosen

from pipeline.config.settings import Section
from pipeline.engine.engine import GenRequest
from pipeline.sources.images import image_uuid, to_pil
from pipeline.core.seeds import derive_seed
from pipeline.core.graph import wanted
from pipeline.core.stage import EngineStage, StageContext
from schemas.placeholders import user_content
from pipeline.core.stage import prefixed
from pipeline.config.templates import (BUILTIN_TEMPLATES, check_templates, extraction_styles, prompt_text,
                                      template_for_source)
from pipeline.engine.image_budget import check_context
from publish import prior as priors
from publish.prompt_table import SIDE as PROMPTS_SIDE
from schemas import PROMPT_SCHEMA, PROMPT_TABLE_SCHEMA, RESPONSE_SCHEMA


class AdaptiveConfig(Section):
    """Sampling in rounds (``methods.adaptive``); off = every prompt draws ``generate.n``."""
    enabled: bool = Field(False, description=(
        "Sample in rounds, stopping each prompt once its pairs have what they need; false = every prompt draws "
        "generate.n samples"))
    rounds: list[int] = Field(default_factory=lambda: [4, 8, 12, 16, 24, 32], description=(
        "Cumulative samples after each round; the last is capped at (and extended to) generate.n"))
    stop: Literal["pairs", "both"] = Field("pairs", description=(
        '"pairs": stop once scoring.max_pairs_per_prompt distinct right x wrong pairs exist with every response '
        'in at most scoring.max_pairs_per_response of them (the cap the pair selection keeps); "both": at least '
        'min_each right and min_each wrong answers'))
    min_each: int = Field(1, ge=1, description="With stop: both, the right and the wrong answers a prompt needs (each)")
    all_right_after: Optional[int] = Field(8, ge=1, description=(
        "Give up on a prompt whose samples are all right after this many (null: never)"))
    all_wrong_after: Optional[int] = Field(None, ge=1, description=(
        "Give up on a prompt with no right sample after this many (null: the whole budget)"))
    no_gt_max: int = Field(4, ge=1, description=(
        "Prompts without ground truth: samples drawn one at a time until one passes DropoutNTP's selection rules, "
        "at most this many"))

    @model_validator(mode="after")
    def _increasing(self) -> "AdaptiveConfig":
        if not self.rounds or any(r < 1 for r in self.rounds) or any(
                b <= a for a, b in zip(self.rounds, self.rounds[1:])):
            raise ValueError(f"generate.adaptive.rounds must be increasing positive sample counts "
                             f"(cumulative, e.g. [4, 8, 12, 16, 24, 32]); got {self.rounds}")
        return self


class GenerateConfig(Section):
    template: str = Field("mmpr_final_answer", description=(
        "Prompt template id or group (built-in, or one of the config's templates) of ground-truth prompts; "
        "sources[].template overrides it per source"))
    n: int = Field(8, ge=1, le=256, description="Samples per prompt (adaptive sampling: at most this many)")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description=(
        "Nucleus sampling: draw from the most likely tokens that make up this much probability (1 = all)"))
    top_k: int = Field(50, ge=-1, description="Draw from the k most likely tokens (-1 = all)")
    max_tokens: int = Field(1024, ge=1, description="Most new tokens of a sampled response")
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig, description=(
        "Adaptive sampling: samples drawn in rounds, a prompt stops when its pairs have what they need"))
    logprobs: Optional[bool] = Field(None, description=(
        "Record each response's summed log-prob as sampled (responses.logprob): the grounding stage then scores the "
        "sampled texts with their image without a request of its own; null = when a stage of the run wants them "
        "(grounding, with reuse_sampled_logprobs)"))
    prior: Optional[str] = Field(None, description=(
        "An earlier build's dataset folder whose prompt table (prompts/*.parquet) informs this one: ground-truth "
        "prompts it puts outside rl_prompts.band (generate.prior_skip says how) are skipped before sampling (no "
        "pairs of any method; their prior rows are carried into this build's prompt table with stop reason "
        "skipped_by_prior), and adaptive sampling's first round is sized from the prior pass rate; null = no prior"))
    prior_skip: Literal["auto", "point", "interval"] = Field("auto", description=(
        'How the prior decides a prompt lies outside rl_prompts.band. "interval": its whole 95% Wilson interval '
        "does (a rate measured with other random draws predicts this build's only up to sampling noise; at 8 "
        'samples no interval clears the band [0.2, 0.8]). "point": its pass rate does (the RL exports\' own test). '
        '"auto": point for each prompt the prior sampled exactly as this build would (same model and revision, '
        "template, question, ground truth, sampling settings and per-prompt seed, scoring settings; fixed-N "
        "sampling), since the seeds derive from the prompt id and this build would draw the very same responses "
        "and measure the very same rate (on CPU, or GPU with engine.batch_invariant); interval otherwise"))
    prior_policy: Literal["same", "any"] = Field("same", description=(
        '"same": the prior must come from this config\'s model (path and revision) and, per source, the same '
        'template (id and text), else a config error naming the mismatch; "any": use it anyway'))
    prior_manifest: Optional[str] = Field(None, description=(
        "SHA-256 of the prior's manifest.json, filled when the config is loaded (it puts the prior into the config "
        "hash and generate's stage hash); set it to pin the prior: another manifest is then a config error"))

    @model_serializer(mode="wrap")
    def _without_unset_prior(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict:
        """No prior, no prior keys in the resolved config: a config without one hashes as before they
        existed, so finished generate work stays valid (a dump of chosen keys keeps them)."""
        out = handler(self)
        if (info.include is None and self.prior is None and self.prior_policy == "same" and self.prior_manifest is None
                and self.prior_skip == "auto"):
            for key in ("prior", "prior_policy", "prior_manifest", "prior_skip"):
                out.pop(key, None)
        return out

    def stop_rule(self, max_pairs: int, max_reuse: int | None) -> StopRule:
        """The rule of ``adaptive``; the pair budget and the per-response cap are the shared
        ``scoring`` section's (``max_pairs_per_prompt``, ``max_pairs_per_response``)."""
        a = self.adaptive
        rounds = tuple(r for r in a.rounds if r < self.n) + (self.n,)
        return StopRule(rounds=rounds, stop=a.stop, max_pairs=max_pairs, max_reuse=max_reuse,
                        min_each=a.min_each, all_right_after=a.all_right_after,
                        all_wrong_after=a.all_wrong_after, no_gt_max=a.no_gt_max)


def request_user_turn(text: str, n_images: int, placeholder: str | None = None) -> dict:
    """The user turn sent to the engine: image parts first, then the text (the order MMPR prompts
    use), or interleaved where ``text`` marks them (``schemas.placeholders``); a placeholder makes
    the content one string.  The turn stored in the data is ``schemas.records.user_turn``."""
    return {"role": "user", "content": user_content(text, n_images, placeholder)}


def prompt_messages(row: dict, template, placeholder: str | None) -> list[dict]:
    """The chat sent for a prompt row: the template's system turn, then the user turn with
    each image once, where its ``<image>`` placeholder stood (several) or first (one)."""
    system = [{"role": "system", "content": [{"type": "text", "text": template.system}]}] if template.system else []
    return system + [request_user_turn(prompt_text(row, template), len(row["images"] or []), placeholder)]


class GenerateStage(EngineStage):
    name = "generate"
    after = ("decontaminate",)
    Config = GenerateConfig
    uses = ("model", "sources", "templates", "run.seed", "engine.batch_invariant")
    input_schema = PROMPT_SCHEMA
    output_schema = RESPONSE_SCHEMA

    @classmethod
    def check_config(cls, config) -> None:
        """A prompt's worst-case image tokens plus max_tokens must fit the model's context."""
        if "generate" in config.run.stages:
            check_context(config, "generate.max_tokens", config.generate.max_tokens)
        check_templates(config, config.generate.template, "generate.template")
        if config.generate.prior is not None:
            priors.check_config(config)  # a finished, compatible build of this model and templates

    @classmethod
    def uses_in(cls, config) -> tuple[str, ...]:
        """Adaptive sampling stops on scored responses: the scoring settings and the pair
        budget decide which samples are drawn; a prior skips prompts by the RL band, judging by the
        point rate only prompts sampled and scored as this build would (the scoring settings), and
        carries the rows of the prompts it skips into the prompt table when correctness records one."""
        g = config.generate
        scoring = g.adaptive.enabled or (g.prior is not None and g.prior_skip == "auto")
        return cls.uses + (("scoring",) if scoring else ()) + (
            ("rl_prompts.band", "correctness.prompt_table") if g.prior is not None else ())

    @classmethod
    def unhashed_in(cls, config) -> tuple[str, ...]:
        """Fixed-N sampling (adaptive off) never reads ``generate.adaptive``: its rounds and stop
        rule cannot change the samples, so tuning them does not redo generate."""
        return () if config.generate.adaptive.enabled else ("generate.adaptive",)

    @classmethod
    def summarize(cls, c: dict) -> dict:
        out = {"prior": priors.summary(c)} if any(k.startswith("prior.") for k in c) else {}
        if not c.get("adaptive.prompts"):
            return out
        drawn, budget = c.get("responses", 0), c.get("adaptive.budget_samples", 0)
        per_sample = c.get("tokens_generated", 0) / max(drawn, 1)
        rounds = {}
        for key, v in prefixed(c, "adaptive.round.").items():
            r, what = key.split(".", 1)
            rounds.setdefault(int(r), {})[what] = v
        return {
            "prompts": c["adaptive.prompts"],
            "samples_drawn": drawn,
            "fixed_n_samples": budget,
            "samples_per_prompt": round(drawn / c["adaptive.prompts"], 2),
            # what the samples not drawn would have cost, at this run's mean tokens per sample
            "tokens_saved_estimate": round((budget - drawn) * per_sample),
            "stopped": prefixed(c, "adaptive.stop."),
            "rounds": [{"round": r, **rounds[r]} for r in sorted(rounds)],
            **out,
        }

    @classmethod
    def summary_line(cls, s: dict) -> str | None:
        lines = []
        if s.get("prompts"):
            stops = ", ".join(f"{k} {v}" for k, v in s["stopped"].items())
            lines.append(f"adaptive sampling: {s['samples_drawn']} samples for {s['prompts']} prompts "
                         f"({s['samples_per_prompt']}/prompt, fixed-N: {s['fixed_n_samples']}); "
                         f"~{s['tokens_saved_estimate']} tokens saved; stopped: {stops}")
        if s.get("prior"):
            lines.append(priors.summary_line(s["prior"]))
        return "\n".join(lines) or None

    def preview_messages(self, row: dict) -> list[dict] | None:
        if "question" not in row or "images" not in row:
            return None
        template = self.template(row)
        return prompt_messages(row, template, None)  # content parts: the pre-flight applies the placeholder

    def template(self, row: dict):
        """The template a prompt row is sent in: its source's (or generate.template) when it has
        ground truth, the plain one otherwise."""
        if not row["answer"]:
            return BUILTIN_TEMPLATES["plain"]
        return template_for_source(self.config, row["source"], self.config.generate.template)

    def sampling(self, prompt_id: str) -> dict:
        g = self.config.generate
        return {"n": g.n, "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
                "max_tokens": g.max_tokens, "seed": derive_seed(self.config.run.seed, prompt_id, "generate")}

    def sequences_per_row(self) -> int:
        """A prompt's samples: ``generate.n`` (adaptive sampling draws at most that many)."""
        return self.config.generate.n

    def wants_logprobs(self) -> bool:
        """``generate.logprobs``, or when null, whether a stage of this run wants them."""
        flag = self.config.generate.logprobs
        return wanted(self.pipeline_config, "logprobs") if flag is None else flag

    def prior(self) -> "priors.Prior | None":
        """The prior build's measurements (``generate.prior``), read once per process."""
        g = self.config.generate
        return priors.load_prior(g.prior, g.prior_manifest) if g.prior is not None else None

    def fingerprint(self, row: dict) -> tuple | None:
        """How this build samples and scores a prompt (``publish.prior.fingerprint``), to compare with
        the prior's; None under adaptive sampling (where a prompt stops depends on the prior)."""
        g = self.config.generate
        if g.adaptive.enabled:
            return None
        template = self.template(row)
        extraction = extraction_styles(self.config).get(template.id, "final_answer")
        scoring_now = scoring_settings(self.config.scoring, self.config.source(row["source"]), extraction)
        sampling = self.sampling(row["prompt_id"])
        return priors.fingerprint(self.config.model.path, self.config.model.revision, template.id, template.hash,
                                  row["question"], row["answer"], sampling, scoring_now)

    def prior_estimate(self, row: dict, prior, ctx: StageContext) -> "tuple[str | None, priors.Estimate | None]":
        """Whether the prior skips a prompt (``too_hard`` / ``too_easy``), and its estimate; counted,
        with the rule that judged it (``generate.prior_skip``: its point rate, or its interval)."""
        if prior is None or not row["answer"]:
            return None, None
        est = prior.estimates.get(row["prompt_id"])
        if est is None:
            ctx.stats.inc("prior.unseen")
            return None, None
        rule = self.config.generate.prior_skip
        identical = rule == "auto" and est.made is not None and est.made == self.fingerprint(row)
        reason, judged_by = judge(rule, identical, est.rate, est.low, est.high, self.config.rl_prompts.band)
        ctx.stats.inc(f"prior.rule.{judged_by}")
        if reason:
            ctx.stats.inc(f"prior.skipped.{reason}")
            # what the prior build spent on the prompts skipped: this build's saving, at its sampling
            ctx.stats.inc("prior.skipped_tokens", est.tokens)
            ctx.stats.inc("prior.skipped_samples", est.samples)
        else:
            ctx.stats.inc("prior.sampled")
        return reason, est

    def sampler(self, row: dict, template, estimate: "priors.Estimate | None" = None) -> PromptSampler | None:
        """The round-by-round stopping rule of one prompt (None: fixed-N sampling); with a prior
        estimate, its first round is sized from the prior pass rate (``methods.adaptive.first_round``)."""
        g = self.config.generate
        if not g.adaptive.enabled:
            return None
        cc = self.config.scoring  # declared only with adaptive sampling (uses_in)
        source, styles = self.config.source(row["source"]), extraction_styles(self.config)

        def score(completions):
            responses = [{"index": i, "text": c.text.strip()} for i, c in enumerate(completions)]
            return scoring.score_responses({**row, "template_id": template.id, "responses": responses},
                                           cc, source, styles)

        def accept(c) -> bool:
            return usable_as_dropout_chosen(c.text.strip(), c.finish_reason)

        rule = g.stop_rule(cc.max_pairs_per_prompt, cc.max_pairs_per_response)
        first = first_round(rule, estimate.rate) if estimate is not None else None
        return PromptSampler(rule, bool(row["answer"]), score, accept, first=first)

    def prepare(self, rows: Iterable[dict], ctx: StageContext) -> tuple[list, Iterator[GenRequest]]:
        """A request per prompt, built as the engine draws it (``EngineStage.prepare``: the
        engine samples the first prompts while the later ones' images are decoded); ``todo``,
        ``finish``'s state, is filled alongside."""
        todo: list = []
        return todo, self._requests(rows, todo, ctx)

    def _requests(self, rows: Iterable[dict], todo: list, ctx: StageContext) -> Iterator[GenRequest]:
        from vllm import SamplingParams

        placeholder = self.config.model.image_placeholder
        # the sampled token's log-prob only (flat: no dict per token), computed from logits vLLM has
        logprobs = {"logprobs": 0, "flat_logprobs": True} if self.wants_logprobs() else {}
        prior, skipped = self.prior(), set()
        for row in rows:
            skip, estimate = self.prior_estimate(row, prior, ctx)
            if skip:
                skipped.add(row["prompt_id"])
                continue  # out of the band in the prior build: not sampled, counted (prior.skipped.*)
            try:
                images = [to_pil(im) for im in row["images"] or []]
            except Exception as e:  # noqa: BLE001 -- a stored image that no longer decodes
                ctx.quarantine(row, "image_decode_error", str(e))
                continue
            template = self.template(row)
            sampling = self.sampling(row["prompt_id"])
            stops = ctx.engine.stop_kwargs if ctx.engine is not None else {}
            sampler = self.sampler(row, template, estimate)
            params = SamplingParams(**{**sampling, "n": sampler.first_count() if sampler else sampling["n"]},
                                    **stops, **logprobs)
            todo.append((row, sampling, template, sampler))
            yield GenRequest(prompt_messages(row, template, placeholder), images, params,
                             mm_processor_kwargs=self.config.source_mm_kwargs(row["source"]),
                             image_uuids=[image_uuid(im) for im in row["images"] or []],
                             more=sampler.next_count if sampler else None)
        self.carry_forward(prior, skipped, ctx)

    def carry_forward(self, prior, skipped: set[str], ctx: StageContext) -> None:
        """The prior's prompt-table rows of the prompts skipped, into this build's (the ``prompts``
        side output the write stage publishes with correctness's): a rebuild's table keeps every
        prompt, so it serves as the next prior and its skips hold (stop reason ``skipped_by_prior``)."""
        if not skipped or not self.config.correctness.prompt_table:
            return
        for row in priors.carried_rows(prior, skipped):
            ctx.side(PROMPTS_SIDE, PROMPT_TABLE_SCHEMA, row)
            ctx.stats.inc("prior.carried")

    @staticmethod
    def _count_rounds(sampler: PromptSampler, ctx: StageContext) -> dict:
        """The prompt's rounds into the stage counters; its ``sampling`` provenance fields."""
        o = sampler.outcome
        # no reason: a later round was refused by the engine (``pipeline.engine.rounds.next_round``)
        reason = o.stop_reason or "refused"
        ctx.stats.inc("adaptive.prompts")
        ctx.stats.inc("adaptive.budget_samples", sampler.rule.budget)
        ctx.stats.inc(f"adaptive.stop.{reason}")
        before = 0
        for r, (drawn, tokens) in enumerate(zip(o.rounds, o.round_tokens), start=1):
            ctx.stats.inc(f"adaptive.round.{r}.open")
            ctx.stats.inc(f"adaptive.round.{r}.samples", drawn - before)
            ctx.stats.inc(f"adaptive.round.{r}.tokens", tokens)
            before = drawn
        return {"rounds": list(o.rounds), "stop_reason": reason}

    def finish(self, todo: list, results: list, ctx: StageContext) -> Iterator[dict]:
        for (row, sampling, template, sampler), res in zip(todo, results):
            if res.error:
                ctx.quarantine(row, res.error, res.detail)
                continue
            if sampler is not None:
                sampling = {**sampling, **self._count_rounds(sampler, ctx)}
            responses = []
            for i, c in enumerate(res.completions):
                logprob, key = sampled_score(res.input_ids, c.token_ids, c.logprobs, c.finish_reason)
                responses.append({"index": i, "text": c.text.strip(), "finish_reason": c.finish_reason,
                                  "num_tokens": c.num_tokens, "seed": sampling["seed"] + i,
                                  "logprob": logprob, "tokens_key": key})
            ctx.stats.inc("responses", len(responses))
            ctx.stats.inc("tokens_generated", sum(r["num_tokens"] for r in responses))
            if not row["answer"]:
                ctx.stats.inc("tokens_generated.no_gt", sum(r["num_tokens"] for r in responses))
            ctx.stats.inc("prompt_tokens", res.prompt_tokens)
            ctx.stats.inc("finish_length", sum(r["finish_reason"] == "length" for r in responses))
            yield {**row, "template_id": template.id, "template_hash": template.hash, "prompt_text": res.prompt_text,
                   "prompt_tokens": res.prompt_tokens, "model": ctx.engine.model_name,
                   "model_revision": ctx.engine.revision, "sampling": sampling,
                   "responses": responses}
