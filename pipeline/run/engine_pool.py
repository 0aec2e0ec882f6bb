"""One pool of long-lived vLLM engine actors per model, shared by every engine stage using it.

Each replica is a Ray actor (``_EngineWorker``) that loads the model once per
build and then takes partitions of *any* engine stage whose engine config is
the same model (generate, dropout_ntp, grounding, a judge on the policy
model): the model is never loaded again for the next stage.  A call hands an
actor a few partitions of one stage (``engine.partitions_per_call``, by default
as many as fill the engine eight times over: ``pipeline.run.call_size``), which
it streams through its engine (``pipeline.run.runner.iter_engine_tasks``); every
partition writes its output and marker from the actor, and the call (a Ray
streaming generator) yields it at once, so the scheduler sees it done as soon
as its marker is written, before the call returns.

Faults: a dead engine ends the actor (``os._exit``, as an OOM kill would);
Ray restarts it in place (``max_restarts=-1``, same placement group) with a
new engine, and the scheduler retries the call's unfinished partitions
(``pipeline.run.scheduler``).  Calls are not retried by Ray
(``max_task_retries=0``): the scheduler counts attempts and quarantines.
"""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from pipeline.run.runner import Task, iter_engine_tasks, record_attempt

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.settings import PipelineConfig

log = logging.getLogger("pipeline")

#: seconds ``EnginePool.close`` waits for its actors to release their engines before killing them
RELEASE_WAIT_S = 5.0

#: calls an actor holds at once: one running, one queued behind it, so an actor never
#: waits for the driver between calls
CALLS_PER_ACTOR = 2


def model_key(config: "PipelineConfig", stage_name: str) -> str:
    """Which pool serves ``stage_name``: stages whose engines would get the same ``vllm.LLM``
    arguments share one (``cpu=False``: the driver may not see the workers' hardware)."""
    from pipeline.engine.engine import engine_kwargs
    from pipeline.core.graph import make_stage

    kwargs = engine_kwargs(make_stage(stage_name, config).engine_config(), cpu=False)
    return repr(sorted(kwargs.items(), key=lambda kv: kv[0]))


class _EngineWorker:
    """A Ray actor holding one vLLM engine for the whole build; runs partitions of every
    engine stage of its pool."""

    def __init__(self, config: dict, stage_name: str) -> None:
        from pipeline.config.settings import PipelineConfig
        from pipeline.engine.engine import Engine
        from pipeline.run.logs import setup_logging

        self.config = PipelineConfig.model_validate(config)
        setup_logging(self.config.run.log_level)
        self.stages: dict = {}
        self.engine = Engine(self._stage(stage_name).engine_config())
        self.ready_at = time.time()
        self.busy: dict[str, dict] = {}

    def _stage(self, name: str):
        from pipeline.core.graph import make_stage

        if name not in self.stages:
            self.stages[name] = make_stage(name, self.config)
        return self.stages[name]

    def ready(self) -> bool:
        """Answers once the actor (and its engine) is up: after a restart, too."""
        return True

    def tmp_folder(self) -> tuple[str, str | None]:
        """(this node's id, the engine's temporary folder): what ``EnginePool.close`` removes
        itself when it has to kill this actor in the middle of a call."""
        import ray

        return ray.get_runtime_context().get_node_id(), self.engine.tmp.path

    def run(self, stage_name: str, tasks: list[dict]):
        """Stream the partitions through the engine, yielding ``{"partition", "stats"}`` for each
        as soon as its marker is written: the call is a Ray streaming generator, so the scheduler
        wakes on every partition, not on the call's end (``EnginePool.submit``)."""
        from pipeline.engine.death import EngineDead

        began, stream0, occupied0 = time.time(), self.engine.stream_s, self.engine.occupied_s
        try:
            for task, stats in iter_engine_tasks(self._stage(stage_name), [Task.from_dict(t) for t in tasks],
                                                 self.engine, self.config.executor.max_retries,
                                                 on_start=record_attempt):
                yield {"partition": task.name, "stats": stats.to_dict(),
                       "seqs_at_once": self.engine.refill_threshold}
        except EngineDead as e:
            # end the actor the way an OOM kill would: Ray restarts it with a new engine and
            # the scheduler retries the partitions not yet written; the rows are not quarantined
            log.error("the vLLM engine died (%s): ending this actor", e)
            self.release()  # os._exit runs no atexit: the engine's temporary folder goes now
            logging.shutdown()
            os._exit(1)
        self._account(stage_name, began, self.engine.stream_s - stream0, self.engine.occupied_s - occupied0)

    def release(self) -> None:
        """Shut the engine down, remove its temporary folder (``pipeline.engine.private_tmp``) and
        let the resource tracker unlink vLLM's shared memory: ``EnginePool.close`` asks for this
        before ``ray.kill``, which ends the actor without its ``atexit`` handlers."""
        from pipeline.engine.engine import drop_engine

        drop_engine(self.engine, grace_s=0.0)
        _stop_resource_tracker()

    def _account(self, stage_name: str, began: float, stream_s: float, occupied_s: float) -> None:
        """This engine's time per stage, kept in ``<stage>/engine/<pid>.json`` after every call:
        when it was ready, its calls' first start and last end, seconds with requests in it
        (``stream_s``) and its batch occupied (``occupied_s``, ``Engine.occupied_s``); the busy
        share of a stage is occupied_s over ready-to-last-end (``bench/bench_scale.py``)."""
        from pipeline.files import storage

        acc = self.busy.setdefault(stage_name, {"pid": os.getpid(), "ready_at": self.ready_at, "first_call_at": began,
                                                "calls": 0, "stream_s": 0.0, "occupied_s": 0.0})
        acc["calls"] += 1
        acc["stream_s"] = round(acc["stream_s"] + stream_s, 3)
        acc["occupied_s"] = round(acc["occupied_s"] + occupied_s, 3)
        acc["last_end"] = time.time()
        try:
            storage.write_json(storage.join(self.config.run.work_dir, stage_name, "engine", f"{os.getpid()}.json"), acc)
        except OSError as e:  # statistics only: never fail a call over them
            log.warning("engine statistics not written: %s", e)


def _stop_resource_tracker(wait_s: float = 3.0) -> None:
    """Have Python's resource tracker unlink now the shared memory vLLM's processes left
    (``/dev/shm/psm_*``, ~200 MB each, 2 per engine).

    The tracker (a child of this process) unlinks what is still registered once every process
    holding its pipe is gone: at this actor's exit.  But ``ray.kill`` kills the actor's child
    processes with it, the tracker among them, and each closed pool left 2 of vLLM's queues in
    /dev/shm.  So once vLLM's processes (the others holding the pipe) have ended, this process
    closes its end and waits for the tracker to finish (``ResourceTracker._stop``: a private
    method, the one Python's own tests use); if they have not ended in ``wait_s``, it is left."""
    import psutil
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    pid = getattr(tracker, "_pid", None)
    if pid is None or not hasattr(tracker, "_stop"):
        return  # never started (or another Python's tracker)
    others = [p for p in psutil.Process().children(recursive=True) if p.pid != pid]
    if psutil.wait_procs(others, timeout=wait_s)[1]:
        return  # still holding the pipe: the tracker would not end
    tracker._stop()


def _remove_folders_here(answers: list) -> None:
    """Remove the temporary folders that killed actors on this node reported (``tmp_folder``).
    They belonged to those actors' engines, which are gone; on another node the path would be
    someone else's."""
    import shutil

    import ray

    ready, _ = ray.wait(answers, num_returns=len(answers), timeout=0) if answers else ([], [])
    here = ray.get_runtime_context().get_node_id()
    for ref in ready:
        try:
            node, path = ray.get(ref, timeout=1)
        except Exception:  # noqa: BLE001 -- the actor died before it answered: nothing known to remove
            continue
        if node == here and path:
            shutil.rmtree(path, ignore_errors=True)


class EnginePool:
    """``replicas`` engine actors for one model, started at once (model loads run in the
    background while the driver does other work), ended by ``close``."""

    def __init__(self, config: "PipelineConfig", stage_name: str, replicas: int) -> None:
        import time

        import ray

        from pipeline.run.placement import placement_group_fn, replica_gpus

        #: when its model started loading, and for which stage (that stage's wall time counts
        #: from here, as a stage that starts its own engine always did)
        self.started, self.stage = time.monotonic(), stage_name
        eng = config.engine
        world = eng.tensor_parallel_size * eng.pipeline_parallel_size
        self.groups: list = []  # placement groups (TP/PP > 1), removed by close
        options: dict = {"num_cpus": eng.cpus_per_replica, "max_restarts": -1, "max_task_retries": 0}
        if world > 1:
            # vLLM's own Ray workers take the GPUs from the replica's placement group; a
            # restarted actor comes back in the same group
            group_for = placement_group_fn(world, eng.cpus_per_replica,
                                            "STRICT_PACK" if eng.pipeline_parallel_size == 1 else "PACK",
                                            self.groups, replicas)
        else:
            gpus = replica_gpus(eng.gpus_per_replica, ray.cluster_resources().get("GPU", 0))
            options["num_gpus"] = gpus
        actor = ray.remote(_EngineWorker)
        self.actors = []
        for _ in range(replicas):
            extra = {**group_for(), "num_gpus": 0} if world > 1 else {}
            # the config goes inline (a few KB), not as an object-store ref: a restart re-reads
            # its constructor arguments, which must outlive any driver-side reference
            self.actors.append(actor.options(**options, **extra).remote(config.resolved(), stage_name))
        #: each actor's answer to ``tmp_folder`` (asked again after a restart: a new engine, a new folder)
        self.folders = [a.tmp_folder.remote() for a in self.actors]
        self.calls = [0] * replicas  # calls each actor holds
        #: sequences one of its engines runs at once, once an actor has said (sizes ``auto`` calls)
        self.seqs_at_once: int | None = None
        #: actors that died, restarting: the ping that answers when each is back.  A call
        #: sent to a restarting actor would fail at once (max_task_retries=0), the ping waits
        self.down: dict[int, object] = {}
        log.info("engine pool: %d replica(s) for %s and every stage on the same model", replicas, stage_name)

    def free_actor(self) -> int | None:
        """The live actor holding the fewest calls, if it can take another."""
        up = [i for i in range(len(self.actors)) if i not in self.down]
        i = min(up, key=self.calls.__getitem__, default=None)
        return i if i is not None and self.calls[i] < CALLS_PER_ACTOR else None

    def failed(self, i: int) -> None:
        """A call on actor ``i`` failed (it died): send no more until it answers a ping."""
        if i not in self.down:
            self.down[i] = self.actors[i].ready.options(max_task_retries=-1).remote()

    def pings(self) -> dict:
        """ping ref -> actor index, for the actors coming back."""
        return {ref: i for i, ref in self.down.items()}

    def answered(self, i: int, ok: bool) -> None:
        del self.down[i]
        if not ok:  # the restart failed too: keep waiting for the next one
            self.failed(i)
        else:
            self.folders[i] = self.actors[i].tmp_folder.remote()

    def submit(self, i: int, stage_name: str, tasks: list[Task]):
        """The call's ``ObjectRefGenerator``: one object per partition as it is written, then
        its end (``ray.wait`` takes it like a ref: ready when its next object is)."""
        self.calls[i] += 1
        return self.actors[i].run.options(num_returns="streaming").remote(stage_name, [t.to_dict() for t in tasks])

    def returned(self, i: int) -> None:
        self.calls[i] -= 1

    def close(self) -> None:
        """End the actors: the idle ones are first asked to release their engines
        (``_EngineWorker.release``: vLLM's processes end and the engine's temporary folder goes),
        for at most ``RELEASE_WAIT_S``, then all are killed.  An actor still in a call (a build
        stopped mid-stage) would answer only after it: it is killed at once, and its engine's
        folder is removed from here if it is on this node (elsewhere it stays; so do its shared
        memory queues: docs/architecture.md)."""
        import ray

        t0 = time.monotonic()
        asked = {self.actors[i].release.remote(): i for i in range(len(self.actors))
                 if not self.calls[i] and i not in self.down}
        done, _ = ray.wait(list(asked), num_returns=len(asked), timeout=RELEASE_WAIT_S) if asked else ([], [])
        released = {asked[ref] for ref in done}
        log.info("engine pool: %d of %d actor(s) released their engines in %.1f s",
                 len(released), len(self.actors), time.monotonic() - t0)
        for a in self.actors:
            ray.kill(a)
        _remove_folders_here([ref for i, ref in enumerate(self.folders) if i not in released])
        self.actors, self.folders = [], []
        # the groups belong to this driver, not to the actors: free the GPUs for what follows
        for pg in self.groups:
            ray.util.remove_placement_group(pg)
        self.groups = []
