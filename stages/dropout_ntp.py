"""dropout_ntp: MMPR's DropoutNTP rejected samples for data without ground truth.

chosen = a response the model gave *with* the image.  The first ``ratio`` of it
(whitespace words by default, like the released code) becomes the start of
the assistant turn, the image is removed from the user turn, and the model
continues the text (``continue_final_message``).  rejected = prefix +
continuation: fluent, but no longer grounded in the image.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from methods.quality import check_text, failures, same_text
from methods.truncate import Truncation, hf_token_spans, truncate_tokens, truncate_words
from pipeline import __version__
from pipeline.engine import GenRequest
from pipeline.images import to_pil
from pipeline.seeds import derive_seed, stable_hash
from pipeline.stage import EngineStage, StageContext
from pipeline.templates import render_user_text
from schemas import PAIR_SCHEMA, RESPONSE_SCHEMA
from schemas.records import assistant_turn, pair_row, provenance, user_turn

#: rules a chosen response must pass under ``selection: filtered``
SELECTION_RULES = {"length_bounds": False, "language_mismatch": False, "bad_characters": False}


def continuation_messages(user_text: str, n_images: int, prefix: str, keep_image: bool) -> list[dict]:
    """The continuation request: image parts dropped unless kept, prefix as a partial assistant turn."""
    user = user_turn(user_text, n_images if keep_image else 0)
    user["content"] = [{"type": p["type"], **({"text": p["text"]} if p["type"] == "text" else {})}
                       for p in user["content"]]
    return [user, assistant_turn(prefix)]


class DropoutNTPStage(EngineStage):
    name = "dropout_ntp"
    input_schema = RESPONSE_SCHEMA
    output_schema = PAIR_SCHEMA

    def _candidates(self, row: dict) -> list[dict]:
        """Responses that may become chosen, in preference order."""
        cfg = self.config.dropout_ntp
        responses = row["responses"]
        if row["answer"]:
            if not cfg.on_correct:
                return []
            from stages.correctness import score_responses
            correct = {s.index for s in score_responses(row, self.config) if s.usable_chosen}
            responses = [r for r in responses if r["index"] in correct]
        if cfg.selection == "first":
            return responses[:1]
        for r in responses:
            rules = dict(SELECTION_RULES)
            if not failures(check_text(r["text"], rules, finish_reason=r["finish_reason"])):
                return [r]
        return []

    def _truncate(self, text: str, tokenizer) -> Truncation | None:
        cfg = self.config.dropout_ntp
        if cfg.unit == "tokens":
            return truncate_tokens(text, cfg.ratio, hf_token_spans(tokenizer))
        return truncate_words(text, cfg.ratio)

    def prepare(self, rows: Iterable[dict], ctx: StageContext) -> tuple[list, list[GenRequest]]:
        from vllm import SamplingParams

        cfg, seed = self.config.dropout_ntp, self.config.run.seed
        jobs, requests = [], []
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
                s = derive_seed(seed, row["sample_id"], "dropout_ntp", chosen["index"])
                params = SamplingParams(n=1, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                        max_tokens=cfg.max_tokens, seed=s, **ctx.engine.stop_kwargs)
                messages = continuation_messages(user_text, len(row["images"]), cut.prefix, cfg.keep_image)
                requests.append(GenRequest(messages, images, params, continue_final=True,
                                           mm_processor_kwargs=self.config.source_mm_kwargs(row["source"])))
                jobs.append((row, chosen, cut, user_text, s))
        return jobs, requests

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
                pair_id=stable_hash(row["sample_id"], "dropout_ntp", chosen["text"], rejected),
                method="dropout_ntp", source=row["source"], question=row["question"],
                user_text=user_text, images=row["images"], chosen=chosen["text"], rejected=rejected,
                prov=provenance(
                    sample_id=row["sample_id"], source_row_id=row["row_key"], facts=row["facts"], model=row["model"],
                    model_revision=row["model_revision"], template_id=row["template_id"],
                    template_hash=row.get("template_hash"),
                    sampling=row["sampling"], chosen_index=chosen["index"], chosen_seed=chosen["seed"],
                    rejected_seed=s, chosen_tokens=chosen["num_tokens"],
                    rejected_tokens=self._prefix_tokens(ctx, cut.prefix) + cont.num_tokens,
                    chosen_finish_reason=chosen["finish_reason"], rejected_finish_reason=cont.finish_reason,
                    answer_type=row["answer_type"], ground_truth=row["answer"] or None,
                    truncation_ratio=cfg.ratio, truncation_unit=cfg.unit, cut_words=cut.cut_words,
                    cut_chars=cut.cut_chars, continuation_tokens=cont.num_tokens, image_kept=cfg.keep_image,
                    pipeline_version=__version__, config_hash=chash,
                ))

    @staticmethod
    def _prefix_tokens(ctx: StageContext, prefix: str) -> int:
        return ctx.engine.count_tokens(prefix)
