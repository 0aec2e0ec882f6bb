"""One sampled pair as an HTML card: images (crop boxes drawn), question, chosen | rejected,
the method's details and the provenance.  Every text is escaped; images are embedded thumbnails."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from html import escape
from typing import Any, Iterable

from methods.thumbnails import jpeg_of
from publish.layout import image_methods
from schemas.records import turn_text

#: longest side of an embedded thumbnail
THUMB_PX = 384
#: longest side of an image as shown on a card (small images are scaled up, at most 2x)
SHOW_PX = 240
#: small PNG/JPEG/GIF/WebP images up to this size are embedded as they are
EMBED_AS_IS_BYTES = 96_000
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


def esc(value: Any) -> str:
    """HTML-escape anything (``None`` is empty), quotes included: safe in text and in attributes."""
    return "" if value is None else escape(str(value), quote=True)


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
        jpeg = jpeg_of(im, max_px, quality=82, optimize=False)
        return Thumb(f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}", width, height)
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



def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower())



# -- cards ----------------------------------------------------------------------------
def _turn_text(conversation: list | None) -> str:
    return turn_text(conversation) if conversation else ""


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
    if method in image_methods() or rejected_images:
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
        ("prompt id / row key", _codes([prov.get("prompt_id"), prov.get("row_key")])),
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
    if method in image_methods() and boxes:
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


