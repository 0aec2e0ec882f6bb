"""A source stage as ordinary partition tasks: the driver plans, workers read.

1. **Plan.**  The stage lists its read ranges (``Stage.plan_sources``: byte
   ranges of JSONL files, row slices of Parquet files and datasets) without
   opening an image.  The plan is kept in ``<stage>/plan.json`` under the
   stage hash, so a rerun finds its partitions without reading any source:
   finished ranges are skipped unread.  (Sources are inputs of a config, as
   before: a changed file under the same config is not noticed; ``--restart``
   or a config change redoes the stage.)
2. **Run.**  Unfinished ranges go to the executor like a row stage's
   partitions: on Ray each worker reads its range, validates, decodes and
   writes its output and marker itself (``runner.run_task``).
3. **Redo.**  With every range done, the stage may name partitions to run
   again with other inputs (``Stage.redo_sources``; ingest: rows whose key an
   earlier range holds).  Its old marker is removed first; it is done when its
   marker records those inputs, so a rerun redoes nothing twice.

A merging row stage (``RowStage.merges``: dedup) runs the same way over its input
partitions (``run_merging``), with ``redo_partitions`` in place of ``redo_sources``.
"""
from __future__ import annotations

import logging
from typing import Callable

from pipeline.files import storage
from pipeline.run.runner import Task, completed, marker_uri, read_marker
from pipeline.core.stage import Stage, StageStats

log = logging.getLogger("pipeline")


def plan_uri(out_dir: str) -> str:
    return storage.join(out_dir, "plan.json")


def planned_partitions(stage: Stage, out_dir: str, stage_hash: str) -> list[tuple[str, tuple[str, ...]]]:
    """The stage's (name, inputs) list: the kept plan when it has this stage hash, else a new one.

    ``run.partition_rows`` is outside the stage hash (the data does not depend on it), so a
    resumed run keeps the partitions it started with, whatever the setting or the workers
    now; a changed setting is only noted (``--restart`` re-plans).  The plan records the
    setting and, where the stage says (``plan.rows``), the size it resolved to."""
    setting = stage.pipeline_config.run.partition_rows
    kept = read_marker(plan_uri(out_dir))
    if kept and kept.get("stage_hash") == stage_hash:
        if "partition_rows" in kept and kept["partition_rows"] != setting:
            log.warning("%s: keeping the plan this work folder started with (run.partition_rows: %s, %s rows "
                        "per partition), not %s; --restart re-plans", stage.name, kept["partition_rows"],
                        kept.get("rows", "?"), setting)
        return [(name, tuple(inputs)) for name, inputs in kept["partitions"]]
    planned = stage.plan_sources()
    storage.write_json(plan_uri(out_dir), {"stage": stage.name, "stage_hash": stage_hash,
                                           "partition_rows": setting, "rows": getattr(planned, "rows", None),
                                           "partitions": [[name, list(inputs)] for name, inputs in planned]})
    return planned


def _done_with(task: Task) -> bool:
    """Done with exactly these inputs (a redone partition's marker records its new inputs)."""
    m = read_marker(task.marker_uri())
    return bool(m) and m.get("stage_hash") == task.stage_hash and m.get("inputs") == list(task.inputs)


def run_source(stage: Stage, out_dir: str, executor: Callable[[], object] | None = None
               ) -> tuple[StageStats, int, int]:
    """Plan, run the unfinished ranges, redo what the stage asks; returns (stats of the
    partitions run now, partitions, partitions already done).  ``executor`` makes the
    executor (called only when there is work); default: this process."""
    h = stage.pipeline_config.stage_hash(stage.name)
    planned = planned_partitions(stage, out_dir, h)
    return run_and_redo(stage, out_dir, planned, stage.redo_sources, executor)


def run_merging(stage: Stage, tasks: list[Task], out_dir: str, executor: Callable[[], object] | None = None
                ) -> tuple[StageStats, int, int]:
    """A merging row stage (``RowStage.merges``) over its planned partition tasks: all of them,
    then those ``redo_partitions`` names again; returns what ``run_source`` does."""
    return run_and_redo(stage, out_dir, [(t.name, t.inputs) for t in tasks], stage.redo_partitions, executor)


def run_and_redo(stage: Stage, out_dir: str, planned: list[tuple[str, tuple[str, ...]]],
                 redo_fn: Callable[[list, str], dict], executor: Callable[[], object] | None = None
                 ) -> tuple[StageStats, int, int]:
    """Run the planned partitions not done yet, then the ones ``redo_fn(planned, out_dir)`` names
    (with their new inputs) that are not done with those inputs."""
    h = stage.pipeline_config.stage_hash(stage.name)
    tasks = [Task(stage.name, name, inputs, out_dir, h) for name, inputs in planned]
    pending = [t for t in tasks if not completed(t)]  # a partition redone earlier is done too
    ran: set[str] = set()
    runner = None

    def run(batch: list[Task]) -> None:
        nonlocal runner
        if batch:
            if runner is None:
                from pipeline.run.executors import LocalExecutor

                runner = executor() if executor else LocalExecutor(stage.pipeline_config)
            runner.run(stage.name, batch)
            ran.update(t.name for t in batch)

    run(pending)
    redo = [Task(stage.name, name, inputs, out_dir, h) for name, inputs in redo_fn(planned, out_dir).items()]
    redo = [t for t in redo if not _done_with(t)]
    for t in redo:  # unfinished until redone: the executor's retry and quarantine accounting applies
        storage.remove(t.marker_uri())
    run(redo)
    total = StageStats()
    for name in sorted(ran):  # each partition's final stats (a redone one counted once)
        m = read_marker(marker_uri(out_dir, name))
        if m:
            total.merge(StageStats.from_dict(m["stats"]))
    return total, len(tasks), len(tasks) - len(pending)
