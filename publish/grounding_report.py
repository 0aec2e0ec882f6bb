"""The HTML report's visual-grounding section (rows scored by stages/grounding.py).

Kept out of ``html_report`` so that module only places the section: this one
reads the narrow columns it needs (``id``, ``method``, ``source``,
``question``, the two margin columns and ``provenance``) of up to
``MAX_ROWS`` rows, and shows the distributions of the grounding signals per
method and per source, medians per (method, source), and the pairs at both
ends of chosen's image gain.  A dataset without grounding values gets no
section at all.
"""
from __future__ import annotations

from collections import defaultdict
from html import escape
from typing import Sequence

import numpy as np

from pipeline.files import storage
from publish import svg_plots as plots

#: rows read for the section (narrow columns; the provenance struct has no images)
MAX_ROWS = 200_000
#: pairs shown at each end of the image-gain distribution
ENDS = 5
SIGNALS = (("chosen_image_gain", "chosen image gain"), ("grounding_margin", "grounding margin"),
           ("policy_margin", "policy margin"), ("chosen_crop_gain", "chosen crop gain"))
_COLUMNS = ["id", "method", "source", "question", "policy_margin", "grounding_margin", "provenance"]


def read_grounding(files: Sequence[tuple[str, str]], max_rows: int = MAX_ROWS) -> list[dict]:
    """One flat record per scored row: id, method, source, question and the signals."""
    out: list[dict] = []
    for uri, _config in files:
        pf = storage.parquet_file(uri)
        if "policy_margin" not in pf.schema_arrow.names:
            continue
        for row in pf.read(columns=_COLUMNS).to_pylist():
            g = (row.pop("provenance") or {}).get("grounding")
            if not g:
                continue
            out.append({**row, "chosen_image_gain": g.get("chosen_image_gain"),
                        "chosen_crop_gain": g.get("chosen_crop_gain")})
            if len(out) >= max_rows:
                return out
    return out


def _f(v: float | None) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:+.3f}"


def _median(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def _end_rows(rows: list[dict]) -> str:
    cells = "".join(
        f"<tr><td><code>{escape(r['id'])}</code></td><td>{escape(r['method'])}</td><td>{escape(r['source'])}</td>"
        f"<td>{escape((r['question'] or '')[:120])}</td><td class=num>{_f(r['chosen_image_gain'])}</td>"
        f"<td class=num>{_f(r['grounding_margin'])}</td><td class=num>{_f(r['policy_margin'])}</td></tr>"
        for r in rows)
    return ("<table class=grid><tr><th>id</th><th>method</th><th>source</th><th>question</th>"
            "<th>chosen image gain</th><th>grounding margin</th><th>policy margin</th></tr>" + cells + "</table>")


def grounding_html(files: Sequence[tuple[str, str]]) -> str:
    """The section's HTML, or "" when no row carries grounding values."""
    rows = read_grounding(files)
    if not rows:
        return ""
    hists = []
    for key, label in SIGNALS:
        for by in ("method", "source"):
            groups: dict[str, list[float]] = defaultdict(list)
            for r in rows:
                if r[key] is not None:
                    groups[r[by]].append(r[key])
            if groups:
                hists.append(plots.histogram(sorted(groups.items()), f"{label} per {by}",
                                             xlabel="nats per token" if "gain" in key or "grounding" in key
                                             else "nats (summed)"))
    cells = defaultdict(list)
    for r in rows:
        cells[(r["method"], r["source"])].append(r)
    table = "".join(
        f"<tr><td>{escape(m)}</td><td>{escape(s)}</td><td class=num>{len(rs):,}</td>"
        + "".join(f"<td class=num>{_f(_median([r[k] for r in rs]))}</td>" for k, _ in SIGNALS) + "</tr>"
        for (m, s), rs in sorted(cells.items()))
    head = "".join(f"<th>median {escape(label)}</th>" for _, label in SIGNALS)
    ranked = sorted((r for r in rows if r["chosen_image_gain"] is not None), key=lambda r: r["chosen_image_gain"])
    return (
        '<h3 id="grounding">Visual grounding</h3><p class="note">Image gain = mean log-prob per answer token '
        "with the image minus without it (crop gain: original minus cropped image); grounding margin = "
        "chosen's image gain minus rejected's; policy margin = chosen minus rejected summed log-prob. "
        f"{len(rows):,} scored rows read.</p>"
        + '<div class="plots">' + "".join(hists) + "</div>"
        + f"<table class=grid><tr><th>method</th><th>source</th><th>pairs</th>{head}</tr>{table}</table>"
        + f"<h4>Least grounded chosen answers (lowest image gain)</h4>{_end_rows(ranked[:ENDS])}"
        + f"<h4>Most grounded chosen answers (highest image gain)</h4>{_end_rows(ranked[::-1][:ENDS])}")
