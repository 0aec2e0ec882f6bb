"""Record builders: the one place that knows how a pair row is laid out.

Pair stages call ``pair_row``; it produces a dict that matches
``PAIR_SCHEMA`` exactly (TRL conversational columns, Hugging Face images,
typed provenance with every field present).
"""
from __future__ import annotations

from typing import Any, Sequence

from schemas.arrow import PROVENANCE_TYPE

PROVENANCE_FIELDS = tuple(f.name for f in PROVENANCE_TYPE)


def user_turn(text: str, n_images: int) -> dict:
    """TRL's conversational user turn: one ``{"type": "image"}`` part per image, then the text,
    or the images interleaved where ``text`` marks them (``pipeline.placeholders``)."""
    from pipeline.placeholders import user_content

    content = user_content(text, n_images)
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    return {"role": "user", "content": [{"type": p["type"], "text": p.get("text")} for p in content]}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def provenance(**fields: Any) -> dict:
    unknown = set(fields) - set(PROVENANCE_FIELDS)
    if unknown:
        raise KeyError(f"unknown provenance field(s): {sorted(unknown)}")
    return {name: fields.get(name) for name in PROVENANCE_FIELDS}


def pair_row(*, pair_id: str, method: str, source: str, question: str, user_text: str,
             images: Sequence[dict], chosen: str, rejected: str,
             rejected_images: Sequence[dict] = (), prov: dict) -> dict:
    return {
        "id": pair_id,
        "prompt": [user_turn(user_text, len(images))],
        "chosen": [assistant_turn(chosen)],
        "rejected": [assistant_turn(rejected)],
        "images": list(images),
        "rejected_images": list(rejected_images),
        "method": method,
        "source": source,
        "question": question,
        "provenance": prov,
    }


def turn_text(conversation: Sequence[dict]) -> str:
    """The text of a one-turn conversation column (chosen/rejected)."""
    return "".join(p["text"] or "" for p in conversation[-1]["content"] if p["type"] == "text")
