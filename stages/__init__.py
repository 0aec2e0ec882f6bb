"""One module per stage; this registry maps stage names to their classes.

Imports are lazy so that a CPU-only stage never imports vLLM.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import PipelineConfig
    from pipeline.stage import Stage

_MODULES = {
    "ingest": ("stages.ingest", "IngestStage"),
    "generate": ("stages.generate", "GenerateStage"),
    "correctness": ("stages.correctness", "CorrectnessStage"),
    "dropout_ntp": ("stages.dropout_ntp", "DropoutNTPStage"),
    "image_crop": ("stages.image_crop", "ImageCropStage"),
    "grounding": ("stages.grounding", "GroundingStage"),
    "filter": ("stages.filter", "FilterStage"),
    "judge": ("stages.judge", "JudgeStage"),
    "write": ("stages.write", "WriteStage"),
}


def stage_class(name: str) -> type["Stage"]:
    if name not in _MODULES:
        raise KeyError(f"unknown stage {name!r}; known: {sorted(_MODULES)}")
    module, cls = _MODULES[name]
    return getattr(importlib.import_module(module), cls)


def make_stage(name: str, config: "PipelineConfig") -> "Stage":
    return stage_class(name)(config)
