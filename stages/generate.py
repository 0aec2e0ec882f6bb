"""generate: sample N chain-of-thought responses per prompt with vLLM.

Responses are stored stripped of surrounding whitespace (the chat template
renders an assistant turn as "Assistant: <text>", so the model's leading space
belongs to the template, not to the answer).

The question is wrapped in the configured CoT template (short-answer suffixes
stripped) and rendered through the model's chat template with its image(s).
The N samples of a prompt are described by one ``SamplingParams(n=N)``
seeded from the prompt's ``sample_id``; the engine sends them as N requests
with seeds ``seed + i`` (what vLLM's own n-fan-out gives sample i; recorded
per response; seeds are hashed, so two prompts never share a random stream),
so the same config gives the same responses regardless of partitioning or
which engine ran it -- and regardless of batching on CPU, or on GPU with
``engine.batch_invariant`` (README, "Reproducibility").
"""
from __future__ import annotations

from typing import Iterable, Iterator

from pipeline.engine import GenRequest
from pipeline.images import to_pil
from pipeline.seeds import derive_seed
from pipeline.stage import EngineStage, StageContext
from pipeline.templates import render_question
from schemas import PROMPT_SCHEMA, RESPONSE_SCHEMA


def user_message(text: str, n_images: int) -> dict:
    """A user turn: image parts first, then the text (the order MMPR prompts use)."""
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


class GenerateStage(EngineStage):
    name = "generate"
    input_schema = PROMPT_SCHEMA
    output_schema = RESPONSE_SCHEMA

    def sampling(self, sample_id: str) -> dict:
        g = self.config.generate
        return {"n": g.n, "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
                "max_tokens": g.max_tokens, "seed": derive_seed(self.config.run.seed, sample_id, "generate")}

    def prepare(self, rows: Iterable[dict], ctx: StageContext) -> tuple[list, list[GenRequest]]:
        from vllm import SamplingParams

        template = self.config.generate.template
        todo, requests = [], []
        for row in rows:
            try:
                images = [to_pil(im) for im in row["images"] or []]
            except Exception as e:  # noqa: BLE001 -- a stored image that no longer decodes
                ctx.quarantine(row, "image_decode_error", str(e))
                continue
            has_gt = bool(row["answer"])
            text = render_question(row["question"], row["choices"], template, has_gt)
            sampling = self.sampling(row["sample_id"])
            stops = ctx.engine.stop_kwargs if ctx.engine is not None else {}
            requests.append(GenRequest([user_message(text, len(images))], images, SamplingParams(**sampling, **stops),
                                       mm_processor_kwargs=self.config.source_mm_kwargs(row["source"])))
            todo.append((row, sampling, template if has_gt else "plain"))
        return todo, requests

    def finish(self, todo: list, results: list, ctx: StageContext) -> Iterator[dict]:
        for (row, sampling, template_id), res in zip(todo, results):
            if res.error:
                ctx.quarantine(row, res.error, res.detail)
                continue
            responses = [
                {"index": i, "text": c.text.strip(), "finish_reason": c.finish_reason,
                 "num_tokens": c.num_tokens, "seed": sampling["seed"] + i}
                for i, c in enumerate(res.completions)
            ]
            ctx.stats.inc("responses", len(responses))
            ctx.stats.inc("tokens_generated", sum(r["num_tokens"] for r in responses))
            ctx.stats.inc("prompt_tokens", res.prompt_tokens)
            ctx.stats.inc("finish_length", sum(r["finish_reason"] == "length" for r in responses))
            yield {**row, "template_id": template_id, "prompt_text": res.prompt_text,
                   "prompt_tokens": res.prompt_tokens, "model": ctx.engine.model_name,
                   "model_revision": ctx.engine.revision, "sampling": sampling,
                   "responses": responses}
