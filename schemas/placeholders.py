"""``<image>`` placeholders in questions: parsed at ingest, rendered once per image at generation.

MMPR's prompt files write where images go inside the question text
(``"<image>\\nWhat color?"``; ``"Image-1: <image>\\nImage-2: <image>\\n..."``).
Sending that text *and* an image part gives the model two image tokens for
one image, so ingest stores the question without placeholders and records
where they were (character offsets into the stored question).  Generation
then renders the images as InternVL's reference pipeline does: a single image
first (its placeholder and the newline after it removed), several images
interleaved with the text exactly where their placeholders were.  A row whose
placeholder count differs from its image count is quarantined
(``image_placeholder_mismatch``): the reference would silently send a wrong
prompt.
"""
from __future__ import annotations

from typing import Sequence

PLACEHOLDER = "<image>"
#: stands for an image inside rendered text until it is split into content parts
#: (a private-use character: never in real questions, survives template filling)
IMAGE_MARK = "\ue000"


def parse_placeholders(question: str) -> tuple[str, list[int]]:
    """(question without placeholders, the offset in it where each one was).

    A single placeholder takes the newline after it along (the reference's
    ``replace('<image>\\n', '')``); several keep the surrounding text intact."""
    count = question.count(PLACEHOLDER)
    if count == 1:
        i = question.index(PLACEHOLDER)
        rest = question[i + len(PLACEHOLDER):]
        return question[:i] + rest.removeprefix("\n"), [i]
    parts = question.split(PLACEHOLDER)
    positions, offset = [], 0
    for part in parts[:-1]:
        offset += len(part)
        positions.append(offset)
    return "".join(parts), positions


def interleaved(n_images: int, positions: Sequence[int]) -> bool:
    """Images go inside the text only when there are several and each has its place."""
    return n_images > 1 and len(positions) == n_images


def with_marks(question: str, positions: Sequence[int]) -> str:
    """The question with ``IMAGE_MARK`` at each image position (fill a template with this)."""
    out, last = [], 0
    for p in positions:
        out += [question[last:p], IMAGE_MARK]
        last = p
    return "".join(out) + question[last:]


def user_content(text: str, n_images: int, placeholder: str | None = None) -> list[dict] | str:
    """A user turn's content: image parts where ``text`` has ``IMAGE_MARK``s, else all images first.

    With ``placeholder`` (chat templates that take plain strings, InternVL's
    ``"<image>"``) the content is one string: images-first as
    ``"<image>\\n" * n + text``, interleaved as the text with each mark replaced."""
    if n_images == 0:  # text-only, or DropoutNTP's image-free continuation: no marks either
        text = text.replace(IMAGE_MARK, "")
        return text if placeholder is not None else [{"type": "text", "text": text}]
    if IMAGE_MARK not in text:
        if placeholder is not None:
            return f"{placeholder}\n" * n_images + text
        return [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    if placeholder is not None:
        return text.replace(IMAGE_MARK, placeholder)
    parts: list[dict] = []
    for i, chunk in enumerate(text.split(IMAGE_MARK)):
        if i:
            parts.append({"type": "image"})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts
