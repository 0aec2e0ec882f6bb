"""Stage config sections on the pipeline config: each registered stage's ``Config`` model
validates the section named after the stage, read as ``config.<stage>``.

The sections are not fields of ``PipelineConfig``: they come from the stage
classes (``pipeline.core.graph``), so adding a stage adds its section without
touching the config module.  Unknown top-level keys still fail (extra=forbid),
errors keep their full key path (``generate.temprature``), and the sections
are part of every dump (``resolved()``, what workers and hashes see).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_serializer, model_validator


class Section(BaseModel):
    """The base of every config section, stages' own included: unknown keys fail, assignments are checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageSections(BaseModel):
    """Base of ``PipelineConfig``: the stage sections, validated and dumped with it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: one section per stage, validated with the stage's own ``Config`` model and read
    #: as ``config.<stage>`` (see ``_stage_sections``)
    _sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _stage_sections(cls, data: Any, handler: Any) -> "StageSections":
        """Validate each stage's section with the model the stage declares.

        The sections are not fields of this class: they come from the registered
        stages (``pipeline.core.graph``), so adding a stage adds its section without
        touching this file.  Unknown top-level keys still fail (extra=forbid).
        """
        from pipeline.core import graph

        if not isinstance(data, dict):
            return handler(data)
        registry = graph.load()
        data = dict(data)
        raw = {name: data.pop(name) for name in list(data)
               if name in registry and registry[name].Config is not None}
        errors: list = []
        sections: dict[str, BaseModel] = {}
        for name in graph.ordered():
            model = registry[name].Config
            if model is None:
                continue
            value = raw.get(name)
            try:
                sections[name] = value if isinstance(value, model) else model.model_validate(value or {})
            except ValidationError as e:
                errors += _prefixed_errors(e, (name,))
        try:
            config = handler(data)
        except ValidationError as e:
            errors = _prefixed_errors(e, ()) + errors
            config = None
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        config._sections = sections
        config.check_with_sections()
        return config

    def check_with_sections(self) -> None:
        """Checks that need the stage sections (run once they are set); raise ValueError."""

    @model_serializer(mode="wrap")
    def _dump_sections(self, handler: Any) -> dict:
        out = handler(self)
        for name, section in self._sections.items():
            out[name] = section.model_dump(mode="json")
        return out

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            sections = (self.__pydantic_private__ or {}).get("_sections") or {}
            if name in sections:
                return sections[name]
        return super().__getattr__(name)

    def model_copy(self, *, update: dict | None = None, deep: bool = False) -> "StageSections":
        """``update`` may replace stage sections too (``{"judge": judge_section}``)."""
        update = dict(update or {})
        replaced = {k: update.pop(k) for k in list(update) if k in self._sections}
        copy = super().model_copy(update=update, deep=deep)
        copy._sections = {**copy._sections, **replaced}
        return copy


def _prefixed_errors(err: ValidationError, prefix: tuple) -> list[dict]:
    """A ValidationError's line errors with ``prefix`` put before their locations."""
    return [{"type": e["type"], "loc": (*prefix, *e["loc"]), "input": e.get("input"), "ctx": e.get("ctx", {})}
            for e in err.errors()]
