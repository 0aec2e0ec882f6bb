"""Loading a config: the YAML file, then the environment, then ``--set``; errors name the
argument or variable that set a wrong value, not only the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config.settings import PipelineConfig
from pipeline.errors import ConfigError


def _format_error(err: ValidationError, origin: str, origins: dict[str, str]) -> str:
    """One line per error, naming where the wrong value came from: the ``--set`` argument that
    set the key (``origins``: dotted key -> the argument as typed), else the config file."""
    lines = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"]]
        key = ".".join(parts) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        blamed = _override_of(key, e["type"], origins)
        if blamed is None:
            lines.append(f"{origin}: {key}: {msg}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{origins[blamed]}: {_unknown_key(parts)}")
        else:  # the key is in the argument already, unless the error is inside the value it set
            lines.append(f"{origins[blamed]}: {msg}" if key == blamed else f"{origins[blamed]}: {key}: {msg}")
    return "\n".join(lines)


def _override_of(key: str, kind: str, origins: dict[str, str]) -> str | None:
    """The overridden key an error at ``key`` is about: that key or one inside the value it set,
    or (an unknown key) one that a key under it was set through."""
    for dotted in origins:
        if key == dotted or key.startswith(dotted + "."):
            return dotted
        if kind == "extra_forbidden" and dotted.startswith(key + "."):
            return dotted
    return None


def _unknown_key(parts: list[str]) -> str:
    """Why a key is not accepted, with the nearest key that is (or the section's keys): a typo
    in ``--set`` is what the user has to fix, not the YAML file."""
    import difflib

    *section, leaf = parts
    key, known = ".".join(parts), _keys_at(section)
    close = difflib.get_close_matches(leaf, known, n=1)
    if close:
        return f"{key} is not a config key; did you mean {'.'.join([*section, close[0]])}?"
    if known:
        where = f"keys of {'.'.join(section)}" if section else "top-level keys"
        return f"{key} is not a config key ({where}: {', '.join(known)})"
    return f"{key} is not a config key"


def _keys_at(section: list[str]) -> list[str]:
    """The keys the config accepts under ``section`` ([]: the top level; list items by index)."""
    fields = PipelineConfig.full_model().model_fields
    if not section:
        return sorted(fields)
    model = _model_in(fields.get(section[0]))
    for part in section[1:]:
        if model is None:
            return []
        if part.isdigit():  # a list index: the model found is the list items' already
            continue
        model = _model_in(model.model_fields.get(part))
    return sorted(model.model_fields) if model is not None else []


def _model_in(field) -> type | None:
    """The pydantic model a field holds (itself, in a list or Optional), or None for a plain value."""
    from typing import get_args

    from pydantic import BaseModel

    todo = [field.annotation] if field is not None else []
    while todo:
        ann = todo.pop()
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return ann
        todo.extend(get_args(ann))
    return None


def _set_dotted(data: dict, dotted: str, value: Any, origin: str) -> None:
    """Set ``a.b.0.c`` in nested dicts/lists (list items by index); ``origin`` names the
    argument in errors."""
    node: Any = data
    *parents, leaf = dotted.split(".")
    for i, p in enumerate(parents):
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"{origin}: no list item {p}")
            node = node[int(p)]
        else:
            if node.get(p) is None:  # not there, or an empty section in the YAML
                node[p] = {}
            node = node[p]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{origin}: {'.'.join(parents[:i + 1])} is a value, not a section")
    if isinstance(node, list):
        if not leaf.isdigit() or int(leaf) >= len(node):
            raise ConfigError(f"{origin}: no list item {leaf}")
        node[int(leaf)] = value
    else:
        node[leaf] = value


#: environment variables that override a config key: the file's value gives way to the
#: variable's, which a ``--set`` of the key overrides in turn
ENV_OVERRIDES = {
    "MMPR_LOG_LEVEL": "run.log_level",
    "MMPR_WRITE_BUFFER_MB": "executor.write_buffer_mb",
    "MMPR_WRITE_MEMORY_MB": "executor.write_memory_mb",
}


def env_overrides() -> dict[str, tuple[str, str]]:
    """The config keys the environment sets now: dotted key -> (variable, value)."""
    return {key: (var, os.environ[var]) for var, key in ENV_OVERRIDES.items() if os.environ.get(var, "").strip()}


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None,
                origins: dict[str, str] | None = None) -> PipelineConfig:
    """Load and validate a YAML config; raise ConfigError with key paths.

    ``path`` None: no file (every key at its default).  The environment variables of
    ``ENV_OVERRIDES`` then set their keys.  ``overrides`` maps dotted keys to values
    ("run.output_dir": "out/x"); ``origins`` maps them to the command-line arguments
    that set them ("--set run.output_dir=out/x"), so that a wrong value is reported as
    the argument the user typed (or the variable), not as the file.  Relative source
    paths are resolved against the current directory.
    """
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    overrides = overrides or {}
    origins = {key: (origins or {}).get(key, f"override {key}") for key in overrides}
    for dotted, (var, value) in env_overrides().items():
        if dotted not in overrides:
            _set_dotted(data, dotted, value.strip(), f"{var}={value}")
            origins[dotted] = f"{var}={value}"
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value, origins[dotted])
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, str(path) if path is not None else "config", origins)) from None
