"""Typed, validated pipeline configuration (YAML -> pydantic models).

Every section forbids unknown keys, so a typo fails at load time with the full
key path ("generate.temprature: Extra inputs are not permitted") instead of
being silently ignored.  ``config_hash`` and ``stage_hash`` make the resolved
configuration part of provenance and of each stage's completion markers: a
change that affects a stage's output invalidates that stage's finished work.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.sections import StageSections
from pipeline.seeds import stable_hash
from pipeline.image_refs import READABLE_SCHEMES, uri_scheme
from pipeline.templates import BUILTIN_TEMPLATES, pick_template, template_table
from schemas import ANSWER_TYPES

TINY_MODEL = "tiny-idefics3"


class ConfigError(ValueError):
    """A configuration mistake; the message names the key and what to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: the base of every config section, stages' own included
Section = _Section


def ratio_range(v: tuple[float, float], name: str, upper: float | None = 1.0) -> tuple[float, float]:
    lo, hi = v
    if not (0 < lo <= hi) or (upper is not None and hi > upper):
        bound = f"0 < low <= high <= {upper}" if upper is not None else "0 < low <= high"
        raise ValueError(f"{name} must satisfy {bound}, got {list(v)}")
    return v


class RunConfig(_Section):
    name: str = "mmpr"
    #: intermediate stage outputs (local path or a pyarrow/fsspec URI such as s3://...)
    work_dir: str = "build/mmpr"
    #: the final dataset folder
    output_dir: str = "out/mmpr"
    seed: int = 0
    #: rows per partition: the unit of work, of resume and of retry
    partition_rows: int = Field(256, ge=1)
    #: the stages to run (default: every stage but the opt-in ones); always run in pipeline order
    stages: list[str] = Field(default_factory=lambda: _default_stages())

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        order = _stage_order()
        unknown = [s for s in v if s not in order]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known stages: {order}")
        return [s for s in order if s in v]  # always run in pipeline order


def _stage_order() -> list[str]:
    from pipeline import graph

    return graph.ordered()


def _default_stages() -> list[str]:
    from pipeline import graph

    return [s for s in graph.ordered() if not graph.stage_class(s).opt_in]


class ExecutorConfig(_Section):
    #: "ray": Ray Data (local Ray when address is null, a cluster otherwise); "local": in-process
    kind: Literal["ray", "local"] = "ray"
    address: Optional[str] = None
    #: CPUs Ray may use on a local machine (null = all)
    num_cpus: Optional[int] = Field(None, ge=1)
    #: retries of a failed partition before its rows are quarantined
    max_retries: int = Field(2, ge=0)
    #: concurrency of CPU-only stages
    cpu_concurrency: int = Field(2, ge=1)
    #: the write stage's scatter/gather tasks at once (null = cpu_concurrency); here, not in
    #: write:, because scheduling never changes the data (the executor is outside the config hash)
    write_workers: Optional[int] = Field(None, ge=1)
    #: Ray runtime_env for the workers, e.g. {working_dir: ".", pip: [...]} on a cluster
    #: whose nodes do not have mmpr-forge installed
    runtime_env: dict[str, Any] = Field(default_factory=dict)


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
    "gpu_memory_utilization": ("engine", "gpu_memory_utilization"),
}


def _image_count(limit: Any) -> Any:
    """The image count of a limit_mm_per_prompt entry (an int or vLLM's {count: N, ...} form)."""
    return limit.get("count") if isinstance(limit, dict) else limit


class ModelConfig(_Section):
    """The checkpoint and everything that changes what it produces (all of it is hashed)."""
    #: a local folder or a hub id; "tiny-idefics3" = the project's own CPU model
    path: str = TINY_MODEL
    #: where the tiny model is built when path is "tiny-idefics3"
    tiny_model_dir: str = "models/tiny-idefics3"
    #: sample data the tiny model is trained on (generated when missing)
    tiny_model_data: str = "data/sample"
    revision: Optional[str] = None
    #: weights/activations dtype: auto, half, float16, bfloat16, float, float32
    dtype: str = "auto"
    #: context length (prompt + image tokens + generated tokens)
    max_model_len: int = Field(4096, ge=64)
    #: images per prompt: rows with more are quarantined at ingest; = limit_mm_per_prompt.image
    max_images_per_prompt: int = Field(1, ge=1)
    #: vLLM's items-per-prompt limit per modality, e.g. {image: 4, video: 0} (0 disables a
    #: modality and its memory profiling); "image" defaults to max_images_per_prompt
    limit_mm_per_prompt: dict[str, Union[int, dict[str, int]]] = Field(default_factory=dict)
    #: multimodal processor arguments for every request (e.g. InternVL {max_dynamic_patch: 12},
    #: Qwen2.5-VL {max_pixels: 1003520}); sources may override them per request
    #: (sources[].mm_processor_kwargs).  vLLM sizes its memory profile and encoder cache
    #: with THESE values, so set the most expensive setting here and lower it per source.
    mm_processor_kwargs: dict[str, Any] = Field(default_factory=dict)
    trust_remote_code: bool = False
    #: for chat templates that take plain-string content (InternVL: "<image>"): each
    #: image part is rendered as this placeholder and the parts joined by newlines;
    #: null = pass content parts ({"type": "image"}) to the template (Idefics3, Qwen2.5-VL)
    image_placeholder: Optional[str] = None
    #: stop strings and stop tokens (ids or token strings such as "<|im_end|>") for every
    #: request to this model: needed when the chat template's end-of-turn marker is not the
    #: tokenizer's EOS (InternVL: "<|im_end|>" vs "</s>"); the pre-flight check enforces it
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[Union[int, str]] = Field(default_factory=list)
    #: other keyword arguments for vllm.LLM (e.g. enforce_eager, max_num_batched_tokens);
    #: keys with a typed field belong in that field
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)

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


class EngineConfig(_Section):
    """How many vLLM engines run, what each one gets, and how it schedules.

    Scheduling only: none of these keys changes the data, so none is hashed.
    """
    replicas: int = Field(1, ge=1)
    #: GPUs each engine reserves: 0 = CPU; tensor_parallel_size*pipeline_parallel_size when
    #: that is > 1; a fraction < 1 packs several engines on one GPU (set gpu_memory_utilization)
    gpus_per_replica: float = Field(0, ge=0)
    cpus_per_replica: float = Field(1, gt=0)
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    #: partitions an engine actor streams per call: the engine stays fed across
    #: their boundaries; more = less idle tail, coarser retry unit
    partitions_per_call: int = Field(4, ge=1)
    #: sequences scheduled at once (null = vLLM's default for the hardware)
    max_num_seqs: Optional[int] = Field(None, ge=1)
    #: reuse KV cache across prompts sharing a prefix (null = vLLM's default for the model)
    enable_prefix_caching: Optional[bool] = None
    #: fraction of each GPU's memory vLLM may take (null = vLLM's default, 0.92); not
    #: passed on CPU, where VLLM_CPU_KVCACHE_SPACE sizes the KV cache
    gpu_memory_utilization: Optional[float] = Field(None, gt=0, le=1)
    #: prompts admitted into one engine at once (each holds its processed images in the
    #: engine process until it finishes); null = image_memory_gib / the model's worst-case
    #: image bytes per prompt (pipeline.image_budget)
    max_prompts_in_flight: Optional[int] = Field(None, ge=1)
    #: host memory one engine may spend on the processed images of admitted prompts
    image_memory_gib: float = Field(8.0, gt=0)
    #: vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT=1): on GPU a response no longer
    #: depends on what it was batched with (a retried or resumed partition gives the same
    #: responses), at some speed cost; part of the stage hashes when on
    batch_invariant: bool = False

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


class TemplateConfig(_Section):
    """A prompt template as data (e.g. the exact instruction a reference pipeline used)."""
    id: str
    #: the user-turn text; {question} is replaced by the question (other braces stay as they are)
    text: str
    #: an optional system turn sent before the user turn
    system: Optional[str] = None
    #: how answers to this prompt are read back (methods.extract styles)
    extraction: Literal["final_answer", "boxed", "think", "any", "final_answer_zh"] = "final_answer"
    #: language of the text (en, zh, ...); "any" = every language
    language: str = "en"
    #: templates sharing a group are language variants of one prompt (default: the id)
    group: Optional[str] = None

    @field_validator("text")
    @classmethod
    def _has_question(cls, v: str) -> str:
        if v.count("{question}") != 1:
            raise ValueError("text must contain {question} exactly once")
        return v


class SourceConfig(_Section):
    name: str
    format: Literal["jsonl", "parquet", "hf", "mmpr", "image_folder"]
    path: str
    #: images referenced by relative paths are resolved against this root (default: the file's folder)
    image_root: Optional[str] = None
    #: further roots absolute image references (paths, file://, s3://bucket/prefix, gs://...)
    #: may point into; any reference outside image_root and these is quarantined as
    #: image_uri_not_allowed before anything is read
    allowed_image_roots: list[str] = Field(default_factory=list)
    #: prompt template id or group for this source's ground-truth prompts (null = generate.template)
    template: Optional[str] = None
    #: picks the template's language variant: auto = zh when the file name contains "_zh_", else en
    language: str = "auto"
    #: quarantine rows without an image (null = ingest.require_image; false for format mmpr,
    #: whose prompt files hold text-only items)
    require_image: Optional[bool] = None
    split: str = "train"
    answer_type: str = "auto"
    #: ChartQA-style 5% relaxed numeric accuracy
    relaxed_numeric: bool = False
    #: accept True/False as yes/no
    true_false: bool = False
    #: rename columns: canonical name -> column in the source
    fields: dict[str, str] = Field(default_factory=dict)
    #: question used for image_folder sources and rows without one
    default_question: Optional[str] = None
    limit: Optional[int] = Field(None, ge=1)
    #: multimodal processor arguments for this source's prompts, merged over
    #: model.mm_processor_kwargs per request (e.g. InternVL {max_dynamic_patch: 24} for
    #: documents, 6 for natural images; Qwen2.5-VL {min_pixels: ..., max_pixels: ...})
    mm_processor_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("answer_type")
    @classmethod
    def _answer_type(cls, v: str) -> str:
        if v not in ANSWER_TYPES:
            raise ValueError(f"unknown answer_type {v!r}; use one of {list(ANSWER_TYPES)}")
        return v

    @field_validator("allowed_image_roots")
    @classmethod
    def _roots(cls, v: list[str]) -> list[str]:
        for root in v:
            scheme = uri_scheme(root)
            if scheme is not None and scheme not in READABLE_SCHEMES:
                raise ValueError(f"{root!r}: images are never fetched over {scheme}; list local folders or "
                                 f"URIs of {list(READABLE_SCHEMES)} (download web images first)")
            if scheme is not None and ("?" in root or "#" in root or root.rstrip("/").endswith(":/")):
                raise ValueError(f"{root!r}: give a bucket or folder prefix without query or fragment")
        return v

    def image_required(self, default: bool) -> bool:
        if self.require_image is not None:
            return self.require_image
        return False if self.format == "mmpr" else default

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        known = {"id", "question", "answer", "image", "images", "choices", "answer_type", "facts"}
        bad = sorted(set(v) - known)
        if bad:
            raise ValueError(f"unknown canonical field(s) {bad}; known: {sorted(known)}")
        return v


class PipelineConfig(StageSections):
    run: RunConfig = Field(default_factory=RunConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    #: prompt templates as data, besides the built-in ones (pipeline.templates)
    templates: list[TemplateConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_sources(self) -> "PipelineConfig":
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique, duplicated: {dup}")
        return self

    def check_with_sections(self) -> None:
        from pipeline.image_budget import check_context

        check_context(self)  # needs the stage sections (generate/dropout_ntp token budgets)
        self._templates_known()
        self._enable_opt_in_stages()

    def _enable_opt_in_stages(self) -> None:
        """An opt-in stage whose section says ``enabled: true`` runs without editing run.stages."""
        from pipeline import graph

        wanted = [s for s in graph.ordered() if graph.stage_class(s).opt_in
                  and getattr(getattr(self, s, None), "enabled", False) and s not in self.run.stages]
        if wanted:
            self.run.stages = [*self.run.stages, *wanted]

    def _templates_known(self) -> "PipelineConfig":
        ids = [t.id for t in self.templates]
        clash = sorted({i for i in ids if ids.count(i) > 1 or i in BUILTIN_TEMPLATES})
        if clash:
            raise ValueError(f"templates: id(s) {clash} are duplicated or built-in; give each template its own id")
        table = template_table(self.templates)
        uses = [("generate.template", self.generate.template, "auto")]
        uses += [(f"sources.{i}.template", s.template or self.generate.template, s.language)
                 for i, s in enumerate(self.sources)]
        for key, wanted, language in uses:
            try:
                pick_template(table, wanted, None if language == "auto" else language, strict=language != "auto")
            except KeyError as e:
                raise ValueError(f"{key}: {e.args[0]}") from None
        return self

    @model_validator(mode="after")
    def _engine_kwargs_once(self) -> "PipelineConfig":
        """A vllm.LLM argument set both as a typed key and in model.engine_kwargs is ambiguous."""
        sections = {"model": self.model, "engine": self.engine}
        both = []
        for key in self.model.engine_kwargs:
            if key in TYPED_ENGINE_KWARGS:
                section, field = TYPED_ENGINE_KWARGS[key]
                obj = sections[section]
                # "set" = off its default (not model_fields_set: a resolved config sent to
                # workers and validated again has every field set)
                default = type(obj).model_fields[field].get_default(call_default_factory=True)
                if getattr(obj, field) != default:
                    both.append(f"model.engine_kwargs.{key} and {section}.{field} are both set: "
                                f"keep {section}.{field} and remove {key} from model.engine_kwargs")
        if both:
            raise ValueError("; ".join(both))
        return self

    @model_validator(mode="after")
    def _sources_within_engine_limits(self) -> "PipelineConfig":
        """A source may lower a max_* processor limit, not raise it above the engine-wide one:
        vLLM profiles memory and sizes its encoder cache with the engine-wide value."""
        engine_wide = self.model.mm_processor_kwargs
        for i, src in enumerate(self.sources):
            for key, value in src.mm_processor_kwargs.items():
                top = engine_wide.get(key)
                if (key.startswith("max_") and isinstance(value, (int, float)) and isinstance(top, (int, float))
                        and value > top):
                    raise ValueError(
                        f"sources.{i}.mm_processor_kwargs.{key}={value} exceeds "
                        f"model.mm_processor_kwargs.{key}={top}: vLLM sizes its memory profile and encoder "
                        f"cache with the engine-wide value, so set model.mm_processor_kwargs.{key}: {value} "
                        "and lower it for the sources that need less")
        return self


    def source(self, name: str) -> SourceConfig | None:
        return next((s for s in self.sources if s.name == name), None)

    def source_mm_kwargs(self, name: str) -> dict[str, Any] | None:
        """The per-request mm_processor_kwargs of a source's prompts (None = the engine's)."""
        src = self.source(name)
        return dict(src.mm_processor_kwargs) if src is not None and src.mm_processor_kwargs else None

    # -- hashing -----------------------------------------------------------
    def resolved(self) -> dict:
        return self.model_dump(mode="json")

    def data_config(self) -> dict:
        """The resolved config minus what cannot change the data (paths, scheduling)."""
        d = self.resolved()
        d.pop("executor")
        d.pop("engine")
        d["run"] = {k: v for k, v in d["run"].items() if k not in ("work_dir", "output_dir", "name")}
        return d

    def config_hash(self) -> str:
        """Hash of the data-determining config: two builds with equal hashes make equal data."""
        return stable_hash(json.dumps(self.data_config(), sort_keys=True))[:16]

    def stage_hash(self, stage: str) -> str:
        """Hash of everything that can change ``stage``'s output (``pipeline.graph.stage_hash``)."""
        from pipeline import graph

        return graph.stage_hash(self, stage)


def _format_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {key}: {msg}")
    return "\n".join(lines)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested dicts/lists (list items by index)."""
    node: Any = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"--set {dotted}: no list item {p}")
            node = node[int(p)]
        else:
            node = node.setdefault(p, {})
    if isinstance(node, list):
        if not leaf.isdigit() or int(leaf) >= len(node):
            raise ConfigError(f"--set {dotted}: no list item {leaf}")
        node[int(leaf)] = value
    else:
        node[leaf] = value


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load and validate a YAML config; raise ConfigError with key paths.

    ``overrides`` maps dotted keys to values ("run.output_dir": "out/x").
    Relative source paths are resolved against the current directory.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, str(path))) from None
