"""Shared fixtures: one tiny model, one vLLM engine and one sample build per session.

The engine and the Ray build are the expensive parts (tens of seconds each on
2 cores), so every test that needs them shares the session-scoped ones.  Each test gets its
tier's marker here; what tests import (inputs, commands, readers) is in tests/helpers.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import ROOT, SAMPLE_CONFIG, cli, folder_state, make_config, run_on_terminal, short_temp_dir, small_ingest

os.environ.setdefault("MMPR_NO_PROGRESS", "1")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


@pytest.fixture(scope="session")
def sample_build(tiny_model, tmp_path_factory) -> Path:
    """`python -m pipeline run` on the sample config through Ray, on a terminal (the transcript
    is ``<base>/terminal.txt``, for tests/test_terminal.py); returns the dataset folder.

    Its ``TMPDIR`` is a fresh folder; what the build left there is ``<base>/tmpdir.json``
    (tests/test_pipeline_e2e.py: nothing).  Torch's compile cache stays where it is (a cache
    torch keeps on purpose, warm) and Ray's session folder (its logs, which Ray keeps) goes to
    a folder of its own, ``RAY_TMPDIR``."""
    import json

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    base = tmp_path_factory.mktemp("sample_build")
    out = base / "out"
    cmd = cli("run", "--config", SAMPLE_CONFIG, "--work-dir", base / "work", "--output", out)
    with short_temp_dir() as tmp, short_temp_dir() as ray_tmp:
        proc = run_on_terminal(cmd, base / "terminal.txt", timeout=1200, TMPDIR=str(tmp), RAY_TMPDIR=str(ray_tmp),
                               TORCHINDUCTOR_CACHE_DIR=default_cache_dir())
        (base / "tmpdir.json").write_text(json.dumps(folder_state(tmp)))
    (base / "run.log").write_text(proc.stdout)  # what the terminal showed (summaries included)
    logs = sorted((base / "work" / "logs").glob("build-*.log"))
    tail = logs[-1].read_text(errors="replace")[-5000:] if logs else ""
    assert proc.returncode == 0, f"sample build failed:\n{proc.stdout[-3000:]}\n--- log ---\n{tail}"
    return out


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
