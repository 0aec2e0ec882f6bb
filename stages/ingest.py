"""ingest: validate raw source rows and normalise them to ``PROMPT_SCHEMA``.

Every problem with a row becomes a quarantine entry with a specific reason
(missing_image_file, corrupt_image, empty_question, bad_answer_type,
non_finite_number, ...); the rest of the source goes on.  Whatever else
reading or normalising one row raises quarantines that row alone, as
``unreadable_row`` (``pipeline.sources.readers``) or ``ingest_error``, with the file and
line or entry in the detail.  The ``prompt_id`` is a hash of the source name
and the row's key, so it is stable across runs and machines.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Iterator

from pydantic import Field

from pipeline.config.settings import Section
from pipeline.files.image_refs import allowed_roots
from pipeline.sources.images import ImageError, load_image
from schemas.placeholders import PLACEHOLDER, parse_placeholders
from pipeline.core.seeds import stable_hash
from pipeline.core.stage import SourceStage, StageContext
from schemas import ANSWER_TYPES, PROMPT_SCHEMA


class IngestConfig(Section):
    max_question_chars: int = Field(20_000, ge=1, description=(
        "Questions longer than this are quarantined (a runaway field, not a prompt)"))
    require_image: bool = Field(True, description=(
        "Quarantine rows without any image (this is a multimodal pipeline); sources[].require_image overrides it "
        "per source"))


def prompt_id_for(source: str, row_key: str) -> str:
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
        if isinstance(v, float) and not math.isfinite(v):
            # JSON's NaN/Infinity and float columns' NaN: as text "nan" and "inf" they would be
            # ground truth that correctness pairs are scored against
            raise RowError("non_finite_number", f"{what} holds {v!r}")
        out.append(str(v).strip())
    if any(not v for v in out):
        raise RowError(reason, f"{what} contains an empty string")
    return out


class IngestStage(SourceStage):
    name = "ingest"
    Config = IngestConfig
    uses = ("sources", "model.max_images_per_prompt")
    input_schema = None  # raw rows from pipeline.sources.readers
    output_schema = PROMPT_SCHEMA

    def plan_sources(self) -> list[tuple[str, tuple[str, ...]]]:
        """Read ranges of about ``run.partition_rows`` rows (``pipeline.sources.ranges``)."""
        from pipeline.sources.ranges import plan_partitions

        # planning is the framework's: partition_rows and the workers (engine.replicas) never change the data
        return plan_partitions(self.pipeline_config)

    def read_source(self, inputs: tuple[str, ...]) -> list[dict]:
        """A range's raw rows; a row whose key came earlier in the range, or at one of the
        range's ``dups`` positions (an earlier range holds its key), is marked duplicate.

        A redone range (``redo_sources``) also names its own previous output: rows kept
        there are taken as they are (``kept``) instead of loading their images again."""
        from pipeline.files import storage
        from pipeline.sources.ranges import decode, read_range

        rng = decode(inputs[:1])
        before = inputs[1] if len(inputs) > 1 and storage.exists(inputs[1]) else None
        kept = {r["row_key"]: r for r in storage.read_table(before).to_pylist()} if before else {}
        later, seen, rows = set(rng.get("dups", ())), set(), []
        for raw in read_range(self.config, rng):
            if raw["error"] is None:
                raw["duplicate"] = raw["row_key"] in seen or raw["position"] in later
                seen.add(raw["row_key"])
                if not raw["duplicate"] and raw["row_key"] in kept:
                    raw["kept"] = kept[raw["row_key"]]
            rows.append(raw)
        return rows

    def redo_sources(self, planned: list[tuple[str, tuple[str, ...]]], out_dir: str) -> dict[str, tuple[str, ...]]:
        """Ranges holding the first row of a key that an earlier range already holds run again
        with those rows marked duplicate (``pipeline.sources.duplicate_keys``), reusing their own output."""
        from pipeline.sources.duplicate_keys import cross_range_duplicates
        from pipeline.run.runner import Task
        from pipeline.sources.ranges import decode, encode

        ranges = {name: decode(inputs[:1]) for name, inputs in planned}
        late = cross_range_duplicates(out_dir, [(name, r["source"]) for name, r in ranges.items()])
        return {name: (encode({**ranges[name], "dups": positions}), Task(self.name, name, (), out_dir, "").data_uri())
                for name, positions in late.items()}

    @classmethod
    def summarize(cls, counters: dict) -> dict:
        # text-only prompts (MMPR prompt files hold them) give correctness pairs only
        return {"text_only_prompts": counters["text_only"]} if counters.get("text_only") else {}

    @classmethod
    def summary_line(cls, summary: dict) -> str | None:
        return f"text-only prompts: {summary['text_only_prompts']}" if summary else None

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        from pipeline.sources.duplicate_keys import KEYS_SCHEMA, SIDE

        for raw in rows:
            if raw.get("error") is None:  # every readable row's key, for the duplicates across ranges
                ctx.side(SIDE, KEYS_SCHEMA, {"row_key": raw["row_key"], "position": raw.get("position", 0)})
            try:
                out = raw.get("kept") or self._normalise(raw)
            except (RowError, ImageError) as e:
                self._refuse(raw, ctx, e.reason, e.detail)
                continue
            except Exception as e:  # noqa: BLE001 -- one row's problem, not its range's
                self._refuse(raw, ctx, "ingest_error", f"{raw.get('where') or raw['row_key']}: "
                                                       f"{type(e).__name__}: {e}")
                continue
            ctx.stats.inc(f"source.{out['source']}")
            ctx.stats.inc("with_ground_truth" if out["answer"] else "without_ground_truth")
            if not out["images"]:
                ctx.stats.inc("text_only")
            yield out

    @staticmethod
    def _refuse(raw: dict, ctx: StageContext, reason: str, detail: str) -> None:
        """Quarantine one raw row.  An exception escaping ``run`` would refuse the whole range
        (``stage_error``) after retrying it, though the next row may be fine."""
        ctx.quarantine({"source": raw["source"], "row_key": raw["row_key"],
                        "prompt_id": prompt_id_for(raw["source"], raw["row_key"]),
                        **(raw["data"] or {})}, reason, detail)

    def _normalise(self, raw: dict) -> dict:
        if raw.get("error"):
            raise RowError(*raw["error"])
        if raw.get("duplicate"):
            raise RowError("duplicate_prompt_id", f"row key {raw['row_key']!r} seen before in this source")
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
            "prompt_id": prompt_id_for(raw["source"], raw["row_key"]),
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
