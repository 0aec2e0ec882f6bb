"""Fault injection for the kill and crash tests (off unless MMPR_FAULT is set).

``MMPR_FAULT="<stage>:<when>[:group]"`` SIGKILLs the process at a chosen
point, the way a preempted node or an OOM kill would:

* ``<when>`` is a number N: die after the N-th partition (or shard) of the
  stage has written its data but *before* its marker -- the most adversarial
  moment for resume; or a partition name: die whenever that partition starts.
* ``group`` kills the whole process group (the CLI and its engine process);
  ``engine_core`` kills only vLLM's engine core process (a child of this
  one), as a CUDA OOM or an Xid error would: the run must go on; ``hold``
  kills nothing but stalls there for ``MMPR_FAULT_HOLD_S`` seconds (600), so
  a test can kill the run from outside at a moment of its choosing (e.g. a
  generate partition stuck while downstream stages go on), or until the file
  ``MMPR_FAULT_RELEASE`` names exists (a run started early, its engine up,
  that a test lets go on when its turn comes).

``MMPR_FAULT_ONCE=<path>`` makes the fault fire once: the file is created
just before dying, and its existence disarms the fault.
"""
from __future__ import annotations

import os
import signal
import time
from collections import Counter

_counts: Counter = Counter()


def _spec() -> tuple[str, str, str] | None:
    raw = os.environ.get("MMPR_FAULT")
    if not raw:
        return None
    parts = raw.split(":")
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""


def _die(target: str) -> None:
    once = os.environ.get("MMPR_FAULT_ONCE")
    if once:
        if os.path.exists(once):
            return
        open(once, "w").close()
    if target == "hold":
        _hold()
        return
    if target == "engine_core":
        kill_engine_core()
        return
    if target == "group":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _hold() -> None:
    release = os.environ.get("MMPR_FAULT_RELEASE")
    deadline = time.monotonic() + float(os.environ.get("MMPR_FAULT_HOLD_S", "600"))
    while time.monotonic() < deadline and not (release and os.path.exists(release)):
        time.sleep(0.1)


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


def kill_engine_core() -> list[int]:
    """SIGKILL vLLM's engine core process(es) among this process's descendants; their pids."""
    import psutil

    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                child.send_signal(signal.SIGKILL)
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids
