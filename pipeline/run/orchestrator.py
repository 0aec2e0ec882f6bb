"""Whole-pipeline and single-stage runs: planning, resume, summaries, report.

The stage graph comes from the stage classes (``pipeline.core.graph``); what runs
a stage follows from its ``kind``.  For every stage the orchestrator lists
the input partitions, skips those whose marker carries the current stage
hash, hands the rest to the executor, and prints a summary built from *all*
markers (so a resumed run reports the whole stage, not just what it redid).
"""
from __future__ import annotations

import os
import time

from pipeline.files import storage
from pipeline.config.settings import ConfigError, PipelineConfig
from pipeline.core.graph import input_stages, make_stage
from pipeline.files.ownership import Folder
from pipeline.run.preflight import check_model, check_ray_address, check_sources, check_storage, ensure_model
from pipeline.run.folders import claim_targets
from pipeline.run.runner import Task, completed, invalidate_if_changed, stage_totals
from pipeline.run.source_tasks import run_merging, run_source  # noqa: F401 -- planned here, read on workers
from pipeline.core.stage import Stage, StageStats
from pipeline.run.terminal import echo

def stage_dir(config: PipelineConfig, stage: str) -> str:
    return storage.join(config.run.work_dir, stage)


def whole(stage: Stage) -> bool:
    """Run as one piece by the driver, not partition by partition as inputs appear: a source
    stage, a dataset stage, a merging row stage (``RowStage.merges``)."""
    return stage.kind in ("source", "dataset") or getattr(stage, "merges", False)


def dataset_stats_uri(config: PipelineConfig, stage: str) -> str:
    """A dataset stage's statistics of its last run in a whole build (it has no partition markers)."""
    return storage.join(stage_dir(config, stage), "stats.json")


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


def stage_line(stage: Stage, total: StageStats, ran: StageStats, n_tasks: int, n_skipped: int,
               wall_s: float) -> str:
    """The line a stage ends with in the terminal: partitions, rows, quarantine, time (the
    stage's own metrics come from ``Stage.summarize`` / ``summary_line``)."""
    c = ran.counters
    q = ", ".join(f"{k}: {v}" for k, v in sorted(total.quarantined.items())) or "none"
    unit = stage.units if stage.kind == "dataset" else "partitions"
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


def clear_work_dir(work_dir: str) -> None:
    """``--restart``: what the pipeline wrote in the work folder goes, except ``logs/``, which
    holds the log this very build is writing (removing it would unlink the open file).  Files
    it did not write stay where they are (``pipeline.files.ownership``)."""
    if not storage.exists(work_dir):
        return
    folder = Folder.claim(work_dir, "work", "run.work_dir")
    for rel in sorted(folder.entries):
        if rel != "logs/":
            folder.remove(rel)


def run_pipeline(config: PipelineConfig, restart: bool = False) -> dict:
    """Run every enabled stage; returns the run report.

    Under Ray, partitions flow through the graph without stage barriers (``run_graph``);
    the local executor, one process with one engine, runs stage after stage."""
    from pipeline.run.report import write_report

    started = time.time()
    check_sources(config)
    check_storage(config)
    check_ray_address(config)
    claim_targets(config)  # a no-op after the CLI's claim; callers from Python get the same checks
    engine = any(make_stage(s, config).kind == "engine" for s in config.run.stages)
    on_ray = config.executor.kind == "ray"
    if engine:
        ensure_model(config)
        if not on_ray:
            check_model(config)
    if restart:
        clear_work_dir(config.run.work_dir)
    for name in config.run.stages:
        invalidate_if_changed(stage_dir(config, name), config.stage_hash(name))
    measured: dict = {}
    if on_ray:  # the model pre-flight runs while the engines load (a failure still ends the run)
        timings = run_graph(config, check_model if engine else None, measured)
    else:
        timings = run_stages(config)
    return write_report(config, timings, started=started, extra=measured)


def run_stages(config: PipelineConfig) -> dict[str, float]:
    """Stage after stage: each waits for the previous one everywhere.  Wall time per stage."""
    from pipeline.run.executors import make_executor

    executor = None
    timings: dict[str, float] = {}
    for name in config.run.stages:
        stage = make_stage(name, config)
        if whole(stage):
            timings[name] = _run_whole(config, stage)
            continue
        t0 = time.perf_counter()
        out_dir = stage_dir(config, name)
        tasks = plan(config, name, [stage_dir(config, s) for s in input_stages(config, name)], out_dir)
        pending = [t for t in tasks if not completed(t)]
        ran = StageStats()
        if pending:
            executor = executor or make_executor(config)
            ran = executor.run(name, pending)
        timings[name] = time.perf_counter() - t0
        echo(stage_line(stage, stage_totals(out_dir), ran, len(tasks), len(tasks) - len(pending), timings[name]))
    return timings


def run_graph(config: PipelineConfig, preflight=None, measured: dict | None = None) -> dict[str, float]:
    """On Ray: source stages first, then every row and engine partition as soon as its input
    is done (``pipeline.run.scheduler``), engine stages sharing a model fed by one pool, then the
    dataset stages.  Wall time per stage: first partition dispatched -> last one done; for
    the stage whose engines start first, from when this starts Ray, as a stage-by-stage run
    counts its first engine stage.  ``preflight(config)`` runs while those engines load.
    ``measured`` gets the object store's peak over the run (``object_store``: ``store_watch``)."""
    from pipeline.run.executors import RayExecutor
    from pipeline.run.store_watch import ObjectStoreWatch

    began = time.monotonic()
    RayExecutor(config)  # connects to (or starts) Ray
    watch = ObjectStoreWatch()
    watch.start()
    try:
        timings = _graph(config, preflight, began)
    finally:
        summary = watch.stop()
    if measured is not None:
        measured["object_store"] = summary
    return timings


def _graph(config: PipelineConfig, preflight, began: float) -> dict[str, float]:
    """``run_graph``'s work once Ray is up."""
    from pipeline.run.scheduler import GraphScheduler, plan_graph, start_pools

    stages = {name: make_stage(name, config) for name in config.run.stages}
    # the first engine stage with no output yet will surely run: its model loads while the
    # sources are read (later ones, e.g. a judge on another model, start when work is ready)
    fresh = [n for n, s in stages.items() if s.kind == "engine"
             and not storage.list_files(storage.join(stage_dir(config, n), "markers"), ".json")]
    pools = start_pools(config, fresh[:1], began)
    timings: dict[str, float] = {}
    lines: list[str] = []  # summaries wait for the progress bar to close: they would break its line

    def finished(run) -> None:
        timings[run.name] = run.ended - run.started if run.started else 0.0
        lines.append(stage_line(stages[run.name], stage_totals(stage_dir(config, run.name)), run.ran,
                               len(run.tasks), run.skipped, timings[run.name]))

    try:
        if preflight:
            preflight(config)
        sources = [s for s in stages.values() if s.kind == "source" or getattr(s, "merges", False)]
        for stage in sources:  # and merging row stages, which read only these (``_before_graph``)
            _before_graph(config, stage, {s.name for s in sources})
            timings[stage.name] = _run_whole(config, stage)
        names = {s.name: [os.path.basename(u)[: -len(".parquet")] for u in
                          storage.list_files(storage.join(stage_dir(config, s.name), "data"), ".parquet")]
                 for s in sources}
        runs, deps = plan_graph(config, names)
        GraphScheduler(config, runs, deps, on_stage_done=finished, pools=pools).run()
        for line in lines:
            echo(line)
    finally:
        for pool in pools.values():
            pool.close()
    for stage in stages.values():
        if stage.kind == "dataset":
            timings[stage.name] = _run_whole(config, stage)
    return timings


def _before_graph(config: PipelineConfig, stage: Stage, first: set[str]) -> None:
    """A merging row stage runs before the graph, so it may read only stages that do too."""
    late = [s for s in input_stages(config, stage.name) if s not in first]
    if late:
        raise ConfigError(f"stage {stage.name} merges across all its partitions, so it runs before the "
                          f"partition graph and cannot read {late}: place it right after the source stages")


def _run_whole(config: PipelineConfig, stage: Stage) -> float:
    """A source stage (planned here, read by the executor's workers), a merging row stage or a
    dataset stage; prints its summary, returns its wall time (a dataset stage's counters go to its
    ``stats.json``, which the run report reads)."""
    t0 = time.perf_counter()
    if stage.kind == "source":
        inputs, out_dir = [], stage_dir(config, stage.name)
    elif stage.kind == "row":  # merging
        inputs = [stage_dir(config, s) for s in input_stages(config, stage.name)]
        out_dir = stage_dir(config, stage.name)
    else:
        inputs, out_dir = [stage_dir(config, s) for s in input_stages(config, stage.name)], config.run.output_dir
    ran, total, n_tasks, n_skipped = _whole(config, stage, inputs, out_dir)
    wall = time.perf_counter() - t0
    if stage.kind == "dataset":  # no markers: its counters (write's time breakdown) for the run report
        storage.write_json(dataset_stats_uri(config, stage.name), ran.to_dict())
    echo(stage_line(stage, total, ran, n_tasks, n_skipped, wall))
    return wall


def _whole(config: PipelineConfig, stage: Stage, inputs: list[str], out_dir: str
           ) -> tuple[StageStats, StageStats, int, int]:
    """Run a source stage into ``out_dir``, or a dataset stage over ``inputs``; returns (stats of
    what ran now, the stage's totals, its units of work, those already done) for ``stage_line``."""
    from pipeline.run.executors import make_executor

    if stage.kind == "source":
        ran, n_tasks, n_skipped = run_source(stage, out_dir, lambda: make_executor(config))
        return ran, stage_totals(out_dir), n_tasks, n_skipped
    if stage.kind == "row":  # merging: all its partitions, then the ones it redoes
        tasks = plan(config, stage.name, inputs, out_dir)
        ran, n_tasks, n_skipped = run_merging(stage, tasks, out_dir, lambda: make_executor(config))
        return ran, stage_totals(out_dir), n_tasks, n_skipped
    ran = stage.run_dataset(inputs, out_dir)
    return ran, ran, int(ran.counters.get(stage.units, 0)), 0


class NothingToPassOn(Exception):
    """A stage run alone quarantined every row it read, so the next stage would get nothing.

    The CLI ends with this message and exit status 1.  Not a ConfigError: the stage did run,
    and its quarantine (with every row's reason) is there to read."""

    def __init__(self, stage: str, totals: StageStats) -> None:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(totals.quarantined.items()))
        rows = "row" if totals.rows_in == 1 else "rows"
        super().__init__(f"{stage}: all {totals.rows_in} {rows} quarantined ({reasons}); nothing to pass on")


def run_stage(config: PipelineConfig, stage: str, input_path: str, output_dir: str) -> StageStats:
    """Run one stage alone on any Parquet input (a file or a folder of files).

    Every kind of stage ends with the lines a whole run prints for it (its partition counts,
    then its own summary line).  Raises ``NothingToPassOn`` when every row was quarantined."""
    step = make_stage(stage, config)
    claim_targets(config, stage, output_dir)  # a no-op after the CLI's claim
    t0 = time.perf_counter()
    if step.kind in ("source", "dataset"):
        ran, totals, n_tasks, n_skipped = _whole(config, step, [input_path], output_dir)
    else:
        ran, totals, n_tasks, n_skipped = _run_partitions(config, step, input_path, output_dir)
    echo(stage_line(step, totals, ran, n_tasks, n_skipped, time.perf_counter() - t0))
    # the stage's own line, as a whole run's summary has it (policy accuracy, grounding requests, ...)
    summary = step.summarize(totals.counters)
    line = step.summary_line(summary) if summary else None
    if line:
        echo(line)
    if totals.rows_in and not totals.rows_out and sum(totals.quarantined.values()) >= totals.rows_in:
        raise NothingToPassOn(stage, totals)
    return ran


def _run_partitions(config: PipelineConfig, step: Stage, input_path: str, output_dir: str
                    ) -> tuple[StageStats, StageStats, int, int]:
    """A row or engine stage over the Parquet files at ``input_path``: one task per file,
    finished ones skipped; returns what ``_whole`` does."""
    from pipeline.run.executors import make_executor

    if os.path.isdir(input_path) or "://" in input_path:
        data = storage.join(input_path, "data")
        files = storage.list_files(data if storage.exists(data) else input_path, ".parquet")
    else:
        files = [input_path]
    if not files:
        raise ConfigError(f"--input: no .parquet files found at {input_path}")
    h = config.stage_hash(step.name)
    invalidate_if_changed(output_dir, h)
    tasks = [Task(step.name, os.path.basename(f)[: -len(".parquet")], (f,), output_dir, h) for f in files]
    if getattr(step, "merges", False):
        ran, n_tasks, n_skipped = run_merging(step, tasks, output_dir, lambda: make_executor(config))
        return ran, stage_totals(output_dir), n_tasks, n_skipped
    pending = [t for t in tasks if not completed(t)]
    ran = make_executor(config).run(step.name, pending) if pending else StageStats()
    return ran, stage_totals(output_dir), len(tasks), len(tasks) - len(pending)
