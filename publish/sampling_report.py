"""The HTML report's sampling section: adaptive rounds and per-prompt pass rates.

Read from the run report (the generate and correctness stages' summaries), so
it costs no scan of the dataset.  Under fixed-N sampling only the pass-rate
histogram is shown.
"""
from __future__ import annotations

from publish import svg_plots as plots
from publish.html_cards import esc
from publish.html_sections import _table

_STOPS = {"enough_pairs": "enough pairs", "all_right": "all right (too easy)", "all_wrong": "all wrong",
          "budget": "budget spent", "no_gt_chosen": "no-GT chosen found", "no_gt_cap": "no-GT cap reached"}


def sampling_html(summary: dict) -> str:
    """The section's HTML from the run report's ``summary`` ('' when there is nothing to show)."""
    adaptive = summary.get("generate") or {}
    hist = (summary.get("correctness") or {}).get("pass_rate_histogram") or {}
    parts = []
    prior = adaptive.get("prior")
    if prior:
        why = ", ".join(f"{k.replace('_', ' ')}: {v:,}" for k, v in prior["skipped_by_reason"].items()) or "none"
        rules = prior.get("judged_by") or {}
        judged = (f' Judged by the prior pass rate (sampled there exactly as here): {rules.get("point", 0):,}; by the '
                  f'whole 95% interval: {rules.get("interval", 0):,}.') if rules else ""
        parts.append(f'<p class="note">Prior build (generate.prior): {prior["skipped"]:,} prompts skipped before '
                     f'sampling as outside rl_prompts.band ({esc(why)}; the prior spent '
                     f'{prior["skipped_prior_tokens"]:,} generated tokens on them; their rows carried into the prompt '
                     f'table: {prior.get("carried", 0):,}); {prior["sampled"]:,} sampled again, {prior["unseen"]:,} '
                     f'not in the prior.{judged}</p>')
    if adaptive.get("prompts"):
        rounds = [[str(r["round"]), f"{r.get('open', 0):,}", f"{r.get('samples', 0):,}", f"{r.get('tokens', 0):,}"]
                  for r in adaptive["rounds"]]
        stops = [[esc(_STOPS.get(k, k)), f"{v:,}"] for k, v in adaptive["stopped"].items()]
        parts.append(
            f'<p class="note">{adaptive["samples_drawn"]:,} samples for {adaptive["prompts"]:,} prompts '
            f'({adaptive["samples_per_prompt"]} per prompt) where fixed-N sampling draws '
            f'{adaptive["fixed_n_samples"]:,}: about {adaptive["tokens_saved_estimate"]:,} generated tokens saved '
            f'(at this run\'s mean tokens per sample).</p>'
            + _table(["round", "prompts still open", "samples drawn", "tokens"], rounds)
            + _table(["stopped because", "prompts"], stops))
    reuse = (summary.get("correctness") or {}).get("diversity") or {}
    if reuse.get("correctness"):
        rows = [[esc(m), f"{d['distinct_chosen']:,}", f"{d['pairs_per_chosen']:.2f}", f"{d['distinct_rejected']:,}",
                 f"{d['pairs_per_rejected']:.2f}"] for m, d in reuse.items() if isinstance(d, dict)]
        parts.append(f'<p class="note">Response reuse: {reuse["tokens_per_chosen"]:,.0f} generated tokens per '
                     f'distinct chosen response used in a correctness pair.</p>'
                     + _table(["method", "distinct chosen", "pairs per chosen", "distinct rejected",
                               "pairs per rejected"], rows))
    if hist:
        items = [(f"{int(k) / 10:.1f}", float(v)) for k, v in sorted(hist.items(), key=lambda kv: int(kv[0]))]
        parts.append(plots.column_chart(items, "prompts per pass rate (share of samples right)",
                                        xlabel="pass rate, from", ylabel="prompts", width=420))
    if not parts:
        return ""
    note = ("Adaptive sampling: samples drawn per round and why prompts stopped; "
            if adaptive.get("prompts") else "Fixed-N sampling. ")
    return (f'<div class="plotblock"><h3>Sampling</h3><p class="note">{esc(note)}per-prompt pass rate '
            f'from the correctness stage (provenance.pass_rate filters pairs by it).</p>'
            f'<div class="plots">{"".join(parts)}</div></div>')


def curriculum_html(manifest: dict | None, summary: dict) -> str:
    """The prompt table's pass-rate histogram per source, the ``rl_prompts`` band marked (its bins
    in green), and how many prompts each bound removed from the RL exports ('' without a table)."""
    prompts = (manifest or {}).get("prompts") or {}
    by_source = prompts.get("pass_rate_histogram_by_source") or {}
    if not by_source:
        return ""
    rl = ((manifest or {}).get("config") or {}).get("rl_prompts") or {}
    lo, hi = rl.get("band") or (0.0, 1.0)
    bins = len(next(iter(by_source.values())))
    inside = [lo < (i + 1) / bins and i / bins <= hi for i in range(bins)]
    colors = [plots.COLORS[0] if ok else plots.COLORS[2] for ok in inside]
    charts = [plots.column_chart([(f"{i / bins:.1f}", float(n)) for i, n in enumerate(hist)],
                                 f"{source}: prompts per pass rate", xlabel="pass rate, from", ylabel="prompts",
                                 width=420, colors=colors) for source, hist in by_source.items()]
    sel = (summary.get("export") or {}).get("rl_prompts")
    table = ""
    if sel:
        rows = [[esc(k.replace("_", " ")), f"{v:,}"] for k, v in sel["removed"].items()]
        table = _table(["removed from the RL exports", "prompts"], rows + [["kept", f"{sel['kept']:,}"]])
    note = (f"From the prompt table (prompts/*.parquet): {prompts.get('with_ground_truth', 0):,} prompts with ground "
            f"truth. The RL exports keep pass rates in [{lo}, {hi}] (rl_prompts.band; green bins reach into it) "
            f"with at least {rl.get('min_samples', 1)} samples drawn.")
    return (f'<div class="plotblock"><h3>RL prompts: pass rate per source</h3><p class="note">{esc(note)}</p>'
            f'<div class="plots">{"".join(charts)}{table}</div></div>')
