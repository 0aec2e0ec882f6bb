"""An engine's private temporary folder (``pipeline.engine.private_tmp``), without vLLM.

While ``vllm.LLM`` starts its processes, children forked or spawned by ``multiprocessing`` (as
vLLM's EngineCore and workers are) must see the folder as their temp dir and as vLLM's socket
base, while this process keeps its own temp dir; afterwards the environment is as it was.  On
main, vLLM's EngineCore inherited the parent's temp dir and wrote ``vllm_dist_*`` and the sockets
straight into /tmp.  The engine side (vLLM's files land in the folder, ``drop_engine`` removes it)
is checked in tests/test_grounding.py's ``f32_engine`` and by the builds of tests/test_signals.py.
"""
from __future__ import annotations

import multiprocessing
import os
import tempfile
from pathlib import Path

import pytest
# imported before any test moves the temp dir: the first import makes torch's cache folder there
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from helpers import short_temp_dir
from pipeline.engine.private_tmp import MAX_SOCKET_PATH, PREFIX, PrivateTmp

VARS = ("TMPDIR", "VLLM_RPC_BASE_PATH", "TORCHINDUCTOR_CACHE_DIR")


def _child_view(queue) -> None:
    queue.put((tempfile.gettempdir(), os.environ.get("VLLM_RPC_BASE_PATH"), os.environ.get("TORCHINDUCTOR_CACHE_DIR")))


def _started_child(method: str) -> tuple:
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_view, args=(queue,))
    proc.start()
    seen = queue.get(timeout=60)
    proc.join(60)
    return seen


@pytest.fixture
def clean_env(monkeypatch):
    """This process's temp dir a fresh short one (cached, as it always is by now), and none of
    the variables set."""
    for k in VARS:
        monkeypatch.delenv(k, raising=False)
    with short_temp_dir() as path:
        monkeypatch.setattr(tempfile, "tempdir", str(path))
        yield str(path)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_engines_processes_see_the_folder_and_this_one_does_not(clean_env, method, monkeypatch):
    inductor = default_cache_dir()  # under this process's temp dir
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # torch's import sets it
    tmp = PrivateTmp()
    path = tmp.path
    try:
        assert os.path.dirname(tmp.path) == clean_env and os.path.basename(tmp.path).startswith(PREFIX)
        with tmp.spawning():
            assert tempfile.gettempdir() == clean_env  # this process is not moved
            child_tmp, child_rpc, child_inductor = _started_child(method)
        assert (child_tmp, child_rpc) == (tmp.path, tmp.path)
        assert child_inductor == inductor, "torch's compile cache must stay where it was (warm)"
        assert not any(k in os.environ for k in VARS), "the environment is put back"
        # a child forked later is not moved either
        assert _started_child("fork")[:2] == (clean_env, None)
    finally:
        tmp.remove()
    # nothing is left but torch's cache, where it was pinned (the spawned child imports torch,
    # which makes the folder)
    assert not os.path.exists(path) and set(os.listdir(clean_env)) <= {os.path.basename(inductor)}


def test_a_socket_base_the_user_set_is_theirs(clean_env, monkeypatch):
    mine = Path(clean_env) / "sockets"
    mine.mkdir()
    monkeypatch.setenv("VLLM_RPC_BASE_PATH", str(mine))
    tmp = PrivateTmp()
    try:
        with tmp.spawning():
            child_tmp, child_rpc, _ = _started_child("fork")
        assert (child_tmp, child_rpc) == (tmp.path, str(mine))
        assert os.environ["VLLM_RPC_BASE_PATH"] == str(mine)
    finally:
        tmp.remove()
    assert os.listdir(clean_env) == ["sockets"]


def test_remove_takes_the_folder_and_nothing_else(clean_env):
    beside = os.path.join(clean_env, PREFIX + "someone-elses")
    os.mkdir(beside)
    tmp = PrivateTmp()
    path = tmp.path
    open(os.path.join(path, "vllm_dist_0"), "w").close()
    tmp.remove()
    tmp.remove()  # twice: nothing happens
    assert not os.path.exists(path) and os.path.isdir(beside)


@pytest.mark.parametrize("variable", ["TMPDIR", "VLLM_RPC_BASE_PATH"])
def test_a_base_too_long_for_a_socket_path_fails_saying_what_to_set(clean_env, monkeypatch, variable):
    long = Path(clean_env) / ("d" * (MAX_SOCKET_PATH - len(clean_env) - 20))
    long.mkdir()
    if variable == "TMPDIR":
        monkeypatch.setattr(tempfile, "tempdir", str(long))
    else:
        monkeypatch.setenv("VLLM_RPC_BASE_PATH", str(long))
    with pytest.raises(ValueError, match=f"limit of a unix socket path: set {variable} to a shorter folder"):
        PrivateTmp()
    assert [p.name for p in long.iterdir()] == []  # no folder left behind by the failed start
