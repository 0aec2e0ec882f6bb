"""Fault injection for the kill and crash tests (off unless MMPR_FAULT is set).

``MMPR_FAULT="<stage>:<when>[:group]"`` SIGKILLs the process at a chosen
point, the way a preempted node or an OOM kill would:

* ``<when>`` is a number N: die after the N-th partition (or shard) of the
  stage has written its data but *before* its marker -- the most adversarial
  moment for resume; or a partition name: die whenever that partition starts.
* ``group`` kills the whole process group (the CLI and its engine process).

``MMPR_FAULT_ONCE=<path>`` makes the fault fire once: the file is created
just before dying, and its existence disarms the fault.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

_counts: Counter = Counter()


def _spec() -> tuple[str, str, bool] | None:
    raw = os.environ.get("MMPR_FAULT")
    if not raw:
        return None
    parts = raw.split(":")
    return parts[0], parts[1], len(parts) > 2 and parts[2] == "group"


def _die(group: bool) -> None:
    once = os.environ.get("MMPR_FAULT_ONCE")
    if once:
        if os.path.exists(once):
            return
        open(once, "w").close()
    if group:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def on_partition_start(stage: str, partition: str) -> None:
    spec = _spec()
    if spec and spec[0] == stage and spec[1] == partition:
        _die(spec[2])


def on_data_written(stage: str) -> None:
    spec = _spec()
    if not spec or spec[0] != stage or not spec[1].isdigit():
        return
    _counts[stage] += 1
    if _counts[stage] == int(spec[1]):
        _die(spec[2])
