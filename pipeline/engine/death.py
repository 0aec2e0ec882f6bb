"""What a dead vLLM engine looks like, and how a step waiting on one is woken.

A dead engine (vLLM's ``EngineDeadError``: its core process died of a CUDA
OOM, an NCCL timeout, a kill) is raised as ``EngineDead`` and never turned
into quarantined rows: the executor rebuilds the engine or ends the actor,
and the partition is retried.
"""
from __future__ import annotations

import threading
import time
import weakref
from typing import Any


class EngineDead(RuntimeError):
    """vLLM's engine core is gone: no request can succeed on this engine any more.

    Not a property of the rows: runners re-raise it instead of quarantining, and
    executors rebuild the engine (local) or end the actor so Ray restarts it."""


def engine_dead_cause(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is vLLM's EngineDeadError."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except Exception:  # noqa: BLE001 -- no vLLM here: nothing can be a dead vLLM engine
        return False
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (EngineDeadError, EngineDead)):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def wake_on_death(llm_engine: Any, poll_s: float = 0.5) -> None:
    """Make a dead engine core raise instead of hang.

    vLLM 0.32's synchronous client (``SyncMPClient``) marks the engine dead when
    its core process exits, but then shuts its output thread down without
    putting anything on ``outputs_queue``: a ``step()`` already waiting there
    (or the next one) blocks forever.  This watcher puts the ``EngineDeadError``
    there itself once vLLM has seen the death.
    """
    core = getattr(llm_engine, "engine_core", None)
    if core is None or not hasattr(core, "outputs_queue") or not hasattr(core, "resources"):
        return  # in-process engine core: its errors raise directly
    ref = weakref.ref(core)

    def watch() -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        while (c := ref()) is not None:
            if c.resources.engine_dead:
                c.outputs_queue.put_nowait(EngineDeadError())
                return
            del c
            time.sleep(poll_s)

    threading.Thread(target=watch, name="mmpr-engine-death-watch", daemon=True).start()


def core_died(llm_engine: Any) -> bool:
    """Whether vLLM has seen its engine core process die (``Engine.dead``)."""
    core = getattr(llm_engine, "engine_core", None)
    return bool(getattr(getattr(core, "resources", None), "engine_dead", False))


def raise_if_dead(exc: BaseException, llm_engine: Any) -> None:
    """Raise ``EngineDead`` from ``exc`` when it (or what caused it) is a dead engine, or the
    engine core is gone; return otherwise, for the caller to handle ``exc`` as a refusal.

    The one test every call into vLLM makes when it fails: a request refused is that
    request's error, a dead engine is never any row's."""
    if engine_dead_cause(exc) or core_died(llm_engine):
        raise EngineDead(f"vLLM engine died: {exc}") from exc
