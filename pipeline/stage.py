"""The step abstraction: a small class with one ``run`` over a stream of rows.

In the spirit of datatrove, a stage knows nothing about where its rows come
from or how it is scheduled: executors (``pipeline.executors``) read an input
partition, hand its rows to ``run``, and write what comes out.  Rows a stage
cannot process go to ``ctx.quarantine`` with a short reason code and never stop
the run.  Counters go to ``ctx.stats`` and end up in the markers and report.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator

import pyarrow as pa

from schemas import QUARANTINE_SCHEMA

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import PipelineConfig
    from pipeline.engine import Engine


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

    def __init__(self, stage: str, partition: str, config: "PipelineConfig",
                 engine: "Engine | None" = None) -> None:
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
            "sample_id": str(row.get("sample_id", "")),
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

    def finish(self) -> StageStats:
        self.stats.wall_s = time.perf_counter() - self._t0
        return self.stats


class Stage:
    """One pipeline step.  Subclasses set ``name`` and the schemas, and implement ``run``."""

    name: ClassVar[str]
    input_schema: ClassVar[pa.Schema]
    output_schema: ClassVar[pa.Schema]
    #: the stage needs a vLLM engine (scheduled on engine actors)
    uses_engine: ClassVar[bool] = False

    def __init__(self, config: "PipelineConfig") -> None:
        self.config = config

    def engine_config(self) -> "PipelineConfig":
        """The config whose model this stage's engine runs (a judge may use another model)."""
        return self.config

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:  # pragma: no cover
        raise NotImplementedError


class EngineStage(Stage):
    """A stage whose work is one batch of engine requests per partition.

    Split into ``prepare`` (rows -> requests) and ``finish`` (results -> rows)
    so an executor can stream several partitions through one engine without
    gaps (``pipeline.runner.run_engine_tasks``); ``run`` does both for one.
    """

    uses_engine = True

    def prepare(self, rows: Iterable[dict], ctx: StageContext) -> tuple[Any, list]:  # pragma: no cover
        """Turn a partition's rows into (state for ``finish``, list of GenRequest)."""
        raise NotImplementedError

    def finish(self, state: Any, results: list, ctx: StageContext) -> Iterator[dict]:  # pragma: no cover
        """Turn the engine's results (one per request, in order) into output rows."""
        raise NotImplementedError

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        state, requests = self.prepare(rows, ctx)
        results = ctx.engine.generate(requests) if requests else []
        yield from self.finish(state, results, ctx)
