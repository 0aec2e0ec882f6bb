"""A private temporary folder per vLLM engine: vLLM's sockets and rendezvous file go there, and
the folder goes when the engine does.

vLLM's processes make files outside any folder the pipeline gives them, and never remove them,
not even on a clean exit (vLLM 0.32; a day of test runs left 4,700 sockets and 580 rendezvous
files in /tmp):

* ZMQ ``ipc://`` sockets, ``<VLLM_RPC_BASE_PATH>/<uuid4>``, 7 per engine start
  (``vllm.utils.network_utils.get_open_zmq_ipc_path``; the base defaults to ``tempfile.gettempdir()``);
* the torch.distributed rendezvous file ``<tempfile.gettempdir()>/vllm_dist_<hex>``
  (``get_file_store_init_method``), made in the EngineCore process.

So the process that creates an engine (the CLI's process under the local executor, the
``_EngineWorker`` actor under Ray) makes a folder for it, ``<temp dir>/mmpr-vllm-XXXXXXXX``, and
removes it when it drops the engine (``pipeline.engine.engine.drop_engine``; ``drop_engines`` at
exit).  While ``vllm.LLM`` starts its processes (``PrivateTmp.spawning``) the environment they
inherit points there: ``VLLM_RPC_BASE_PATH`` (unless the user set it: then the sockets go where
they said) and ``TMPDIR``, which the EngineCore's ``tempfile.gettempdir()`` reads.  This process
is not moved: its own ``tempfile.tempdir`` is fixed first, and the environment is put back once
the engine is up.  Torch's compile cache (``TORCHINDUCTOR_CACHE_DIR``, by default
``<temp dir>/torchinductor_<user>``) is pinned where it was, or every engine start would compile
its graphs again into a folder about to be removed.

What this does not cover: vLLM's shared-memory queues in /dev/shm (``psm_*``) are unlinked by
vLLM or, for the ones it leaves, by Python's resource tracker when the engine's processes are
gone; a SIGKILL of the whole process tree (tracker included) leaves them (docs/architecture.md).
"""
from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import shutil
import tempfile
from typing import Iterator

from pipeline.environ import environ

#: the folder's name prefix: short, as the sockets in it must fit a unix socket path
PREFIX = "mmpr-vllm-"

#: bytes of a unix socket path (``sun_path`` is 108 with its terminating NUL)
MAX_SOCKET_PATH = 107

#: what vLLM appends to the base path for a socket: "/" and a uuid4
_SOCKET_NAME = 1 + 36


class PrivateTmp:
    """One engine's temporary folder; ``remove`` deletes it and all in it (it is the engine's)."""

    def __init__(self) -> None:
        self.user_rpc_base = os.environ.get("VLLM_RPC_BASE_PATH")
        if self.user_rpc_base:
            _check_socket_base(self.user_rpc_base, "VLLM_RPC_BASE_PATH")
        self.path: str | None = tempfile.mkdtemp(prefix=PREFIX)
        if not self.user_rpc_base:
            try:
                _check_socket_base(self.path, "TMPDIR")
            except ValueError:
                self.remove()
                raise

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """The environment for the engine's processes while ``vllm.LLM`` starts them; put back after.

        Children forked by ``multiprocessing`` (vLLM's default on CPU) inherit this process's
        cached ``tempfile.tempdir`` along with its memory: a hook that runs in each child forked
        meanwhile drops it, so the child reads ``TMPDIR`` as a spawned one does."""
        tempfile.gettempdir()  # this process's own temp dir stays where it was
        env = {"TMPDIR": self.path}
        if not self.user_rpc_base:
            env["VLLM_RPC_BASE_PATH"] = self.path
        if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):  # (importing vLLM set it already)
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir

            env["TORCHINDUCTOR_CACHE_DIR"] = default_cache_dir()
        hook = _ForgetTempdir()
        multiprocessing.util.register_after_fork(hook, _ForgetTempdir.run)
        try:
            with environ(env):
                yield
        finally:
            del hook  # the registry holds it weakly: later forks are left alone

    def remove(self) -> None:
        """Delete the folder (its sockets and files are the engine's); once, idempotent."""
        path, self.path = self.path, None
        if path:
            shutil.rmtree(path, ignore_errors=True)


class _ForgetTempdir:
    """The after-fork hook of ``PrivateTmp.spawning`` (a class: the registry keeps weak references)."""

    def run(self) -> None:
        tempfile.tempdir = None


def _check_socket_base(base: str, variable: str) -> None:
    """Fail now, saying what to change, rather than in vLLM with a ZMQ error about an address."""
    longest = len(os.fsencode(base)) + _SOCKET_NAME
    if longest > MAX_SOCKET_PATH:
        raise ValueError(f"vLLM's sockets would be {longest} bytes long under {base!r}, past the "
                         f"{MAX_SOCKET_PATH}-byte limit of a unix socket path: set {variable} to a shorter folder")
