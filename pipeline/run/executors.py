"""Executors: how a stage's partitions get scheduled.  Stages never know which.

* ``LocalExecutor`` runs partitions in this process (one engine, created once).
* ``RayExecutor`` runs them on Ray (``pipeline.run.scheduler``): engine stages on a
  pool of long-lived actors each holding one ``vllm.LLM`` (``pipeline.run.engine_pool``),
  everything else as Ray tasks.  The unit handed to a worker is a partition
  *descriptor*; the worker reads its input, writes its output and marker itself,
  so results never travel through the driver and a partition's output is durable
  as soon as it finishes.  A whole build on Ray goes through the scheduler
  directly (``orchestrator.run_graph``), with no barrier between stages.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Sequence

from pipeline.environ import environ
from pipeline.run.runner import Task, run_engine_tasks, run_task
from pipeline.core.stage import StageStats
from pipeline.run.terminal import progress as _progress

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.settings import PipelineConfig

log = logging.getLogger("pipeline")


class LocalExecutor:
    """Partitions one after the other in this process."""

    def __init__(self, config: "PipelineConfig") -> None:
        self.config = config

    def run(self, stage_name: str, tasks: Sequence[Task]) -> StageStats:
        from pipeline.engine.engine import get_engine
        from pipeline.core.graph import make_stage

        stage = make_stage(stage_name, self.config)
        retries = self.config.executor.max_retries
        if stage.kind == "engine" and tasks:
            # one engine, fed partition after partition without draining in between
            bar = _progress(None, len(tasks), stage_name)
            try:
                return self._run_engine(stage, list(tasks), retries, on_done=lambda _task: bar.update(1))
            finally:
                bar.close()
        total = StageStats()
        for task in _progress(tasks, len(tasks), stage_name):
            total.merge(run_task(stage, task, None, retries))
        return total

    def _run_engine(self, stage, tasks: list[Task], retries: int, on_done) -> StageStats:
        """Stream the tasks through the engine; when the engine dies, build a new one and
        redo the partitions not yet written (at most ``retries`` times, then fail the run:
        a rerun resumes).  A dead engine never quarantines rows."""
        from pipeline.engine.engine import drop_engine, get_engine
        from pipeline.engine.death import EngineDead
        from pipeline.run.runner import completed

        total = StageStats()
        for attempt in range(retries + 1):
            engine = get_engine(stage.engine_config())
            try:
                total.merge(run_engine_tasks(stage, tasks, engine, retries, on_done=on_done))
                return total
            except EngineDead as e:
                drop_engine(engine)
                tasks = [t for t in tasks if not completed(t)]
                log.error("stage %s: the vLLM engine died (%s); %d partition(s) left, starting a new "
                          "engine (attempt %d of %d)", stage.name, e, len(tasks), attempt + 1, retries + 1)
                if attempt == retries:
                    raise RuntimeError(f"stage {stage.name}: the vLLM engine died {retries + 1} times; "
                                       "rerun to resume") from e
        return total


class RayExecutor:
    """Partition descriptors on Ray (``pipeline.run.scheduler``); local Ray or a cluster address."""

    def __init__(self, config: "PipelineConfig") -> None:
        import ray

        self.config = config
        ex = config.executor
        # no address: a fresh Ray of our own ("local"), never some other Ray that
        # happens to run on this machine
        address = ex.address or os.environ.get("RAY_ADDRESS") or "local"
        runtime_env = dict(ex.runtime_env)
        env = {**_worker_env(), **runtime_env.pop("env_vars", {})}
        if ray.is_initialized():
            return
        if address != "local":
            runtime_env["env_vars"] = env
        # A local Ray's workers inherit the environment of the raylet that ray.init starts
        # here, so the variables go there rather than into the job's runtime_env: a job
        # runtime_env, even env_vars alone, makes Ray start fresh workers for the first
        # tasks and leave the ones it prestarted idle (2 s before a stage's first task runs
        # on 2 cores, the same for 1 worker or many: most of what kept the write from scaling)
        with environ(env if address == "local" else {}):
            ray.init(address=address, num_cpus=ex.num_cpus if address == "local" else None,
                     include_dashboard=False, log_to_driver=True,
                     logging_level=logging.WARNING, configure_logging=True,
                     runtime_env=runtime_env or None)
        # ray.init sets its own SIGTERM handler (exit from inside a Ray call, Ray torn down
        # under the driver): a build stopped by a signal shuts down by pipeline.run.signals
        from pipeline.run import signals
        signals.reclaim()

    def run(self, stage_name: str, tasks: Sequence[Task]) -> StageStats:
        """Run one stage's tasks (``pipeline.run.scheduler``: an engine pool for an engine stage,
        Ray tasks otherwise); when workers die past the retries, the partitions that
        exhausted their attempts are quarantined and the rest go on."""
        from pipeline.core.graph import stage_class
        from pipeline.run.scheduler import GraphScheduler, StageRun

        kind = stage_class(stage_name).kind
        # a source stage's partitions are planned read ranges, run on CPU workers like a row stage's
        run = StageRun(stage_name, "row" if kind == "source" else kind, list(tasks))
        scheduler = GraphScheduler(self.config, [run], {}, bar=stage_name)
        try:
            scheduler.run()
        finally:
            scheduler.close()
        return run.ran


def _worker_env() -> dict:
    keep = ("VLLM_CPU_KVCACHE_SPACE", "MMPR_NO_PROGRESS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
            "VLLM_LOGGING_LEVEL", "OMP_NUM_THREADS", "MMPR_FAULT", "MMPR_FAULT_ONCE", "MMPR_FAULT_HOLD_S",
            "MMPR_FAULT_RELEASE")
    keep += ("MMPR_STAGE_PACKAGES",)  # workers must find the same stages as the driver
    # where the object store is (MinIO, a region); credentials are the nodes' own
    keep += ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def make_executor(config: "PipelineConfig"):
    if config.executor.kind == "ray":
        return RayExecutor(config)
    return LocalExecutor(config)
