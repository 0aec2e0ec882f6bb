"""Where engine replicas are placed on a Ray cluster: GPUs per replica and placement groups
for tensor/pipeline-parallel engines (shared by the executors and the engine pool)."""
from __future__ import annotations

import logging

log = logging.getLogger("pipeline")


def replica_gpus(configured: float, cluster_gpus: float) -> float:
    """GPUs a single-GPU engine actor reserves.  ``gpus_per_replica: 0`` means CPU, but on a
    cluster with GPUs Ray 2.60 no longer hides them from zero-GPU actors (no
    CUDA_VISIBLE_DEVICES is set), so every such engine would land on GPU 0: use 1 there."""
    if configured == 0 and cluster_gpus > 0:
        log.warning("engine.gpus_per_replica is 0 but the cluster has %g GPU(s): each engine reserves 1 "
                    "(set engine.gpus_per_replica to silence this)", cluster_gpus)
        return 1
    return configured


def placement_group_fn(world: int, cpus: float, strategy: str, groups: list, replicas: int,
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
