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
        from stages import make_stage

        stage = make_stage(stage_name, self.config)
        retries = self.config.executor.max_retries
        if stage.uses_engine and tasks:
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
        from pipeline.engine import EngineDead, drop_engine, get_engine
        from pipeline.runner import completed

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

    def close(self) -> None:
        pass


class _EngineWorker:
    """A Ray Data actor holding one vLLM engine; runs whole partitions."""

    def __init__(self, stage_name: str, config: dict) -> None:
        from pipeline.config import PipelineConfig
        from pipeline.engine import Engine
        from pipeline.logs import setup_logging
        from stages import make_stage

        setup_logging()
        self.config = PipelineConfig.model_validate(config)
        self.stage = make_stage(stage_name, self.config)
        self.engine = Engine(self.stage.engine_config())

    def __call__(self, batch: dict) -> dict:
        import json

        from pipeline.runner import record_attempt

        from pipeline.engine import EngineDead

        tasks = [Task.from_dict(json.loads(raw)) for raw in batch["task"]]
        try:
            stats = run_engine_tasks(self.stage, tasks, self.engine, self.config.executor.max_retries,
                                     on_start=record_attempt)
        except EngineDead as e:
            # end the actor the way an OOM kill would: Ray restarts it (max_restarts) with a
            # new engine and retries this call (max_task_retries); the rows are not quarantined
            logging.getLogger("pipeline").error("the vLLM engine died (%s): ending this actor", e)
            logging.shutdown()
            os._exit(1)
        return {"stats": [json.dumps(stats.to_dict())], "tasks": [len(tasks)]}


def _cpu_worker(batch: dict, stage_name: str, config: dict) -> dict:
    from pipeline.config import PipelineConfig
    from pipeline.logs import setup_logging
    from stages import make_stage

    setup_logging()
    cfg = PipelineConfig.model_validate(config)
    return _run_batch(make_stage(stage_name, cfg), batch, None, cfg.executor.max_retries)


def _run_batch(stage, batch: dict, engine, max_retries: int) -> dict:
    import json

    from pipeline.runner import record_attempt

    stats = []
    for raw in batch["task"]:
        task = Task.from_dict(json.loads(raw))
        record_attempt(task)
        stats.append(json.dumps(run_task(stage, task, engine, max_retries).to_dict()))
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
        from stages import make_stage

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
        from stages import stage_class

        total = StageStats()
        cfg = self.config
        groups: list = []  # placement groups of this stage's engine replicas
        items = [{"task": json.dumps(t.to_dict())} for t in tasks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        resolved = cfg.resolved()
        if stage_class(stage_name).uses_engine:
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
                num_gpus = replica_gpus(eng.gpus_per_replica, ray.cluster_resources().get("GPU", 0))
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

    def close(self) -> None:
        pass


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


def replica_gpus(configured: float, cluster_gpus: float) -> float:
    """GPUs a single-GPU engine actor reserves.  ``gpus_per_replica: 0`` means CPU, but on a
    cluster with GPUs Ray 2.60 no longer hides them from zero-GPU actors (no
    CUDA_VISIBLE_DEVICES is set), so every such engine would land on GPU 0: use 1 there."""
    if configured == 0 and cluster_gpus > 0:
        log.warning("engine.gpus_per_replica is 0 but the cluster has %g GPU(s): each engine reserves 1 "
                    "(set engine.gpus_per_replica to silence this)", cluster_gpus)
        return 1
    return configured


def _placement_group_fn(world: int, cpus: float, strategy: str, groups: list, replicas: int,
                        bundle_gpus: float = 1, grace_s: float = 60.0):
    """Ray remote args for the engine replicas with TP*PP = ``world`` > 1 (as ray.data.llm does).

    Each replica's placement group has one GPU bundle per vLLM worker; the first also
    carries the actor's CPUs.  The actor reserves no GPU itself (num_gpus=0) and lands
    in bundle 0; vLLM finds the group (ray.util.get_current_placement_group(), hence
    capture_child_tasks) and its Ray executor starts one worker with 1 GPU and 0 CPUs
    on each GPU bundle.  At most ``replicas`` groups are made (collected in ``groups``,
    removed when the stage ends).

    Ray Data calls this for every actor it starts -- replacements of dead actors too --
    but also just to inspect the remote args (its memory issue detector).  So a group
    is handed out only when it is free: no actor holds its bundle-0 CPUs (Ray's
    ``CPU_group_0_<id>`` resource is fully available) and it was not handed out in the
    last ``grace_s`` seconds (an actor handed a group takes a moment to be placed).
    Failing that, a new group while fewer than ``replicas`` exist; failing that, the
    free group handed out longest ago, else the group handed out longest ago (an
    inspection call, or every replica alive).
    """
    import time

    handed: dict[int, float] = {}

    def free(i: int, available: dict) -> bool:
        pg = groups[i]
        return available.get(f"CPU_group_0_{pg.id.hex()}", 0) >= cpus

    def fn() -> dict:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        now = time.monotonic()
        available = ray.available_resources()
        idle = [i for i in range(len(groups)) if free(i, available)]
        settled = [i for i in idle if now - handed.get(i, -1e18) > grace_s]
        if settled:
            pick = settled[0]
        elif len(groups) < replicas:
            groups.append(ray.util.placement_group(
                [{"GPU": bundle_gpus, "CPU": cpus}] + [{"GPU": bundle_gpus}] * (world - 1), strategy=strategy))
            pick = len(groups) - 1
        else:
            pick = min(idle or range(len(groups)), key=lambda i: handed.get(i, -1e18))
        handed[pick] = now
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            groups[pick], placement_group_capture_child_tasks=True)}
    return fn


def _worker_env() -> dict:
    keep = ("VLLM_CPU_KVCACHE_SPACE", "MMPR_NO_PROGRESS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
            "VLLM_LOGGING_LEVEL", "OMP_NUM_THREADS", "MMPR_FAULT", "MMPR_FAULT_ONCE")
    # where the object store is (MinIO, a region); credentials are the nodes' own
    keep += ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def make_executor(config: "PipelineConfig"):
    if config.executor.kind == "ray":
        return RayExecutor(config)
    return LocalExecutor(config)
