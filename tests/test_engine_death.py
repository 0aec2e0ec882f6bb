"""A dead vLLM engine core (CUDA OOM, NCCL timeout, Xid error on a GPU node; here a
SIGKILL of the EngineCore process in the middle of a generate) is retried on a new
engine -- never turned into quarantined rows -- and the output equals an undisturbed run."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import ROOT, SAMPLE_CONFIG, SMALL, CliRun, cli_env

# part-00001 starts while part-00000 is generating (the engine is fed across partitions)
KILL = "generate:part-00001:engine_core"


def _user_env(**env: str) -> dict[str, str]:
    """vLLM's logging as a user's shell has it (the Makefile and the test session turn it off)."""
    return {k: v for k, v in cli_env(**env).items() if k != "VLLM_CONFIGURE_LOGGING"}


def _outputs(out: Path) -> dict:
    data = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.parquet"))}
    quarantined = sum(pq.read_metadata(p).num_rows for p in (out / "quarantine").glob("*.parquet")) \
        if (out / "quarantine").exists() else 0
    return {"data": data, "quarantined": quarantined}


@pytest.fixture(scope="module")
def ingest(small_ingest_dir) -> Path:
    out = small_ingest_dir  # shared with tests/test_signals.py: read only
    assert len(list((out / "data").glob("*.parquet"))) >= 3
    return out


class Undisturbed(CliRun):
    """The undisturbed local generate, started in the background as soon as the module needs it:
    the first killed run compares with it only at its end, so the two (own output folders, build
    logs and engines) overlap instead of one waiting for the other."""

    def __init__(self, ingest: Path, out: Path) -> None:
        self.out = out
        super().__init__("stage", "generate", "--config", SAMPLE_CONFIG, "--executor", "local", "--input", ingest,
                         "--output", out, "--work-dir", out.parent / "work", *SMALL,
                         log=out.parent / "output.txt", env=_user_env())
        self._outputs = None

    def outputs(self) -> dict:
        if self._outputs is None:
            output = self.finish()
            # the local executor's engine lives in the CLI's process (README: "run one stage"): shutting
            # it down at exit prints none of vLLM's shutdown lines after the stage's own output
            for noise in ("[shutdown]", "force killing", "pid="):
                assert noise not in output, output[-3000:]
            got = _outputs(self.out)
            assert got["quarantined"] == 0 and got["data"]
            self._outputs = got
        return self._outputs


@pytest.fixture(scope="module")
def undisturbed(ingest, tmp_path_factory):
    run = Undisturbed(ingest, tmp_path_factory.mktemp("clean") / "gen")
    yield run
    run.stop()


class Killed(CliRun):
    """A generate whose engine core is SIGKILLed once, in the background (its own output folder,
    build logs and engine), its stdout and stderr in files of their own."""

    def __init__(self, ingest: Path, base: Path, executor: str) -> None:
        self.base = base
        super().__init__("stage", "generate", "--config", SAMPLE_CONFIG, "--executor", executor, "--input", ingest,
                         "--output", base / "gen", "--work-dir", base / "work", *SMALL, log=base / "stdout.txt",
                         errors=base / "stderr.txt",
                         env=_user_env(MMPR_FAULT=KILL, MMPR_FAULT_ONCE=str(base / "killed-once")))


@pytest.fixture(scope="module")
def killed(request, ingest, undisturbed, tmp_path_factory) -> dict[str, Killed]:
    """The killed runs of the executors the selected tests name, started together with the
    undisturbed one (each has its own output folder, build log and engine): none waits for another."""
    executors = sorted({item.callspec.params["executor"] for item in request.session.items
                        if item.module is request.module and hasattr(item, "callspec")})
    runs = {}
    try:
        for executor in executors:
            runs[executor] = Killed(ingest, tmp_path_factory.mktemp(f"killed_{executor}"), executor)
        yield runs
    finally:
        for run in runs.values():
            run.stop()


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_killed_engine_core_is_retried_not_quarantined(killed, undisturbed, executor):
    run = killed[executor]
    tmp_path, flag = run.base, run.base / "killed-once"
    stdout = run.finish()  # asserts it ended well
    stderr = run.errors.read_text(errors="replace")
    assert flag.exists(), "the engine core was never killed"
    # a worker's log lines go to the build log the terminal names (pipeline.run.terminal), the
    # driver's own to the terminal: the death must be reported in one of them
    logs = re.findall(r"^log: (\S+)", stdout + stderr, flags=re.M)
    assert logs, "the terminal does not name the build log"
    seen = stderr + "".join((ROOT / p).read_text(errors="replace") for p in logs)
    assert "engine died" in seen, seen[-3000:]
    assert _outputs(tmp_path / "gen") == undisturbed.outputs()
