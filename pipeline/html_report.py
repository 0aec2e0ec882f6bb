"""A self-contained HTML report of a built dataset folder: ``DIR/report.html``.

    python -m pipeline report --input DIR [--seed 0] [--per-method 20]

(``python -m pipeline run`` writes it at the end of a build.)  One file, no
network: images are embedded as data URIs, plots are inline SVG, and the
method/source filter and the text search are a few lines of inline JavaScript.

What it reads, and how much:

* ``manifest.json`` and ``report.json`` (written by the run): shards, rows per
  method/source, length quantiles, rows in/out, quarantine reasons, tokens and
  time per stage, policy accuracy, filter counters.  These are shown as they
  are, never recomputed.
* Parquet footers of every shard (row groups and their sizes).
* A *seeded sample of row groups* per dataset config, narrow columns only
  (``method``, ``source``, ``chosen``, ``rejected``): the chosen/rejected length
  histograms, and the pool the pair cards are drawn from.  Reading stops after
  ``STATS_ROWS`` rows once every method the manifest lists has enough card
  candidates (``MAX_SCAN_ROWS`` at most).
* ``method`` and ``provenance.sample_id`` of every row (two narrow columns) for
  the pairs-per-prompt distribution of the written dataset, up to
  ``PROMPT_SCAN_MAX_ROWS`` rows; above that the correctness stage's own
  counter from ``report.json`` is shown instead.
* Full rows (with image bytes) only of the row groups that hold a sampled card.

Every string that comes from the data goes through :func:`html.escape` before
it is placed in the page; the page's script only reads ``textContent`` and
toggles ``hidden``, and a Content-Security-Policy allows that one script (by
hash) and nothing else, so a model output that contains ``<script>`` shows up
as text and never runs.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from html import escape
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import __version__, storage
from pipeline import svg_plots as plots
from pipeline.grounding_report import grounding_html
# the dataset layout: configs and their folders; image-contrast methods live in their own config
from stages.write import CONFIGS, IMAGE_METHODS, assistant_chars

log = logging.getLogger("pipeline")

#: pair cards per method
PER_METHOD = 20
#: rows (narrow columns) read for the length histograms, per dataset config
STATS_ROWS = 50_000
#: never read more rows than this per config while looking for card candidates of rare methods
MAX_SCAN_ROWS = 500_000
#: above this many rows, pairs per prompt come from report.json instead of a column scan
PROMPT_SCAN_MAX_ROWS = 5_000_000
#: longest side of an embedded thumbnail
THUMB_PX = 384
#: longest side of an image as shown on a card (small images are scaled up, at most 2x)
SHOW_PX = 240
#: small PNG/JPEG/GIF/WebP images up to this size are embedded as they are
EMBED_AS_IS_BYTES = 96_000
#: methods in the order they are shown; unknown methods follow, sorted
METHOD_ORDER = ("correctness", "format", "dropout_ntp", "image_crop")
REPORT_NAME = "report.html"

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


def esc(value: Any) -> str:
    """HTML-escape anything (``None`` is empty), quotes included: safe in text and in attributes."""
    return "" if value is None else escape(str(value), quote=True)


def _method_key(m: str) -> tuple:
    return (METHOD_ORDER.index(m), "") if m in METHOD_ORDER else (len(METHOD_ORDER), m)


def _stable(*parts: Any) -> int:
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"))


# -- the dataset folder ------------------------------------------------------------
@dataclass(frozen=True)
class RowGroup:
    uri: str
    config: str
    index: int
    rows: int


def _read_json(uri: str) -> dict | None:
    try:
        return storage.read_json(uri) if storage.exists(uri) else None
    except (OSError, ValueError) as e:
        log.warning("report: cannot read %s: %s", uri, e)
        return None


def dataset_files(root: str, manifest: dict | None) -> list[tuple[str, str]]:
    """(uri, config) of every shard: the manifest's list, else the Parquet files in the config folders."""
    if manifest and manifest.get("shards"):
        return [(storage.join(root, s["path"]), s.get("config", "default")) for s in manifest["shards"]]
    files = []
    for config, folder in CONFIGS:
        files += [(u, config) for u in storage.list_files(storage.join(root, folder), ".parquet")]
    return files


def row_groups(files: list[tuple[str, str]]) -> list[RowGroup]:
    out = []
    for uri, config in files:
        md = storage.parquet_file(uri).metadata
        out += [RowGroup(uri, config, i, md.row_group(i).num_rows) for i in range(md.num_row_groups)]
    return out


def _read_group(group: RowGroup, columns: list[str] | None = None) -> pa.Table:
    return storage.parquet_file(group.uri).read_row_group(group.index, columns=columns)


# -- sampling -------------------------------------------------------------------------
@dataclass
class Sample:
    """What was read for statistics and which rows became cards.

    ``groups``: row groups read (narrow columns), in read order.  ``method``,
    ``source``, ``chosen_chars``, ``rejected_chars``, ``rows`` (index into
    ``groups``, row in that group): one entry per row read.  ``picks``: per method, (index into ``groups``, row in
    that group) of each card, in display order.
    """
    groups: list[RowGroup] = field(default_factory=list)
    method: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    chosen_chars: list[np.ndarray] = field(default_factory=list)
    rejected_chars: list[np.ndarray] = field(default_factory=list)
    rows: list[tuple[int, int]] = field(default_factory=list)
    picks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    rows_total: int = 0

    @property
    def rows_read(self) -> int:
        return len(self.method)

    def lengths(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        sel = np.asarray(self.method, dtype=object) == method
        c = np.concatenate(self.chosen_chars) if self.chosen_chars else np.zeros(0)
        r = np.concatenate(self.rejected_chars) if self.rejected_chars else np.zeros(0)
        return c[sel], r[sel]


def _expected_methods(config: str, manifest: dict | None) -> set[str]:
    methods = set((manifest or {}).get("totals", {}).get("method", {}))
    if config == "image_crop":
        return {m for m in methods if m in IMAGE_METHODS}
    if config == "default":
        return {m for m in methods if m not in IMAGE_METHODS}
    return set()


def sample_dataset(groups: list[RowGroup], seed: int = 0, per_method: int = PER_METHOD,
                   stats_rows: int = STATS_ROWS, manifest: dict | None = None,
                   max_scan_rows: int = MAX_SCAN_ROWS) -> Sample:
    """Read a seeded sample of row groups (narrow columns) per config and pick the cards.

    Deterministic: the same dataset and seed give the same sample and cards.  Row
    groups of a config are read in a seeded random order until ``stats_rows`` rows
    are in and every method the manifest lists for the config has ``per_method``
    rows (or ``max_scan_rows`` is reached).  A method's cards come from the first
    row groups read that hold ``per_method`` of its rows, so few full row groups
    are read back for the cards; within a method they are spread over its
    sources (seeded round-robin).
    """
    sample = Sample(rows_total=sum(g.rows for g in groups))
    configs = [c for c, _ in CONFIGS if any(g.config == c for g in groups)]
    configs += sorted({g.config for g in groups} - set(configs))
    for config in configs:
        mine = sorted((g for g in groups if g.config == config), key=lambda g: (g.uri, g.index))
        order = np.random.default_rng([seed, _stable("config", config)]).permutation(len(mine))
        expected = _expected_methods(config, manifest)
        counts: Counter = Counter()
        rows = 0
        for gi in order:
            group = mine[int(gi)]
            t = _read_group(group, ["method", "source", "chosen", "rejected"])
            no = len(sample.groups)
            sample.groups.append(group)
            methods = t.column("method").to_pylist()
            sample.method += methods
            sample.source += [s or "" for s in t.column("source").to_pylist()]
            # characters of the answers: the same measure as the manifest's length statistics
            sample.chosen_chars.append(assistant_chars(t.column("chosen")))
            sample.rejected_chars.append(assistant_chars(t.column("rejected")))
            sample.rows += [(no, i) for i in range(t.num_rows)]
            counts.update(methods)
            rows += t.num_rows
            enough = all(counts[m] >= per_method for m in expected)
            if (rows >= stats_rows and enough) or rows >= max_scan_rows:
                break
    # card candidates of a method: its rows in the first row groups read that hold
    # ``per_method`` of them (few full row groups to read back for the cards)
    by_method: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    taken: Counter = Counter()
    start = 0
    for no, group in enumerate(sample.groups):
        end = start + group.rows
        here: dict[str, list[int]] = defaultdict(list)
        for i in range(start, end):
            here[sample.method[i]].append(i)
        for m, idx in here.items():
            if taken[m] < per_method:
                for i in idx:
                    by_method[m][sample.source[i]].append(i)
                taken[m] += len(idx)
        start = end
    rows_at = sample.rows
    for method in sorted(by_method, key=_method_key):
        rng = np.random.default_rng([seed, _stable("cards", method)])
        queues = [list(rng.permutation(np.asarray(idx)))
                  for _, idx in sorted(by_method[method].items())]
        picked: list[int] = []
        while len(picked) < per_method and any(queues):
            for q in queues:
                if q and len(picked) < per_method:
                    picked.append(int(q.pop(0)))
        sample.picks[method] = [rows_at[i] for i in picked]
    return sample


def read_cards(sample: Sample) -> list[dict]:
    """The full rows (images included) of the sampled cards, by method, in pick order."""
    wanted: dict[int, list[int]] = defaultdict(list)
    for picks in sample.picks.values():
        for no, row in picks:
            wanted[no].append(row)
    rows: dict[tuple[int, int], dict] = {}
    for no in sorted(wanted):
        idx = sorted(set(wanted[no]))
        table = _read_group(sample.groups[no]).take(pa.array(idx))
        for i, r in zip(idx, table.to_pylist()):
            rows[(no, i)] = r
    return [rows[p] for m in sorted(sample.picks, key=_method_key) for p in sample.picks[m]]


def pairs_per_prompt(files: list[tuple[str, str]]) -> dict[str, list[tuple[int, int]]]:
    """Per method: (pairs of one prompt, prompts with that many) over every written row."""
    parts = []
    for uri, _ in files:
        t = storage.parquet_file(uri).read(columns=["method", "provenance.sample_id"])
        parts.append(pa.table({"method": t.column("method"),
                               "sid": pc.struct_field(t.column("provenance"), "sample_id")}))
    if not parts:
        return {}
    table = pa.concat_tables(parts)
    table = table.filter(pc.is_valid(table.column("sid")))
    table = table.append_column("n", pa.array(np.ones(table.num_rows, np.int64)))
    per_prompt = table.group_by(["method", "sid"]).aggregate([("n", "sum")])
    out: dict[str, list[tuple[int, int]]] = {}
    methods = per_prompt.column("method").to_numpy(zero_copy_only=False)
    sizes = per_prompt.column("n_sum").to_numpy()
    for m in sorted(set(methods.tolist()), key=_method_key):
        k, n = np.unique(sizes[methods == m], return_counts=True)
        out[m] = [(int(a), int(b)) for a, b in zip(k, n)]
    return out


# -- images ---------------------------------------------------------------------------
@dataclass
class Thumb:
    uri: str | None
    width: int = 0      # of the original image (crop boxes are in these coordinates)
    height: int = 0
    error: str | None = None


def thumbnail(image: dict | None, max_px: int = THUMB_PX) -> Thumb:
    """A data URI for one ``{bytes, path}`` image: small web images as they are, others as a JPEG thumbnail."""
    from PIL import Image

    data = (image or {}).get("bytes")
    if not data:
        path = (image or {}).get("path")
        return Thumb(None, error=f"image not embedded in the row (path: {path})" if path else "no image")
    try:
        im = Image.open(io.BytesIO(data))
        width, height, fmt = im.width, im.height, im.format
        if max(width, height) <= max_px and fmt in _MIME and len(data) <= EMBED_AS_IS_BYTES:
            return Thumb(f"data:{_MIME[fmt]};base64,{base64.b64encode(data).decode()}", width, height)
        im.draft("RGB", (max_px, max_px))  # JPEG: decode at a reduced scale
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        else:
            im = im.convert("RGB")
        im.thumbnail((max_px, max_px))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=82)
        return Thumb(f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}", width, height)
    except Exception as e:  # noqa: BLE001 -- an undecodable image is shown as such, never fatal
        return Thumb(None, error=f"undecodable image: {type(e).__name__}: {e}")


def _display_size(t: Thumb, box: int = SHOW_PX) -> tuple[int, int, bool]:
    scale = min(box / max(t.width, t.height, 1), 2.0)
    return max(int(round(t.width * scale)), 1), max(int(round(t.height * scale)), 1), scale > 1


def _box(box: Any) -> tuple[int, int, int, int] | None:
    """A crop box as four ints (left, top, right, bottom), or None when it is not one."""
    try:
        left, top, right, bottom = (int(v) for v in box)
    except (TypeError, ValueError):
        return None
    return left, top, right, bottom


def image_html(t: Thumb, caption: str, crop_box: Any = None) -> str:
    if t.uri is None:
        return (f'<figure class="img missing"><div class="noimg">{esc(t.error)}</div>'
                f"<figcaption>{esc(caption)}</figcaption></figure>")
    w, h, up = _display_size(t)
    overlay = ""
    box = _box(crop_box)
    if box and t.width and t.height:
        left, top, right, bottom = box
        overlay = (f'<svg class="cropbox" viewBox="0 0 {t.width} {t.height}" preserveAspectRatio="none" '
                   f'aria-hidden="true"><rect x="{left}" y="{top}" width="{max(right - left, 1)}" '
                   f'height="{max(bottom - top, 1)}" fill="rgba(229,62,62,0.12)" stroke="#e53e3e" '
                   f'stroke-width="2.5" vector-effect="non-scaling-stroke"/></svg>')
    cls = ' class="up"' if up else ""
    return (f'<figure class="img"><div class="imgbox" style="width:{w}px;height:{h}px">'
            f'<img{cls} src="{t.uri}" width="{w}" height="{h}" alt="{esc(caption)}">{overlay}</div>'
            f'<figcaption>{esc(caption)} <span class="dim">{t.width}\u00d7{t.height}</span></figcaption></figure>')


# -- cards ----------------------------------------------------------------------------
def _turn_text(conversation: list | None) -> str:
    if not conversation:
        return ""
    return "".join(p.get("text") or "" for p in (conversation[-1].get("content") or []) if p.get("type") == "text")


def _shared_prefix(chosen: str, rejected: str, cut_chars: int | None) -> int:
    """Length of the DropoutNTP prefix: ``cut_chars`` from provenance when both texts start with it."""
    if cut_chars is not None and 0 < cut_chars <= min(len(chosen), len(rejected)) \
            and chosen[:cut_chars] == rejected[:cut_chars]:
        return int(cut_chars)
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    return n


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _score(v: float | None) -> str:
    return "" if v is None else f' <span class="dim">(score {v:.3g})</span>'


def _answer(v: str | None, missing: str) -> str:
    return f"<code>{esc(v)}</code>" if v is not None else f'<span class="dim">{esc(missing)}</span>'


def _pair(a: Any, b: Any) -> str:
    return f"{esc(a)} / {esc(b)}"


def _codes(values: Iterable[Any]) -> str:
    return " / ".join(f"<code>{esc(v)}</code>" for v in values)


def _images_html(method: str, images: list, rejected_images: list, boxes: list,
                 thumbs: list[Thumb]) -> str:
    """The row's images; for image-contrast pairs each original (crop box drawn) next to its rejected image."""
    figs = []
    if method in IMAGE_METHODS or rejected_images:
        for i, t in enumerate(thumbs):
            box = _box(boxes[i]) if i < len(boxes) else None
            figs.append(image_html(t, f"original {i + 1}" + (" + crop box" if box else ""), box))
            if i < len(rejected_images):
                figs.append(image_html(thumbnail(rejected_images[i]), f"rejected {i + 1}: cropped, resized back"))
    else:
        figs = [image_html(t, f"image {i + 1}") for i, t in enumerate(thumbs)]
    return f'<div class="imgs">{"".join(figs) or "<div class=noimg>no image</div>"}</div>'


def _dropout_html(chosen: str, rejected: str, prov: dict) -> tuple[str, str, str]:
    """(chosen, rejected, details): the shared prefix and the two continuations marked."""
    cut = _shared_prefix(chosen, rejected, prov.get("cut_chars"))
    chosen_html = f'<mark class="prefix">{esc(chosen[:cut])}</mark><span class="cont-c">{esc(chosen[cut:])}</span>'
    rejected_html = (f'<mark class="prefix">{esc(rejected[:cut])}</mark>'
                     f'<span class="cont-r">{esc(rejected[cut:])}</span>')
    prefix = f"{cut} chars"
    if prov.get("cut_words") is not None:
        prefix += f", {esc(prov['cut_words'])} words"
    if prov.get("truncation_ratio") is not None:
        prefix += f" (ratio {esc(prov['truncation_ratio'])} of {esc(prov.get('truncation_unit') or 'words')})"
    image = "with" if prov.get("image_kept") else "<b>without</b>"
    details = _kv([("shared prefix", prefix),
                   ("continuation", f"{esc(prov.get('continuation_tokens'))} tokens, generated {image} the image")])
    legend = ('<p class="legend"><mark class="prefix key">shared prefix</mark> '
              '<span class="cont-c">chosen continues (with the image)</span> '
              '<span class="cont-r">rejected continues (image dropped)</span></p>')
    return chosen_html, rejected_html, details + legend


def _answers_html(method: str, prov: dict) -> str:
    """Ground truth and, for correctness/format pairs, the extracted answers and their scores."""
    gt = prov.get("ground_truth") or []
    if method in ("correctness", "format") or prov.get("chosen_answer") is not None:
        unparsed = "no parseable final answer" if method == "format" else "not extracted"
        return _kv([
            ("ground truth", _codes(gt) or '<span class="dim">none</span>'),
            ("answer type", esc(prov.get("answer_type"))),
            ("chosen answer", _answer(prov.get("chosen_answer"), "not extracted") + _score(prov.get("chosen_score"))),
            ("rejected answer", _answer(prov.get("rejected_answer"), unparsed) + _score(prov.get("rejected_score"))),
            ("match rule", esc(prov.get("match_rule"))),
        ])
    if gt:
        return _kv([("ground truth", _codes(gt)), ("answer type", esc(prov.get("answer_type")))])
    return ""


def _crop_html(boxes: list, thumbs: list[Thumb]) -> str:
    rows = []
    for i, b in enumerate(boxes):
        t = thumbs[i] if i < len(thumbs) else Thumb(None)
        box, area = _box(b), ""
        if box and t.width and t.height:
            area = f" = {(box[2] - box[0]) * (box[3] - box[1]) / (t.width * t.height):.1%} of the image"
        rows.append((f"crop box {i + 1}", f"<code>{esc(b)}</code> (left, top, right, bottom){area}"))
    return _kv(rows)


def _provenance_html(row: dict, prov: dict) -> str:
    filters = prov.get("filters") or []
    failed = [f for f in filters if f and f.get("passed") is False]
    verdicts = (", ".join(f"{esc(f.get('target'))}.{esc(f.get('rule'))}: {esc(f.get('reason'))}" for f in failed)
                if failed else (f"all {len(filters)} checks passed" if filters else "not filtered"))
    revision = f" @ {esc(prov['model_revision'])}" if prov.get("model_revision") else ""
    rows = [
        ("pair id", f"<code>{esc(row.get('id'))}</code>"),
        ("sample id / source row", _codes([prov.get("sample_id"), prov.get("source_row_id")])),
        ("model", esc(prov.get("model")) + revision),
        ("template", esc(prov.get("template_id"))),
        ("tokens chosen / rejected", _pair(prov.get("chosen_tokens"), prov.get("rejected_tokens"))),
        ("finish chosen / rejected", _pair(prov.get("chosen_finish_reason"), prov.get("rejected_finish_reason"))),
        ("response index / seed", f"{_pair(prov.get('chosen_index'), prov.get('chosen_seed'))} (chosen), "
                                  f"{_pair(prov.get('rejected_index'), prov.get('rejected_seed'))} (rejected)"),
        ("filters", verdicts),
    ]
    if prov.get("judge_chosen_score") is not None or prov.get("judge_rejected_score") is not None:
        rows.append(("judge chosen / rejected",
                     _pair(prov.get("judge_chosen_score"), prov.get("judge_rejected_score"))))
    if prov.get("facts"):
        rows.append(("facts", esc(prov["facts"])))
    prompt_text = _turn_text(row.get("prompt"))
    if prompt_text and prompt_text != row.get("question"):
        rows.append(("full prompt", f"<pre>{esc(prompt_text)}</pre>"))
    return f"<details><summary>provenance</summary>{_kv(rows)}</details>"


def card_html(row: dict, number: int) -> str:
    """One pair: images, question, chosen | rejected, the method's details, provenance (all escaped)."""
    method, source = row.get("method") or "", row.get("source") or ""
    prov = row.get("provenance") or {}
    chosen, rejected = _turn_text(row.get("chosen")), _turn_text(row.get("rejected"))
    images = row.get("images") or []
    boxes = prov.get("crop_boxes") or []
    thumbs = [thumbnail(im) for im in images]

    if method == "dropout_ntp":
        chosen_html, rejected_html, detail = _dropout_html(chosen, rejected, prov)
    else:
        chosen_html, rejected_html, detail = esc(chosen), esc(rejected), ""
    detail += _answers_html(method, prov)
    if method in IMAGE_METHODS and boxes:
        detail += _crop_html(boxes, thumbs)
    same = ' <span class="dim">(same text; the image differs)</span>' if chosen == rejected else ""
    return (f'<article class="card" id="card-{number}" data-method="{esc(method)}" data-source="{esc(source)}">'
            f'<header><span class="badge m-{esc(_slug(method))}">{esc(method)}</span>'
            f'<span class="badge src">{esc(source)}</span>'
            f'<span class="dim">#{number} \u00b7 {esc(prov.get("answer_type") or "")}</span></header>'
            f'<div class="body">{_images_html(method, images, row.get("rejected_images") or [], boxes, thumbs)}'
            f'<div class="text"><div class="question"><h4>question</h4><p>{esc(row.get("question"))}</p></div>'
            f'<div class="pair"><div class="resp"><h4 class="c">chosen</h4><pre>{chosen_html}</pre></div>'
            f'<div class="resp"><h4 class="r">rejected{same}</h4><pre>{rejected_html}</pre></div></div>'
            f"{detail}{_provenance_html(row, prov)}</div></div></article>")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower())


# -- summary --------------------------------------------------------------------------
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
    from pipeline.report import derived

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
        from pipeline.config import STAGE_ORDER

        rank = {n: i for i, n in enumerate(STAGE_ORDER)}
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

    notes = []
    c = summ.get("correctness")
    if c:
        notes.append(f"correctness: format errors {c.get('format_error_rate', 0):.1%} of responses; "
                     f"{_int(c.get('prompts_all_wrong'))} prompts had no correct response"
                     + (f", {_int(c.get('prompts_all_correct'))} no wrong one" if c.get("prompts_all_correct") else ""))
    d = summ.get("dropout_ntp")
    if d:
        notes.append(f"dropout_ntp: {d.get('generated_tokens_per_pair')} generated tokens per pair "
                     f"({d.get('continuation_tokens_per_pair')} for the continuation; "
                     "MMPR paper: 571.2, RLAIF-V: 992.7)")
    if notes:
        parts.append("<ul class=notes>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")

    lengths = (manifest or {}).get("lengths", {})
    if lengths:
        def q(d: dict) -> str:
            return " / ".join("-" if d.get(k) is None else f"{d[k]:g}" for k in ("mean", "median", "p90"))
        rows = [[f'<span class="badge m-{esc(_slug(m))}">{esc(m)}</span>', _int(d.get("rows")),
                 q(d.get("chosen_chars", {})), q(d.get("rejected_chars", {})),
                 "-" if d.get("rejected_longer_fraction") is None else f"{d['rejected_longer_fraction']:.0%}",
                 q(d.get("chosen_tokens", {})), q(d.get("rejected_tokens", {}))]
                for m, d in sorted(lengths.items(), key=lambda kv: _method_key(kv[0]))]
        parts.append("<h3>Answer lengths (all written rows, from the manifest)</h3>" + _table(
            ["method", "rows", "chosen chars mean / median / p90", "rejected chars mean / median / p90",
             "rejected longer", "chosen tokens mean / median / p90", "rejected tokens mean / median / p90"], rows))
    return "".join(parts)


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
        note = "Written pairs that share a prompt (provenance.sample_id), per method."
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


# -- the page -------------------------------------------------------------------------
CSS = """
:root{--fg:#111827;--dim:#6b7280;--line:#e5e7eb;--bg:#f8fafc;--c:#2f855a;--r:#c53030}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header.top{background:#1f2937;color:#f9fafb;padding:14px 24px}
header.top h1{margin:0;font-size:20px}
header.top .sub{color:#d1d5db;font-size:12px;margin-top:2px}
header.top code{color:#f9fafb}
nav{display:flex;gap:16px;padding:8px 24px;background:#fff;border-bottom:1px solid var(--line);
 position:sticky;top:0;z-index:5}
nav a{color:#2b6cb0;text-decoration:none}
main{padding:8px 24px 40px;max-width:1500px}
h2{margin:22px 0 8px;font-size:18px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{margin:16px 0 6px;font-size:15px}
.note{color:var(--dim);margin:4px 0 8px;font-size:12px}
.dim{color:var(--dim);font-weight:normal}
.tiles{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.tile{background:#fff;border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:150px}
.tile .v{font-size:20px;font-weight:600}.tile .k{color:var(--dim);font-size:12px}
table.grid{border-collapse:collapse;background:#fff;font-size:13px;margin:4px 0}
table.grid th,table.grid td{border:1px solid var(--line);padding:3px 9px;text-align:left}
table.grid th{background:#f3f4f6;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
ul.notes{margin:6px 0;padding-left:20px;color:#374151}
.plots{display:flex;flex-wrap:wrap;gap:14px}
svg.plot{background:#fff;border:1px solid var(--line);border-radius:6px;padding:2px}
.controls{display:flex;gap:12px;align-items:center;flex-wrap:wrap;background:#fff;border:1px solid var(--line);
 border-radius:8px;padding:8px 12px;margin:8px 0 12px;position:sticky;top:37px;z-index:4}
.controls input[type=search]{width:320px;padding:4px 8px}
.controls select{padding:3px 6px}
#shown{color:var(--dim)}
.group>h3{margin-top:18px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;margin:10px 0;padding:10px 14px}
.card>header{display:flex;gap:8px;align-items:center;margin-bottom:6px}
.badge{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600;background:#e5e7eb}
.badge.src{background:#eef2ff;color:#3730a3}
.m-correctness{background:#dcfce7;color:#166534}.m-format{background:#fef9c3;color:#854d0e}
.m-dropout-ntp{background:#e0f2fe;color:#075985}.m-image-crop{background:#fae8ff;color:#86198f}
.body{display:flex;gap:16px;align-items:flex-start}
.imgs{display:flex;gap:10px;flex-wrap:wrap;flex:0 0 auto;min-width:246px;max-width:520px}
figure.img{margin:0}
figure.img figcaption{font-size:11px;color:var(--dim);text-align:center;max-width:260px}
.imgbox{position:relative;box-sizing:content-box;border:1px solid var(--line);background:#fafafa}
.imgbox img{display:block}
.imgbox img.up{image-rendering:pixelated}
svg.cropbox{position:absolute;left:0;top:0;width:100%;height:100%}
.noimg{width:160px;padding:16px 8px;color:var(--dim);font-size:12px;border:1px dashed var(--line);text-align:center}
.text{flex:1 1 auto;min-width:0}
.question h4,.resp h4{margin:0 0 2px;font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--dim)}
.question p{margin:0 0 8px;font-size:15px;white-space:pre-wrap;overflow-wrap:anywhere}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px}
.resp pre{margin:0;white-space:pre-wrap;overflow-wrap:anywhere;
 font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,monospace;background:#f9fafb;border:1px solid var(--line);
 border-radius:6px;padding:6px 8px}
.resp h4.c{color:var(--c)}.resp h4.r{color:var(--r)}
.resp:first-child pre{border-left:4px solid var(--c)}.resp:last-child pre{border-left:4px solid var(--r)}
mark.prefix{background:#fde68a;color:inherit;border-radius:2px}
.cont-c{background:#dcfce7;text-decoration:underline;text-decoration-color:var(--c)}
.cont-r{background:#fee2e2;text-decoration:underline wavy;text-decoration-color:var(--r)}
p.legend{font-size:12px;margin:4px 0;display:flex;gap:8px}
table.kv{border-collapse:collapse;font-size:12px;margin:8px 0 2px}
table.kv th{text-align:left;color:var(--dim);font-weight:normal;padding:1px 10px 1px 0;vertical-align:top;
 white-space:nowrap}
table.kv td{padding:1px 0;overflow-wrap:anywhere}
table.kv pre{margin:0;white-space:pre-wrap;font-size:12px}
details{margin-top:6px;font-size:12px}
summary{cursor:pointer;color:#2b6cb0}
[hidden]{display:none!important}
footer{color:var(--dim);font-size:12px;padding:16px 24px}
"""

#: filter + search; reads only textContent and data-* attributes, toggles ``hidden``.
#: ``#method=..&source=..&q=..`` in the URL preselects (and is kept in sync).
SCRIPT = """
(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.card"));
  var groups = Array.prototype.slice.call(document.querySelectorAll("section.group"));
  var fm = document.getElementById("f-method"), fs = document.getElementById("f-source");
  var fq = document.getElementById("f-q"), shown = document.getElementById("shown");
  var text = cards.map(function (c) { return c.textContent.toLowerCase(); });
  function apply() {
    var m = fm.value, s = fs.value, q = fq.value.trim().toLowerCase(), n = 0;
    cards.forEach(function (c, i) {
      var ok = (!m || c.getAttribute("data-method") === m) && (!s || c.getAttribute("data-source") === s)
        && (!q || text[i].indexOf(q) >= 0);
      c.hidden = !ok;
      if (ok) { n++; }
    });
    groups.forEach(function (g) { g.hidden = !g.querySelector("article.card:not([hidden])"); });
    shown.textContent = n + " of " + cards.length + " pairs shown";
    document.body.setAttribute("data-visible-cards", String(n));
  }
  function fromHash() {
    var h = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) {
        try { h[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1).replace(/\\+/g, " ")); }
        catch (e) { /* a malformed hash is ignored */ }
      }
    });
    if (h.method !== undefined) { fm.value = h.method; if (fm.value !== h.method) { fm.value = ""; } }
    if (h.source !== undefined) { fs.value = h.source; if (fs.value !== h.source) { fs.value = ""; } }
    if (h.q !== undefined) { fq.value = h.q; }
  }
  function toHash() {
    var p = [];
    if (fm.value) { p.push("method=" + encodeURIComponent(fm.value)); }
    if (fs.value) { p.push("source=" + encodeURIComponent(fs.value)); }
    if (fq.value) { p.push("q=" + encodeURIComponent(fq.value)); }
    try { history.replaceState(null, "", p.length ? "#" + p.join("&") : location.pathname + location.search); }
    catch (e) { /* some file:// contexts refuse replaceState */ }
  }
  [fm, fs].forEach(function (el) { el.addEventListener("change", function () { apply(); toHash(); }); });
  fq.addEventListener("input", function () { apply(); toHash(); });
  window.addEventListener("hashchange", function () { fromHash(); apply(); });
  fromHash();
  apply();
  document.body.setAttribute("data-ready", "1");
})();
"""


def _script_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


def _options(values: Counter, label: str) -> str:
    opts = [f'<option value="">all {esc(label)}</option>']
    keys = sorted(values, key=_method_key) if label == "methods" else sorted(values)
    opts += [f'<option value="{esc(v)}">{esc(v)} ({values[v]})</option>' for v in keys]
    return "".join(opts)


def render_html(root: str, *, manifest: dict | None, report: dict | None, sample: Sample,
                cards: list[dict], prompts: dict[str, list[tuple[int, int]]] | None, seed: int) -> str:
    name = (manifest or {}).get("name") or root.rstrip("/").rsplit("/", 1)[-1]
    version = (manifest or {}).get("pipeline_version") or (report or {}).get("pipeline_version") or "?"
    chash = (manifest or {}).get("config_hash") or (report or {}).get("config_hash") or "?"
    finished = (report or {}).get("finished_at")

    by_method: dict[str, list[str]] = defaultdict(list)
    methods, sources = Counter(), Counter()
    for i, row in enumerate(cards, 1):
        by_method[row.get("method") or ""].append(card_html(row, i))
        methods[row.get("method") or ""] += 1
        sources[row.get("source") or ""] += 1
    groups = []
    written = (manifest or {}).get("totals", {}).get("method", {})
    for m in sorted(by_method, key=_method_key):
        total = f" of {written[m]:,} written" if m in written else ""
        groups.append(f'<section class="group" data-method="{esc(m)}"><h3>'
                      f'<span class="badge m-{esc(_slug(m))}">{esc(m)}</span> '
                      f'<span class="dim">{len(by_method[m])} sampled pairs{esc(total)}</span></h3>'
                      + "".join(by_method[m]) + "</section>")
    samples = "".join(groups) or '<p class="note">The dataset has no rows.</p>'
    per_method = max((len(v) for v in sample.picks.values()), default=0)
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           f"script-src '{_script_hash(SCRIPT)}'; base-uri 'none'; form-action 'none'")
    sub = (f"mmpr-forge {esc(version)} \u00b7 config hash <code>{esc(chash)}</code>"
           + (f" \u00b7 built {esc(finished)}" if finished else "")
           + f" \u00b7 <code>{esc(root)}</code>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(name)} \u2014 preference pairs report</title>
<style>{CSS}</style></head>
<body>
<header class="top"><h1>{esc(name)} <span class="dim">preference pairs</span></h1><div class="sub">{sub}</div></header>
<nav><a href="#summary">Run summary</a><a href="#plots">Plots</a><a href="#samples">Sample pairs</a></nav>
<main>
<section id="summary"><h2>Run summary</h2>{summary_html(report, manifest)}</section>
<section id="plots"><h2>Plots</h2>{plots_html(sample, report, prompts)}{grounding_html(dataset_files(root, manifest))}</section>
<section id="samples"><h2>Sample pairs</h2>
<p class="note">{len(cards)} pairs, up to {per_method} per method, drawn with seed {seed}
from {sample.rows_read:,} of {sample.rows_total:,} rows (a seeded sample of row groups), spread over sources.
All text is shown exactly as it is in the data.</p>
<div class="controls" role="search">
<label>method <select id="f-method">{_options(methods, "methods")}</select></label>
<label>source <select id="f-source">{_options(sources, "sources")}</select></label>
<label>search <input type="search" id="f-q" placeholder="text in question, answers, provenance"></label>
<span id="shown">{len(cards)} of {len(cards)} pairs shown</span>
</div>
{samples}
</section>
</main>
<footer>Self-contained report written by <code>python -m pipeline report --input</code> (mmpr-forge {esc(__version__)}).
Images are embedded thumbnails (longest side \u2264 {THUMB_PX} px); nothing is loaded from the network.</footer>
<script>{SCRIPT}</script>
</body></html>
"""


def build_report_html(root: str, seed: int = 0, per_method: int = PER_METHOD,
                      stats_rows: int = STATS_ROWS) -> str:
    """The report page of the dataset folder ``root`` (local path or URI), as a string."""
    manifest = _read_json(storage.join(root, "manifest.json"))
    report = _read_json(storage.join(root, "report.json"))
    files = dataset_files(root, manifest)
    groups = row_groups(files)
    sample = sample_dataset(groups, seed=seed, per_method=per_method, stats_rows=stats_rows, manifest=manifest)
    cards = read_cards(sample)
    prompts = pairs_per_prompt(files) if sample.rows_total <= PROMPT_SCAN_MAX_ROWS else None
    return render_html(root, manifest=manifest, report=report, sample=sample, cards=cards,
                       prompts=prompts, seed=seed)


def write_html_report(root: str, output: str | None = None, seed: int = 0,
                      per_method: int = PER_METHOD, stats_rows: int = STATS_ROWS) -> str:
    """Write ``root/report.html`` (or ``output``); returns where it was written."""
    page = build_report_html(root, seed=seed, per_method=per_method, stats_rows=stats_rows)
    dest = output or storage.join(root, REPORT_NAME)
    storage.write_bytes(dest, page.encode("utf-8"))
    return dest
