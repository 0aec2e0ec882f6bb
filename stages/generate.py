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
from pipeline.placeholders import user_content
from pipeline.templates import BUILTIN_TEMPLATES, prompt_text, template_for_source
from schemas import PROMPT_SCHEMA, RESPONSE_SCHEMA


def user_message(text: str, n_images: int, placeholder: str | None = None) -> dict:
    """A user turn: image parts first, then the text (the order MMPR prompts use), or
    interleaved where ``text`` marks them (``pipeline.placeholders``)."""
    return {"role": "user", "content": user_content(text, n_images, placeholder)}


def prompt_messages(row: dict, template, placeholder: str | None) -> list[dict]:
    """The chat sent for a prompt row: the template's system turn, then the user turn with
    each image once, where its ``<image>`` placeholder stood (several) or first (one)."""
    system = [{"role": "system", "content": [{"type": "text", "text": template.system}]}] if template.system else []
    return system + [user_message(prompt_text(row, template), len(row["images"] or []), placeholder)]


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

        plain, placeholder = BUILTIN_TEMPLATES["plain"], self.config.model.image_placeholder
        todo, requests = [], []
        for row in rows:
            try:
                images = [to_pil(im) for im in row["images"] or []]
            except Exception as e:  # noqa: BLE001 -- a stored image that no longer decodes
                ctx.quarantine(row, "image_decode_error", str(e))
                continue
            template = template_for_source(self.config, row["source"]) if row["answer"] else plain
            sampling = self.sampling(row["sample_id"])
            stops = ctx.engine.stop_kwargs if ctx.engine is not None else {}
            requests.append(GenRequest(prompt_messages(row, template, placeholder), images,
                                       SamplingParams(**sampling, **stops),
                                       mm_processor_kwargs=self.config.source_mm_kwargs(row["source"])))
            todo.append((row, sampling, template))
        return todo, requests

    def finish(self, todo: list, results: list, ctx: StageContext) -> Iterator[dict]:
        for (row, sampling, template), res in zip(todo, results):
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
            yield {**row, "template_id": template.id, "template_hash": template.hash, "prompt_text": res.prompt_text,
                   "prompt_tokens": res.prompt_tokens, "model": ctx.engine.model_name,
                   "model_revision": ctx.engine.revision, "sampling": sampling,
                   "responses": responses}
