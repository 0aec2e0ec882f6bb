"""The HTML report's view of prompts removed before generation: near-duplicate clusters side by side.

The dataset folder holds only written rows; the removed prompts' images reach it as the
stages' ``report_images`` side outputs, gathered by the run report into
``report_images.parquet`` (``schemas.REPORT_IMAGES_SCHEMA``: small JPEG thumbnails, the groups a
stage chose to show, the distances that decided).  Each group is one row of figures: the kept
prompt, then each removed one with its pHash bits and colour distance per image and its question
similarity.  Every text is escaped; thumbnails are data URIs.
"""
from __future__ import annotations

import base64
from itertools import groupby

import pyarrow as pa

from publish.html_cards import esc

#: the dataset folder's file (``pipeline.run.report.REPORT_IMAGES``)
FILE = "report_images.parquet"
TITLES = {"dedup": "Near-duplicate clusters removed before generation"}


def _uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def _distances(r: dict) -> str:
    if r["role"] == "kept":
        return "kept (first by prompt id)"
    bits, colour = r.get("image_bits") or [], r.get("colour") or []
    per = [f"{b} bits" + (f", colour {colour[i]:g}" if i < len(colour) else "") for i, b in enumerate(bits)]
    parts = (["image " + "; ".join(per)] if per else []) + \
        ([f"question jaccard {r['question_jaccard']:g}"] if r.get("question_jaccard") is not None else [])
    return "removed: " + " \u00b7 ".join(parts)


def _member(r: dict) -> str:
    imgs = "".join(f'<img src="{_uri(t)}" alt="{esc(r["prompt_id"])} image {i + 1}">'
                   for i, t in enumerate(r.get("thumbnails") or []))
    missing = (r.get("n_images") or 0) - len(r.get("thumbnails") or [])
    if missing > 0:
        imgs += f'<span class="dim">+{missing} image(s) not shown</span>'
    return (f'<figure class="dup {esc(r["role"])}"><div class="thumbs">{imgs or "<span class=dim>no image</span>"}</div>'
            f'<figcaption><b>{esc(r["prompt_id"])}</b> <span class="dim">{esc(r.get("source"))}</span><br>'
            f'<span class="dist">{esc(_distances(r))}</span><br><q>{esc(r.get("question"))}</q></figcaption></figure>')


def removed_html(table: pa.Table | None) -> str:
    """One section per stage that wrote thumbnails: its groups, each kept prompt beside its removed ones."""
    if table is None or not table.num_rows:
        return ""
    rows = table.to_pylist()
    out = []
    for stage, members in groupby(rows, key=lambda r: r["stage"]):
        groups = [list(g) for _, g in groupby(members, key=lambda r: r["group"])]
        body = []
        for g in groups:
            size = g[0].get("group_size") or len(g)
            more = size - len(g)
            body.append('<div class="dups">' + "".join(_member(r) for r in g)
                        + (f'<span class="dim">+{more} more removed, not shown</span>' if more > 0 else "") + "</div>")
        removed = sum(r["role"] == "removed" for g in groups for r in g)
        out.append(f"<h3>{esc(TITLES.get(stage, f'Prompts removed by {stage}'))}</h3>"
                   f'<p class="note">{len(groups)} groups shown ({removed} removed prompts beside the prompt they '
                   f"matched); the stage shows at most a fixed number, the first by prompt id. Distances are to the "
                   f"kept prompt: pHash bits (of 64) and colour distance per image, normalised question 3-gram "
                   f"Jaccard.</p>" + "".join(body))
    return "".join(out)
