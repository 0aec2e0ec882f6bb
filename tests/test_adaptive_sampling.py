"""Adaptive sampling through the real vLLM engine with the tiny model.

The responses an adaptive run draws must be exactly the first ones a fixed-N
run draws (sample i has the seed ``seed + i`` whatever round draws it), and
each prompt must stop for the reason its samples give.
"""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from helpers import make_config
from methods.quality import usable_as_dropout_chosen
from methods.scoring import score_responses
from pipeline.files import storage
from pipeline.run.orchestrator import run_source
from pipeline.run.runner import Task, run_engine_tasks
from pipeline.config.templates import extraction_styles
from stages import make_stage

N = 8
ADAPTIVE = {"enabled": True, "rounds": [2, 4, 8], "all_right_after": 2, "no_gt_max": 3}


def _cfg(adaptive: dict | None = None):
    generate = {"n": N, "max_tokens": 48, **({"adaptive": adaptive} if adaptive else {})}
    return make_config(executor={"kind": "local"}, generate=generate, scoring={"max_pairs_per_prompt": 3, "max_pairs_per_response": 2},
                       run={"partition_rows": 24, "seed": 11})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_data, engine):
    """Both sample partitions (ground truth, open) streamed through one engine, fixed N then adaptive."""
    ingest = tmp_path_factory.mktemp("ingest")
    run_source(make_stage("ingest", _cfg()), str(ingest))
    files = storage.list_files(str(ingest / "data"), ".parquet")
    parts = [files[0], files[-1]]
    out = {}
    for mode, cfg in (("fixed", _cfg()), ("adaptive", _cfg(ADAPTIVE))):
        folder = tmp_path_factory.mktemp(mode)
        tasks = [Task("generate", f"part-{i}", (uri,), str(folder), cfg.stage_hash("generate"))
                 for i, uri in enumerate(parts)]
        stats = run_engine_tasks(make_stage("generate", cfg), tasks, engine)
        rows = [r for t in tasks for r in pq.read_table(t.data_uri()).to_pylist()]
        out[mode] = (cfg, stats, {r["prompt_id"]: r for r in rows})
    return out


def test_adaptive_draws_exactly_the_first_fixed_n_samples(runs):
    _, _, fixed = runs["fixed"]
    _, _, adaptive = runs["adaptive"]
    assert adaptive.keys() == fixed.keys()
    fewer = 0
    for sid, row in adaptive.items():
        drawn = row["responses"]
        assert 1 <= len(drawn) <= N
        fewer += len(drawn) < N
        # response by response: same text, seed, tokens, finish reason as the fixed run's first ones
        assert drawn == fixed[sid]["responses"][: len(drawn)], sid
        assert row["sampling"]["rounds"][-1] == len(drawn) and row["sampling"]["n"] == N
        assert fixed[sid]["sampling"]["rounds"] is None and fixed[sid]["sampling"]["stop_reason"] is None
    assert fewer >= len(adaptive) // 3, "adaptive sampling should stop early on many prompts"


def test_each_prompt_stops_for_the_reason_its_samples_give(runs):
    cfg, _, adaptive = runs["adaptive"]
    styles = extraction_styles(cfg)
    for row in adaptive.values():
        reason, n = row["sampling"]["stop_reason"], len(row["responses"])
        if not row["answer"]:
            ok = [usable_as_dropout_chosen(r["text"], r["finish_reason"]) for r in row["responses"]]
            assert reason == ("no_gt_chosen" if ok[-1] else "no_gt_cap"), row["prompt_id"]
            assert not any(ok[:-1]) and (ok[-1] or n == ADAPTIVE["no_gt_max"])
            continue
        scored = score_responses(row, cfg.scoring, cfg.source(row["source"]), styles)
        right = sum(s.usable_chosen for s in scored)
        wrong = sum(s.usable_rejected for s in scored)
        if reason == "enough_pairs":
            assert min(right * min(2, wrong), wrong * min(2, right)) >= 3
        elif reason == "all_right":
            assert right == n == 2
        elif reason == "all_wrong":
            assert right == 0 and n == N
        else:
            assert reason == "budget" and n == N and right


def test_round_counters_add_up(runs):
    _, stats, adaptive = runs["adaptive"]
    c = stats.counters
    drawn = sum(len(r["responses"]) for r in adaptive.values())
    assert c["responses"] == drawn == sum(v for k, v in c.items() if k.startswith("adaptive.round.")
                                          and k.endswith(".samples"))
    assert c["adaptive.round.1.open"] == c["adaptive.prompts"] == len(adaptive)
    assert c["adaptive.budget_samples"] == N * len(adaptive)
    assert sum(v for k, v in c.items() if k.startswith("adaptive.stop.")) == len(adaptive)
    summary = make_stage("generate", runs["adaptive"][0]).summarize(c)
    assert summary["samples_drawn"] == drawn and summary["tokens_saved_estimate"] > 0
    assert [r["round"] for r in summary["rounds"]] == sorted(r["round"] for r in summary["rounds"])


def test_fixed_n_output_is_unchanged_by_the_adaptive_code(runs, engine, tmp_path):
    """Fixed N keeps one SamplingParams(n=N) per prompt: every prompt has N responses with seeds seed+i."""
    _, stats, fixed = runs["fixed"]
    for row in fixed.values():
        seeds = [r["seed"] for r in row["responses"]]
        assert seeds == [row["sampling"]["seed"] + i for i in range(N)]
    assert not any(k.startswith("adaptive.") for k in stats.counters)
