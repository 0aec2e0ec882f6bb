"""Worst-case image cost of one prompt, per known model family, from the config alone.

Two uses, both before any GPU is touched:

* **Context check** (``check_context``, run when a config is validated): the
  image tokens of a prompt with ``model.max_images_per_prompt`` images at the
  engine-wide (largest) processor setting, plus a stage's ``max_tokens``, must
  fit ``model.max_model_len``; otherwise every large prompt is refused by vLLM
  at run time.  The error states the arithmetic.
* **Prompts in flight** (``prompts_in_flight``): each prompt admitted into an
  engine holds its processed pixels (float32) in the engine process until it
  finishes; ``engine.image_memory_gib`` divided by the worst case per prompt
  bounds how many are admitted at once (``engine.max_prompts_in_flight``
  overrides it).

Families and their arithmetic (the processors' own rules):

* InternVL (2 / 2.5 / 3): dynamic tiling into 448x448 tiles of 256 tokens each,
  up to ``max_dynamic_patch`` tiles plus one thumbnail tile (default 12), plus
  ``<img>``/``</img>``.
* Qwen2-VL / Qwen2.5-VL: one token per 28x28 pixels, up to ``max_pixels``
  (default 12845056, i.e. 16384 tokens), plus the vision start/end tokens; pixels
  travel as 14x14x3x2 patches (24 bytes per pixel in float32).
* Idefics3: images larger than ``max_image_size`` are split into a grid of
  ``ceil(longest_edge / max_image_size)``^2 crops plus one global image, each of
  ``image_seq_len`` tokens plus a few wrapper tokens (read from a local model's
  processor files when present; the Idefics3-8B defaults otherwise).

Unknown families are not checked (the function returns None).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.settings import ModelConfig, PipelineConfig

FLOAT32 = 4
#: wrapper tokens counted per Idefics3 crop (<fake_token_around_image>, the <row_i_col_j> tag
#: -- several tokens with some tokenizers -- and the row's newline): an upper bound
IDEFICS3_WRAP = 10


@dataclass(frozen=True)
class ImageCost:
    """Worst case for ONE image: tokens in the prompt and bytes of processed pixels."""
    family: str
    tokens: int
    pixel_bytes: int
    #: how ``tokens`` was computed, e.g. "(24+1 tiles x 256 + 2)"
    arithmetic: str


def _family(m: "ModelConfig") -> str | None:
    name = m.path.lower().replace("_", "").replace("-", "").replace(".", "")
    arch = " ".join(_local_json(m.resolved_path, "config.json").get("architectures") or []).lower()
    if "internvl" in name or "internvl" in arch:
        return "internvl"
    if ("qwen2vl" in name or "qwen25vl" in name or "qwen2vl" in arch.replace("_", "")
            or "qwen2_5_vl" in arch):
        return "qwen2_vl"
    if "idefics3" in name or "idefics3" in arch or m.is_tiny:
        return "idefics3"
    return None


def _local_json(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def image_cost(m: "ModelConfig") -> ImageCost | None:
    """The worst case per image at the engine-wide processor settings (None: unknown family)."""
    kw: dict[str, Any] = dict(m.mm_processor_kwargs)
    family = _family(m)
    if family == "internvl":
        tiles = int(kw.get("max_dynamic_patch", _local_json(m.resolved_path, "config.json")
                           .get("max_dynamic_patch", 12)))
        thumb = 1 if tiles > 1 else 0
        tokens = (tiles + thumb) * 256 + 2
        return ImageCost(family, tokens, (tiles + thumb) * 3 * 448 * 448 * FLOAT32,
                         f"({tiles}+{thumb} tiles x 256 + 2)")
    if family == "qwen2_vl":
        max_pixels = int(kw.get("max_pixels", 12845056))
        tokens = max_pixels // (28 * 28) + 2
        return ImageCost(family, tokens, max_pixels * 24, f"(max_pixels {max_pixels} / 28x28 + 2)")
    if family == "idefics3":
        proc = _local_json(m.resolved_path, "processor_config.json")
        # transformers 5 nests the image processor's settings in processor_config.json
        pre = _local_json(m.resolved_path, "preprocessor_config.json") or proc.get("image_processor") or {}
        if m.is_tiny and not pre:  # not built yet: what demo.tiny_model builds
            from demo.tiny_model import DEFAULT_PARAMS as tiny

            side = tiny["image_size"]
            pre = {"size": {"longest_edge": side}, "max_image_size": {"longest_edge": side},
                   "do_image_splitting": False}
            proc = {"image_seq_len": (side // tiny["patch_size"]) ** 2 // 4}
        longest = int((kw.get("size") or pre.get("size") or {}).get("longest_edge", 4 * 364))
        crop = int((kw.get("max_image_size") or pre.get("max_image_size") or {}).get("longest_edge", 364))
        seq = int(proc.get("image_seq_len", 169))
        splitting = kw.get("do_image_splitting", pre.get("do_image_splitting", True))
        grid = math.ceil(longest / crop) if splitting else 1
        crops = grid * grid + (1 if grid > 1 else 0)
        tokens = crops * (seq + IDEFICS3_WRAP)
        return ImageCost(family, tokens, crops * 3 * crop * crop * FLOAT32,
                         f"({crops} crops x ({seq} + {IDEFICS3_WRAP}))")
    return None


def check_context(config: "PipelineConfig", key: str, new_tokens: int) -> None:
    """Raise ValueError when a prompt's worst-case image tokens plus ``new_tokens`` (a stage's
    budget, named by ``key``) exceed model.max_model_len (the message carries the arithmetic
    and the keys).  Each engine stage calls it for its own budget (``Stage.check_config``)."""
    m = config.model
    cost = image_cost(m)
    if cost is None:
        return
    images = m.max_images_per_prompt
    image_tokens = images * cost.tokens
    need = image_tokens + new_tokens
    if need > m.max_model_len:
        raise ValueError(
            f"model.max_model_len={m.max_model_len} is too small for the worst-case prompt: "
            f"{images} image(s) x {cost.arithmetic} = {image_tokens} image tokens ({cost.family}) "
            f"+ {key} {new_tokens} = {need} > {m.max_model_len}, before any question text. "
            f"Raise model.max_model_len (within the model's limit), or lower "
            f"model.max_images_per_prompt, the engine-wide model.mm_processor_kwargs or {key}")


def prompts_in_flight(config: "PipelineConfig", refill_threshold: int) -> int:
    """Prompts an engine admits at once: ``engine.max_prompts_in_flight`` when set, else
    ``engine.image_memory_gib`` over the worst-case pixels of one prompt (at least 1).
    Unknown families are bounded only by the scheduler (``refill_threshold`` sequences)."""
    e, m = config.engine, config.model
    if e.max_prompts_in_flight is not None:
        return e.max_prompts_in_flight
    cost = image_cost(m)
    if cost is None:
        return max(1, refill_threshold)
    per_prompt = max(1, cost.pixel_bytes * m.max_images_per_prompt)
    return max(1, int(e.image_memory_gib * 2**30 // per_prompt))
