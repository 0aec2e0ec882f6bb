"""The dataset card (README.md): Hugging Face ``configs:`` header, statistics, how to rebuild."""
from __future__ import annotations

from importlib import resources
from string import Template
from typing import TYPE_CHECKING

import yaml

from publish import layout
from publish.layout import SPLITS

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.settings import PipelineConfig


def card_header(shards: list[dict], pretty_name: str | None = None, tags: list[str] | None = None) -> str:
    """The YAML front matter of a dataset card for shards laid out as ``<folder>/<split>-*.parquet``.

    ``shards``: dicts with ``path``, ``config``, ``split``, ``rows``, ``bytes`` and ``arrow_bytes``.
    ``configs:`` maps each non-empty config to its split files (the Hugging Face convention);
    ``dataset_info:`` records the split sizes.  ``datasets`` keys its cache of a local folder on
    this header, so the sizes also make a rebuilt folder load fresh instead of from a stale cache.
    """
    configs, infos = [], []
    # the prompt table (publish.prompt_table) is a config of its own when its files are listed
    for name, folder in (*layout.configs(), ("prompts", "prompts")):
        mine = [s for s in shards if s["config"] == name]
        splits = sorted({s["split"] for s in mine}, key=lambda sp: (SPLITS.index(sp) if sp in SPLITS else 99, sp))
        if not splits:
            continue  # an empty config is left out of the card
        entry = {"config_name": name}
        if name == "default":
            entry["default"] = True
        entry["data_files"] = [{"split": sp, "path": f"{folder}/{sp}-*.parquet"} for sp in splits]
        configs.append(entry)
        infos.append({
            "config_name": name,
            "splits": [{"name": sp,
                        "num_bytes": sum(s["arrow_bytes"] for s in mine if s["split"] == sp),
                        "num_examples": sum(s["rows"] for s in mine if s["split"] == sp)} for sp in splits],
            "download_size": sum(s["bytes"] for s in mine),
            "dataset_size": sum(s["arrow_bytes"] for s in mine),
        })
    header: dict = {}
    if pretty_name:
        header["pretty_name"] = pretty_name
    if tags:
        header["tags"] = tags
    header["configs"] = configs
    header["dataset_info"] = infos
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n"


def _fmt(d: dict, key: str) -> str:
    v = d.get(key)
    return "-" if v is None else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}")


def stage_sections(config: "PipelineConfig") -> list[str]:
    """What each row stage of the build says on the card (``Stage.card_section``), from the totals of
    its markers in the work folder, in pipeline order."""
    from pipeline.core import graph
    from pipeline.files import storage
    from pipeline.run.runner import stage_totals

    out = []
    for name in config.run.stages:
        cls = graph.stage_class(name)
        if cls.kind == "dataset":
            continue
        summary = cls.summarize(stage_totals(storage.join(config.run.work_dir, name)).counters)
        text = cls.card_section(config, summary) if summary else None
        if text:
            out.append(text.rstrip() + "\n")
    return out


def render_card(config: "PipelineConfig", manifest: dict, models: list[str], sections: list[str] = ()) -> str:
    """The card: ``assets/card.md`` (the prose) filled with the tables of this dataset; ``sections``:
    the stages' own (``stage_sections``)."""
    t, lengths = manifest["totals"], manifest["lengths"]
    splits = [f"| {cfg} | {sp} | {n} | "
              f"{sum(1 for s in manifest['shards'] if s['config'] == cfg and s['split'] == sp)} |"
              for cfg, by_split in manifest["splits"].items() for sp, n in by_split.items()]
    methods = list(t["method"])
    source_method = ["| source | " + " | ".join(methods) + " | total |", "|---|" + "---:|" * (len(methods) + 1)]
    source_method += [f"| {s} | " + " | ".join(str(by.get(m, 0)) for m in methods) + f" | {sum(by.values())} |"
                      for s, by in t["source_method"].items()]
    sources = [f"- `{src.name}`: {src.format} `{src.path}` (answer type {src.answer_type}); "
               f"{t['source'].get(src.name, 0)} pairs" for src in config.sources]
    sources += [f"- `{s}`: {t['source'][s]} pairs" for s in t["source"] if not config.source(s)]
    m = config.model
    sources.append(f"- policy model: `{m.resolved_path}`" + (f" (revision {m.revision})" if m.revision else "")
                   + (f"; models in provenance: {', '.join(f'`{x}`' for x in models)}" if models else ""))
    triple = lambda d, a, b, c: f"{_fmt(d, a)} / {_fmt(d, b)} / {_fmt(d, c)}"  # noqa: E731
    rows = []
    for meth, d in lengths.items():
        lf = d["rejected_longer_fraction"]
        rows.append(
            f"| {meth} | {d['rows']} | {triple(d['chosen_chars'], 'mean', 'median', 'p90')} "
            f"| {triple(d['rejected_chars'], 'mean', 'median', 'p90')} "
            f"| {triple(d['rejected_over_chosen'], 'p10', 'median', 'p90')} "
            f"| {'-' if lf is None else f'{lf:.0%}'} "
            f"| {triple(d['chosen_tokens'], 'mean', 'median', 'p90')} "
            f"| {triple(d['rejected_tokens'], 'mean', 'median', 'p90')} |")
    ratios = [f"- {meth}: " + " / ".join(_fmt(d["rejected_over_chosen"], k) for k in ("p10", "p25", "median", "p75", "p90"))
              for meth, d in lengths.items()]
    diversity = [f"| {meth} | {d['distinct_chosen']} | {d['pairs_per_chosen']:.2f} | {d['distinct_rejected'] or '-'} "
                 f"| {'-' if d['pairs_per_rejected'] is None else format(d['pairs_per_rejected'], '.2f')} "
                 f"| {d['samples_per_chosen']:.2f} |"
                 for meth, d in manifest.get("diversity", {}).items()]
    # the export stage runs after write: the card points at its index rather than naming formats
    exports = " Trainer exports, when the build makes them, are under `exports/<format>/`, listed in `exports/export.json`."
    prompts = manifest.get("prompts") or {"files": []}
    template = (resources.files("publish") / "assets" / "card.md").read_text(encoding="utf-8")
    lines = lambda items: "".join(f"{x}\n" for x in items)  # noqa: E731 -- a table's rows, each ending a line
    return Template(template).substitute(
        header=card_header(manifest["shards"] + prompts["files"], config.run.name, ["dpo", "preference", "multimodal", "mmpr-forge"]),
        name=config.run.name, version=manifest["pipeline_version"], config_hash=manifest["config_hash"],
        rows=manifest["rows"], duplicates=manifest["duplicates_dropped"], splits_table=lines(splits),
        methods_table=lines(f"| {m} | {n} |" for m, n in t["method"].items()),
        source_method_table="\n".join(source_method), sources_list="\n".join(sources),
        cleaning="## Prompts removed before generation\n\n" + "\n".join(sections) + "\n" if sections else "",
        lengths_table=lines(rows), ratio_list=lines(ratios), diversity_table=lines(diversity), exports_note=exports,
        prompts_section=prompts_section(prompts),
        config_yaml=yaml.safe_dump(config.resolved(), sort_keys=False).rstrip())


def prompts_section(prompts: dict) -> str:
    """The card's section on the prompt table (``publish.prompt_table``): what it holds, how
    to read its counts, its pass-rate histogram."""
    if not prompts.get("files"):
        return "No prompt table: the correctness stage did not run in this build.\n"
    hist = prompts.get("pass_rate_histogram") or []
    bins = " | ".join(f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(len(hist)))
    return (
        f"`prompts/*.parquet` (config `prompts`: `load_dataset(\"<this folder>\", \"prompts\")`) has one row per "
        f"generated prompt: **{prompts['rows']}** prompts, {prompts['with_ground_truth']} with ground truth. "
        "Columns: `prompt_id` (the pairs' `provenance.prompt_id`), `source`, `question`, `prompt` (the conversation "
        "as sent, in its template `template_id`), `images`, `answer`, `answer_type`, `choices`, `samples_drawn`, "
        "`correct` / `right` / `wrong` / `unparseable` (right and wrong: usable as chosen and as rejected; "
        "`conflicting` and `wrong_states_truth` were set aside), `pass_rate` = correct / samples_drawn with its "
        "Wilson 95% interval `pass_rate_low` / `pass_rate_high`, `stop_reason`, `model` / `model_revision`, "
        "`sampling`, `seeds`, and `scoring` (the settings the verdicts used; `methods/reward.py` gives the same "
        "verdict as an RL reward). Prompts without ground truth have null counts and pass rate.\n\n"
        "**Reading the counts under adaptive sampling**: a prompt stops drawing once its pairs are decided "
        "(`stop_reason`: `enough_pairs`, `all_right`, `all_wrong`, `budget`, ...), so `samples_drawn` varies and a "
        "pass rate of 1.0 may be 4 of 4. The early stop depends on the outcomes, so the rate of a stopped prompt "
        "is slightly biased towards its stopping rule; use the interval (or keep prompts with enough "
        "`samples_drawn`) rather than the rate alone. Under fixed-N sampling (`stop_reason` `fixed_n`) every "
        "prompt drew `generate.n` samples.\n\n"
        f"Prompts with ground truth per pass-rate bin:\n\n| {bins} |\n|{'---:|' * len(hist)}\n"
        f"| {' | '.join(str(n) for n in hist)} |\n")
