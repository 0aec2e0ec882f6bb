"""Run a stage over partitions: completion markers, atomic outputs, retries.

Layout of a stage's folder (local path or remote URI)::

    <stage>/data/<part>.parquet        rows the stage produced
    <stage>/quarantine/<part>.parquet  rows it refused, with reasons
    <stage>/side/<name>/<part>.parquet side outputs (e.g. all-wrong prompts)
    <stage>/markers/<part>.json        written LAST: stats + the stage's config hash

A partition is done when its marker exists and carries the current stage
hash.  A rerun skips done partitions and redoes the rest, overwriting their
deterministic file names, so a killed run neither loses nor duplicates rows.
A marker with another hash means the config changed: the stage's old output
is discarded instead of being mixed with new output.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa

from pipeline.run import faults
from pipeline.files import storage
from pipeline.engine.death import EngineDead
from pipeline.files.ownership import STAGE_ENTRIES
from pipeline.core.stage import EngineStage, Stage, StageContext, StageStats

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.engine.engine import Engine

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Task:
    """One partition of one stage: read ``inputs``, write ``name`` under ``out_dir``."""
    stage: str
    name: str
    inputs: tuple[str, ...]
    out_dir: str
    stage_hash: str

    def data_uri(self) -> str:
        return storage.join(self.out_dir, "data", f"{self.name}.parquet")

    def quarantine_uri(self) -> str:
        return storage.join(self.out_dir, "quarantine", f"{self.name}.parquet")

    def side_uri(self, side: str) -> str:
        return storage.join(self.out_dir, "side", side, f"{self.name}.parquet")

    def marker_uri(self) -> str:
        return marker_uri(self.out_dir, self.name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        return cls(d["stage"], d["name"], tuple(d["inputs"]), d["out_dir"], d["stage_hash"])


def marker_uri(out_dir: str, name: str) -> str:
    return storage.join(out_dir, "markers", f"{name}.json")


def read_marker(uri: str) -> dict | None:
    try:
        return storage.read_json(uri)
    except (FileNotFoundError, OSError, ValueError):
        return None


def completed(task: Task) -> bool:
    m = read_marker(task.marker_uri())
    return bool(m) and m.get("stage_hash") == task.stage_hash


def invalidate_if_changed(out_dir: str, stage_hash: str) -> bool:
    """Drop a stage's output written under another config hash.  True if dropped.

    Only what a stage run writes goes (``STAGE_ENTRIES``: data, markers, quarantine, ...):
    ``stage NAME --output DIR`` may name a folder that holds other files too."""
    for uri in storage.list_files(storage.join(out_dir, "markers"), ".json"):
        m = read_marker(uri)
        if m is not None and m.get("stage_hash") != stage_hash:
            log.warning("config of %s changed since its output was written: redoing it", out_dir)
            for rel in STAGE_ENTRIES:
                target = storage.join(out_dir, rel)
                if rel.endswith("/"):
                    storage.remove_tree(target)
                else:
                    storage.remove(target)
            return True
    return False


class InputSchemaError(ValueError):
    """A partition that is not what its stage reads: a wiring or version mistake, not bad rows."""


def _read_rows(uris: tuple[str, ...], schema: pa.Schema | None = None) -> list[dict]:
    """The rows of a partition's input files, checked against the stage's ``input_schema``."""
    rows: list[dict] = []
    for uri in uris:
        table = storage.read_table(uri)
        if schema is not None:
            missing = [f.name for f in schema if f.name not in table.column_names]
            if missing:
                raise InputSchemaError(f"{uri}: missing column(s) {missing} of the stage's input schema "
                                       f"(columns: {table.column_names})")
        rows.extend(table.to_pylist())
    return rows


def run_task(stage: Stage, task: Task, engine: "Engine | None" = None,
             max_retries: int = 0) -> StageStats:
    """Read a partition's input files and run it (see ``run_rows_task``)."""
    started = time.time()
    faults.on_partition_start(stage.name, task.name)
    return run_rows_task(stage, task, _task_rows(stage, task), engine, max_retries, started_at=started)


def _task_rows(stage: Stage, task: Task, check_schema: bool = True) -> list[dict]:
    """A partition's input rows: Parquet files, or a source stage's planned read range."""
    if stage.kind == "source":
        return stage.read_source(task.inputs)
    if getattr(stage, "merges", False) and len(task.inputs) > 1:  # a redone partition (``redo_partitions``)
        rows = _read_rows(task.inputs[:1], stage.input_schema if check_schema else None)
        return stage.redo_rows(rows, task.inputs[1:])
    return _read_rows(task.inputs, stage.input_schema if check_schema else None)


def run_rows_task(stage: Stage, task: Task, rows: list[dict], engine: "Engine | None" = None,
                  max_retries: int = 0, inject_faults: bool = True, started_at: float | None = None) -> StageStats:
    """Run one partition to completion (outputs, then marker).  Never raises for bad rows.

    A Python exception inside the stage is retried ``max_retries`` times; after
    that the partition's rows are quarantined with the error and the partition
    is marked done, so one poisoned batch cannot stop a multi-day build.
    """
    attempt, error = 0, None
    while True:
        ctx = StageContext(stage.name, task.name, stage.config, engine)
        ctx.stats.rows_in = len(rows)
        try:
            out = list(stage.run(iter(rows), ctx))
            table = pa.Table.from_pylist(out, schema=stage.output_schema)
            break
        except EngineDead:
            raise  # not the rows' fault: the executor gets a new engine and retries the partition
        except Exception as e:  # noqa: BLE001 -- anything a stage raises is contained here
            if attempt >= max_retries:
                error = traceback.format_exc()
                log.error("stage %s partition %s failed %d time(s), quarantining its rows:\n%s",
                          stage.name, task.name, attempt + 1, error)
                ctx, table = _refuse_all(stage, task, rows, engine, "stage_error", error[-2000:])
                break
            attempt += 1
            log.warning("stage %s partition %s failed (attempt %d), retrying: %s",
                        stage.name, task.name, attempt, e)
    return _commit(stage, task, ctx, table, attempt, inject_faults, error, started_at)


def _refuse_all(stage: Stage, task: Task, rows: list[dict], engine: "Engine | None", reason: str,
                detail: str) -> tuple[StageContext, pa.Table]:
    """A context with every row quarantined for ``reason`` and an empty output table."""
    ctx = StageContext(stage.name, task.name, stage.config, engine)
    ctx.stats.rows_in = len(rows)
    for row in rows:
        ctx.quarantine(row, reason, detail)
    return ctx, stage.output_schema.empty_table()


def worker_identity() -> dict:
    """Where a partition ran: host, process and (under Ray) the node id."""
    ident = {"host": socket.gethostname(), "pid": os.getpid()}
    ray = sys.modules.get("ray")  # imported only when running under Ray
    try:
        if ray is not None and ray.is_initialized():
            ident["ray_node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 -- provenance only; never fail a partition over it
        pass
    return ident


def _commit(stage: Stage, task: Task, ctx: StageContext, table: pa.Table, attempt: int = 0,
            inject_faults: bool = True, error: str | None = None, started_at: float | None = None) -> StageStats:
    """Write a finished partition: data, quarantine and side outputs, then the marker.
    ``started_at`` (epoch s): when the worker took the partition, before reading its input;
    the marker's ``started_at`` less its inputs' ``finished_at`` is the scheduling delay."""
    ctx.stats.retries = attempt
    ctx.stats.rows_out = table.num_rows
    storage.write_table(task.data_uri(), table)
    qt = ctx.quarantine_table()
    if qt.num_rows:
        storage.write_table(task.quarantine_uri(), qt)
    for side, (schema, side_rows) in ctx.side_outputs().items():
        storage.write_table(task.side_uri(side), pa.Table.from_pylist(side_rows, schema=schema))
    if inject_faults:
        faults.on_data_written(stage.name)
    stats = ctx.close()
    marker = {
        "stage": stage.name, "partition": task.name, "stage_hash": task.stage_hash,
        "inputs": list(task.inputs), "finished_at": time.time(), "stats": stats.to_dict(),
        "worker": worker_identity(),
    }
    if started_at is not None:
        marker["started_at"] = round(started_at, 6)
    if error:
        marker["error"] = error
    storage.write_json(task.marker_uri(), marker)
    return stats


def _keep_failure(stage: Stage, task: Task, rows: list[dict], engine: "Engine | None", step: str,
                  results: list | None = None, error: str | None = None) -> StageStats:
    """A ``prepare``/``finish`` that raised: quarantine the partition with the traceback
    (in each quarantine row's detail and in the marker) and keep what the engine
    produced in ``failed/<part>.json``, instead of generating it all again.  ``error``:
    the traceback when it was taken earlier (a request iterator that raised mid-stream)."""
    error = error or traceback.format_exc()
    log.error("stage %s partition %s: %s() failed; its rows are quarantined (traceback in the marker):\n%s",
              stage.name, task.name, step, error)
    ctx, table = _refuse_all(stage, task, rows, engine, f"{step}_error", error[-2000:])
    if results:
        storage.write_json(storage.join(task.out_dir, "failed", f"{task.name}.json"),
                           {"step": step, "error": error, "results": [asdict(r) for r in results]})
    return _commit(stage, task, ctx, table, error=error)


def run_engine_tasks(stage: EngineStage, tasks: list[Task], engine: "Engine", max_retries: int = 0,
                     on_start=None, on_done=None) -> StageStats:
    """Partitions of an engine stage streamed through one continuously fed engine; their
    summed stats (``iter_engine_tasks`` does the work and says how)."""
    total = StageStats()
    for task, stats in iter_engine_tasks(stage, tasks, engine, max_retries, on_start):
        total.merge(stats)
        if on_done:
            on_done(task)
    return total


@dataclass
class _Staged:
    """A partition whose requests are in the stream: what ``finish`` and the commit need, and
    the traceback of its request iterator if that raised."""
    task: Task
    rows: list[dict]
    ctx: StageContext
    state: object
    started: float
    error: str | None = None

    def draw(self, requests) -> Iterator:
        """The requests as the engine draws them; an exception while building them ends the
        batch and is kept (the partition is quarantined with it), never raised into the stream."""
        try:
            yield from requests
        except Exception:  # noqa: BLE001 -- a stage bug: quarantined with its traceback, as an eager prepare's is
            self.error = traceback.format_exc()


def iter_engine_tasks(stage: EngineStage, tasks: list[Task], engine: "Engine", max_retries: int = 0,
                      on_start=None) -> Iterator[tuple[Task, StageStats]]:
    """Partitions of an engine stage streamed through one continuously fed engine, each
    yielded (with its stats) as soon as its marker is written, so a caller (an engine
    actor, ``pipeline.run.engine_pool``) can tell the scheduler at once.

    Partition i+1's requests enter the engine while partition i's last
    sequences finish (``Engine.generate_stream``); each partition is still
    written and marked on its own as soon as its results are complete.  The
    requests ``prepare`` returns may be an iterator building them as the engine
    draws them (``EngineStage.prepare``).  A partition whose ``prepare`` (its
    iterator included) or ``finish`` raises is quarantined with the
    traceback (``_keep_failure``): the stage's code is deterministic, so a
    retry would only generate everything again to fail the same way.  If the
    stream fails otherwise, the partitions not yet written go through
    ``run_task`` (retries, then quarantine).  A dead engine (``EngineDead``)
    is raised: its partitions are retried on a new engine by the executor,
    never quarantined.
    """
    if not stage.streams:  # several dependent rounds per partition (a judge's retries): one at a time
        for task in tasks:
            if on_start:
                on_start(task)
            yield task, run_task(stage, task, engine, max_retries)
        return
    staged: deque = deque()
    refused: deque = deque()  # (task, stats) of partitions whose prepare raised: yielded with the next results

    def batches():
        for task in tasks:
            started = time.time()  # taken into the stream (partitions of one call queue behind each other)
            if on_start:
                on_start(task)
            faults.on_partition_start(stage.name, task.name)
            rows = _read_rows(task.inputs, stage.input_schema)
            ctx = StageContext(stage.name, task.name, stage.config, engine)
            ctx.stats.rows_in = len(rows)
            try:
                state, requests = stage.prepare(iter(rows), ctx)
            except Exception:  # noqa: BLE001 -- kept: quarantined with its traceback, never redone
                refused.append((task, _keep_failure(stage, task, rows, engine, "prepare")))
                continue
            entry = _Staged(task, rows, ctx, state, started)
            staged.append(entry)
            yield entry.draw(requests)

    done: set[str] = set()
    try:
        for results in engine.generate_stream(batches()):
            while refused:
                done.add(refused[0][0].name)
                yield refused.popleft()
            entry = staged.popleft()
            task, rows, ctx, state, started = entry.task, entry.rows, entry.ctx, entry.state, entry.started
            if entry.error is not None:  # its request iterator raised: the requests drawn before are dropped
                done.add(task.name)
                yield task, _keep_failure(stage, task, rows, engine, "prepare", error=entry.error)
                continue
            try:
                table = pa.Table.from_pylist(list(stage.finish(state, results, ctx)), schema=stage.output_schema)
            except Exception:  # noqa: BLE001 -- kept with the engine's results, not regenerated
                stats = _keep_failure(stage, task, rows, engine, "finish", results)
            else:
                stats = _commit(stage, task, ctx, table, started_at=started)
            done.add(task.name)
            yield task, stats
        while refused:
            done.add(refused[0][0].name)
            yield refused.popleft()
    except EngineDead:
        raise
    except Exception as e:  # noqa: BLE001 -- the stream failed mid-way (not a dead engine)
        log.error("stage %s: engine stream failed (%s); finishing partitions one by one", stage.name, e)
        for task in tasks:
            if task.name in done:
                continue
            if refused and refused[0][0] is task:
                yield refused.popleft()
            elif not completed(task):
                yield task, run_task(stage, task, engine, max_retries)


def attempts_uri(task: Task) -> str:
    return storage.join(task.out_dir, "attempts", f"{task.name}.json")


def record_attempt(task: Task) -> int:
    """Count a worker starting this partition (kept across worker deaths)."""
    n = attempts(task) + 1
    storage.write_json(attempts_uri(task), {"attempts": n})
    return n


def attempts(task: Task) -> int:
    return (read_marker(attempts_uri(task)) or {}).get("attempts", 0)


def quarantine_partition(stage: Stage, task: Task, reason: str, detail: str) -> StageStats:
    """Give up on a partition whose workers kept dying: its rows go to quarantine."""
    ctx, table = _refuse_all(stage, task, _task_rows(stage, task, False), None, reason, detail)
    return _commit(stage, task, ctx, table, inject_faults=False)


def stage_totals(out_dir: str) -> StageStats:
    """Sum the stats of every completed partition (this run's and earlier ones)."""
    total = StageStats()
    for uri in storage.list_files(storage.join(out_dir, "markers"), ".json"):
        m = read_marker(uri)
        if m:
            total.merge(StageStats.from_dict(m["stats"]))
    return total
