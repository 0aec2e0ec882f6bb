"""The run summary and plot sections of the HTML report (tables and inline SVG, no script)."""
from __future__ import annotations

from typing import Any

from publish import layout
from publish import svg_plots as plots
from publish.html_cards import _slug, esc
from publish.report_sample import Sample

#: methods in the order the report shows them (others follow by name)
def method_order() -> tuple[str, ...]:
    return layout.method_order()


def _method_key(m: str) -> tuple:
    order = method_order()
    return (order.index(m), "") if m in order else (len(order), m)


def _int(v: Any) -> str:
    try:
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return "-"


def _secs(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def _table(head: list[str], rows: list[list[str]], numeric_from: int = 1, cls: str = "grid") -> str:
    th = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{esc(h)}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{c}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _summary_of(report: dict | None) -> dict:
    if not report:
        return {}
    if report.get("summary"):
        return report["summary"]
    from pipeline.run.report import derived

    return derived(report.get("stages", {}))


def summary_html(report: dict | None, manifest: dict | None) -> str:
    parts = []
    stages = (report or {}).get("stages", {})
    summ = _summary_of(report)
    totals = (manifest or {}).get("totals", {})
    quarantined = sum(sum((s.get("quarantined") or {}).values()) for s in stages.values())
    wall = sum(float(s.get("wall_s_this_run") or 0) for s in stages.values())
    tiles = [
        ("rows written", _int(manifest.get("rows")) if manifest else "-"),
        ("pairs made", _int(sum((report or {}).get("pairs_by_method", {}).values())) if report else "-"),
        ("tokens generated", _int(report.get("tokens_generated")) if report else "-"),
        ("quarantined rows", _int(quarantined) if report else "-"),
        ("wall time (last run)", _secs(wall) if wall else "-"),
    ]
    parts.append('<div class="tiles">' + "".join(
        f'<div class="tile"><div class="v">{v}</div><div class="k">{esc(k)}</div></div>' for k, v in tiles) + "</div>")
    if not report:
        parts.append('<p class="note">No <code>report.json</code> in this folder (it is written by '
                     '<code>python -m pipeline run</code>): per-stage counts, tokens and time are not available.</p>')

    if stages:
        from pipeline.core.graph import ordered

        rank = {n: i for i, n in enumerate(ordered())}
        stages = dict(sorted(stages.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
        rows = []
        for name, s in stages.items():
            c = s.get("counters", {})
            if name == "write" and manifest:  # the write stage's rows are in the manifest
                s = {**s, "rows_in": manifest.get("rows_in"), "rows_out": manifest.get("rows")}
            rows.append([f"<b>{esc(name)}</b>", _int(s.get("rows_in")) if "rows_in" in s else "-",
                         _int(s.get("rows_out")) if "rows_out" in s else "-",
                         _int(sum((s.get("quarantined") or {}).values())) if "quarantined" in s else "-",
                         _int(c.get("tokens_generated")) if c.get("tokens_generated") else "-",
                         _secs(s.get("wall_s_this_run")), _secs(s.get("wall_s")) if "wall_s" in s else "-"])
        parts.append("<h3>Rows, tokens and time per stage</h3>" + _table(
            ["stage", "rows in", "rows out", "quarantined", "tokens generated", "wall time (last run)",
             "worker time (all runs)"], rows))
        parts.append('<p class="note">Rows are stage records: prompts up to <code>generate</code>, pairs after it. '
                     "Worker time sums the partitions' own time over every run (resumed runs included).</p>")

    q_rows = [[esc(st), esc(reason), _int(n)] for st, s in stages.items()
              for reason, n in sorted((s.get("quarantined") or {}).items())]
    if report:
        parts.append("<h3>Quarantined rows per reason</h3>" + (
            _table(["stage", "reason", "rows"], q_rows, numeric_from=2) if q_rows
            else '<p class="note">No row was quarantined.</p>'))

    made = (report or {}).get("pairs_by_method", {})
    removed = summ.get("filter", {}).get("removed_pairs", {})
    written = totals.get("method", {})
    methods = sorted(set(made) | set(written) | set(removed), key=_method_key)
    if methods:
        rows = [[f'<span class="badge m-{esc(_slug(m))}">{esc(m)}</span>',
                 _int(made.get(m)) if m in made else "-", _int(removed.get(m, 0)) if summ.get("filter") else "-",
                 _int(written.get(m)) if m in written else "-"] for m in methods]
        parts.append("<h3>Pairs per method</h3>" + _table(
            ["method", "made by the pair stages", "removed by the filter", "written"], rows))
    sm = totals.get("source_method", {})
    if sm:
        ms = sorted({m for by in sm.values() for m in by}, key=_method_key)
        rows = [[f"<b>{esc(s)}</b>"] + [_int(by.get(m, 0)) for m in ms] + [_int(sum(by.values()))]
                for s, by in sm.items()]
        parts.append("<h3>Pairs per source (written)</h3>" + _table(["source", *ms, "total"], rows))

    parts.append(_stage_notes(summ))
    parts.append(contamination_html(summ))
    parts.append(_lengths_html((manifest or {}).get("lengths", {})))
    return "".join(parts)


def _stage_notes(summ: dict) -> str:
    """Notes from the pair stages' summaries: format errors and prompts without a right answer
    (correctness), generated tokens per pair against the papers' (dropout_ntp)."""
    notes = []
    c = summ.get("correctness")
    if c:
        notes.append(f"correctness: format errors {c.get('format_error_rate', 0):.1%} of responses; "
                     f"{_int(c.get('prompts_all_wrong'))} prompts had no correct response"
                     + (f", {_int(c.get('prompts_all_correct'))} no wrong one" if c.get("prompts_all_correct") else ""))
    d = summ.get("dropout_ntp")
    if d:
        refs = ", ".join(f"{k}: {v}" for k, v in (d.get("reference_tokens_per_pair") or {}).items())
        notes.append(f"dropout_ntp: {d.get('generated_tokens_per_pair')} generated tokens per pair "
                     f"({d.get('continuation_tokens_per_pair')} for the continuation" + (f"; {refs})" if refs else ")"))
    n = summ.get("dedup")
    if n:
        notes.append(f"dedup: {_int(n.get('near_duplicates'))} near-duplicate prompts removed before generation, "
                     f"{_int(n.get('prompts_kept'))} kept ({_int(n.get('images_hashed'))} images hashed)")
    return "<ul class=notes>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else ""


def contamination_html(summ: dict) -> str:
    """Prompts the decontaminate stage removed, per reference set and rule (its summary)."""
    hits = (summ.get("decontaminate") or {}).get("contaminated")
    if hits is None:
        return ""
    rules = ["image_question", "ngram"]
    rows = [[f"<b>{esc(ref)}</b>"] + [_int(by.get(r, 0)) for r in rules] + [_int(sum(by.values()))]
            for ref, by in sorted(hits.items())]
    body = _table(["reference set", *rules, "total"], rows) if rows else \
        '<p class="note">No prompt matched a reference set.</p>'
    return "<h3>Benchmark contamination removed before generation</h3>" + body


def _lengths_html(lengths: dict) -> str:
    """Chosen and rejected lengths per method, from the manifest."""
    if not lengths:
        return ""

    def q(d: dict) -> str:
        return " / ".join("-" if d.get(k) is None else f"{d[k]:g}" for k in ("mean", "median", "p90"))
    rows = [[f'<span class="badge m-{esc(_slug(m))}">{esc(m)}</span>', _int(d.get("rows")),
             q(d.get("chosen_chars", {})), q(d.get("rejected_chars", {})),
             "-" if d.get("rejected_longer_fraction") is None else f"{d['rejected_longer_fraction']:.0%}",
             q(d.get("chosen_tokens", {})), q(d.get("rejected_tokens", {}))]
            for m, d in sorted(lengths.items(), key=lambda kv: _method_key(kv[0]))]
    return "<h3>Answer lengths (all written rows, from the manifest)</h3>" + _table(
        ["method", "rows", "chosen chars mean / median / p90", "rejected chars mean / median / p90",
         "rejected longer", "chosen tokens mean / median / p90", "rejected tokens mean / median / p90"], rows)


def plots_html(sample: Sample, report: dict | None, prompts: dict[str, list[tuple[int, int]]] | None) -> str:
    summ = _summary_of(report)
    blocks = []
    hist = []
    for m in sorted(set(sample.method), key=_method_key):
        c, r = sample.lengths(m)
        hist.append(plots.histogram([("chosen", c), ("rejected", r)], f"{m}: answer length, n={len(c):,}",
                                    xlabel="characters"))
    scope = ("all" if sample.rows_read >= sample.rows_total else
             f"{sample.rows_read:,} sampled") + f" of {sample.rows_total:,} rows"
    blocks.append(("Chosen vs rejected length per method", f"Characters of the answer; {scope}.", hist))

    ppp = []
    if prompts is not None:
        for m, dist in prompts.items():
            ppp.append(plots.column_chart([(str(k), n) for k, n in dist], f"{m}: pairs per prompt",
                                          xlabel="pairs of one prompt", ylabel="prompts"))
        note = "Written pairs that share a prompt (provenance.prompt_id), per method."
    else:
        dist = summ.get("correctness", {}).get("pairs_per_prompt", {})
        if dist:
            ppp.append(plots.column_chart([(str(k), n) for k, n in sorted((int(k), v) for k, v in dist.items())],
                                          "correctness + format: pairs per prompt", xlabel="pairs of one prompt",
                                          ylabel="prompts"))
        note = ("From the correctness stage's counter in report.json (before filtering): "
                "the dataset is too large to scan.")
    blocks.append(("Pairs per prompt", note, ppp or [plots.empty("pairs per prompt")]))

    acc = summ.get("correctness", {}).get("policy_accuracy", {})
    counters = (report or {}).get("stages", {}).get("correctness", {}).get("counters", {})
    items = []
    for key, v in sorted(acc.items()):
        src, _, atype = key.rpartition(".")
        total = counters.get(f"accuracy.{key}.total")
        items.append((f"{src} \u00b7 {atype}" + (f" (n={int(total):,})" if total else ""), float(v)))
    blocks.append(("Policy accuracy per source and answer type",
                   "Share of sampled responses whose final answer matches the ground truth (correctness stage).",
                   [plots.bar_chart(items, "policy accuracy", max_value=1.0, value_fmt=lambda v: f"{v:.0%}",
                                    width=460, label_chars=40)] if items
                   else [plots.empty("policy accuracy", "no ground-truth prompts (or no report.json)")]))

    f = summ.get("filter", {})
    charts = []
    if f:
        failed = sorted(f.get("failed_rules", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        charts.append(plots.bar_chart([(k.replace(".", " \u00b7 "), float(v)) for k, v in failed],
                                      "pairs failing each rule", color=plots.COLORS[1], width=440)
                      if failed else plots.empty("pairs failing each rule", "no pair failed a rule"))
        removed = sorted(f.get("removed_pairs", {}).items(), key=lambda kv: _method_key(kv[0]))
        charts.append(plots.bar_chart([(k, float(v)) for k, v in removed], "pairs removed per method",
                                      color=plots.COLORS[3], width=360)
                      if removed else plots.empty("pairs removed per method", "no pair removed"))
    blocks.append(("Filter removals", "Counted by the filter stage (a pair can fail several rules).",
                   charts or [plots.empty("filter", "the filter stage did not run (or no report.json)")]))

    out = []
    for title, note, charts in blocks:
        out.append(f'<div class="plotblock"><h3>{esc(title)}</h3><p class="note">{esc(note)}</p>'
                   f'<div class="plots">{"".join(charts)}</div></div>')
    return "".join(out)


