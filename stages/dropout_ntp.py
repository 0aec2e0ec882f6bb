"""dropout_ntp: MMPR's DropoutNTP rejected samples for data without ground truth.

chosen = a response the model gave *with* the image.  The first ``ratio`` of it
(whitespace words by default, like the released code) becomes the start of
the assistant turn, the image is removed from the user turn, and the model
continues the text (``continue_final_message``).  rejected = prefix +
continuation: fluent, but no longer grounded in the image.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Literal

from pydantic import Field, field_validator

from methods import scoring
from methods.quality import same_text, usable_as_dropout_chosen
from methods.truncate import Truncation, hf_token_spans, truncate_tokens, truncate_words
from pipeline import __version__
from pipeline.config.settings import Section
from pipeline.engine.engine import GenRequest
from pipeline.sources.images import image_uuid, to_pil
from pipeline.core.seeds import derive_seed, stable_hash
from pipeline.core.stage import EngineStage, PairMethod, StageContext, prefixed
from pipeline.config.templates import extraction_styles, render_user_text
from pipeline.engine.image_budget import check_context
from schemas import PAIR_SCHEMA, RESPONSE_SCHEMA
from schemas.records import assistant_turn, pair_row, response_provenance, user_turn

class DropoutNTPConfig(Section):
    ratio: float = Field(0.5, description=(
        "Fraction of the chosen response kept as the prefix the model continues without the image (between 0 and 1; "
        "MMPR: 0.5)"))
    unit: Literal["words", "tokens"] = Field("words", description=(
        "What ratio counts: whitespace-separated words (as the released MMPR code) or model tokens"))
    keep_image: bool = Field(False, description=(
        "Keep the image in the continuation request (an ablation); MMPR drops it"))
    selection: Literal["first", "filtered"] = Field("filtered", description=(
        "Which sample becomes chosen: the first one, or the first that passes basic checks"))
    on_correct: bool = Field(False, description=(
        "Also make DropoutNTP pairs from correct responses of ground-truth prompts"))
    max_tokens: int = Field(1024, ge=1, description="Most new tokens of a continuation")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the continuation (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the continuation (1 = all tokens)")
    top_k: int = Field(50, ge=-1, description="Top-k sampling of the continuation (-1 = all tokens)")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"ratio must be in (0, 1), got {v}")
        return v


#: DropoutNTP cost reported by the MMPR paper, and RLAIF-V's divide-and-conquer labelling
MMPR_TOKENS_PER_PAIR = {"MMPR paper": 571.2, "RLAIF-V (MMPR paper)": 992.7}


def continuation_messages(user_text: str, n_images: int, prefix: str, keep_image: bool) -> list[dict]:
    """The continuation request: image parts dropped unless kept, prefix as a partial assistant turn."""
    user = user_turn(user_text, n_images if keep_image else 0)
    user["content"] = [{"type": p["type"], **({"text": p["text"]} if p["type"] == "text" else {})}
                       for p in user["content"]]
    return [user, assistant_turn(prefix)]


class DropoutNTPStage(EngineStage):
    name = "dropout_ntp"
    pair_methods = (PairMethod("dropout_ntp"),)
    after = ("generate",)
    Config = DropoutNTPConfig
    #: model: the engine and tokenizer that continue
    uses = ("model", "sources", "templates", "run.seed", "engine.batch_invariant")
    input_schema = RESPONSE_SCHEMA
    output_schema = PAIR_SCHEMA

    @classmethod
    def check_config(cls, config) -> None:
        """With the image kept, the continuation's prompt also carries the chosen prefix (at most
        the chosen response): both budgets plus the image tokens must fit the context."""
        if "dropout_ntp" in config.run.stages and config.dropout_ntp.keep_image:
            check_context(config, "generate.max_tokens + dropout_ntp.max_tokens",
                          config.generate.max_tokens + config.dropout_ntp.max_tokens)

    @classmethod
    def uses_in(cls, config) -> tuple[str, ...]:
        """With ``on_correct``, which responses are correct (the scoring settings) matters too."""
        return cls.uses + (tuple(f"scoring.{k}" for k in scoring.SETTINGS) if config.dropout_ntp.on_correct else ())

    @classmethod
    def summarize(cls, d: dict) -> dict:
        pairs, text_only = d.get("pairs.dropout_ntp"), d.get("skipped.text_only", 0)
        if not pairs:
            return {"skipped_text_only": text_only} if text_only else {}
        return {
            "pairs": pairs,
            "generated_tokens_per_pair": round(
                (d.get("dropout_ntp.chosen_tokens", 0) + d.get("dropout_ntp.continuation_tokens", 0)) / pairs, 1),
            "continuation_tokens_per_pair": round(d.get("dropout_ntp.continuation_tokens", 0) / pairs, 1),
            "reference_tokens_per_pair": MMPR_TOKENS_PER_PAIR,
            "dropped": prefixed(d, "dropped."),
            "skipped_text_only": d.get("skipped.text_only", 0),
        }

    @classmethod
    def summary_line(cls, s: dict) -> str | None:
        if "pairs" not in s:
            return None
        refs = "; ".join(f"{k}: {v}" for k, v in s["reference_tokens_per_pair"].items())
        return f"dropout_ntp: {s['generated_tokens_per_pair']} generated tokens per pair ({refs})"

    def _candidates(self, row: dict) -> list[dict]:
        """Responses that may become chosen, in preference order."""
        cfg = self.config.dropout_ntp
        responses = row["responses"]
        if row["answer"]:
            if not cfg.on_correct:
                return []
            scored = scoring.score_responses(row, self.config.scoring, self.config.source(row["source"]),
                                             extraction_styles(self.config))
            correct = {s.index for s in scored if s.usable_chosen}
            responses = [r for r in responses if r["index"] in correct]
        if cfg.selection == "first":
            return responses[:1]
        return next(([r] for r in responses if usable_as_dropout_chosen(r["text"], r["finish_reason"])), [])

    def _truncate(self, text: str, tokenizer) -> Truncation | None:
        cfg = self.config.dropout_ntp
        if cfg.unit == "tokens":
            return truncate_tokens(text, cfg.ratio, hf_token_spans(tokenizer))
        return truncate_words(text, cfg.ratio)

    def prepare(self, rows: Iterable[dict], ctx: StageContext) -> tuple[list, Iterator[GenRequest]]:
        """A continuation request per chosen candidate, built as the engine draws it
        (``EngineStage.prepare``: the engine continues the first cuts while the later ones
        are tokenised and cut); ``jobs``, ``finish``'s state, is filled alongside."""
        jobs: list = []
        return jobs, self._requests(rows, jobs, ctx)

    def _requests(self, rows: Iterable[dict], jobs: list, ctx: StageContext) -> Iterator[GenRequest]:
        from vllm import SamplingParams

        cfg, seed = self.config.dropout_ntp, self.config.run.seed
        for row in rows:
            if not row["images"]:  # text-only: no image to drop, so no hard negative
                ctx.stats.inc("skipped.text_only")
                continue
            chosen_list = self._candidates(row)
            if not chosen_list and (not row["answer"] or cfg.on_correct):
                ctx.stats.inc("dropped.no_usable_chosen")
            for chosen in chosen_list:
                cut = self._truncate(chosen["text"], ctx.engine.tokenizer)
                if cut is None:
                    ctx.stats.inc("dropped.too_short_to_cut")
                    continue
                user_text = render_user_text(self.config, row)
                images = [to_pil(im) for im in row["images"]] if cfg.keep_image else []
                s = derive_seed(seed, row["prompt_id"], "dropout_ntp", chosen["index"])
                params = SamplingParams(n=1, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                        max_tokens=cfg.max_tokens, seed=s, **ctx.engine.stop_kwargs)
                messages = continuation_messages(user_text, len(row["images"]), cut.prefix, cfg.keep_image)
                jobs.append((row, chosen, cut, user_text, s))
                yield GenRequest(messages, images, params, continue_final=True,
                                 mm_processor_kwargs=self.config.source_mm_kwargs(row["source"]),
                                 image_uuids=[image_uuid(im) for im in row["images"]] if images else None)

    def finish(self, jobs: list, results: list, ctx: StageContext) -> Iterator[dict]:
        cfg = self.config.dropout_ntp
        chash = self.config.config_hash()
        for (row, chosen, cut, user_text, s), res in zip(jobs, results):
            if res.error:
                ctx.quarantine(row, res.error, res.detail)
                continue
            cont = res.completions[0]
            ctx.stats.inc("tokens_generated", cont.num_tokens)
            if not cont.text.strip():
                ctx.stats.inc("dropped.empty_continuation")
                continue
            rejected = cut.prefix + cont.text
            if same_text(rejected, chosen["text"]):
                ctx.stats.inc("dropped.identical_to_chosen")
                continue
            ctx.stats.inc("pairs.dropout_ntp")
            ctx.stats.inc("dropout_ntp.chosen_tokens", chosen["num_tokens"])
            ctx.stats.inc("dropout_ntp.continuation_tokens", cont.num_tokens)
            yield pair_row(
                pair_id=stable_hash(row["prompt_id"], "dropout_ntp", chosen["text"], rejected),
                method="dropout_ntp", source=row["source"], question=row["question"],
                user_text=user_text, images=row["images"], chosen=chosen["text"], rejected=rejected,
                prov=response_provenance(
                    row, chosen, rejected_seed=s,
                    rejected_tokens=self._prefix_tokens(ctx, cut.prefix) + cont.num_tokens,
                    rejected_finish_reason=cont.finish_reason,
                    truncation_ratio=cfg.ratio, truncation_unit=cfg.unit, cut_words=cut.cut_words,
                    cut_chars=cut.cut_chars, continuation_tokens=cont.num_tokens, image_kept=cfg.keep_image,
                    pipeline_version=__version__, config_hash=chash,
                ))

    @staticmethod
    def _prefix_tokens(ctx: StageContext, prefix: str) -> int:
        return ctx.engine.count_tokens(prefix)
