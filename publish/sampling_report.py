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
    if adaptive:
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
            if adaptive else "Fixed-N sampling. ")
    return (f'<div class="plotblock"><h3>Sampling</h3><p class="note">{esc(note)}per-prompt pass rate '
            f'from the correctness stage (provenance.pass_rate filters pairs by it).</p>'
            f'<div class="plots">{"".join(parts)}</div></div>')
