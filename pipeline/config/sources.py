"""The prompt-template and source sections of the pipeline config (what is read, and how it is asked)."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from pipeline.files.image_refs import READABLE_SCHEMES, uri_scheme
from pipeline.config.sections import Section
from schemas import ANSWER_TYPES


class TemplateConfig(Section):
    """A prompt template as data (e.g. the exact instruction a reference pipeline used)."""
    id: str = Field(description=(
        "The template's id, as generate.template and sources[].template name it (or its group)"))
    text: str = Field(description=(
        "The user-turn text; {question} is replaced by the question (other braces stay as they are)"))
    system: Optional[str] = Field(None, description="An optional system turn sent before the user turn")
    extraction: Literal["final_answer", "boxed", "think", "any", "final_answer_zh"] = Field(
        "final_answer",
        description="How answers to this prompt are read back: final_answer, boxed, think, any, final_answer_zh "
                    "(methods.extract)")
    language: str = Field("en", description='Language of the text (en, zh, ...); "any" = every language')
    group: Optional[str] = Field(None, description=(
        "Templates sharing a group are language variants of one prompt (default: the id)"))

    @field_validator("text")
    @classmethod
    def _has_question(cls, v: str) -> str:
        if v.count("{question}") != 1:
            raise ValueError("text must contain {question} exactly once")
        return v


class SourceConfig(Section):
    name: str = Field(description=(
        "The source's name: unique; rows, pairs and the report carry it, per_source settings use it"))
    format: Literal["jsonl", "parquet", "hf", "mmpr", "image_folder"] = Field(description=(
        "How the source is read: jsonl, parquet, hf (a hub dataset or a saved one), mmpr (InternVL's MMPR prompt "
        "files) or image_folder (images with optional .txt captions)"))
    path: str = Field(description="The file, folder, hub dataset id or object-store URI to read")
    image_root: Optional[str] = Field(None, description=(
        "Images referenced by relative paths are resolved against this root (default: the file's folder)"))
    allowed_image_roots: list[str] = Field(default_factory=list, description=(
        "Further roots that absolute image references (paths, file://, s3://bucket/prefix, gs://...) may point "
        "into; a reference outside image_root and these is quarantined as image_uri_not_allowed before anything is "
        "read"))
    template: Optional[str] = Field(None, description=(
        "Prompt template id or group for this source's ground-truth prompts (null = generate.template)"))
    language: str = Field("auto", description=(
        "Picks the template's language variant: auto = zh when the file name contains \"_zh_\", else en"))
    require_image: Optional[bool] = Field(None, description=(
        "Quarantine rows without an image (null = ingest.require_image; false for format mmpr, whose prompt files "
        "hold text-only items)"))
    split: str = Field("train", description="The split read from an hf source")
    answer_type: str = Field("auto", description=(
        "How answers are matched: auto (inferred from the answer and choices), multiple_choice, integer, number, "
        "yes_no, word, text, anls, math or open; a row's own answer_type wins"))
    relaxed_numeric: bool = Field(False, description=(
        "Accept numbers within 5% of the ground truth (ChartQA's relaxed accuracy)"))
    true_false: bool = Field(False, description="Accept True/False as yes/no")
    fields: dict[str, str] = Field(default_factory=dict, description=(
        "Rename columns: canonical name (id, question, answer, image, images, choices, answer_type, facts) -> the "
        "column in the source"))
    default_question: Optional[str] = Field(None, description=(
        "Question used for image_folder sources and rows without one"))
    limit: Optional[int] = Field(None, ge=1, description=(
        "Read at most this many rows, from the start of the source (null = all)"))
    mm_processor_kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "Multimodal processor arguments for this source's prompts, merged over model.mm_processor_kwargs per "
        "request (e.g. InternVL {max_dynamic_patch: 24} for documents, 6 for natural images; Qwen2.5-VL "
        "{min_pixels: ..., max_pixels: ...}); a max_* value may not exceed the model's"))

    @field_validator("answer_type")
    @classmethod
    def _answer_type(cls, v: str) -> str:
        if v not in ANSWER_TYPES:
            raise ValueError(f"unknown answer_type {v!r}; use one of {list(ANSWER_TYPES)}")
        return v

    @field_validator("allowed_image_roots")
    @classmethod
    def _roots(cls, v: list[str]) -> list[str]:
        for root in v:
            scheme = uri_scheme(root)
            if scheme is not None and scheme not in READABLE_SCHEMES:
                raise ValueError(f"{root!r}: images are never fetched over {scheme}; list local folders or "
                                 f"URIs of {list(READABLE_SCHEMES)} (download web images first)")
            if scheme is not None and ("?" in root or "#" in root or root.rstrip("/").endswith(":/")):
                raise ValueError(f"{root!r}: give a bucket or folder prefix without query or fragment")
        return v

    def image_required(self, default: bool) -> bool:
        if self.require_image is not None:
            return self.require_image
        return False if self.format == "mmpr" else default

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        known = {"id", "question", "answer", "image", "images", "choices", "answer_type", "facts"}
        bad = sorted(set(v) - known)
        if bad:
            raise ValueError(f"unknown canonical field(s) {bad}; known: {sorted(known)}")
        return v
