"""The configuration reference, generated from the config model: every key (dotted, the stage
sections included) with its type, default and description, and the environment variables.

``python -m pipeline config`` prints it (``--markdown``: docs/config.md, ``--json-schema``:
docs/config.schema.json); ``--config FILE [--set K=V ...]`` prints a config's resolved values
instead.  Nothing here is written by hand: a field's ``description`` is its documentation,
and tests/test_config_reference.py fails when a field has none or a generated file is stale.
"""
from __future__ import annotations

import json
import textwrap
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from pipeline.config.settings import PipelineConfig
from pipeline.config.loading import ENV_OVERRIDES

#: environment variables the pipeline reads (besides Ray's, vLLM's and the AWS ones):
#: name -> (the config key it overrides or extends, or None, and what it does)
ENVIRONMENT: dict[str, tuple[str | None, str]] = {
    "MMPR_LOG_LEVEL": (ENV_OVERRIDES["MMPR_LOG_LEVEL"], "overrides the key when a config is loaded"),
    "MMPR_WRITE_BUFFER_MB": (ENV_OVERRIDES["MMPR_WRITE_BUFFER_MB"],
                             "overrides the key when a config is loaded"),
    "MMPR_WRITE_MEMORY_MB": (ENV_OVERRIDES["MMPR_WRITE_MEMORY_MB"],
                             "overrides the key when a config is loaded"),
    "MMPR_STAGE_PACKAGES": ("run.stage_packages",
                            "more stage packages, comma-separated, loaded in addition to the key's (a stage, once "
                            "loaded, stays registered; `python -m pipeline stage --help` lists these too)"),
    "MMPR_NO_PROGRESS": (None, "set to 1: no progress bars on the terminal"),
    "MMPR_CACHE_DIR": (None, "where worker nodes keep local copies of models given as object-store URIs "
                             "(default ~/.cache/mmpr-forge)"),
    "MMPR_FAULT": (None, "test machinery: kill (or stall) the process at a chosen partition of a stage, "
                         "`<stage>:<when>[:group|engine_core|hold]` (pipeline/run/faults.py)"),
    "MMPR_FAULT_ONCE": (None, "test machinery: a file that, once created by the fault, disarms MMPR_FAULT"),
    "MMPR_FAULT_HOLD_S": (None, "test machinery: how long a `hold` fault stalls (seconds, default 600)"),
    "MMPR_FAULT_RELEASE": (None, "test machinery: a file whose existence ends a `hold` fault's stall early"),
}

WIDTH = 100


@dataclass(frozen=True)
class Key:
    """One key of the reference."""
    key: str          #: dotted; list items as <i>, the keys of a mapping as <name>
    type: str
    default: str      #: JSON; "" for a section (its keys have theirs), "required" when there is none
    description: str
    section: bool     #: a section: the keys under it follow


def keys(model: type[BaseModel] | None = None) -> list[Key]:
    """Every key of ``model`` (default: the full pipeline config), sections before their keys."""
    out: list[Key] = []
    _walk(model or PipelineConfig.full_model(), "", out)
    return out


def _walk(model: type[BaseModel], prefix: str, out: list[Key]) -> None:
    for name, field in model.model_fields.items():
        key = prefix + name
        description = " ".join((field.description or "").split())
        inner, item = _nested(field.annotation)
        if inner is None:
            out.append(Key(key, _type(field.annotation, field.metadata), _default(field), description, False))
            continue
        out.append(Key(key, _type(field.annotation), _default(field) if item else "", description, True))
        _walk(inner, f"{key}.{item}." if item else f"{key}.", out)


def _nested(ann: Any) -> tuple[type[BaseModel] | None, str]:
    """The section model a field holds, and how its keys are reached: "" (directly), "<i>"
    (list items) or "<name>" (the values of a mapping)."""
    args = [a for a in get_args(ann) if a is not type(None)]
    if get_origin(ann) in (Union, types.UnionType) and len(args) == 1:
        ann, args = args[0], list(get_args(args[0]))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, ""
    origin = get_origin(ann)
    if origin is list and _is_model(args[0]):
        return args[0], "<i>"
    if origin is dict and _is_model(args[1]):
        return args[1], "<name>"
    return None, ""


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _type(ann: Any, metadata: list | None = None) -> str:
    """A type as YAML sees it (``int``, ``str | null``, ``"ray" | "local"``, ``list[int]``)."""
    origin, args = get_origin(ann), get_args(ann)
    if ann is type(None):
        text = "null"
    elif ann is Any:
        text = "any"
    elif origin is Literal:
        text = " | ".join(json.dumps(a) for a in args)
    elif origin in (Union, types.UnionType):
        text = " | ".join(_type(a) for a in args)
    elif origin is list:
        text = f"list[{_type(args[0])}]"
    elif origin is dict:
        text = f"dict[{_type(args[0])}, {_type(args[1])}]"
    elif origin is tuple:
        text = f"[{', '.join(_type(a) for a in args)}]"
    elif _is_model(ann):
        text = "section"
    else:
        text = getattr(ann, "__name__", str(ann))
    bounds = [f"{op} {_number(getattr(m, attr))}" for m in metadata or ()
              for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >="))
              if getattr(m, attr, None) is not None]
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _number(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    return json.dumps(to_jsonable_python(value), ensure_ascii=False)


# -- the reference, as text and as Markdown ---------------------------------------------------
#: how a config is written and overridden (the head of the reference, one line each)
INTRO = (
    "A config is a YAML file of the sections below (generate: {n: 16}); unknown keys fail.",
    "--set KEY=VALUE overrides a key on the command line (--set generate.n=16; list items by index:",
    "--set sources.0.limit=10).  MMPR_LOG_LEVEL, MMPR_WRITE_BUFFER_MB and MMPR_WRITE_MEMORY_MB in the",
    "environment override their keys when a config is loaded, and a --set overrides them in turn.",
    "python -m pipeline config --config FILE [--set KEY=VALUE ...] prints a config's resolved values.",
)


def reference_text() -> str:
    """Every key, its type, default and description (``python -m pipeline config``)."""
    lines = ["mmpr-forge configuration: every key, its type, default and description", "", *INTRO]
    for k in keys():
        if "." not in k.key:
            lines.append("")
        head = f"{k.key}: {k.type}" + (f" = {k.default}" if k.default else "")
        lines.append(head)
        lines += textwrap.wrap(k.description, WIDTH, initial_indent="    ", subsequent_indent="    ")
    lines += ["", "Environment variables"]
    for var, (key, what) in ENVIRONMENT.items():
        lines += textwrap.wrap(f"{var}" + (f" ({key})" if key else "") + f": {what}", WIDTH,
                               subsequent_indent="    ")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The reference as Markdown: one table per section (docs/config.md)."""
    out = ["# Configuration reference", "",
           "<!-- generated by `python -m pipeline config --markdown > docs/config.md` from the config model "
           "(pipeline/config/, each stage's `Config` in stages/<stage>.py); tests/test_config_reference.py "
           "checks that it is up to date -->", "",
           "A config is a YAML file of the sections below (`generate: {n: 16}`); unknown keys fail.  "
           "`--set KEY=VALUE` overrides a key on the command line (`--set generate.n=16`; list items by index: "
           "`--set sources.0.limit=10`).  The environment variables `MMPR_LOG_LEVEL`, `MMPR_WRITE_BUFFER_MB` and "
           "`MMPR_WRITE_MEMORY_MB` override their keys when a config is loaded, and a `--set` overrides them in turn (see "
           "[Environment variables](#environment-variables)).", "",
           "`python -m pipeline config` prints this reference; `python -m pipeline config --config FILE "
           "[--set KEY=VALUE ...]` prints the resolved value of every key of a config.  "
           "[config.schema.json](config.schema.json) is the same model as a JSON schema: YAML language servers "
           "(VS Code's YAML extension and others) complete and check a config with it when the file starts with "
           "`# yaml-language-server: $schema=../docs/config.schema.json`.", ""]
    for k in keys():
        if "." not in k.key:
            out += [*([""] if out[-1] else []), f"## `{k.key}`", "", k.description, "",
                    "| key | type | default | description |", "|---|---|---|---|"]
            continue
        default = f"`{_cell(k.default)}`" if k.default else ""
        out.append(f"| `{k.key}` | `{_cell(k.type)}` | {default} | {_cell(k.description)} |")
    out += ["", "## Environment variables", "", "| variable | key | what it does |", "|---|---|---|"]
    for var, (key, what) in ENVIRONMENT.items():
        out.append(f"| `{var}` | {f'`{key}`' if key else ''} | {_cell(what)} |")
    return "\n".join(out) + "\n"


def json_schema() -> str:
    """The full config model's JSON schema (docs/config.schema.json)."""
    return json.dumps(PipelineConfig.model_json_schema(), indent=2, ensure_ascii=False) + "\n"


# -- a config's values --------------------------------------------------------------------------
def resolved_text(config: PipelineConfig) -> str:
    """Every key of ``config`` with its resolved value, one ``key = value`` (JSON) a line, in
    the order of the reference; a key that ``--set`` takes as it is written."""
    lines: list[str] = []
    _values(config, "", lines)
    return "\n".join(lines) + "\n"


def _values(obj: BaseModel, prefix: str, lines: list[str]) -> None:
    for name in type(obj).model_fields:
        key, value = prefix + name, getattr(obj, name)
        if isinstance(value, BaseModel):
            _values(value, f"{key}.", lines)
        elif value and isinstance(value, list) and all(isinstance(v, BaseModel) for v in value):
            for i, item in enumerate(value):
                _values(item, f"{key}.{i}.", lines)
        elif value and isinstance(value, dict) and all(isinstance(v, BaseModel) for v in value.values()):
            for item_name, item in value.items():
                _values(item, f"{key}.{item_name}.", lines)
        else:
            dumped = obj.model_dump(mode="json", include={name})[name]
            lines.append(f"{key} = {json.dumps(dumped, ensure_ascii=False)}")
