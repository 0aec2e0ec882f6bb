"""GPU scheduling decisions that a CPU machine can check: which placement group a new
engine actor gets (fake GPUs in a real local Ray), GPUs per single-GPU replica, and the
scheduler refill threshold under pipeline parallelism."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import ROOT
from pipeline.engine.engine import refill_threshold
from pipeline.run.placement import replica_gpus

_RAY_FREE_GROUPS = r'''
import json, time
import ray
from pipeline.run.placement import placement_group_fn

ray.init(address="local", num_cpus=4, num_gpus=4, include_dashboard=False, logging_level="ERROR")

@ray.remote(num_cpus=1, num_gpus=0)
class Holder:
    def pg(self):
        return ray.util.get_current_placement_group().id.hex()

groups = []
fn = placement_group_fn(2, 1, "STRICT_PACK", groups, 2, grace_s=0)

def start():
    a = Holder.options(**fn()).remote()
    return a, ray.get(a.pg.remote(), timeout=60)

a0, g0 = start()
a1, g1 = start()
out = {"two_groups": len(groups) == 2 and g0 != g1}
ray.kill(a0)                      # the actor of group 0 dies ...
time.sleep(2)
fn(); fn()                        # ... Ray Data inspects the args (memory detector) ...
a2, g2 = start()                  # ... and starts a replacement: it must get the freed group 0
out["replacement_gets_freed_group"] = g2 == g0
out["groups"] = len(groups)
busy = fn()["scheduling_strategy"].placement_group.id.hex()  # nothing free: some group, no new one
out["groups_after_full"] = len(groups)
for pg in groups:
    ray.util.remove_placement_group(pg)
print("RESULT " + json.dumps(out))
'''


def test_a_replacement_actor_gets_the_freed_group_not_a_live_actors():
    """The old ``groups[calls % replicas]`` gave the third call (after two inspection calls)
    whatever group the counter pointed at; now only a group no live actor holds is handed out."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", _RAY_FREE_GROUPS], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(line[len("RESULT "):])
    assert out == {"two_groups": True, "replacement_gets_freed_group": True, "groups": 2,
                   "groups_after_full": 2}


def test_zero_gpus_per_replica_becomes_one_where_the_cluster_has_gpus():
    assert replica_gpus(0, 8) == 1      # Ray 2.60 would put every zero-GPU engine on GPU 0
    assert replica_gpus(0, 0) == 0      # a CPU cluster: CPU engines
    assert replica_gpus(0.5, 8) == 0.5  # packing engines on a GPU is a choice
    assert replica_gpus(1, 8) == 1


def test_the_refill_threshold_counts_every_pipeline_stage():
    from types import SimpleNamespace as NS

    def cfg(seqs, pp):
        return NS(scheduler_config=NS(max_num_seqs=seqs), parallel_config=NS(pipeline_parallel_size=pp))

    assert refill_threshold(cfg(256, 1)) == 256
    assert refill_threshold(cfg(256, 4)) == 1024  # 4 stages each hold a batch of 256 in flight
