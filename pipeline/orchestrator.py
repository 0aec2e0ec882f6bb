"""Whole-pipeline and single-stage runs: planning, resume, summaries, report.

The stage graph comes from the stage classes (``pipeline.graph``); what runs
a stage follows from its ``kind``.  For every stage the orchestrator lists
the input partitions, skips those whose marker carries the current stage
hash, hands the rest to the executor, and prints a summary built from *all*
markers (so a resumed run reports the whole stage, not just what it redid).
"""
from __future__ import annotations

import os
import time

from pipeline import storage
from pipeline.config import ConfigError, PipelineConfig
from pipeline.graph import input_stages, make_stage
from pipeline.preflight import check_model, check_ray_address, check_sources, check_storage, ensure_model
from pipeline.runner import Task, completed, invalidate_if_changed, stage_totals
from pipeline.source_tasks import run_source  # noqa: F401 -- source stages: planned here, read on workers
from pipeline.stage import Stage, StageStats
from pipeline.terminal import echo

def stage_dir(config: PipelineConfig, stage: str) -> str:
    return storage.join(config.run.work_dir, stage)


def plan(config: PipelineConfig, stage: str, input_dirs: list[str], out_dir: str) -> list[Task]:
    """One task per input partition; names are prefixed when several stages feed one."""
    h = config.stage_hash(stage)
    tasks = []
    for in_dir in input_dirs:
        prefix = f"{os.path.basename(in_dir.rstrip('/'))}-" if len(input_dirs) > 1 else ""
        for uri in storage.list_files(storage.join(in_dir, "data"), ".parquet"):
            name = prefix + os.path.basename(uri)[: -len(".parquet")]
            tasks.append(Task(stage, name, (uri,), out_dir, h))
    return tasks


def summarize(stage: Stage, total: StageStats, ran: StageStats, n_tasks: int, n_skipped: int,
              wall_s: float) -> str:
    c = ran.counters
    q = ", ".join(f"{k}: {v}" for k, v in sorted(total.quarantined.items())) or "none"
    unit = "shards" if stage.kind == "dataset" else "partitions"
    stage = stage.name
    parts = [f"[{stage}] {unit} {n_tasks} ({n_skipped} already done)",
             f"rows in {total.rows_in} out {total.rows_out}",
             f"quarantined {sum(total.quarantined.values())} ({q})"]
    tokens = c.get("tokens_generated", 0)
    if tokens:
        parts.append(f"tokens generated {int(tokens)} ({tokens / max(wall_s, 1e-9):.0f} tok/s this run)")
    pairs = {k.removeprefix("pairs."): v for k, v in total.counters.items() if k.startswith("pairs.")}
    if pairs:
        parts.append("pairs " + ", ".join(f"{k}: {v}" for k, v in sorted(pairs.items())))
    parts.append(f"{ran.rows_in / max(wall_s, 1e-9):.1f} rows/s, {wall_s:.1f} s")
    return " | ".join(parts)


def run_pipeline(config: PipelineConfig, restart: bool = False) -> dict:
    """Run every enabled stage in order; returns the run report."""
    from pipeline.executors import make_executor
    from pipeline.report import write_report

    check_sources(config)
    check_storage(config)
    check_ray_address(config)
    if any(make_stage(s, config).kind == "engine" for s in config.run.stages):
        ensure_model(config)
        check_model(config)
    if restart:
        storage.remove_tree(config.run.work_dir)
    executor = None
    timings: dict[str, float] = {}
    for name in config.run.stages:
        stage = make_stage(name, config)
        t0 = time.perf_counter()
        out_dir = stage_dir(config, name)
        invalidate_if_changed(out_dir, config.stage_hash(name))
        inputs = [stage_dir(config, s) for s in input_stages(config, name)]
        if stage.kind == "source":
            ran, n_tasks, n_skipped = run_source(stage, out_dir, lambda: make_executor(config))
        elif stage.kind == "dataset":
            ran = stage.run_dataset(inputs, config.run.output_dir)
            n_tasks, n_skipped = int(ran.counters.get("shards", 0)), 0
        else:
            tasks = plan(config, name, inputs, out_dir)
            pending = [t for t in tasks if not completed(t)]
            n_tasks, n_skipped = len(tasks), len(tasks) - len(pending)
            if pending:
                executor = executor or make_executor(config)
                ran = executor.run(name, pending)
            else:
                ran = StageStats()
        timings[name] = time.perf_counter() - t0
        total = ran if stage.kind == "dataset" else stage_totals(out_dir)
        echo(summarize(stage, total, ran, n_tasks, n_skipped, timings[name]))
    return write_report(config, timings)


def run_stage(config: PipelineConfig, stage: str, input_path: str, output_dir: str) -> StageStats:
    """Run one stage alone on any Parquet input (a file or a folder of files)."""
    from pipeline.executors import make_executor

    step = make_stage(stage, config)
    if step.kind == "source":
        return run_source(step, output_dir, lambda: make_executor(config))[0]
    if step.kind == "dataset":
        return step.run_dataset([input_path], output_dir)
    if os.path.isdir(input_path) or "://" in input_path:
        data = storage.join(input_path, "data")
        files = storage.list_files(data if storage.exists(data) else input_path, ".parquet")
    else:
        files = [input_path]
    if not files:
        raise ConfigError(f"--input: no .parquet files found at {input_path}")
    h = config.stage_hash(stage)
    invalidate_if_changed(output_dir, h)
    tasks = [Task(stage, os.path.basename(f)[: -len(".parquet")], (f,), output_dir, h) for f in files]
    pending = [t for t in tasks if not completed(t)]
    t0 = time.perf_counter()
    ran = make_executor(config).run(stage, pending) if pending else StageStats()
    echo(summarize(step, stage_totals(output_dir), ran, len(tasks), len(tasks) - len(pending),
                   time.perf_counter() - t0))
    return ran
