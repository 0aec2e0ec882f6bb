"""Kill the running pipeline anywhere, rerun it, get the same dataset.

The pipeline is run as ``python -m pipeline run`` in its own process group and
SIGKILLed: once from outside while the engine is generating, and at two
injected points (``pipeline.run.faults``) -- after a correctness partition wrote
its data but before its marker, and after the first final shard.  Each rerun
resumes; the final dataset must equal the one an uninterrupted run makes.

Worker deaths under Ray: an engine actor killed mid-partition is restarted and
its partition retried; a CPU worker that dies on every attempt gets its
partition quarantined after the bounded retries, and the run completes.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from helpers import ROOT, SAMPLE_CONFIG, SMALL, CliRun, cli, cli_env, markers, run_cli, stage_rows, start_early

#: every test here runs a whole build of its own or works on one (``clean_run``)
pytestmark = pytest.mark.build


def _args(base: Path, *extra: str) -> list:
    return ["run", "--config", SAMPLE_CONFIG, "--executor", "local",
            "--work-dir", base / "work", "--output", base / "out", *SMALL, *extra]


def _run(base: Path, **env: str) -> subprocess.CompletedProcess:
    return run_cli(*_args(base), env=cli_env(**env), timeout=900, start_new_session=True)


def _dataset(out: Path) -> dict:
    """Everything that defines the dataset: shard names and bytes, and the rows by id."""
    shards = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted((out / "data").rglob("*.parquet"))}
    ids = [i for p in sorted((out / "data").rglob("*.parquet")) for i in pq.read_table(p, columns=["id"])["id"].to_pylist()]
    return {"shards": shards, "ids": ids}


class CleanRun(CliRun):
    """An uninterrupted run of the small config, started at once in the background: the killed
    runs below need its dataset only at their end, so it runs beside them (its own work folder,
    output and engine) instead of before them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        super().__init__(*_args(base), log=base / "output.txt")

    def finished(self) -> Path:
        """Its base folder, once it has ended well."""
        self.finish()
        return self.base


@pytest.fixture(scope="module", autouse=True)
def _start_module_runs(request):
    """The module's background runs start together, when its first test starts (see ``start_early``)."""
    start_early(request, "clean_start", "ray_killed_start", "dead_actor_start")


@pytest.fixture(scope="module")
def clean_start(tiny_model, tmp_path_factory):
    run = CleanRun(tmp_path_factory.mktemp("clean"))
    yield run
    run.stop()


@pytest.fixture(scope="module")
def clean_run(clean_start) -> Path:
    """An uninterrupted run of the small config; returns its base folder."""
    return clean_start.finished()


@pytest.fixture(scope="module")
def uninterrupted(clean_run) -> dict:
    return _dataset(clean_run / "out")


def _markers(work: Path, stage: str) -> int:
    return len(markers(work / stage))


def test_killed_runs_resume_to_the_uninterrupted_dataset(clean_start, tmp_path):
    kills = 0
    # 1. SIGKILL from outside while generating (after the first partition finished)
    proc = subprocess.Popen(cli(*_args(tmp_path)), cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while _markers(tmp_path / "work", "generate") < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed during generation"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kills += 1
    n_parts = _markers(tmp_path / "work", "ingest")
    assert 1 <= _markers(tmp_path / "work", "generate") < n_parts
    assert not (tmp_path / "out" / "manifest.json").exists()

    # 2. rerun; die after a correctness partition wrote its data, before its marker
    proc = _run(tmp_path, MMPR_FAULT="correctness:2:group")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    kills += 1
    assert _markers(tmp_path / "work", "generate") == n_parts
    assert _markers(tmp_path / "work", "correctness") == 1
    assert len(list((tmp_path / "work" / "correctness" / "data").glob("*.parquet"))) == 2  # one orphan

    # 3. rerun; die after the first final shard was written
    proc = _run(tmp_path, MMPR_FAULT="write:1:group")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    kills += 1
    assert not (tmp_path / "out" / "manifest.json").exists()

    # 4. rerun to completion: the same dataset as the uninterrupted run
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = _dataset(tmp_path / "out")
    uninterrupted = _dataset(clean_start.finished() / "out")
    assert kills == 3
    assert len(got["ids"]) == len(set(got["ids"])), "duplicated rows after resume"
    assert sorted(got["ids"]) == sorted(uninterrupted["ids"]), "rows missing or extra after resume"
    assert got == uninterrupted
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert report["stages"]["generate"]["rows_in"] == sum(
        pq.read_metadata(p).num_rows for p in (tmp_path / "work" / "ingest" / "data").glob("*.parquet"))
    # the resumed run loads like any other
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "data" / "*.parquet"))["train"]
    assert ds.num_rows > 0


#: scheduling only (the same data): under Ray, one partition per engine call
RAY = ("--executor", "ray", "--set", "engine.partitions_per_call=1")


@pytest.fixture(scope="module")
def ray_killed_start(tiny_model, tmp_path_factory):
    """The Ray run that test_a_ray_run_killed_with_two_stages_in_flight_resumes kills, started with
    the module: generate's last partition is held (``hold`` fault, for longer than any wait here), so
    once correctness has finished a partition the run stays with both stages in flight until the
    test kills it, however long the tests before it take."""
    base = tmp_path_factory.mktemp("ray_killed")
    run = CliRun(*_args(base, *RAY), log=base / "output.txt",
                 env=cli_env(MMPR_FAULT="generate:part-00003:hold", MMPR_FAULT_HOLD_S="3600"))
    run.base = base
    yield run
    run.stop()


def test_a_ray_run_killed_with_two_stages_in_flight_resumes(uninterrupted, ray_killed_start):
    """Under Ray a partition moves on as soon as it is done (no stage barrier): correctness
    finishes partitions while generate still runs.  Generate's last partition is held
    (``hold`` fault) and the run is SIGKILLed once correctness has finished one; the rerun
    resumes both stages half done and makes the uninterrupted dataset."""
    tmp_path, proc = ray_killed_start.base, ray_killed_start.proc
    work = tmp_path / "work"
    deadline = time.time() + 600
    while _markers(work, "correctness") < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_parts = _markers(work, "ingest")
    assert n_parts >= 4  # part-00003 exists and is held
    # both stages were in flight: generate not finished, correctness already started
    assert _markers(work, "generate") < n_parts and _markers(work, "correctness") >= 1
    assert not (tmp_path / "out" / "manifest.json").exists()

    proc = run_cli(*_args(tmp_path, *RAY), env=cli_env(), timeout=900, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _dataset(tmp_path / "out") == uninterrupted
    report = json.loads((work / "report.json").read_text())
    assert report["stages"]["generate"]["rows_in"] == sum(
        pq.read_metadata(p).num_rows for p in (work / "dedup" / "data").glob("*.parquet"))


def test_a_rerun_of_a_finished_run_redoes_nothing(clean_run, uninterrupted):
    import re

    proc = _run(clean_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("ingest", "generate", "correctness", "dropout_ntp", "image_crop", "filter"):
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"[{stage}]"))
        total, done = map(int, re.search(r"partitions (\d+) \((\d+) already done\)", line).groups())
        assert total == done > 0, line
    assert _dataset(clean_run / "out") == uninterrupted


def _stage(stage: str, inp: Path, out: Path, *extra: str, env: dict, timeout: float):
    return run_cli("stage", stage, "--config", SAMPLE_CONFIG, "--input", inp, "--output", out, *SMALL, *extra,
                   env=env, timeout=timeout)


@pytest.fixture(scope="module")
def dead_actor_start(small_ingest_dir, tmp_path_factory):
    """The generate (on Ray) whose engine actor dies once, started with the module: it needs only
    the session's SMALL ingest (the clean run's ingest, made by ``stage ingest``)."""
    base = tmp_path_factory.mktemp("dead_actor")
    run = CliRun("stage", "generate", "--config", SAMPLE_CONFIG, "--input", small_ingest_dir, "--output",
                 base / "gen", "--work-dir", base / "work", *SMALL, "--set", "executor.max_retries=1",
                 log=base / "output.txt",
                 env=cli_env(MMPR_FAULT="generate:part-00001", MMPR_FAULT_ONCE=str(base / "killed-once")))
    run.base = base
    yield run
    run.stop()


def test_a_dead_engine_actor_is_restarted_and_its_partition_retried(small_ingest_dir, dead_actor_start):
    ingest, tmp_path = small_ingest_dir, dead_actor_start.base
    flag = tmp_path / "killed-once"
    dead_actor_start.finish()  # asserts it ended well
    assert flag.exists(), "the actor was never killed"
    attempts = json.loads((tmp_path / "gen" / "attempts" / "part-00001.json").read_text())["attempts"]
    assert attempts == 2
    rows = stage_rows(tmp_path / "gen")
    n_in = sum(pq.read_metadata(p).num_rows for p in (ingest / "data").glob("*.parquet"))
    assert len(rows) == n_in and len({r["prompt_id"] for r in rows}) == n_in


def test_a_worker_that_always_dies_gets_its_partition_quarantined(clean_run, tmp_path):
    gen = clean_run / "work" / "generate"
    proc = _stage("correctness", gen, tmp_path / "c", "--set", "executor.max_retries=1",
                  env=cli_env(MMPR_FAULT="correctness:part-00000"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    q = pq.read_table(tmp_path / "c" / "quarantine" / "part-00000.parquet").to_pylist()
    assert q and {r["reason"] for r in q} == {"worker_died"}
    assert len(q) == pq.read_metadata(gen / "data" / "part-00000.parquet").num_rows
    attempts = json.loads((tmp_path / "c" / "attempts" / "part-00000.json").read_text())["attempts"]
    assert attempts == 2
    # the other partitions went through
    assert len(markers(tmp_path / "c")) == len(list((gen / "data").glob("*.parquet")))
