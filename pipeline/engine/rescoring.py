"""Scoring requests whose log-probs the prefix cache would have hidden, sent again without it.

vLLM computes prompt log-probs only for the positions it computes.  When a scoring request
(``GenRequest.logprob_tail``: the grounding stage reads its answer tokens' log-probs) finds
another request's blocks in the prefix cache reaching into those positions, the log-probs
there are missing; the request is sent once more with ``skip_reading_prefix_cache`` and its
result counts as ``rescored``.  Split out of the admission loop because it is the grounding
stage's concern alone: generation requests never ask for prompt log-probs.
"""
from __future__ import annotations

from typing import Any

from pipeline.engine.protocols import EngineState, PromptInFlight
from pipeline.engine.submission import engine_prompt


def rescore_uncached(engine: EngineState, prompt: PromptInFlight, out: Any) -> str | None:
    """The id of a scoring request sent again without reading the prefix cache, when the
    cache covered positions whose log-probs it asked for (``GenRequest.logprob_tail``)."""
    req = prompt.req
    if req is None or not req.logprob_tail or prompt.result.rescored:
        return None
    first_needed = len(out.prompt_token_ids or []) - req.logprob_tail  # its log-prob comes from the state before it
    if (out.num_cached_tokens or 0) <= first_needed - 1:
        return None
    params = req.params.clone()
    params.skip_reading_prefix_cache = True
    prompt.result.rescored = True
    return engine.llm.enqueue([engine_prompt(req, prompt.result.input_ids)], [params], use_tqdm=False)[0]
