"""The base of every config section, and the stage sections as fields of the pipeline config.

Each registered stage's ``Config`` model is the section named after the stage
(``config.generate``).  The config module never imports a stage (the layers point
one way), so those sections cannot be written into ``PipelineConfig``'s class body:
``full_model`` builds, from the stage registry (``pipeline.core.graph``), a subclass
of the static ``PipelineConfig`` with one real pydantic field per stage section, in
pipeline order, once per set of registered stages.  ``PipelineConfig(...)``,
``PipelineConfig.model_validate(...)`` and ``PipelineConfig.model_json_schema()``
go to that class, so adding a stage adds its section without touching the config
module, and the sections are ordinary fields: validated with their full key path
(``generate.temprature``), dumped after the static sections (``resolved()``, what
workers and hashes see), copied by ``model_copy(update={"judge": ...})`` and
described in the JSON schema and the reference (``pipeline.config.reference``).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from typing_extensions import Self


class Section(BaseModel):
    """The base of every config section, stages' own included: unknown keys fail, assignments are checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageSections(BaseModel):
    """Base of ``PipelineConfig``: builds the full model (the static sections plus one field per
    registered stage's section, ``full_model``) and hands construction, validation and the JSON
    schema on to it.  A full model names its stage sections, in order, in its class attribute
    ``__stage_sections__``; a static class has none."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # ``PipelineConfig(run=...)`` builds the full model (pydantic then runs its __init__)
        if _is_static(cls):
            cls = cls.full_model(_packages_in(kwargs))
        return super().__new__(cls)

    @classmethod
    def full_model(cls, stage_packages: Iterable[str] = ()) -> type[Self]:
        """The config model with a field for every registered stage's section (the stage
        packages ``stage_packages`` names are loaded first)."""
        from pipeline.core import graph

        static = _static(cls)
        registry = graph.load(stage_packages)
        sections = tuple((name, registry[name].Config) for name in graph.ordered()
                         if registry[name].Config is not None)
        return _build(static, sections)

    @classmethod
    def _for(cls, data: Any) -> type:
        """The class that validates ``data``: the full model once the stage packages it names are loaded."""
        if not _is_static(cls):
            return cls
        packages = _packages_in(data)
        try:
            return cls.full_model(packages)
        except ImportError as e:
            if not any(e.name == p or (e.name or "").startswith(p + ".") for p in packages):
                raise  # not a package the config names: a stage module's own import failed
            raise ValidationError.from_exception_data(cls.__name__, [{
                "type": "value_error", "loc": ("run", "stage_packages"), "input": packages,
                "ctx": {"error": ValueError(f"cannot import stage package {e.name}: {e}")},
            }]) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        if _is_static(cls):
            return cls._for(obj).model_validate(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any) -> Self:
        if _is_static(cls):
            import json

            return cls._for(json.loads(json_data)).model_validate_json(json_data, **kwargs)
        return super().model_validate_json(json_data, **kwargs)

    @classmethod
    def model_validate_strings(cls, obj: Any, **kwargs: Any) -> Self:
        if _is_static(cls):
            return cls._for(obj).model_validate_strings(obj, **kwargs)
        return super().model_validate_strings(obj, **kwargs)

    @classmethod
    def model_construct(cls, _fields_set: set[str] | None = None, **values: Any) -> Self:
        if _is_static(cls):
            return cls._for(values).model_construct(_fields_set, **values)
        return super().model_construct(_fields_set, **values)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The JSON schema of the full model: every section, the stages' included."""
        if _is_static(cls):
            return cls.full_model().model_json_schema(*args, **kwargs)
        return super().model_json_schema(*args, **kwargs)

    def __reduce__(self) -> tuple:
        """Pickled (Ray, multiprocessing) as its static class, its stage packages, its sections'
        names and its state: the full model is rebuilt from the registry where it is unpickled."""
        cls = type(self)
        return _restore, (_static(cls), _packages_in(self), cls.__stage_sections__, self.__getstate__())


def _is_static(cls: type) -> bool:
    """Whether ``cls`` is a static config class (``PipelineConfig``), not a built full model."""
    return "__stage_sections__" not in cls.__dict__


def _static(cls: type) -> type:
    """The static config class of ``cls`` (itself, or the one a full model was built on)."""
    return next(c for c in cls.__mro__ if _is_static(c))


def _packages_in(data: Any) -> tuple[str, ...]:
    """The stage packages a config's data names (``run.stage_packages``), where it is well-formed."""
    run = data.get("run") if isinstance(data, dict) else getattr(data, "run", None)
    packages = run.get("stage_packages") if isinstance(run, dict) else getattr(run, "stage_packages", None)
    if isinstance(packages, (list, tuple)) and all(isinstance(p, str) for p in packages):
        return tuple(packages)
    return ()


@lru_cache(maxsize=None)
def _build(static: type, sections: tuple[tuple[str, type], ...]) -> type:
    """A subclass of ``static`` with one field per stage section (name, model), in that order."""
    from pipeline.core import graph

    fields: dict[str, Any] = {
        name: (model, Field(default_factory=model,
                            description=f"The {name} stage: {_plain(graph.stage_class(name).help())}"))
        for name, model in sections}
    full = create_model(static.__name__, __base__=static, __module__=static.__module__,
                        __doc__=static.__doc__, **fields)
    full.__stage_sections__ = tuple(name for name, _ in sections)
    full.__qualname__ = static.__qualname__
    return full


def _plain(text: str) -> str:
    """A docstring line as a description: ``code`` as `code`, no pointers into design notes."""
    text = re.sub(r"\s*\(DESIGN\.md[^)]*\)", "", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _restore(static: type, stage_packages: tuple[str, ...], sections: tuple[str, ...], state: dict) -> Any:
    """Unpickle a config: the full model with exactly the pickled sections, its state set."""
    from pipeline.core import graph

    registry = graph.load(stage_packages)
    model = _build(static, tuple((name, registry[name].Config) for name in sections))
    obj = model.__new__(model)
    obj.__setstate__(state)
    return obj
