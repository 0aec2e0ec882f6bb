"""One prompt into the engine: rendered, length-checked, enqueued as one request per sample.

The engine renders every prompt itself through the model's chat template, so the exact
prompt text is known and recorded on its ``GenResult``, and sends vLLM token ids, not text.
A prompt the template rejects, one longer than the context, or one vLLM refuses at add time
(a bad image) fails alone with a reason on its result instead of failing its batch; a dead
engine raises ``EngineDead`` (``pipeline.engine.death``).
"""
from __future__ import annotations

from typing import Any

from pipeline.engine.death import raise_if_dead
from pipeline.engine.protocols import EngineState
from pipeline.engine.requests import GenRequest, GenResult, sample_params


def engine_prompt(req: GenRequest, ids: list[int]) -> dict[str, Any]:
    """The prompt as ``LLM.enqueue`` takes it: its token ids, images, per-request processor
    arguments.  Token ids, not text: vLLM would tokenise a text prompt again, adding the
    tokenizer's special tokens (a second BOS after the template's), and the ids sent are
    what a later scoring request must match (``stages/grounding.py``)."""
    prompt: dict[str, Any] = {"prompt_token_ids": list(ids)}
    if req.cache_salt is not None:
        prompt["cache_salt"] = req.cache_salt
    if req.images:
        prompt["multi_modal_data"] = {"image": req.images if len(req.images) > 1 else req.images[0]}
        if req.mm_processor_kwargs:
            prompt["mm_processor_kwargs"] = dict(req.mm_processor_kwargs)
        if req.image_uuids:
            prompt["multi_modal_uuids"] = {"image": list(req.image_uuids)}
    return prompt


def submit(engine: EngineState, req: GenRequest, result: GenResult) -> list[str]:
    """Render, check and enqueue one prompt as one n=1 request per sample (``sample_params``);
    on refusal fill ``result.error`` and return no ids."""
    try:
        text = req.prompt if req.prompt is not None else engine.render(req.messages, req.continue_final)
    except Exception as e:  # noqa: BLE001 -- a template that rejects a row
        result.error, result.detail = "chat_template_error", str(e)[:2000]
        return []
    result.prompt_text = text
    token_ids = req.prompt_token_ids
    if token_ids is None:
        token_ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    result.input_ids = list(token_ids)
    n_text = len(token_ids)
    if n_text >= engine.max_model_len:
        result.error = "prompt_too_long"
        result.detail = f"{n_text} text tokens >= max_model_len {engine.max_model_len}"
        return []
    prompt = engine_prompt(req, result.input_ids)
    ids: list[str] = []
    try:
        for params in sample_params(req.params):
            ids += engine.llm.enqueue([prompt], [params], use_tqdm=False)
        return ids
    except Exception as e:  # noqa: BLE001 -- vLLM validates at add time, before any decoding
        raise_if_dead(e, engine.llm.llm_engine)
        if ids:
            engine.llm.llm_engine.abort_request(ids)
        msg = str(e)
        too_long = "longer than" in msg or "max_model_len" in msg or "too long" in msg
        result.error = "prompt_too_long" if too_long else "engine_error"
        result.detail = msg[:2000]
        return []
