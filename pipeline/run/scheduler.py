"""Per-partition scheduling over the stage graph on Ray: no stage barrier.

A partition of a row or engine stage becomes ready as soon as the partition(s)
it reads are marked done, so partition 0 can be in ``filter`` while partition
9 is still generating.  The tasks are exactly the ones the stage-by-stage
loop makes (``Task``: same names, inputs, out folders, hashes), so markers,
resume and quarantine mean the same: a killed run resumes the same way.

* **row** partitions run as Ray tasks (``executor.cpu_concurrency`` at once);
* **engine** partitions go to the engine pool of their model
  (``pipeline.run.engine_pool``): one pool per model for the whole build, shared
  by every engine stage on that model.

Ready work is taken downstream-first (the stage latest in pipeline order),
so partitions flow through to the end instead of piling up between stages.
The loop sleeps in ``ray.wait`` on everything outstanding and wakes when
any of it ends: a row task's ref, or an engine call -- a Ray streaming
generator that yields each partition as its marker is written, so a
partition of a 4-partition call is seen done at once, not when the call
returns.  The marker stays the proof of completion (read when a task or a
partition says it is done; resume reads only markers); the engine stages'
marker folders are still listed every ``FALLBACK_POLL_S`` in case a
partition's word is lost.  A call that fails (a worker or engine actor died)
leaves its unfinished partitions to be retried; one whose workers died
``executor.max_retries + 1`` times is quarantined (``worker_died``), as
before.
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from pipeline.files import storage
from pipeline.run.call_size import CallSizer
from pipeline.run.engine_pool import EnginePool, model_key
from pipeline.run.runner import Task, attempts, completed, quarantine_partition, read_marker, record_attempt, run_task
from pipeline.core.stage import StageStats
from pipeline.run.terminal import progress

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.settings import PipelineConfig

log = logging.getLogger("pipeline")
#: the longest ``ray.wait`` sleeps before the loop looks around anyway (a dead actor's ping, a
#: pool to close); anything that ends wakes it sooner
WAIT_S = 0.5
#: how often the engine stages' marker folders are listed: only a fallback, every engine
#: partition is also reported by its call's stream (a listing costs a request per stage on S3)
FALLBACK_POLL_S = 5.0


@dataclass
class StageRun:
    """What the scheduler knows of one stage: its tasks, what this run did, when."""
    name: str
    kind: str
    tasks: list[Task]
    skipped: int = 0
    ran: StageStats = field(default_factory=StageStats)
    started: float | None = None  # first dispatch (monotonic)
    ended: float | None = None    # its last partition done and its last call returned


def _cpu_partition(config: dict, stage_name: str, task: dict) -> dict:
    """One row-stage partition on a Ray worker (reads its input, writes output and marker)."""
    from pipeline.config.settings import PipelineConfig
    from pipeline.core.graph import make_stage
    from pipeline.run.logs import setup_logging

    cfg = PipelineConfig.model_validate(config)
    setup_logging(cfg.run.log_level)
    t = Task.from_dict(task)
    record_attempt(t)
    return run_task(make_stage(stage_name, cfg), t, None, cfg.executor.max_retries).to_dict()


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:300] if str(e) else type(e).__name__


class GraphScheduler:
    """Runs every pending partition of ``stages`` (row/engine kinds) on Ray; ``deps`` maps a
    task's (stage, name) to the (stage, name) keys it reads.  Call ``run`` once."""

    def __init__(self, config: "PipelineConfig", stages: list[StageRun], deps: dict[tuple, tuple],
                 on_stage_done: Callable[[StageRun], None] | None = None, bar: str = "partitions",
                 pools: dict[str, EnginePool] | None = None) -> None:
        import ray

        from pipeline.core.graph import ordered

        self.ray = ray
        self.config = config
        self.stages = {s.name: s for s in stages}
        self.rank = {s: i for i, s in enumerate(ordered())}
        self.deps = deps
        self.on_stage_done = on_stage_done
        self.limit = config.executor.max_retries + 1
        self.config_ref = ray.put(config.resolved())
        self.pools: dict[str, EnginePool] = pools if pools is not None else {}
        self.pool_of = {s.name: model_key(config, s.name) for s in stages if s.kind == "engine"}
        self.done: set[tuple] = set()
        self.failures: dict[tuple, int] = defaultdict(int)
        self.waiting: dict[str, list[Task]] = {}
        for s in stages:
            pending = []
            for t in s.tasks:
                if completed(t):
                    self.done.add((t.stage, t.name))
                else:
                    pending.append(t)
            s.skipped = len(s.tasks) - len(pending)
            self.waiting[s.name] = pending
        self.cpu: dict = {}    # ref -> task
        self.calls: dict = {}  # ObjectRefGenerator -> (pool key, actor index, stage, tasks)
        self.reported: dict = {}  # ObjectRefGenerator -> names its stream has yielded
        self.sizer = CallSizer(config)
        self.in_flight: dict[str, set[str]] = defaultdict(set)  # stage -> names dispatched, not done
        total = sum(len(v) for v in self.waiting.values())
        self.bar = progress(None, total, bar)
        self.cpu_fn = ray.remote(_cpu_partition).options(num_cpus=1, max_retries=0)
        self.polled = time.monotonic()

    # -- the loop ---------------------------------------------------------------
    def run(self) -> dict[str, StageRun]:
        try:
            for s in self.stages.values():
                self._maybe_finished(s)
            while any(s.ended is None for s in self.stages.values()):
                self._dispatch()
                pings = {ref: (key, i) for key, pool in self.pools.items() for ref, i in pool.pings().items()}
                refs = list(self.cpu) + list(self.calls) + list(pings)
                if not refs:
                    stuck = {n: len(v) for n, v in self.waiting.items() if v}
                    raise RuntimeError(f"partitions that cannot become ready (inputs missing): {stuck}")
                finished, _ = self.ray.wait(refs, num_returns=1, timeout=WAIT_S)
                if finished:  # and whatever else is back by now
                    finished, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in finished:
                    if ref in pings:
                        self._pinged(ref, *pings[ref])
                    elif ref in self.calls:
                        self._streamed(ref)
                    else:
                        self._returned(ref)
                if time.monotonic() - self.polled >= FALLBACK_POLL_S:
                    self._poll_markers()
                    self.polled = time.monotonic()
                for s in self.stages.values():
                    self._maybe_finished(s)
                self._close_idle_pools()
        finally:
            self.bar.close()
        return self.stages

    def _ready(self, stage: str) -> list[Task]:
        return [t for t in self.waiting[stage] if all(d in self.done for d in self.deps.get((t.stage, t.name), ()))]

    def _by_priority(self, kind: str) -> list[str]:
        return sorted((n for n, s in self.stages.items() if s.kind == kind and self.waiting[n]),
                      key=self.rank.__getitem__, reverse=True)

    def _take(self, stage: str, tasks: list[Task]) -> None:
        s = self.stages[stage]
        s.started = s.started or time.monotonic()
        names = {t.name for t in tasks}
        self.waiting[stage] = [t for t in self.waiting[stage] if t.name not in names]
        self.in_flight[stage] |= names

    def _dispatch(self) -> None:
        limit = self.config.executor.cpu_concurrency
        for stage in self._by_priority("row"):
            for t in self._ready(stage)[: max(0, limit - len(self.cpu))]:
                self._take(stage, [t])
                self.cpu[self.cpu_fn.remote(self.config_ref, stage, t.to_dict())] = t
        for stage in self._by_priority("engine"):
            key = self.pool_of[stage]
            while (ready := self._ready(stage)):
                pool = self._pool(key, stage)
                if pool.stage == stage:
                    self.stages[stage].started = self.stages[stage].started or pool.started
                i = pool.free_actor()
                if i is None:
                    break
                batch = self.sizer.take(stage, ready, pool)  # engine.partitions_per_call
                self._take(stage, batch)
                self.calls[pool.submit(i, stage, batch)] = (key, i, stage, batch)

    def _pool(self, key: str, stage: str) -> EnginePool:
        if key not in self.pools:
            eng = self.config.engine
            left = sum(len(self.waiting[s]) for s, k in self.pool_of.items() if k == key)
            per_call = eng.partitions_per_call if isinstance(eng.partitions_per_call, int) else 1
            replicas = max(1, min(eng.replicas, -(-left // per_call)))
            self.pools[key] = EnginePool(self.config, stage, replicas)
        return self.pools[key]

    # -- completion -------------------------------------------------------------
    def _mark_done(self, t: Task) -> None:
        if (t.stage, t.name) not in self.done:
            self.done.add((t.stage, t.name))
            self.in_flight[t.stage].discard(t.name)
            self.bar.update(1)

    def _pinged(self, ref, key: str, i: int) -> None:
        try:
            self.ray.get(ref)
            ok = True
        except Exception as e:  # noqa: BLE001 -- its restart failed; Ray tries again
            log.warning("engine actor %d did not come back yet (%s)", i, str(e).splitlines()[0][:300])
            ok = False
        self.pools[key].answered(i, ok)

    def _returned(self, ref) -> None:
        """A row task ended: its stats, and its marker says whether it is done."""
        t = self.cpu.pop(ref)
        try:
            self.stages[t.stage].ran.merge(StageStats.from_dict(self.ray.get(ref)))
        except Exception as e:  # noqa: BLE001 -- a worker died
            log.error("stage %s: workers failed (%s); checking partitions", t.stage, _first_line(e))
            self._after_failure([t], e)
            return
        self._check(t)

    def _streamed(self, gen) -> None:
        """An engine call has news (``ray.wait`` said so, so ``next`` does not block): one
        partition written, or the call's end, or its failure (the actor died)."""
        key, i, stage, tasks = self.calls[gen]
        reported = self.reported.setdefault(gen, set())
        try:
            item = self.ray.get(next(gen))
        except StopIteration:  # the call returned: every partition of it should have reported
            self._call_ended(gen)
            missing = [t for t in tasks if t.name not in reported]
            if all(completed(t) for t in missing):
                for t in missing:
                    self._mark_done(t)
                return
            # a stream cut short: Ray may end the stream of an actor that died rather than fail it
            error: Exception = RuntimeError(f"the call ended with {len(missing)} partition(s) unreported")
        except Exception as e:  # noqa: BLE001 -- the engine actor died
            self._call_ended(gen)
            missing, error = [t for t in tasks if t.name not in reported], e
        else:
            reported.add(item["partition"])
            self.pools[key].seqs_at_once = item.get("seqs_at_once") or self.pools[key].seqs_at_once
            self.stages[stage].ran.merge(StageStats.from_dict(item["stats"]))
            self._check(next(t for t in tasks if t.name == item["partition"]))
            return
        # said here too: the actor's own last log line may not be forwarded
        log.error("stage %s: engine actor %d failed: its vLLM engine died or the actor process was "
                  "killed (%s); checking partitions", stage, i, _first_line(error))
        self.pools[key].failed(i)
        self._after_failure(missing, error)

    def _call_ended(self, gen) -> None:
        key, i, *_ = self.calls.pop(gen)
        self.reported.pop(gen, None)
        self.pools[key].returned(i)

    def _check(self, t: Task) -> None:
        """Its worker says the partition is written: the marker decides."""
        if completed(t):
            self._mark_done(t)
        else:  # cannot happen unless a store lost a write: redo it
            self._requeue(t)

    def _after_failure(self, tasks: list[Task], error: Exception) -> None:
        from pipeline.core.graph import make_stage

        for t in tasks:
            if completed(t):
                self._mark_done(t)
            elif attempts(t) >= self.limit:
                log.error("partition %s failed %d times: quarantining its rows", t.name, attempts(t))
                stats = quarantine_partition(make_stage(t.stage, self.config), t, "worker_died",
                                             f"{attempts(t)} attempts: {str(error)[:1500]}")
                self.stages[t.stage].ran.merge(stats)
                self._mark_done(t)
            else:
                self._requeue(t)

    def _requeue(self, t: Task) -> None:
        key = (t.stage, t.name)
        self.failures[key] += 1
        # a partition can fail without starting (queued on an actor that died of another
        # one); past this many it is not going to work
        if self.failures[key] > 4 * self.limit:
            raise RuntimeError(f"stage {t.stage}: partition {t.name} could not be completed")
        self.in_flight[t.stage].discard(t.name)
        self.waiting[t.stage].append(t)

    def _poll_markers(self) -> None:
        """The fallback: engine partitions whose markers exist though their call's stream has
        not said so (it always should; a lost item must not hold the graph up)."""
        for stage, names in self.in_flight.items():
            if not names or self.stages[stage].kind != "engine":
                continue
            out_dir = self.stages[stage].tasks[0].out_dir
            found = {os.path.basename(u)[: -len(".json")] for u in
                     storage.list_files(storage.join(out_dir, "markers"), ".json")}
            newly = names & found
            for t in [t for t in self.stages[stage].tasks if t.name in newly]:
                m = read_marker(t.marker_uri())
                if m and m.get("stage_hash") == t.stage_hash:
                    self._mark_done(t)

    def _maybe_finished(self, s: StageRun) -> None:
        if s.ended is not None or self.waiting[s.name] or self.in_flight[s.name]:
            return
        if any(c[2] == s.name for c in self.calls.values()) or any(t.stage == s.name for t in self.cpu.values()):
            return
        s.ended = time.monotonic()
        if self.on_stage_done:
            self.on_stage_done(s)

    def _close_idle_pools(self) -> None:
        """A pool with no engine work left is ended (its GPUs and CPUs go to what follows).
        So is an idle one whose actors hold the CPUs that waiting row partitions need
        (a small machine): it starts again, loading the model anew, when engine work is
        ready -- slower, but a pool never starves the stages that feed it."""
        for key in list(self.pools):
            if any(k == key for k, *_ in self.calls.values()):
                continue
            stages = [s for s, k in self.pool_of.items() if k == key]
            if not any(self.waiting[s] or self.in_flight[s] for s in stages):
                self.pools.pop(key).close()
            elif not any(self._ready(s) for s in stages) and self._cpu_starved():
                log.warning("engine pool idle while row partitions wait for its CPUs: ending it for now")
                self.pools.pop(key).close()

    def _cpu_starved(self) -> bool:
        rows = self.cpu or any(self.waiting[s] for s, r in self.stages.items() if r.kind == "row")
        if not rows:
            return False
        held = sum(len(p.actors) * self.config.engine.cpus_per_replica for p in self.pools.values())
        return self.ray.cluster_resources().get("CPU", 0) - held < 1

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()


def plan_graph(config: "PipelineConfig", source_names: dict[str, list[str]]) -> tuple[list[StageRun], dict]:
    """``source_names``: the partitions of the stages run before the graph (source and merging
    stages), by stage.  The tasks of every row and engine stage of the run -- the ones the stage-by-stage plan
    (``orchestrator.plan``) makes once the inputs exist: one per input partition, prefixed
    with the input stage's name when several stages feed one -- and what each reads."""
    from pipeline.core.graph import input_stages, stage_class

    names = dict(source_names)  # stage -> its partition names
    runs, deps = [], {}
    for stage in config.run.stages:
        kind = stage_class(stage).kind
        if kind not in ("row", "engine") or stage in source_names:  # merging stages ran before
            continue
        inputs = input_stages(config, stage)
        out_dir, h = storage.join(config.run.work_dir, stage), config.stage_hash(stage)
        tasks = []
        for up in inputs:
            prefix = f"{up}-" if len(inputs) > 1 else ""
            for name in names.get(up, []):
                uri = storage.join(config.run.work_dir, up, "data", f"{name}.parquet")
                tasks.append(Task(stage, prefix + name, (uri,), out_dir, h))
                if up not in source_names:  # source partitions exist before anything runs
                    deps[(stage, tasks[-1].name)] = ((up, name),)
        names[stage] = [t.name for t in tasks]
        runs.append(StageRun(stage, kind, tasks))
    return runs, deps


def start_pools(config: "PipelineConfig", stages: list[str], began: float | None = None) -> dict[str, EnginePool]:
    """Engine pools started ahead of their work (full replicas), one per model among ``stages``:
    the model loads while the driver does something else.  ``began`` (monotonic): when the
    run started working towards them (their stage's clock starts there)."""
    pools: dict[str, EnginePool] = {}
    for name in stages:
        key = model_key(config, name)
        if key not in pools:
            pools[key] = EnginePool(config, name, config.engine.replicas)
            pools[key].started = began or pools[key].started
    return pools
