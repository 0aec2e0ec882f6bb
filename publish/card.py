"""The dataset card (README.md): Hugging Face ``configs:`` header, statistics, how to rebuild."""
from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from publish.layout import CONFIGS, SPLITS

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import PipelineConfig


def card_header(shards: list[dict], pretty_name: str | None = None, tags: list[str] | None = None) -> str:
    """The YAML front matter of a dataset card for shards laid out as ``<folder>/<split>-*.parquet``.

    ``shards``: dicts with ``path``, ``config``, ``split``, ``rows``, ``bytes`` and ``arrow_bytes``.
    ``configs:`` maps each non-empty config to its split files (the Hugging Face convention);
    ``dataset_info:`` records the split sizes.  ``datasets`` keys its cache of a local folder on
    this header, so the sizes also make a rebuilt folder load fresh instead of from a stale cache.
    """
    configs, infos = [], []
    for name, folder in CONFIGS:
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


def render_card(config: "PipelineConfig", manifest: dict, models: list[str]) -> str:
    t, lengths = manifest["totals"], manifest["lengths"]
    lines = [card_header(manifest["shards"], config.run.name, ["dpo", "preference", "multimodal", "mmpr-forge"])]
    lines += [
        f"# {config.run.name}",
        "",
        "Multimodal preference pairs (image + question, chosen and rejected answer) built by "
        f"mmpr-forge {manifest['pipeline_version']} (config hash "
        f"`{manifest['config_hash']}`). Methods: MMPR correctness pairs and format negatives "
        "(InternVL2.5-MPO, arXiv 2411.10442), DropoutNTP (same paper), and mDPO conditional image "
        "pairs (arXiv 2406.11839).",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "pairs = load_dataset(\"<this folder>\")                 # text-contrast pairs (TRL DPOTrainer reads them as is)",
        "crops = load_dataset(\"<this folder>\", \"image_crop\")   # image-contrast pairs: use `rejected_images`",
        "```",
        "",
        "Columns: `id`, `prompt`/`chosen`/`rejected` (TRL conversational form), `images` and "
        "`rejected_images` (decoded to PIL), `method`, `source`, `question`, `provenance` (typed struct). "
        "The `image_crop` pairs have the same text on both sides and differ only in the image; they only "
        "carry signal for trainers that read `rejected_images` (ms-swift, mDPO-style), which is why they "
        "are a separate config.",
        "",
        "## Contents",
        "",
        f"Rows: **{manifest['rows']}** ({manifest['duplicates_dropped']} duplicate ids dropped).",
        "",
        "| config | split | rows | shards |",
        "|---|---|---:|---:|",
    ]
    for cfg, splits in manifest["splits"].items():
        for sp, n in splits.items():
            k = sum(1 for s in manifest["shards"] if s["config"] == cfg and s["split"] == sp)
            lines.append(f"| {cfg} | {sp} | {n} | {k} |")
    lines += ["", "Pairs per method:", "", "| method | rows |", "|---|---:|"]
    lines += [f"| {m} | {n} |" for m, n in t["method"].items()]
    methods = list(t["method"])
    lines += ["", "Pairs per source and method:", "",
              "| source | " + " | ".join(methods) + " | total |",
              "|---|" + "---:|" * (len(methods) + 1)]
    for s, by in t["source_method"].items():
        lines.append(f"| {s} | " + " | ".join(str(by.get(m, 0)) for m in methods) + f" | {sum(by.values())} |")
    lines += ["", "## Sources and model", ""]
    for src in config.sources:
        lines.append(f"- `{src.name}`: {src.format} `{src.path}` (answer type {src.answer_type}); "
                     f"{t['source'].get(src.name, 0)} pairs")
    for s in t["source"]:
        if not config.source(s):
            lines.append(f"- `{s}`: {t['source'][s]} pairs")
    m = config.model
    lines.append(f"- policy model: `{m.resolved_path}`" + (f" (revision {m.revision})" if m.revision else "")
                 + (f"; models in provenance: {', '.join(f'`{x}`' for x in models)}" if models else ""))
    lines += [
        "",
        "## Length statistics",
        "",
        "Characters of the chosen and rejected answers per method (longer is not better: LLaVA-RLHF, "
        "RLAIF-V), the rejected/chosen length ratio, and tokens from provenance "
        "(`chosen_tokens`/`rejected_tokens`).",
        "",
        "| method | rows | chosen chars mean / median / p90 | rejected chars mean / median / p90 "
        "| rejected/chosen p10 / median / p90 | rejected longer | chosen tokens mean / median / p90 "
        "| rejected tokens mean / median / p90 |",
        "|---|---:|---|---|---|---:|---|---|",
    ]
    for meth, d in lengths.items():
        c, r, q = d["chosen_chars"], d["rejected_chars"], d["rejected_over_chosen"]
        ct, rt = d["chosen_tokens"], d["rejected_tokens"]
        lf = d["rejected_longer_fraction"]
        lines.append(
            f"| {meth} | {d['rows']} | {_fmt(c, 'mean')} / {_fmt(c, 'median')} / {_fmt(c, 'p90')} "
            f"| {_fmt(r, 'mean')} / {_fmt(r, 'median')} / {_fmt(r, 'p90')} "
            f"| {_fmt(q, 'p10')} / {_fmt(q, 'median')} / {_fmt(q, 'p90')} "
            f"| {'-' if lf is None else f'{lf:.0%}'} "
            f"| {_fmt(ct, 'mean')} / {_fmt(ct, 'median')} / {_fmt(ct, 'p90')} "
            f"| {_fmt(rt, 'mean')} / {_fmt(rt, 'median')} / {_fmt(rt, 'p90')} |")
    lines += [
        "",
        "Ratio quantiles of rejected/chosen characters per method (p10 / p25 / median / p75 / p90):",
        "",
    ]
    for meth, d in lengths.items():
        q = d["rejected_over_chosen"]
        lines.append(f"- {meth}: " + " / ".join(_fmt(q, k) for k in ("p10", "p25", "median", "p75", "p90")))
    lines += [
        "",
        "## Files",
        "",
        "`manifest.json` lists every shard with its row count and SHA-256, the totals, the pipeline "
        "version and the resolved config."
        + (f" Trainer exports: {', '.join(f'`exports/{e}/`' for e in manifest['exports'])}."
           if manifest["exports"] else ""),
        "",
        "## Reproduce",
        "",
        "Save the config below as `config.yaml` and run:",
        "",
        "```bash",
        "python -m pipeline run --config config.yaml",
        "```",
        "",
        "The shards are a deterministic function of the inputs and the seed: a rebuild with the same "
        "config (hash above) and the same model writes byte-identical shards.",
        "",
        "```yaml",
        yaml.safe_dump(config.resolved(), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
