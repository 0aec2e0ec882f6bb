"""The build as a user sees it on a terminal: bars, summaries, their warnings -- nothing else.

The session's sample build runs on a real pseudo-terminal (tests/conftest.py,
``sample_build``); these tests read its transcript and log file, so they cost
no build of their own.  The failing-stage test reuses that build's generate
output and runs only a CPU stage, made to fail.
"""
from __future__ import annotations

import re
import shutil

from helpers import SAMPLE_CONFIG, cli, run_on_terminal, terminal_lines

POOL_STAGES = ("generate", "correctness", "dropout_ntp", "image_crop", "filter")


def _log_named(lines: list[str]):
    from pathlib import Path

    named = [ln for ln in lines if ln.startswith("log: ")]
    assert len(named) == 1, lines
    return Path(named[0].split()[1])


def test_sample_build_shows_bars_summaries_and_little_else(sample_build):
    base = sample_build.parent
    lines = terminal_lines(base / "terminal.txt")
    text = "\n".join(lines)
    assert len(lines) < 40, text  # it was ~350 before Ray's and vLLM's output went to a file
    for stage in ("ingest",) + POOL_STAGES + ("write",):
        assert sum(ln.startswith(f"[{stage}]") for ln in lines) == 1, stage
    # the stages run at once (no barrier): one bar for all their partitions, finished
    bars = [ln for ln in lines if ln.startswith("\rpartitions: ")]  # tqdm starts each draw with a carriage return
    assert len(bars) == 1 and re.search(r"100%.*\| (\d+)/\1 ", bars[0].split("\r")[-1]), bars
    for noise in ("Attempted to load weight", "Running Dataset", "Active & requested resources", "(pid=",
                  "deprecated", "Loading safetensors", "NUMA", "tcmalloc", "Triton"):
        assert noise not in text, noise
    log = _log_named(lines)
    assert log.is_file() and log.parent == base / "work" / "logs"
    logged = log.read_text(errors="replace")
    # Ray's and vLLM's output (worker processes included) is in the log, not lost
    assert "_EngineWorker" in logged and "vllm" in logged.lower()
    # causes that were ours: float32 weights in a bfloat16 model, deprecated Ray Data arguments
    for ours in ("Attempted to load weight", "``concurrency`` is deprecated", "`ray_remote_args` is deprecated",
                 "`ray_remote_args_fn` is deprecated"):
        assert ours not in logged, ours


def test_a_failing_stage_shows_its_error(sample_build, tmp_path):
    """A partition whose worker dies every time: its error reaches the terminal, and the
    terminal stays short."""
    work = sample_build.parent / "work"
    for stage in ("ingest", "dedup", "generate"):
        shutil.copytree(work / stage, tmp_path / "work" / stage)
    cmd = cli("run", "--config", SAMPLE_CONFIG, "--stages", "ingest,dedup,generate,correctness",
              "--work-dir", tmp_path / "work", "--output", tmp_path / "out")
    proc = run_on_terminal(cmd, tmp_path / "terminal.txt", timeout=600, MMPR_FAULT="correctness:part-00000")
    lines = terminal_lines(tmp_path / "terminal.txt")
    text = "\n".join(lines)
    assert proc.returncode == 0, text
    assert re.search(r"ERROR: stage correctness: workers failed", text), text
    assert re.search(r"ERROR: partition part-00000 failed \d+ times: quarantining its rows", text), text
    assert re.search(r"^\[correctness\] .*quarantined [1-9]\d* \(worker_died: ", text, re.M), text
    assert len(lines) < 25, text
    assert _log_named(lines).parent == tmp_path / "work" / "logs"


def test_one_stage_ends_with_its_summary_lines(sample_build, tmp_path):
    """``stage correctness`` alone (README: run one stage) shows the partition summary and the
    stage's own line, as a whole run's summary has it."""
    work = sample_build.parent / "work"
    cmd = cli("stage", "correctness", "--config", SAMPLE_CONFIG, "--executor", "local", "--input", work / "generate",
              "--output", tmp_path / "pairs", "--work-dir", tmp_path / "work")
    proc = run_on_terminal(cmd, tmp_path / "terminal.txt", timeout=600)
    lines = terminal_lines(tmp_path / "terminal.txt")
    text = "\n".join(lines)
    assert proc.returncode == 0, text
    assert sum(ln.startswith("[correctness] partitions ") for ln in lines) == 1, text
    whole_run = [ln for ln in (sample_build.parent / "run.log").read_text().splitlines()
                 if ln.startswith("policy accuracy: ")]
    assert [ln for ln in lines if ln.startswith("policy accuracy: ")] == whole_run and whole_run, text
