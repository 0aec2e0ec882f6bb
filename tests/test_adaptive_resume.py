"""Kill an adaptive generate in the middle of its sampling rounds, rerun it, get the same responses.

``python -m pipeline stage generate`` runs with adaptive sampling and is
SIGKILLed (``pipeline.run.faults``) right after its first partition wrote its data
and before its marker -- while the other partitions' prompts are between
rounds in the same engine stream.  The rerun must redo exactly what was not
marked done and end with the responses an uninterrupted run draws (here: the
session engine, in process).
"""
from __future__ import annotations

import os
import signal
import subprocess

from helpers import ROOT, SAMPLE_CONFIG, cli, cli_env, make_config, markers, run_cli, stage_rows
from pipeline.files import storage
from pipeline.run.orchestrator import run_source
from pipeline.run.runner import Task, run_engine_tasks
from stages import make_stage

ADAPTIVE = {"enabled": True, "rounds": [2, 4], "all_right_after": 2, "no_gt_max": 2}
SETS = ["--set", "sources.0.limit=24", "--set", "sources.1.limit=8", "--set", "generate.n=4",
        "--set", "generate.max_tokens=48", "--set", "run.partition_rows=8", "--set", "scoring.max_pairs_per_prompt=3",
        "--set", "generate.adaptive={enabled: true, rounds: [2, 4], all_right_after: 2, no_gt_max: 2}",
        "--set", "model.engine_kwargs={max_num_seqs: 16}"]


def _cfg():
    return make_config(executor={"kind": "local"}, sources=[
        {"name": "sample_gt", "format": "jsonl", "path": "data/sample/gt.jsonl", "limit": 24},
        {"name": "sample_open", "format": "jsonl", "path": "data/sample/open.jsonl", "limit": 8}],
        generate={"n": 4, "max_tokens": 48, "adaptive": ADAPTIVE}, run={"partition_rows": 8},
        scoring={"max_pairs_per_prompt": 3})


def _rows(folder) -> dict:
    return {r["prompt_id"]: r for r in stage_rows(folder)}


def test_killed_adaptive_generate_resumes_to_the_same_responses(tiny_model, request, tmp_path):
    cfg = _cfg()
    ingest = tmp_path / "ingest"
    run_source(make_stage("ingest", cfg), str(ingest))
    parts = storage.list_files(str(ingest / "data"), ".parquet")
    assert len(parts) >= 3
    out = tmp_path / "gen"
    args = ["stage", "generate", "--config", SAMPLE_CONFIG, "--executor", "local", "--input", ingest,
            "--output", out, *SETS]
    # the killed run (its own process and engine) goes on while the baseline is drawn here, by the
    # session engine: asked for only now, so that when this test is the first to use it, it starts
    # beside the killed run's engine instead of before it
    with open(tmp_path / "killed.txt", "w") as sink:
        killed = subprocess.Popen(cli(*args), cwd=ROOT, env=cli_env(MMPR_FAULT="generate:1:group"), stdout=sink,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        engine = request.getfixturevalue("engine")
        baseline = tmp_path / "baseline"
        run_engine_tasks(make_stage("generate", cfg), [
            Task("generate", os.path.basename(u)[:-8], (u,), str(baseline), cfg.stage_hash("generate"))
            for u in parts], engine)
        killed.wait(timeout=900)
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
    assert killed.returncode == -signal.SIGKILL, (tmp_path / "killed.txt").read_text()[-3000:]
    assert len(markers(out)) == 0 and len(list((out / "data").glob("*.parquet"))) == 1

    rerun = run_cli(*args, env=cli_env(), timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert len(markers(out)) == len(parts)
    got, want = _rows(out), _rows(baseline)
    assert got.keys() == want.keys()
    for sid, row in want.items():
        assert got[sid]["responses"] == row["responses"], sid
        assert got[sid]["sampling"] == row["sampling"], sid
    assert any(len(r["responses"]) < 4 for r in got.values()), "no prompt stopped early: not adaptive"
