"""What the stage contract needs of the layers above it, as ``typing.Protocol`` classes.

``pipeline.core`` sits below the config (``pipeline.config``) and the engine
(``pipeline.engine``): both import it, so it names neither.  A stage is handed the whole
config and, in an engine stage, an engine; these protocols say which parts of them the
framework in ``pipeline.core`` and the stage code reading ``ctx.engine`` rely on, so the
type hints stay checked without an import that points up (``tests/test_layering.py``).
``PipelineConfig`` (``pipeline.config.settings``) and ``Engine`` (``pipeline.engine.engine``)
are the classes that fit them.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence


class RunSettings(Protocol):
    """The ``run`` section, as far as the stage graph reads it."""

    @property
    def stages(self) -> list[str]: ...


class BuildConfig(Protocol):
    """A whole build's config: ``run``, one section per stage (read by name, e.g.
    ``getattr(config, stage.name)``) and the resolved tree the stage hashes cover."""

    @property
    def run(self) -> RunSettings: ...

    def resolved(self) -> dict: ...


class StageEngine(Protocol):
    """What a stage uses of its engine (``StageContext.engine``): it sends ``GenRequest``s
    (``pipeline.engine.requests``) and gets one ``GenResult`` each, in order; it may render a
    chat through the model's template, count tokens, use the tokenizer, the model's stops and
    the prefix cache's block size (0: no prefix cache), and record the model it ran."""

    tokenizer: Any
    model_name: str
    revision: str
    stop_kwargs: dict[str, list]
    kv_block_size: int

    def render(self, messages: list[dict], continue_final: bool = False) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, requests: Sequence[Any]) -> list[Any]: ...
