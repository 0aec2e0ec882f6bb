"""The run report: rows in/out and quarantined per stage, tokens, pairs, time.

Built from the completion markers, so it is the same whether the run went
through in one go or was resumed, and it can be re-read at any time with
``python -m pipeline report --config ...``.
"""
from __future__ import annotations

import time

from pipeline import __version__, storage
from pipeline.config import PipelineConfig
from pipeline.runner import stage_totals


def build_report(config: PipelineConfig, timings: dict[str, float] | None = None) -> dict:
    stages = {}
    for stage in config.run.stages:
        if stage == "write":
            continue
        d = storage.join(config.run.work_dir, stage)
        stages[stage] = stage_totals(d).to_dict()
        if timings and stage in timings:
            stages[stage]["wall_s_this_run"] = round(timings[stage], 3)
    if timings and "write" in timings:
        stages["write"] = {"wall_s_this_run": round(timings["write"], 3)}
    pairs: dict[str, int] = {}
    for s in stages.values():
        for k, v in s.get("counters", {}).items():
            if k.startswith("pairs."):
                pairs[k[6:]] = pairs.get(k[6:], 0) + int(v)
    tokens = sum(int(s.get("counters", {}).get("tokens_generated", 0)) for s in stages.values())
    return {
        "pipeline_version": __version__, "config_hash": config.config_hash(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stages": stages, "pairs_by_method": pairs, "tokens_generated": tokens,
    }


def write_report(config: PipelineConfig, timings: dict[str, float] | None = None) -> dict:
    report = build_report(config, timings)
    storage.write_json(storage.join(config.run.work_dir, "report.json"), report)
    if "write" in config.run.stages and storage.exists(config.run.output_dir):
        storage.write_json(storage.join(config.run.output_dir, "report.json"), report)
    return report
