"""Tune one stage of a finished build: exactly that stage and its downstream stages rerun.

A real build (local executor, the tiny model through vLLM, small sources) is
finished once; then one stage parameter after another is changed and the
pipeline rerun.  After each rerun, the stages whose partition markers were
rewritten must be exactly the changed stage and the stages downstream of it
in the real graph; every other stage's markers stay as they were.  At the
end, the dataset equals a fresh build with the final config.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from helpers import finished_at, make_config, shard_hashes
from pipeline.run.orchestrator import run_pipeline

STAGES = ["ingest", "generate", "correctness", "dropout_ntp", "image_crop", "filter", "write"]
BASE = {
    "executor": {"kind": "local"},
    "generate": {"n": 4, "max_tokens": 32},
    "dropout_ntp": {"max_tokens": 32},
    "write": {"shard_rows": 40}, "export": {"formats": []},
}
#: (change, stages whose markers must be rewritten) -- applied one after the other
STEPS = [
    ({"generate": {"temperature": 0.7}}, {"generate", "correctness", "dropout_ntp", "image_crop", "filter"}),
    ({"scoring": {"max_pairs_per_prompt": 2}}, {"correctness", "filter"}),
    ({"dropout_ntp": {"temperature": 0.5}}, {"dropout_ntp", "filter"}),
    ({"image_crop": {"fraction": 0.9}}, {"image_crop", "filter"}),
    ({"filter": {"require_final_answer": False}}, {"filter"}),
    ({"write": {"shard_rows": 7}}, set()),
    ({"ingest": {"max_question_chars": 300}}, set(STAGES) - {"write"}),
]


def _config(sections: dict, base: Path, sample_data: Path):
    return make_config(
        run={"stages": STAGES, "partition_rows": 8, "work_dir": str(base / "work"),
             "output_dir": str(base / "out")},
        sources=[{"name": "sample_gt", "format": "jsonl", "path": str(sample_data / "gt.jsonl"), "limit": 12},
                 {"name": "sample_open", "format": "jsonl", "path": str(sample_data / "open.jsonl"), "limit": 6}],
        **sections)


def _markers(work: Path) -> dict[str, dict[str, float]]:
    return {s: finished_at(work / s) for s in STAGES if s != "write"}


def _merge(sections: dict, change: dict) -> dict:
    out = copy.deepcopy(sections)
    for k, v in change.items():
        out[k] = {**out.get(k, {}), **v}
    return out


@pytest.mark.build  # a whole build, rerun after each change
def test_tuning_one_stage_reruns_it_and_its_downstream_only(tiny_model, sample_data, tmp_path):
    sections = dict(BASE)
    run_pipeline(_config(sections, tmp_path, sample_data))
    before = _markers(tmp_path / "work")
    assert all(before.values()), before
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for change, expected in STEPS:
        sections = _merge(sections, change)
        run_pipeline(_config(sections, tmp_path, sample_data))
        after = _markers(tmp_path / "work")
        rerun = {s for s in after if after[s] != before[s]}
        assert rerun == expected, (change, rerun)
        assert all(after.values()), after
        again = json.loads((tmp_path / "out" / "manifest.json").read_text())
        if "write" in change:  # write always rewrites the dataset; the new shard size shows
            assert len(again["shards"]) > len(manifest["shards"]) and again["rows"] == manifest["rows"]
        before, manifest = after, again
    fresh = tmp_path / "fresh"
    run_pipeline(_config(sections, fresh, sample_data))
    assert shard_hashes(fresh / "out") == shard_hashes(tmp_path / "out")
