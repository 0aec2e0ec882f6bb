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


#: DropoutNTP cost reported by the MMPR paper, and RLAIF-V's divide-and-conquer labelling
MMPR_TOKENS_PER_PAIR = {"dropout_ntp (MMPR paper)": 571.2, "rlaif_v (MMPR paper)": 992.7}


def _prefixed(counters: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sorted(counters.items()) if k.startswith(prefix)}


def derived(stages: dict) -> dict:
    """Human-facing metrics computed from the raw counters of each stage."""
    out: dict = {}
    c = stages.get("correctness", {}).get("counters", {})
    if c.get("responses"):
        acc = {}
        for key, total in _prefixed(c, "accuracy.").items():
            if key.endswith(".total") and total:
                name = key[: -len(".total")]
                acc[name] = round(c.get(f"accuracy.{name}.correct", 0) / total, 4)
        hist = {int(k): v for k, v in _prefixed(c, "pairs_per_prompt.").items()}
        out["correctness"] = {
            "policy_accuracy": acc,
            "format_error_rate": round(c.get("responses.format_error", 0) / c["responses"], 4),
            "prompts_all_wrong": c.get("prompts.all_wrong", 0),
            "prompts_all_correct": c.get("prompts.all_correct", 0),
            # responses kept out of pairs: several different final answers / the truth in an earlier one
            "set_aside": {k: c.get(f"responses.{k}", 0) for k in ("conflicting_answers", "wrong_states_truth")},
            "pairs_per_prompt": dict(sorted(hist.items())),
            "mean_chars": {m: {side: round(c.get(f"chars.{m}.{side}", 0) / max(c.get(f"pairs.{m}", 0), 1), 1)
                               for side in ("chosen", "rejected")}
                           for m in ("correctness", "format") if c.get(f"pairs.{m}")},
        }
    d = stages.get("dropout_ntp", {}).get("counters", {})
    if d.get("pairs.dropout_ntp"):
        pairs = d["pairs.dropout_ntp"]
        out["dropout_ntp"] = {
            "pairs": pairs,
            "generated_tokens_per_pair": round(
                (d.get("dropout_ntp.chosen_tokens", 0) + d.get("dropout_ntp.continuation_tokens", 0)) / pairs, 1),
            "continuation_tokens_per_pair": round(d.get("dropout_ntp.continuation_tokens", 0) / pairs, 1),
            "reference_tokens_per_pair": MMPR_TOKENS_PER_PAIR,
            "dropped": _prefixed(d, "dropped."),
        }
    i = stages.get("image_crop", {}).get("counters", {})
    if i:
        out["image_crop"] = {"pairs": i.get("pairs.image_crop", 0), "dropped": _prefixed(i, "dropped."),
                             "crops_retried": i.get("crops.retried", 0)}
    f = stages.get("filter", {}).get("counters", {})
    if f:
        out["filter"] = {
            "failed_rules": _prefixed(f, "filter."),
            "removed_pairs": _prefixed(f, "removed."),
            "kept_pairs": _prefixed(f, "kept."),
            "length_ratio_before": _prefixed(f, "length_ratio.before."),
            "length_ratio_after": _prefixed(f, "length_ratio.after."),
        }
    text_only = stages.get("ingest", {}).get("counters", {}).get("text_only", 0)
    if text_only:  # kept for correctness pairs; the image methods skip them
        out["text_only"] = {"prompts": text_only, **{
            f"skipped_by_{m}": stages.get(m, {}).get("counters", {}).get("skipped.text_only", 0)
            for m in ("dropout_ntp", "image_crop") if m in stages}}
    out["quarantined"] = {s: v["quarantined"] for s, v in stages.items() if v.get("quarantined")}
    return out


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
        "summary": derived(stages),
    }


def format_summary(report: dict) -> str:
    """A few readable lines for the end of a run."""
    s = report["summary"]
    lines = [f"pairs by method: {report['pairs_by_method']}; tokens generated: {report['tokens_generated']}"]
    if "correctness" in s:
        c = s["correctness"]
        acc = ", ".join(f"{k} {v:.0%}" for k, v in c["policy_accuracy"].items())
        lines.append(f"policy accuracy: {acc}; format errors {c['format_error_rate']:.1%}; "
                     f"prompts all wrong {c['prompts_all_wrong']}, all correct {c['prompts_all_correct']}")
    if "dropout_ntp" in s:
        d = s["dropout_ntp"]
        lines.append(f"dropout_ntp: {d['generated_tokens_per_pair']} generated tokens per pair "
                     f"(MMPR paper: 571.2; RLAIF-V: 992.7)")
    if "filter" in s:
        f = s["filter"]
        lines.append(f"filter removed {sum(f['removed_pairs'].values())} pairs; failed rules {f['failed_rules']}; "
                     f"rejected/chosen length ratio after: {f['length_ratio_after']}")
    if "text_only" in s:
        lines.append(f"text-only prompts: {s['text_only']}")
    if s.get("quarantined"):
        lines.append(f"quarantined: {s['quarantined']}")
    return "\n".join(lines)


def write_report(config: PipelineConfig, timings: dict[str, float] | None = None) -> dict:
    report = build_report(config, timings)
    storage.write_json(storage.join(config.run.work_dir, "report.json"), report)
    if "write" in config.run.stages and storage.exists(config.run.output_dir):
        storage.write_json(storage.join(config.run.output_dir, "report.json"), report)
    return report
