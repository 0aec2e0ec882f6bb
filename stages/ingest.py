"""ingest: validate raw source rows and normalise them to ``PROMPT_SCHEMA``.

Every problem with a row becomes a quarantine entry with a specific reason
(missing_image_file, corrupt_image, empty_question, bad_answer_type, ...);
the rest of the source goes on.  The ``sample_id`` is a hash of the source
name and the row's key, so it is stable across runs and machines.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from pipeline.image_refs import allowed_roots
from pipeline.images import ImageError, load_image
from pipeline.placeholders import PLACEHOLDER, parse_placeholders
from pipeline.seeds import stable_hash
from pipeline.stage import Stage, StageContext
from schemas import ANSWER_TYPES, PROMPT_SCHEMA


def sample_id_for(source: str, row_key: str) -> str:
    return stable_hash(source, row_key)


class RowError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _as_str_list(value: Any, what: str, reason: str, allow_scalar: bool = True) -> list[str]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return []  # typed sources (Parquet, HF) store "no ground truth" as an empty string
    if isinstance(value, bool):
        raise RowError(reason, f"{what} is a boolean")
    if isinstance(value, (int, float, str)) and allow_scalar:
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RowError(reason, f"{what} is a {type(value).__name__}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise RowError(reason, f"{what} item of type {type(v).__name__}")
        out.append(str(v).strip())
    if any(not v for v in out):
        raise RowError(reason, f"{what} contains an empty string")
    return out


class IngestStage(Stage):
    name = "ingest"
    input_schema = None  # raw rows from pipeline.sources
    output_schema = PROMPT_SCHEMA

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        for raw in rows:
            try:
                out = self._normalise(raw)
            except (RowError, ImageError) as e:
                ctx.quarantine({"source": raw["source"], "row_key": raw["row_key"],
                                "sample_id": sample_id_for(raw["source"], raw["row_key"]),
                                **(raw["data"] or {})}, e.reason, e.detail)
                continue
            ctx.stats.inc(f"source.{out['source']}")
            ctx.stats.inc("with_ground_truth" if out["answer"] else "without_ground_truth")
            if not out["images"]:
                ctx.stats.inc("text_only")
            yield out

    def _normalise(self, raw: dict) -> dict:
        if raw.get("error"):
            raise RowError(*raw["error"])
        if raw.get("duplicate"):
            raise RowError("duplicate_sample_id", f"row key {raw['row_key']!r} seen before in this source")
        src = self.config.source(raw["source"])
        fields = {k: src.fields.get(k, k) for k in
                  ("question", "answer", "image", "images", "choices", "answer_type", "facts")}
        data = raw["data"]
        question = data.get(fields["question"], src.default_question)
        if question is None:
            raise RowError("missing_question")
        if not isinstance(question, str):
            raise RowError("question_not_string", f"question is a {type(question).__name__}")
        question = question.strip()
        if not question:
            raise RowError("empty_question")
        limit = self.config.ingest.max_question_chars
        if len(question) > limit:
            raise RowError("question_too_long", f"{len(question)} chars > ingest.max_question_chars={limit}")

        question, positions = parse_placeholders(question)
        if not question.strip():
            raise RowError("empty_question", "only image placeholders")
        images = self._images(data, fields, raw.get("root"), src)
        if positions and len(positions) != len(images):
            raise RowError("image_placeholder_mismatch",
                           f"{len(positions)} {PLACEHOLDER} placeholder(s) for {len(images)} image(s)")
        answers = _as_str_list(data.get(fields["answer"]), "answer", "bad_answer_type")
        choices = _as_str_list(data.get(fields["choices"]), "choices", "bad_choices", allow_scalar=False)
        answer_type = data.get(fields["answer_type"]) or src.answer_type
        if not isinstance(answer_type, str) or answer_type not in ANSWER_TYPES:
            raise RowError("unknown_answer_type", f"{answer_type!r} not in {list(ANSWER_TYPES)}")
        if not answers:
            answer_type = "open"
        facts = data.get(fields["facts"])
        if facts is not None and not isinstance(facts, str):
            facts = str(facts)
        return {
            "sample_id": sample_id_for(raw["source"], raw["row_key"]),
            "source": raw["source"], "row_key": raw["row_key"], "question": question,
            "images": images, "image_positions": positions, "answer": answers, "answer_type": answer_type,
            "choices": choices, "facts": facts,
        }

    def _images(self, data: dict, fields: dict, root: str | None, src) -> list[dict]:
        refs = data.get(fields["images"])
        if refs is None:
            refs = data.get(fields["image"])
        if refs is None or (isinstance(refs, (list, tuple)) and not refs) or refs == "":
            if src.image_required(self.config.ingest.require_image):
                raise RowError("missing_image", "row has no image")
            return []
        if not isinstance(refs, (list, tuple)):
            refs = [refs]
        limit = self.config.model.max_images_per_prompt
        if len(refs) > limit:
            raise RowError("too_many_images", f"{len(refs)} images > model.max_images_per_prompt={limit}")
        images, roots = [], allowed_roots(root, src.allowed_image_roots)
        for i, ref in enumerate(refs):
            try:
                images.append(load_image(ref, root, roots))
            except ImageError as e:
                suffix = f" (image {i + 1} of {len(refs)})" if len(refs) > 1 else ""
                raise ImageError(e.reason, f"{e.detail}{suffix}") from None
        return images
