"""The step abstraction: a small class with one ``run`` over a stream of rows.

In the spirit of datatrove, a stage knows nothing about where its rows come
from or how it is scheduled: executors (``pipeline.run.executors``) read an input
partition, hand its rows to ``run``, and write what comes out.  Rows a stage
cannot process go to ``ctx.quarantine`` with a short reason code and never stop
the run.  Counters go to ``ctx.stats`` and end up in the markers and report.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

import pyarrow as pa

from pipeline.core.protocols import BuildConfig, StageEngine
from pipeline.core.settings_view import SettingsView
from schemas import QUARANTINE_SCHEMA


@dataclass
class StageStats:
    """Per-partition counters; summed over partitions for the stage summary."""
    rows_in: int = 0
    rows_out: int = 0
    quarantined: Counter = field(default_factory=Counter)
    counters: Counter = field(default_factory=Counter)
    wall_s: float = 0.0
    retries: int = 0

    def inc(self, key: str, n: int | float = 1) -> None:
        self.counters[key] += n

    def merge(self, other: "StageStats") -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.quarantined.update(other.quarantined)
        self.counters.update(other.counters)
        self.wall_s += other.wall_s
        self.retries += other.retries

    def to_dict(self) -> dict:
        return {
            "rows_in": self.rows_in, "rows_out": self.rows_out,
            "quarantined": dict(sorted(self.quarantined.items())),
            "counters": dict(sorted(self.counters.items())),
            "wall_s": round(self.wall_s, 3), "retries": self.retries,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "StageStats":
        return cls(d.get("rows_in", 0), d.get("rows_out", 0), Counter(d.get("quarantined", {})),
                   Counter(d.get("counters", {})), d.get("wall_s", 0.0), d.get("retries", 0))


def prefixed(counters: dict, prefix: str) -> dict:
    """The counters under ``prefix`` with the prefix removed, sorted (for ``Stage.summarize``)."""
    return {k[len(prefix):]: v for k, v in sorted(counters.items()) if k.startswith(prefix)}


def _json_safe(record: dict) -> str:
    def default(o: Any):
        if isinstance(o, (bytes, bytearray)):
            return f"<{len(o)} bytes>"
        return repr(o)
    try:
        text = json.dumps(record, default=default, ensure_ascii=False)
    except Exception:  # a record we cannot even serialise is still quarantined
        text = repr(record)
    return text[:4000]


class StageContext:
    """What a stage may touch while it runs one partition."""

    def __init__(self, stage: str, partition: str, config: BuildConfig,
                 engine: StageEngine | None = None) -> None:
        self.stage = stage
        self.partition = partition
        self.config = config
        self.engine = engine
        self.stats = StageStats()
        self._quarantine: list[dict] = []
        self._side: dict[str, tuple[pa.Schema, list[dict]]] = {}
        self._t0 = time.perf_counter()

    def quarantine(self, row: dict, reason: str, detail: str = "") -> None:
        self.stats.quarantined[reason] += 1
        self._quarantine.append({
            "stage": self.stage,
            "source": str(row.get("source", "")),
            "row_key": str(row.get("row_key", "")),
            "prompt_id": str(row.get("prompt_id", "")),
            "reason": reason,
            "detail": detail[:2000],
            "record": _json_safe({k: v for k, v in row.items() if k not in ("images",)}),
        })

    def side(self, name: str, schema: pa.Schema, row: dict) -> None:
        """Keep a row in a named side output (e.g. prompts where every sample was wrong)."""
        self._side.setdefault(name, (schema, []))[1].append(row)

    def side_outputs(self) -> dict[str, tuple[pa.Schema, list[dict]]]:
        return self._side

    def quarantine_table(self) -> pa.Table:
        return pa.Table.from_pylist(self._quarantine, schema=QUARANTINE_SCHEMA)

    def close(self) -> StageStats:
        """Stop the partition's clock; its stats (``EngineStage.finish`` is another thing: results -> rows)."""
        self.stats.wall_s = time.perf_counter() - self._t0
        return self.stats


#: what a stage does with its input, which decides how it is scheduled; each kind is a base
#: class below, and a stage's kind is the base it derives from
KINDS = ("source", "row", "engine", "dataset")

#: every stage class defined so far, by name (filled by ``Stage.__init_subclass__``)
REGISTRY: dict[str, type["Stage"]] = {}


@dataclass(frozen=True)
class PairMethod:
    """A way of making pairs, declared by the stage that makes them (``Stage.pair_methods``).

    The dataset's layout, the card, the exports and the reports take the list of methods
    from the stages (``pipeline.core.graph.pair_methods``), so a new pair method is one stage
    module."""
    name: str
    #: the pair's two sides differ in the image, not the text: its rows get a dataset config
    #: (and folder, ``data/<name>``) of their own, since a plain DPO trainer learns nothing from them
    image_contrast: bool = False


class Stage:
    """One pipeline step, and the only place a step is declared.

    A stage derives from one of the four kind classes below (``SourceStage``,
    ``RowStage``, ``EngineStage``, ``DatasetStage``), which decide how it is
    scheduled and which hooks it has.  A subclass with a ``name`` registers itself on
    definition.  What it declares is all the framework knows about it: ``after``
    (the stages whose output it reads), ``Config`` (its config section, a pydantic
    model; the section is named after the stage), ``uses`` (the settings outside its
    section it reads, dotted: a shared section such as ``scoring``, or ``run.seed``,
    ``model``, ``sources``...), ``wants`` (what it needs of upstream output), the schemas
    (``input_schema`` is checked when a partition is read) and ``summarize``.  The
    registry, the stage order, the graph, the config sections, the stage hashes, the
    CLI help and the report rows are derived from these (``pipeline.core.graph``);
    docs/architecture.md walks through adding one.
    """

    name: ClassVar[str]
    #: "source", "row", "engine" or "dataset": set by the kind base class, never by a stage
    kind: ClassVar[str]
    #: stages whose output this stage reads (the nearest enabled ones; see ``pipeline.core.graph``)
    after: ClassVar[tuple[str, ...]] = ()
    #: stages this one's output also feeds (lets a new pair method join ``filter`` without editing it)
    feeds: ClassVar[tuple[str, ...]] = ()
    #: the config section, named after the stage (``None``: the stage has no section)
    Config: ClassVar[type | None] = None
    #: the settings outside its own section this stage reads: shared sections (``scoring``) or
    #: dotted keys (``run.seed``).  They are part of its hash, and ``self.config`` refuses any
    #: other (``pipeline.core.settings_view``), so the hash cannot miss a setting
    uses: ClassVar[tuple[str, ...]] = ()
    #: off unless listed in ``run.stages`` or its section sets ``enabled: true``
    opt_in: ClassVar[bool] = False
    input_schema: ClassVar[pa.Schema | None] = None
    output_schema: ClassVar[pa.Schema | None]
    #: the pair methods whose rows this stage makes (the ``method`` column), in their order
    pair_methods: ClassVar[tuple[PairMethod, ...]] = ()

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ or not register:
            return  # a kind base (EngineStage), a subclass reusing its parent's name, a test helper
        if getattr(cls, "kind", None) not in KINDS or "kind" in cls.__dict__:
            raise TypeError(f"stage {cls.name}: derive from SourceStage, RowStage, EngineStage or DatasetStage "
                            "(the kind comes from the base class, not a 'kind' attribute)")
        known = REGISTRY.get(cls.name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"stage name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
        REGISTRY[cls.name] = cls

    def __init__(self, config: BuildConfig) -> None:
        #: the whole config, for the framework that runs the stage (hashes, executors, engines)
        self.pipeline_config = config
        #: what the stage's own code reads: its section and the settings it declares
        self.config: Any = SettingsView(config, (self.name, *self.uses_in(config)), self.name)

    @property
    def section(self) -> Any:
        """This stage's config section."""
        return getattr(self.config, self.name)

    @classmethod
    def help(cls) -> str:
        """One line for the CLI: the ``"<name>: ..."`` line that opens the stage's module or class docstring."""
        import sys

        for doc in (sys.modules[cls.__module__].__doc__, cls.__dict__.get("__doc__")):
            first = (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
            if first.startswith(f"{cls.name}:"):
                return first.split(":", 1)[1].strip()
        return cls.name

    @classmethod
    def enabled_by(cls, config: BuildConfig) -> bool:
        """Whether an opt-in stage joins ``run.stages`` without being listed there
        (default: its section says ``enabled: true``)."""
        return bool(getattr(getattr(config, cls.name, None), "enabled", False))

    @classmethod
    def check_config(cls, config: BuildConfig) -> None:
        """Checks across sections that concern this stage (raise ValueError naming the keys).
        Run for every registered stage when a config is validated, in stage order, so the
        framework never names a stage's section; a stage that is off usually checks nothing."""

    @classmethod
    def uses_in(cls, config: BuildConfig) -> tuple[str, ...]:
        """The settings outside its section this stage reads under ``config`` (default: ``uses``);
        a stage that reads a setting only in some modes adds it here in those modes, so its
        hash changes only when its output can."""
        return cls.uses

    @classmethod
    def unhashed_in(cls, config: BuildConfig) -> tuple[str, ...]:
        """Keys of this stage's own section (dotted, e.g. ``"generate.adaptive"``) that cannot
        change its output under ``config`` (a mode's settings while the mode is off): left out
        of its stage hash and, unless another stage uses them, of the config hash, so tuning
        an unused mode redoes nothing (``pipeline.core.graph.stage_hash``).  Default: none."""
        return ()

    @classmethod
    def wants(cls, config: BuildConfig) -> frozenset[str]:
        """What this stage needs its upstream stages to record, when it runs under ``config``
        (e.g. ``"logprobs"``: each response's sampled log-prob).  An upstream stage asks
        ``pipeline.core.graph.wanted`` instead of naming the stages that might need it."""
        return frozenset()

    @classmethod
    def summarize(cls, counters: dict) -> dict:
        """Human-facing metrics for the run report from the stage's summed counters ({} = none)."""
        return {}

    @classmethod
    def summary_line(cls, summary: dict) -> str | None:
        """One line for the end of a run from ``summarize``'s output (None = nothing to say)."""
        return None

    @classmethod
    def card_section(cls, config: BuildConfig, summary: dict) -> str | None:
        """Markdown the dataset card shows for this stage, from ``summarize``'s output (None = nothing;
        e.g. the prompts a cleaning stage removed and why)."""
        return None


class RowStage(Stage):
    """Maps one partition of rows to rows on a CPU worker.

    A row stage that ``merges`` needs all its partitions before any is final (a dedup across
    the whole input): every partition runs and writes small side outputs (keys, never rows);
    then the driver calls ``redo_partitions``, which merges those side outputs and names the
    partitions to run again with more inputs, and runs them (``pipeline.run.source_tasks``,
    as a source stage's ``redo_sources``).  The stages after it start only then: on Ray it
    runs before the graph, after the source stages, so it may read only those (or other
    merging stages)."""

    kind = "row"
    #: the partitions wait for each other: see the class docstring
    merges: ClassVar[bool] = False

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:  # pragma: no cover
        raise NotImplementedError

    def redo_partitions(self, planned: list[tuple[str, tuple[str, ...]]],
                        out_dir: str) -> dict[str, tuple[str, ...]]:
        """A merging stage, once every planned partition (name, inputs) is done: partitions to
        run again, name -> their inputs followed by extra ones (handed to ``redo_rows``)."""
        return {}

    def redo_rows(self, rows: list[dict], extra: tuple[str, ...]) -> list[dict]:
        """A redone partition's input rows, given the extra inputs ``redo_partitions`` named."""
        return rows


class SourceStage(RowStage):
    """Reads the configured sources into partitions: planned on the driver without reading
    rows, read and run on workers (``pipeline.run.source_tasks``)."""

    kind = "source"

    def plan_sources(self) -> list[tuple[str, tuple[str, ...]]]:  # pragma: no cover
        """(partition name, task inputs) per read range of the configured sources; the same
        config gives the same list."""
        raise NotImplementedError

    def read_source(self, inputs: tuple[str, ...]) -> list[dict]:  # pragma: no cover
        """The rows of one planned partition, read where the partition runs."""
        raise NotImplementedError

    def redo_sources(self, planned: list[tuple[str, tuple[str, ...]]],
                     out_dir: str) -> dict[str, tuple[str, ...]]:
        """Once every planned partition is done: partitions to run again with other inputs
        (name -> inputs), e.g. for something only the whole source shows.  Default: none."""
        return {}


class EngineStage(Stage):
    """A stage whose work is one batch of engine requests per partition.

    Split into ``prepare`` (rows -> requests) and ``finish`` (results -> rows)
    so an executor can stream several partitions through one engine without
    gaps (``pipeline.run.runner.run_engine_tasks``); ``run`` does both for one.
    A stage whose partition needs several dependent rounds (a judge retrying the
    outputs it could not parse) sets ``streams = False`` and overrides ``run``: its
    partitions then go through the engine one at a time.
    """

    kind = "engine"
    #: partitions may be streamed through the engine (one request batch per partition)
    streams: ClassVar[bool] = True

    def engine_config(self) -> BuildConfig:
        """The whole config whose model this stage's engine runs (a judge may use another model)."""
        return self.pipeline_config

    def sequences_per_row(self) -> int:
        """Sequences the engine runs for one input row, for sizing engine calls
        (``engine.partitions_per_call: auto``, ``pipeline.run.call_size``): a lower bound
        is enough -- a call then takes more partitions, never fewer.  Default: one."""
        return 1

    def preview_messages(self, row: dict) -> list[dict] | None:
        """The chat messages this stage would send for an input ``row`` (stages that prompt
        from source rows; the model pre-flight renders them), or None."""
        return None

    def prepare(self, rows: Iterable[dict], ctx: StageContext) -> tuple[Any, Iterable]:  # pragma: no cover
        """Turn a partition's rows into (state for ``finish``, its GenRequests).

        The requests may be an iterator that builds them as the engine draws them (it draws
        one at a time, while it has room): the engine core, a process of its own, then
        computes a partition's first requests while the later ones are built, instead of
        waiting for the whole partition to be rendered and tokenised.  ``state`` may be
        filled as the iterator runs: ``finish`` is called only after it is exhausted.  An
        exception from the iterator quarantines the partition as one from ``prepare`` does."""
        raise NotImplementedError

    def finish(self, state: Any, results: list, ctx: StageContext) -> Iterator[dict]:  # pragma: no cover
        """Turn the engine's results (one per request, in order) into output rows."""
        raise NotImplementedError

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        state, requests = self.prepare(rows, ctx)
        # nothing to send needs no engine (a partition whose rows all skip it)
        results = [] if isinstance(requests, list) and not requests else ctx.engine.generate(requests)
        yield from self.finish(state, results, ctx)


class DatasetStage(Stage):
    """Consumes every upstream row at once (a global shuffle, dedup, shards) on the driver,
    which plans and hands the bytes to tasks."""

    kind = "dataset"
    #: what its units of work are called in its summary line; ``run_dataset`` counts them
    #: under this counter
    units: ClassVar[str] = "shards"
    #: the files and folders (ending in ``/``) it writes in the dataset folder besides its shards,
    #: reserved in the folder's ownership record before the run writes anything
    writes: ClassVar[tuple[str, ...]] = ()

    def run_dataset(self, input_dirs: list[str], output_dir: str) -> StageStats:  # pragma: no cover
        """Consume every upstream row at once and write ``output_dir``."""
        raise NotImplementedError
