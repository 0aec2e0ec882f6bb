"""SIGINT and SIGTERM end a build with nothing it started left running.

Left to the defaults, neither signal does that:

* SIGTERM ends the CLI at once, without ``atexit`` handlers.  The local
  executor's vLLM engine runs in child processes (``VLLM::EngineCore`` and its
  ``VLLM::Worker``, forked by ``multiprocessing``) that nothing ties to their
  parent: vLLM 0.32 stops them from the parent (``CoreEngineProcManager.shutdown``,
  run by ``pipeline.engine.engine.drop_engines`` at exit), and EngineCore itself turns
  SIGTERM/SIGINT into "stop when told" rather than dying.  So they stayed up,
  parentless, holding the model's memory (2.5 GB on CPU, a GPU's on a node).
* ``ray.init`` replaces the driver's SIGTERM handler: with a local Ray the node's
  handler kills Ray's processes and calls ``sys.exit`` from inside whatever Ray
  call the driver was waiting in; the interpreter then aborted while finalising
  (exit 134) with nothing on the terminal.
* SIGINT raised ``KeyboardInterrupt``: a traceback, and the engine left to
  ``atexit``.

``stop_on_signals`` installs one handler for both signals for the length of a
build.  The first signal raises ``Interrupted`` in the main thread, as Ctrl-C
raises ``KeyboardInterrupt``, so the run unwinds through its own ``finally``
blocks (the Ray scheduler kills its engine actors, progress bars close);
then ``shutdown`` ends this process's vLLM engines and its Ray (``ray.shutdown``:
a local Ray this driver started is stopped, a cluster is only left, which ends
this job's actors and tasks and nothing else), and finally ends any process the
run started that is still there.  The CLI then prints ``MESSAGE`` and exits
128 + the signal's number (130 for SIGINT, 143 for SIGTERM).  Completion
markers are written after their data, so the rerun resumes from the partitions
that finished.

A second signal while that happens is ignored: the teardown is bounded (no
grace period for the engines, Ray's own timeouts, a 3 s wait before the final
SIGKILL), and one cut short half way would leave the very processes it is
there to end.  SIGKILL is still there for whoever cannot wait seconds.

A signal after the build finished, while the process exits, is held the same
way: ``atexit`` is where the engines are shut down (``drop_engines``), and an
``Interrupted`` raised there was only printed ("Exception ignored in atexit
callback") and cut that shutdown short.  Once the exit's teardown is over the
held signal is delivered again with its default action, so the process still
ends "killed by SIGTERM" as whoever sent it expects.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Iterator

#: what the terminal shows after a build was stopped by a signal
MESSAGE = "interrupted; rerun the same command to resume"

#: seconds the processes still alive after the orderly teardown get between SIGTERM and SIGKILL
SWEEP_GRACE_S = 3.0

_SIGNALS = (signal.SIGINT, signal.SIGTERM)

log = logging.getLogger("pipeline")


class Interrupted(BaseException):
    """The build was stopped by a signal.  A ``BaseException``, as ``KeyboardInterrupt`` is, so
    that no ``except Exception`` on the way up takes it for a failed partition."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for "ended by signal N": 128 + N."""
        return 128 + self.signum


class _State:
    active = False       # handlers installed for a build
    received: int | None = None  # the first signal, once one came
    tree: list = []      # this process's descendants when it came (psutil.Process)
    done = False         # shutdown ran
    ignored = 0          # signals that came after the first
    exiting = False      # the build finished and the process is exiting: a signal is held
    held: int | None = None  # a signal that came while exiting, delivered again at the end


_state = _State()
_exit_hooks = False      # the two atexit hooks are registered (once per process)


def _handler(signum: int, frame) -> None:
    if _state.exiting:
        _state.held = _state.held or signum  # the exit's teardown goes on (module docstring)
        return
    if _state.received is not None:
        _state.ignored += 1  # no logging in a handler: it may interrupt a write to the same stream
        return  # a second signal: let the teardown of the first finish (module docstring)
    _state.received = signum
    _state.tree = _descendants()
    raise Interrupted(signum)


def _descendants() -> list:
    """Every process below this one, now.  Taken when the signal comes, because a child that
    the teardown kills leaves its own children to init, out of reach of a later look."""
    try:
        import psutil

        return psutil.Process().children(recursive=True)
    except Exception:  # noqa: BLE001 -- best effort: the orderly teardown does the real work
        return []


def _install() -> None:
    for s in _SIGNALS:
        signal.signal(s, _handler)


def reclaim() -> None:
    """Put the handlers back after a library replaced them (``ray.init`` sets its own SIGTERM
    handler); does nothing outside ``stop_on_signals``."""
    if _state.active and threading.current_thread() is threading.main_thread():
        _install()


def _register_exit_hooks() -> None:
    """``atexit`` runs its hooks last registered first, so ``_redeliver`` (registered before any
    engine exists) runs after ``drop_engines`` (registered with the first engine), and
    ``_hold`` (registered when the build's block is left, after the engines) runs before it."""
    global _exit_hooks
    if not _exit_hooks:
        _exit_hooks = True
        atexit.register(_redeliver)


def _hold() -> None:
    """From here on the process is exiting: a signal waits for the exit's teardown (after a
    signal that stopped the build, later ones are ignored as during its shutdown)."""
    if _state.active and _state.received is None:
        _state.exiting = True


def _redeliver() -> None:
    """The signal held while exiting, with its default action (the process ends by it)."""
    if _state.held is not None:
        signal.signal(_state.held, signal.SIG_DFL)
        os.kill(os.getpid(), _state.held)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Run the body so that SIGINT or SIGTERM end it cleanly: on the first one everything the
    body started is shut down before ``Interrupted`` leaves this block.

    The handlers stay installed after the block (the process is about to exit, and an engine
    left for ``atexit`` must not be orphaned by a late SIGTERM either: one that comes while the
    process exits is held until its teardown is over, then delivered again)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python delivers signals to the main thread only
        return
    _state.__dict__.clear()  # a fresh start (a second build in one process, as tests run them)
    _state.active = True
    _install()
    _register_exit_hooks()
    try:
        yield
    except BaseException as e:
        # Ray may turn the exception raised by the handler inside one of its calls into its
        # own (KeyboardInterrupt, SystemExit): what counts is that a signal came
        if _state.received is None:
            raise
        shutdown()
        if isinstance(e, Interrupted):
            raise
        raise Interrupted(_state.received) from e
    finally:
        atexit.unregister(_hold)  # one registration, after the engines' (see _register_exit_hooks)
        atexit.register(_hold)


def shutdown() -> None:
    """End what this process started: its vLLM engines, its Ray, then any process still below
    it.  Runs once; later calls do nothing."""
    if _state.done:
        return
    _state.done = True
    name = signal.Signals(_state.received).name if _state.received is not None else "a signal"
    log.info("interrupted by %s: stopping what this build started", name)  # the log shows when it began
    steps = (("vLLM engines", _drop_engines), ("Ray", _shutdown_ray), ("processes left", _sweep))
    for what, step in steps:
        t0 = time.monotonic()
        reclaim()  # a library's teardown may have put its own handler back: a second Ctrl-C must not cut this short
        try:
            step()
        except Exception as e:  # noqa: BLE001 -- one failed step must not keep the next from running
            log.warning("interrupted: stopping %s failed: %s: %s", what, type(e).__name__, e)
        else:  # into the build log: where the seconds after a signal went
            log.info("interrupted: stopped %s in %.1f s", what, time.monotonic() - t0)
    if _state.ignored:
        log.info("interrupted: %d more signal(s) during the shutdown, ignored", _state.ignored)


def _drop_engines() -> None:
    if "pipeline.engine.engine" in sys.modules:  # never imported: no engine to stop
        from pipeline.engine.engine import drop_engines

        drop_engines()


def _shutdown_ray() -> None:
    """``ray.shutdown``: a local Ray started by this driver is stopped (its GCS, raylet and
    workers); on a cluster the driver only disconnects, and Ray ends this job's actors and
    tasks (the scheduler killed its engine actors already on the way out)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _sweep() -> None:
    """SIGTERM, then SIGKILL after ``SWEEP_GRACE_S``, whatever the run started that the steps
    above left: a process of a half-built engine, one whose parent was killed before it.
    Only processes below this one: on a cluster or a Ray started by someone else, nothing
    outside this machine's own process tree is touched."""
    import psutil

    alive = {p.pid: p for p in _state.tree + _descendants()}
    procs = [p for p in alive.values() if _alive(p) and not _resource_tracker(p)]
    if procs:
        log.info("interrupted: %d process(es) still there: %s", len(procs), ", ".join(_name(p) for p in procs))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, left = psutil.wait_procs(procs, timeout=SWEEP_GRACE_S)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=SWEEP_GRACE_S)


def _name(proc) -> str:
    import psutil

    try:
        return f"{proc.pid} {proc.name()}"
    except psutil.Error:
        return str(proc.pid)


def _resource_tracker(proc) -> bool:
    """``multiprocessing``'s resource tracker: it ignores SIGTERM, leaves by itself once this
    process (which holds its pipe) is gone, and on the way unlinks the shared memory the engine
    processes left behind, which a SIGKILL would leak in /dev/shm."""
    import psutil

    try:
        return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _alive(proc) -> bool:
    """Running, and not an exited process waiting to be reaped (a zombie holds nothing)."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
