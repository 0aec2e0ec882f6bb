"""Executors: how a stage's partitions get scheduled.  Stages never know which.

* ``LocalExecutor`` runs partitions in this process (one engine, created once).
* ``RayExecutor`` runs them with Ray Data: ``map_batches`` over an actor pool
  where every actor holds one ``vllm.LLM`` (engine stages), or over CPU tasks
  (everything else).  The unit handed to a worker is a partition *descriptor*;
  the worker reads its input, writes its output and marker itself, so results
  never travel through the driver and a partition's output is durable as soon
  as it finishes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import TYPE_CHECKING, Sequence

from pipeline.runner import Task, run_engine_tasks, run_task
from pipeline.stage import StageStats
from pipeline.terminal import is_quiet
from pipeline.terminal import progress as _progress

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import PipelineConfig

log = logging.getLogger("pipeline")


class LocalExecutor:
    """Partitions one after the other in this process."""

    def __init__(self, config: "PipelineConfig") -> None:
        self.config = config

    def run(self, stage_name: str, tasks: Sequence[Task]) -> StageStats:
        from pipeline.engine import get_engine
        from pipeline.graph import make_stage

        stage = make_stage(stage_name, self.config)
        retries = self.config.executor.max_retries
        if stage.kind == "engine" and tasks:
            # one engine, fed partition after partition without draining in between
            bar = _progress(None, len(tasks), stage_name)
            try:
                return run_engine_tasks(stage, list(tasks), get_engine(stage.engine_config()), retries,
                                        on_done=lambda _task: bar.update(1))
            finally:
                bar.close()
        total = StageStats()
        for task in _progress(tasks, len(tasks), stage_name):
            total.merge(run_task(stage, task, None, retries))
        return total


class _EngineWorker:
    """A Ray Data actor holding one vLLM engine; runs whole partitions."""

    def __init__(self, stage_name: str, config: dict) -> None:
        from pipeline.config import PipelineConfig
        from pipeline.engine import Engine
        from pipeline.logs import setup_logging
        from pipeline.graph import make_stage

        setup_logging()
        self.config = PipelineConfig.model_validate(config)
        self.stage = make_stage(stage_name, self.config)
        self.engine = Engine(self.stage.engine_config())

    def __call__(self, batch: dict) -> dict:
        import json

        from pipeline.runner import record_attempt

        tasks = [Task.from_dict(json.loads(raw)) for raw in batch["task"]]
        stats = run_engine_tasks(self.stage, tasks, self.engine, self.config.executor.max_retries,
                                 on_start=record_attempt)
        return {"stats": [json.dumps(stats.to_dict())], "tasks": [len(tasks)]}


def _cpu_worker(batch: dict, stage_name: str, config: dict) -> dict:
    from pipeline.config import PipelineConfig
    from pipeline.logs import setup_logging
    from pipeline.graph import make_stage

    setup_logging()
    cfg = PipelineConfig.model_validate(config)
    return _run_batch(make_stage(stage_name, cfg), batch, cfg.executor.max_retries)


def _run_batch(stage, batch: dict, max_retries: int) -> dict:
    import json

    from pipeline.runner import record_attempt

    stats = []
    for raw in batch["task"]:
        task = Task.from_dict(json.loads(raw))
        record_attempt(task)
        stats.append(json.dumps(run_task(stage, task, None, max_retries).to_dict()))
    return {"stats": stats, "tasks": [1] * len(stats)}


class RayExecutor:
    """Ray Data over partition descriptors; local Ray or a cluster address."""

    def __init__(self, config: "PipelineConfig") -> None:
        import ray

        self.config = config
        ex = config.executor
        # no address: a fresh Ray of our own ("local"), never some other Ray that
        # happens to run on this machine
        address = ex.address or os.environ.get("RAY_ADDRESS") or "local"
        runtime_env = dict(ex.runtime_env)
        runtime_env["env_vars"] = {**_worker_env(), **runtime_env.get("env_vars", {})}
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=ex.num_cpus if address == "local" else None,
                     include_dashboard=False, log_to_driver=True,
                     logging_level=logging.WARNING, configure_logging=True,
                     runtime_env=runtime_env)
        ctx = ray.data.DataContext.get_current()
        # the terminal gets one bar per stage (ours, in _run_once); Ray Data's own bars and
        # progress log lines go with the rest of Ray's output (pipeline.terminal)
        ctx.enable_progress_bars = not is_quiet() and os.environ.get("MMPR_NO_PROGRESS") != "1"
        ctx.print_on_execution_start = False

    def run(self, stage_name: str, tasks: Sequence[Task]) -> StageStats:
        """Run the tasks; when workers die past Ray's retries, quarantine the partitions
        that exhausted their attempts and go on with the rest."""
        from pipeline.runner import attempts, completed, quarantine_partition
        from pipeline.graph import make_stage

        total = StageStats()
        limit = self.config.executor.max_retries + 1
        pending = list(tasks)
        for _ in range(limit + 1):
            if not pending:
                break
            try:
                total.merge(self._run_once(stage_name, pending))
            except Exception as e:  # noqa: BLE001 -- a worker died more often than Ray retries
                log.error("stage %s: workers failed (%s); checking partitions", stage_name,
                          str(e).splitlines()[0][:300])
                stage = make_stage(stage_name, self.config)
                for t in pending:
                    if not completed(t) and attempts(t) >= limit:
                        log.error("partition %s failed %d times: quarantining its rows", t.name, attempts(t))
                        total.merge(quarantine_partition(stage, t, "worker_died",
                                                         f"{attempts(t)} attempts: {str(e)[:1500]}"))
            pending = [t for t in pending if not completed(t)]
        if pending:
            raise RuntimeError(f"stage {stage_name}: {len(pending)} partition(s) could not be completed")
        return total

    def _run_once(self, stage_name: str, tasks: Sequence[Task]) -> StageStats:
        import json

        import ray
        from pipeline.graph import stage_class

        total = StageStats()
        cfg = self.config
        groups: list = []  # placement groups of this stage's engine replicas
        items = [{"task": json.dumps(t.to_dict())} for t in tasks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        resolved = cfg.resolved()
        if stage_class(stage_name).kind == "engine":
            eng = cfg.engine
            world = eng.tensor_parallel_size * eng.pipeline_parallel_size
            replicas = min(eng.replicas, -(-len(tasks) // eng.partitions_per_call))
            # a dead actor (OOM, node loss) is restarted and its partition retried
            remote: dict = {"max_restarts": -1, "max_task_retries": cfg.executor.max_retries}
            if world > 1:
                # vLLM's own Ray workers take the GPUs from a placement group
                remote["ray_remote_args_fn"] = _placement_group_fn(
                    world, eng.cpus_per_replica, "STRICT_PACK" if eng.pipeline_parallel_size == 1 else "PACK",
                    groups, replicas)
                num_gpus = 0
            else:
                num_gpus = eng.gpus_per_replica
            with _remote_args_without_replacement():
                ds = ds.map_batches(
                    _EngineWorker, fn_constructor_kwargs={"stage_name": stage_name, "config": resolved},
                    batch_size=eng.partitions_per_call,
                    compute=ray.data.ActorPoolStrategy(size=replicas),
                    num_gpus=num_gpus, num_cpus=eng.cpus_per_replica, **remote)
        else:
            with _remote_args_without_replacement():
                ds = ds.map_batches(
                    _cpu_worker, fn_kwargs={"stage_name": stage_name, "config": resolved},
                    batch_size=1, compute=ray.data.TaskPoolStrategy(size=cfg.executor.cpu_concurrency),
                    num_cpus=1, max_retries=cfg.executor.max_retries)
        ray.data.DataContext.get_current().max_errored_blocks = 0
        bar = _progress(total=len(tasks), desc=stage_name)
        try:
            for row in ds.iter_rows():
                total.merge(StageStats.from_dict(json.loads(row["stats"])))
                bar.update(row["tasks"])
        finally:
            bar.close()
            # the groups outlive their actors (they belong to this driver): free the GPUs
            # for the next engine stage
            for pg in groups:
                ray.util.remove_placement_group(pg)
        return total


@contextlib.contextmanager
def _remote_args_without_replacement():
    """Silence Ray 2.60's deprecation of ``**ray_remote_args``/``ray_remote_args_fn`` for our calls.

    Bounded ``max_restarts``/``max_task_retries``/``max_retries`` (the partition attempt
    accounting of ``RayExecutor.run`` relies on them; Ray Data's defaults retry forever) and
    the placement-group scheduling strategy have no named parameter in Ray 2.60; the warning
    says they go in Ray 2.64, so revisit this when the pin moves.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args(_fn)?` is deprecated")
        yield


def _placement_group_fn(world: int, cpus: float, strategy: str, groups: list, replicas: int):
    """Ray remote args for the engine replicas with TP*PP = ``world`` > 1 (as ray.data.llm does).

    Each replica's placement group has one GPU bundle per vLLM worker; the first also
    carries the actor's CPUs.  The actor reserves no GPU itself (num_gpus=0) and lands
    in bundle 0; vLLM finds the group (ray.util.get_current_placement_group(), hence
    capture_child_tasks) and its Ray executor starts one worker with 1 GPU and 0 CPUs
    on each GPU bundle.  Ray Data calls this in the driver for each actor it starts,
    but also to inspect the remote args (its memory issue detector, every 30 s): so at
    most ``replicas`` groups are made, later calls get an existing one, and the groups
    (collected in ``groups``) are removed when the stage ends.
    """
    calls = [0]

    def fn() -> dict:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if len(groups) < replicas:
            groups.append(ray.util.placement_group(
                [{"GPU": 1, "CPU": cpus}] + [{"GPU": 1}] * (world - 1), strategy=strategy))
        pg = groups[calls[0] % replicas]
        calls[0] += 1
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            pg, placement_group_capture_child_tasks=True)}
    return fn


def _worker_env() -> dict:
    keep = ("VLLM_CPU_KVCACHE_SPACE", "MMPR_NO_PROGRESS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
            "VLLM_LOGGING_LEVEL", "OMP_NUM_THREADS", "MMPR_FAULT", "MMPR_FAULT_ONCE")
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
