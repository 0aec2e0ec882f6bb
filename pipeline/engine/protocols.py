"""What the engine's helper modules use of the ``Engine`` and of an admitted prompt.

``Engine`` (``pipeline.engine.engine``) runs its work in modules of its own (submission,
admission, rounds, rescoring) and imports them; they are handed the engine and the prompt in
flight, so they describe what they use of them here instead of importing ``Engine`` or
``admission.AdmittedPrompt`` back, which would close an import cycle
(``tests/test_layering.py``).  ``Engine`` and ``AdmittedPrompt`` are the classes that fit.
"""
from __future__ import annotations

from typing import Any, Protocol

from pipeline.engine.requests import GenRequest, GenResult


class EngineState(Protocol):
    """The engine a helper submits to: the ``vllm.LLM``, its tokenizer and limits, the
    admission caps (``Engine.refill_threshold``, ``Engine.max_prompts``) and the time counters
    ``generate_stream`` keeps (``stream_s``, ``occupied_s``, ``rounds_s``)."""

    llm: Any
    tokenizer: Any
    max_model_len: int
    refill_threshold: int
    max_prompts: int
    stream_s: float
    occupied_s: float
    rounds_s: float

    def render(self, messages: list[dict], continue_final: bool = False) -> str: ...


class PromptInFlight(Protocol):
    """An admitted prompt (``pipeline.engine.admission.AdmittedPrompt``): its request, its
    result being filled, and its samples' completions so far (one list per sample)."""

    @property
    def req(self) -> GenRequest | None: ...

    @property
    def result(self) -> GenResult: ...

    @property
    def samples(self) -> list: ...
