"""What goes into the engine and what comes out: ``GenRequest``, ``GenResult``, ``Completion``.

Stages build ``GenRequest`` objects and read ``GenResult`` objects; nothing here touches
vLLM, so a stage can build its requests (and a test can check them) without an engine.
``sample_params`` is the one rule every path into the engine shares: a prompt's N samples
are N requests with ``n=1``, sample i seeded ``seed + i`` (``pipeline.engine.engine``).
"""
from __future__ import annotations

from copy import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def sample_params(params: Any, start: int = 0, count: int | None = None) -> list:
    """The n=1 requests that replace one ``SamplingParams(n=N)``: child i gets the
    seed ``seed + i``, exactly as vLLM's own fan-out does (ParentRequest
    ``_get_child_sampling_params``), so the responses are the same.  ``start`` and
    ``count`` select samples start..start+count-1 (a later sampling round): sample i
    gets the same seed whichever round draws it."""
    count = params.n if count is None else count
    if params.n == 1 and start == 0 and count == 1:
        return [params]
    out = []
    for i in range(start, start + count):
        child = copy(params)
        child.n = 1
        if params.seed is not None:
            child.seed = params.seed + i
        out.append(child)
    return out


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
    #: ``prompt``'s token ids when the caller has them already (scoring requests): sent as
    #: vLLM token input, so neither the length check nor vLLM tokenises the text again
    prompt_token_ids: list[int] | None = None
    #: adaptive sampling: called with every completion so far each time the samples asked
    #: for are done; returns how many more to draw (0: the prompt is complete).  Sample i
    #: always gets the seed ``params.seed + i`` (``methods.adaptive``)
    more: Callable[[list["Completion"]], int] | None = None
    #: scoring: how many trailing prompt tokens' log-probs the caller reads.  vLLM computes
    #: prompt log-probs only for the positions it computes, so a prefix-cache hit reaching
    #: into them (another request with the same prompt and the same first answer tokens)
    #: is redone once without reading the cache
    logprob_tail: int = 0
    #: vLLM's cache salt: requests share prefix-cache blocks only with requests of the same salt
    cache_salt: str | None = None
    #: a content id per image (``pipeline.sources.images.image_uuid``): vLLM's multimodal caches use it
    #: instead of hashing the pixels of every request again
    image_uuids: list[str] | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str
    num_tokens: int
    #: the sampled token ids, and vLLM's log-probs of them when the request asked for them
    #: (``logprobs=0``: raw log-probs, before temperature and top-k/top-p; one position per
    #: token, read with ``methods.grounding.position_logprob``)
    token_ids: Sequence[int] = ()
    logprobs: Any = None


@dataclass
class GenResult:
    prompt_text: str = ""
    prompt_tokens: int = 0
    #: the prompt's text token ids as sent (the engine tokenises a rendered prompt once, without
    #: adding special tokens: the chat template has them), before images are expanded
    input_ids: list[int] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    #: short reason code when the request failed (e.g. "prompt_too_long")
    error: str | None = None
    detail: str = ""
    #: the prompt as vLLM tokenised it, and its log-probs when the request asked for them
    prompt_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: Any = None
    #: prompt tokens vLLM took from its prefix cache (not computed again)
    cached_tokens: int = 0
    #: the prefix cache reached into the log-probs asked for: scored again without it
    rescored: bool = False
