"""The prompt-template and source sections of the pipeline config (what is read, and how it is asked)."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from pipeline.files.image_refs import READABLE_SCHEMES, uri_scheme
from pipeline.config.sections import Section
from schemas import ANSWER_TYPES


class TemplateConfig(Section):
    """A prompt template as data (e.g. the exact instruction a reference pipeline used)."""
    id: str
    #: the user-turn text; {question} is replaced by the question (other braces stay as they are)
    text: str
    #: an optional system turn sent before the user turn
    system: Optional[str] = None
    #: how answers to this prompt are read back (methods.extract styles)
    extraction: Literal["final_answer", "boxed", "think", "any", "final_answer_zh"] = "final_answer"
    #: language of the text (en, zh, ...); "any" = every language
    language: str = "en"
    #: templates sharing a group are language variants of one prompt (default: the id)
    group: Optional[str] = None

    @field_validator("text")
    @classmethod
    def _has_question(cls, v: str) -> str:
        if v.count("{question}") != 1:
            raise ValueError("text must contain {question} exactly once")
        return v


class SourceConfig(Section):
    name: str
    format: Literal["jsonl", "parquet", "hf", "mmpr", "image_folder"]
    path: str
    #: images referenced by relative paths are resolved against this root (default: the file's folder)
    image_root: Optional[str] = None
    #: further roots absolute image references (paths, file://, s3://bucket/prefix, gs://...)
    #: may point into; any reference outside image_root and these is quarantined as
    #: image_uri_not_allowed before anything is read
    allowed_image_roots: list[str] = Field(default_factory=list)
    #: prompt template id or group for this source's ground-truth prompts (null = generate.template)
    template: Optional[str] = None
    #: picks the template's language variant: auto = zh when the file name contains "_zh_", else en
    language: str = "auto"
    #: quarantine rows without an image (null = ingest.require_image; false for format mmpr,
    #: whose prompt files hold text-only items)
    require_image: Optional[bool] = None
    split: str = "train"
    answer_type: str = "auto"
    #: ChartQA-style 5% relaxed numeric accuracy
    relaxed_numeric: bool = False
    #: accept True/False as yes/no
    true_false: bool = False
    #: rename columns: canonical name -> column in the source
    fields: dict[str, str] = Field(default_factory=dict)
    #: question used for image_folder sources and rows without one
    default_question: Optional[str] = None
    limit: Optional[int] = Field(None, ge=1)
    #: multimodal processor arguments for this source's prompts, merged over
    #: model.mm_processor_kwargs per request (e.g. InternVL {max_dynamic_patch: 24} for
    #: documents, 6 for natural images; Qwen2.5-VL {min_pixels: ..., max_pixels: ...})
    mm_processor_kwargs: dict[str, Any] = Field(default_factory=dict)

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
