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
    or the images interleaved where ``text`` marks them (``schemas.placeholders``)."""
    from schemas.placeholders import user_content

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


def response_provenance(row: dict, chosen: dict | None = None, rejected: dict | None = None,
                        **fields: Any) -> dict:
    """Provenance of a pair made from a RESPONSE_SCHEMA ``row``: the fields every pair method
    shares (sample, source row, model, template, sampling, ground truth), the index, seed,
    tokens, finish reason and sampled log-prob of the ``chosen``/``rejected`` responses it took,
    plus ``fields``."""
    shared: dict[str, Any] = {
        "prompt_id": row["prompt_id"], "row_key": row["row_key"], "facts": row["facts"],
        "model": row["model"], "model_revision": row["model_revision"], "template_id": row["template_id"],
        "template_hash": row.get("template_hash"), "sampling": row["sampling"], "answer_type": row["answer_type"], "ground_truth": row["answer"] or None,
        "samples_drawn": len(row["responses"] or []),
    }
    for side, r in (("chosen", chosen), ("rejected", rejected)):
        if r is not None:
            shared.update({f"{side}_index": r["index"], f"{side}_seed": r["seed"],
                           f"{side}_tokens": r["num_tokens"], f"{side}_finish_reason": r["finish_reason"],
                           f"{side}_logprob": r.get("logprob"), f"{side}_tokens_key": r.get("tokens_key")})
    return provenance(**{**shared, **fields})


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
