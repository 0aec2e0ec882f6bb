"""The run report: rows in/out and quarantined per stage, tokens, pairs, time.

Built from the completion markers, so it is the same whether the run went
through in one go or was resumed, and it can be re-read at any time with
``python -m pipeline report --config ...``.
"""
from __future__ import annotations

import time

from pipeline import __version__, graph, storage
from pipeline.config import PipelineConfig
from pipeline.runner import stage_totals


def derived(stages: dict) -> dict:
    """Human-facing metrics from the raw counters of each stage (each stage's ``summarize``)."""
    out: dict = {}
    for name, totals in stages.items():
        if name in graph.load():
            summary = graph.stage_class(name).summarize(totals.get("counters", {}))
            if summary:
                out[name] = summary
    out["quarantined"] = {s: v["quarantined"] for s, v in stages.items() if v.get("quarantined")}
    return out


def build_report(config: PipelineConfig, timings: dict[str, float] | None = None) -> dict:
    stages = {}
    for stage in config.run.stages:
        if graph.stage_class(stage).kind == "dataset":  # no partition markers: its rows are in the manifest
            if timings and stage in timings:
                stages[stage] = {"wall_s_this_run": round(timings[stage], 3)}
            continue
        d = storage.join(config.run.work_dir, stage)
        stages[stage] = stage_totals(d).to_dict()
        if timings and stage in timings:
            stages[stage]["wall_s_this_run"] = round(timings[stage], 3)
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
        "summary": derived(stages),
    }


def format_summary(report: dict) -> str:
    """A few readable lines for the end of a run."""
    s = report["summary"]
    lines = [f"pairs by method: {report['pairs_by_method']}; tokens generated: {report['tokens_generated']}"]
    for name, summary in s.items():
        line = graph.stage_class(name).summary_line(summary) if name in graph.load() else None
        if line:
            lines.append(line)
    if s.get("quarantined"):
        lines.append(f"quarantined: {s['quarantined']}")
    return "\n".join(lines)


def write_report(config: PipelineConfig, timings: dict[str, float] | None = None) -> dict:
    report = build_report(config, timings)
    storage.write_json(storage.join(config.run.work_dir, "report.json"), report)
    if any(graph.stage_class(s).kind == "dataset" for s in config.run.stages) \
            and storage.exists(config.run.output_dir):
        storage.write_json(storage.join(config.run.output_dir, "report.json"), report)
    return report
