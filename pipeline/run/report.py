"""The run report: rows in/out and quarantined per stage, tokens, pairs, time.

Built from the completion markers, so it is the same whether the run went
through in one go or was resumed, and it can be re-read at any time with
``python -m pipeline report --config ...``.
"""
from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import __version__
from pipeline.core import graph
from pipeline.files import storage
from pipeline.config.settings import PipelineConfig
from pipeline.files.ownership import open_folder
from pipeline.run.runner import read_marker, stage_totals
from schemas import REPORT_IMAGES_SCHEMA, REPORT_IMAGES_SIDE

#: the dataset folder's thumbnails of removed prompts (``report_images``), beside ``report.json``
REPORT_IMAGES = "report_images.parquet"


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


def stage_span(out_dir: str, since: float) -> float | None:
    """Seconds from the first start to the last end of the stage's partitions that finished
    after ``since`` (epoch seconds; a partition's start is its marker's ``finished_at``
    less its ``wall_s``), or None when none did."""
    spans = []
    for uri in storage.list_files(storage.join(out_dir, "markers"), ".json"):
        m = read_marker(uri)
        if m and m.get("finished_at", 0) >= since:
            spans.append((m["finished_at"] - m["stats"].get("wall_s", 0.0), m["finished_at"]))
    return max(e for _, e in spans) - min(s for s, _ in spans) if spans else None


def run_timing(config: PipelineConfig, started: float, timings: dict[str, float]) -> dict:
    """The run's wall time against its first engine stage (generate in the usual graph).

    ``stage_s`` is that stage's wall time as the run measured it: from starting Ray and
    its engines (the model load included, as a stage-by-stage run always counted it) to
    its last partition's end.  ``span_s`` is its partitions
    alone (first start to last end, from this run's markers), without the model load.
    With no stage barrier and one model load, the rest of the build hides behind the
    generating: wall / stage_s near 1 means everything else cost little extra."""
    wall = time.time() - started
    out: dict = {"wall_s": round(wall, 3)}
    engine = [s for s in graph.ordered() if s in config.run.stages and graph.stage_class(s).kind == "engine"]
    if not engine or not timings.get(engine[0]):
        return out
    name = engine[0]
    out.update({"engine_stage": name, "stage_s": round(timings[name], 3),
                "wall_over_stage": round(wall / timings[name], 3)})
    span = stage_span(storage.join(config.run.work_dir, name), started)
    if span:
        out.update({"span_s": round(span, 3), "wall_over_span": round(wall / span, 3)})
    return out


def build_report(config: PipelineConfig, timings: dict[str, float] | None = None,
                 started: float | None = None, extra: dict | None = None) -> dict:
    """The run report; ``extra``: what the run measured besides (``object_store``: its peak)."""
    stages = {}
    for stage in config.run.stages:
        if graph.stage_class(stage).kind == "dataset":  # no partition markers: its rows are in the manifest
            kept = read_marker(storage.join(config.run.work_dir, stage, "stats.json"))  # orchestrator.dataset_stats_uri
            if kept:  # its last run's counters: write's seconds.plan/scatter/gather, task_seconds.*, peak_task_mb.*
                stages[stage] = {"counters": kept.get("counters", {}), "wall_s": kept.get("wall_s", 0.0)}
            if timings and stage in timings:
                stages.setdefault(stage, {})["wall_s_this_run"] = round(timings[stage], 3)
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
    report = {
        "pipeline_version": __version__, "config_hash": config.config_hash(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stages": stages, "pairs_by_method": pairs, "tokens_generated": tokens,
        "summary": derived(stages),
    }
    if started is not None:
        report["timing"] = run_timing(config, started, timings or {})
    report.update(extra or {})
    return report


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
    t = report.get("timing", {})
    if "wall_over_stage" in t:
        span = f"; its partitions alone {t['span_s']:.1f} s ({t['wall_over_span']:.2f}x)" if "span_s" in t else ""
        lines.append(f"run wall time {t['wall_s']:.1f} s = {t['wall_over_stage']:.2f}x the {t['engine_stage']} "
                     f"stage ({t['stage_s']:.1f} s from its engine start{span})")
    return "\n".join(lines)


def report_images(config: PipelineConfig) -> pa.Table | None:
    """The stages' ``REPORT_IMAGES_SIDE`` side outputs (thumbnails of removed prompts, bounded by
    each stage) as one table, by stage, group, kept before removed and prompt id; None when no
    stage wrote any."""
    files = [f for stage in config.run.stages if graph.stage_class(stage).kind != "dataset"
             for f in storage.list_files(storage.join(config.run.work_dir, stage, "side", REPORT_IMAGES_SIDE),
                                         ".parquet")]
    if not files:
        return None
    table = pa.concat_tables([storage.read_table(f).cast(REPORT_IMAGES_SCHEMA) for f in files])
    kept_first = pc.not_equal(table.column("role"), "kept")
    table = table.append_column("_order", kept_first)
    return table.sort_by([("stage", "ascending"), ("group", "ascending"), ("_order", "ascending"),
                          ("prompt_id", "ascending")]).drop_columns(["_order"])


def write_report(config: PipelineConfig, timings: dict[str, float] | None = None,
                 started: float | None = None, extra: dict | None = None) -> dict:
    """``report.json`` in the work folder and, after a build that wrote the dataset, in the dataset
    folder too, with ``REPORT_IMAGES`` beside it (the thumbnails the HTML report shows of the
    prompts removed before generation: the dataset folder has no other copy of them)."""
    report = build_report(config, timings, started, extra)
    storage.write_json(storage.join(config.run.work_dir, "report.json"), report)
    if any(graph.stage_class(s).kind == "dataset" for s in config.run.stages) \
            and storage.exists(config.run.output_dir):
        out = open_folder(config.run.output_dir, "dataset", "run.output_dir")
        out.reserve("report.json")
        storage.write_json(storage.join(config.run.output_dir, "report.json"), report)
        images = report_images(config)
        if images is not None:
            out.reserve(REPORT_IMAGES)
            storage.write_table(storage.join(config.run.output_dir, REPORT_IMAGES), images)
        else:  # none this build: a file of an earlier build would show its clusters
            out.remove(REPORT_IMAGES)
    return report
