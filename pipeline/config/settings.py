"""Typed, validated pipeline configuration (YAML -> pydantic models).

Every section forbids unknown keys, so a typo fails at load time with the full
key path ("generate.temprature: Extra inputs are not permitted") instead of
being silently ignored.  ``config_hash`` and ``stage_hash`` make the resolved
configuration part of provenance and of each stage's completion markers: a
change that affects a stage's output invalidates that stage's finished work.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from pipeline.config.model import (  # noqa: F401 -- re-exported: `from pipeline.config.settings import X` keeps working
    DTYPES, MODALITIES, RESERVED_ENGINE_KWARGS, TINY_MODEL, TYPED_ENGINE_KWARGS, AutoOrCount, EngineConfig, ModelConfig)
from pipeline.config.sections import Section, StageSections
from pipeline.config.shared import RLPromptsConfig, ScoringConfig, move_old_keys
from pipeline.errors import ConfigError  # noqa: F401 -- re-exported: callers catch it from the config
from pipeline.core.seeds import stable_hash
from pipeline.config.sources import SourceConfig, TemplateConfig
from pipeline.config.templates import BUILTIN_TEMPLATES


_Section = Section


def ratio_range(v: tuple[float, float], name: str, upper: float | None = 1.0) -> tuple[float, float]:
    lo, hi = v
    if not (0 < lo <= hi) or (upper is not None and hi > upper):
        bound = f"0 < low <= high <= {upper}" if upper is not None else "0 < low <= high"
        raise ValueError(f"{name} must satisfy {bound}, got {list(v)}")
    return v


class RunConfig(_Section):
    """What is built and where: the build's name, folders, seed, partitions and stages."""
    name: str = Field("mmpr", description=(
        "The build's name: the dataset card's title, the manifest's name and the exports' dataset name "
        "(not part of the config hash)"))
    work_dir: str = Field("build/mmpr", description=(
        "Where intermediate stage outputs, markers, logs and the run report go (a local path or a "
        "pyarrow/fsspec URI such as s3://...)"))
    output_dir: str = Field("out/mmpr", description="The final dataset folder (a local path or a URI)")
    seed: int = Field(0, description=(
        "The seed every random choice derives from (sampling, pair selection, crops, shuffle, split)"))
    partition_rows: AutoOrCount = Field("auto", description=(
        "Rows per partition: the unit of work, of resume and of retry.  \"auto\" = "
        "clamp(pow2ceil(ceil(R / (32 * W))), 1, 1024), R = the sources' rows after their limits, W = "
        "max(engine.replicas, executor.cpu_concurrency): about 32 partitions per worker, at most 1024 rows "
        "(1k rows on 1 worker: 32 rows; 1M or 10M on 8: 1024).  Not part of the config or stage hashes: "
        "the dataset is byte-identical whatever it is.  A work folder keeps its first plan (ingest/plan.json) "
        "until --restart"))
    stages: list[str] = Field(default_factory=lambda: _default_stages(), description=(
        "The stages to run (default: every stage but the opt-in ones); always run in pipeline order"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field("INFO", description=(
        "Level of the pipeline's own log (DEBUG, INFO, WARNING, ERROR, CRITICAL) on the driver and the "
        "workers; the environment variable MMPR_LOG_LEVEL overrides it"))
    stage_packages: list[str] = Field(default_factory=list, description=(
        "Python packages of stages besides the built-in `stages` package: every module in them is "
        "imported, its Stage classes join the graph and their Config sections become sections of this "
        "config (MMPR_STAGE_PACKAGES, comma-separated, adds more)"))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        order = _stage_order()
        unknown = [s for s in v if s not in order]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known stages: {order}")
        return [s for s in order if s in v]  # always run in pipeline order


#: run keys that cannot change the data: outside the config hash (``data_config``)
RUN_KEYS_NOT_HASHED = ("work_dir", "output_dir", "name", "log_level", "stage_packages", "partition_rows")


def _stage_order() -> list[str]:
    from pipeline.core import graph

    return graph.ordered()


def _default_stages() -> list[str]:
    from pipeline.core import graph

    return [s for s in graph.ordered() if not graph.stage_class(s).opt_in]


class ExecutorConfig(_Section):
    """Where and how stages run.  Scheduling only: none of these keys changes the data, so
    the section is outside the config hash and the stage hashes."""
    kind: Literal["ray", "local"] = Field("ray", description=(
        '"ray": Ray (a local Ray when address is null, a cluster otherwise); "local": in-process, no Ray'))
    address: Optional[str] = Field(None, description=(
        "A Ray cluster's address (HEAD_IP:6379 or ray://...); null = RAY_ADDRESS if set, else a local Ray"))
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs Ray may use on a local machine (null = all)")
    max_retries: int = Field(2, ge=0, description="Retries of a failed partition before its rows are quarantined")
    cpu_concurrency: int = Field(2, ge=1, description="Partitions of CPU-only stages run at once")
    write_workers: Optional[int] = Field(None, ge=1, description=(
        "The write stage's scatter/gather tasks at once (null = cpu_concurrency); here, not in write:, "
        "because scheduling never changes the data"))
    write_buffer_mb: float = Field(64.0, gt=0, description=(
        "Memory (MiB) each write scatter task fills with rows before it spills them to bucket files; "
        "the shards are the same bytes whatever it is.  The environment variable MMPR_WRITE_BUFFER_MB "
        "overrides it"))
    write_memory_mb: float = Field(0.0, ge=0, allow_inf_nan=False, description=(
        "Memory (MiB) the write stage may hold its scattered rows in instead of spilling them to bucket "
        "files: under Ray the object store (each scatter task returns its per-shard pieces as Ray objects; "
        "at most 80% of the store, past which Ray would spill them to its own disk), in-process the "
        "driver's memory.  A scatter task whose share (this x its rows / all rows) is too small spills "
        "(write_buffer_mb).  0 (the default) = always spill: measured at 50k rows, holding saved no CPU "
        "on either executor (the spill goes through the page cache; its tasks were seldom blocked on "
        "the disk) and the in-process driver grew to the held size.  The shards are the same bytes either "
        "way.  The environment variable MMPR_WRITE_MEMORY_MB overrides it"))
    runtime_env: dict[str, Any] = Field(default_factory=dict, description=(
        'Ray runtime_env for the workers, e.g. {working_dir: ".", pip: [...]} on a cluster whose nodes '
        "do not have mmpr-forge installed"))

class PipelineConfig(StageSections):
    """The pipeline config: the sections below, then one per registered stage (``config.generate``).

    This class holds the sections every build has; the stage sections are fields of the
    full model built from the stage registry (``pipeline.config.sections``), which
    ``PipelineConfig(...)``, ``model_validate`` and ``model_json_schema`` use.  Its
    instances are instances of this class.
    """
    run: RunConfig = Field(default_factory=RunConfig, description=RunConfig.__doc__)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description=(
        "Where and how stages run (Ray or in-process, retries, concurrency); outside the config hash"))
    model: ModelConfig = Field(default_factory=ModelConfig, description=ModelConfig.__doc__)
    engine: EngineConfig = Field(default_factory=EngineConfig, description=(
        "How many vLLM engines run, what each one gets, and how it schedules; outside the config hash "
        "(but batch_invariant)"))
    sources: list[SourceConfig] = Field(default_factory=list, description=(
        "The input datasets, each read, validated and normalised by ingest (names must be unique)"))
    templates: list[TemplateConfig] = Field(default_factory=list, description=(
        "Prompt templates as data, besides the built-in ones (pipeline.config.templates)"))
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description=ScoringConfig.__doc__)
    rl_prompts: RLPromptsConfig = Field(default_factory=RLPromptsConfig, description=RLPromptsConfig.__doc__)

    if TYPE_CHECKING:  # the stage sections are fields of the full model only: Any to type checkers
        def __getattr__(self, name: str) -> Any: ...

    @model_validator(mode="before")
    @classmethod
    def _empty_stage_sections(cls, data: Any) -> Any:
        """An empty stage section in the YAML (``judge:``) is that section's defaults; keys an
        earlier version kept elsewhere are read at their new place (``pipeline.config.shared``)."""
        data = move_old_keys(data)
        names = getattr(cls, "__stage_sections__", ())
        if isinstance(data, dict) and any(data.get(n, {}) is None for n in names):
            data = {k: v for k, v in data.items() if not (k in names and v is None)}
        return data

    @model_validator(mode="after")
    def _unique_sources(self) -> "PipelineConfig":
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique, duplicated: {dup}")
        return self

    def check_with_sections(self) -> None:
        """Checks across the stage sections (run once every section is validated); raise ValueError."""
        from pipeline.core import graph

        for name in graph.ordered():  # each stage's checks across sections (token budgets, ...)
            graph.stage_class(name).check_config(self)
        self._templates_known()
        self._enable_opt_in_stages()

    def _enable_opt_in_stages(self) -> None:
        """An opt-in stage that its config asks for (``Stage.enabled_by``: e.g. its section says
        ``enabled: true``) runs without editing run.stages."""
        from pipeline.core import graph

        wanted = [s for s in graph.ordered() if graph.stage_class(s).opt_in
                  and graph.stage_class(s).enabled_by(self) and s not in self.run.stages]
        if wanted:
            self.run.stages = [*self.run.stages, *wanted]

    def _templates_known(self) -> "PipelineConfig":
        """Template ids are unique and none shadows a built-in one (which template each use
        picks is checked by the stage that picks it: ``Stage.check_config``)."""
        ids = [t.id for t in self.templates]
        clash = sorted({i for i in ids if ids.count(i) > 1 or i in BUILTIN_TEMPLATES})
        if clash:
            raise ValueError(f"templates: id(s) {clash} are duplicated or built-in; give each template its own id")
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

    @model_validator(mode="after")
    def _with_sections(self) -> "PipelineConfig":
        """Last: the checks across the stage sections (``check_with_sections``)."""
        self.check_with_sections()
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
        """The resolved config minus what cannot change the data (paths, scheduling, logging,
        and the settings of a stage's mode that is off: ``Stage.unhashed_in``)."""
        from pipeline.core import graph

        d = self.resolved()
        d.pop("executor")
        d.pop("engine")
        d["run"] = {k: v for k, v in d["run"].items() if k not in RUN_KEYS_NOT_HASHED}
        return graph.drop_unhashed(self, d)

    def config_hash(self) -> str:
        """Hash of the data-determining config: two builds with equal hashes make equal data."""
        return stable_hash(json.dumps(self.data_config(), sort_keys=True))[:16]

    def stage_hash(self, stage: str) -> str:
        """Hash of everything that can change ``stage``'s output (``pipeline.core.graph.stage_hash``)."""
        from pipeline.core import graph

        return graph.stage_hash(self, stage)
