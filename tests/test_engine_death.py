"""A dead vLLM engine core (CUDA OOM, NCCL timeout, Xid error on a GPU node; here a
SIGKILL of the EngineCore process in the middle of a generate) is retried on a new
engine -- never turned into quarantined rows -- and the output equals an undisturbed run."""
from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import ROOT, SAMPLE_CONFIG, SMALL, CliRun, cli_env, run_cli

# part-00001 starts while part-00000 is generating (the engine is fed across partitions)
KILL = "generate:part-00001:engine_core"


def _generate(inp: Path, out: Path, executor: str, **env: str) -> subprocess.CompletedProcess:
    # vLLM's logging as a user's shell has it (the Makefile and the test session turn it off)
    user_env = {k: v for k, v in cli_env(**env).items() if k != "VLLM_CONFIGURE_LOGGING"}
    return run_cli("stage", "generate", "--config", SAMPLE_CONFIG, "--executor", executor, "--input", inp,
                   "--output", out, *SMALL, env=user_env, timeout=900)


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
        user_env = {k: v for k, v in cli_env().items() if k != "VLLM_CONFIGURE_LOGGING"}  # as _generate
        self.out = out
        super().__init__("stage", "generate", "--config", SAMPLE_CONFIG, "--executor", "local", "--input", ingest,
                         "--output", out, "--work-dir", out.parent / "work", *SMALL,
                         log=out.parent / "output.txt", env=user_env)
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


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_killed_engine_core_is_retried_not_quarantined(ingest, undisturbed, tmp_path, executor):
    flag = tmp_path / "killed-once"
    proc = _generate(ingest, tmp_path / "gen", executor, MMPR_FAULT=KILL, MMPR_FAULT_ONCE=str(flag))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert flag.exists(), "the engine core was never killed"
    # a worker's log lines go to the build log the terminal names (pipeline.run.terminal), the
    # driver's own to the terminal: the death must be reported in one of them
    logs = re.findall(r"^log: (\S+)", proc.stdout + proc.stderr, flags=re.M)
    assert logs, "the terminal does not name the build log"
    seen = proc.stderr + "".join((ROOT / p).read_text(errors="replace") for p in logs)
    assert "engine died" in seen, seen[-3000:]
    assert _outputs(tmp_path / "gen") == undisturbed.outputs()
