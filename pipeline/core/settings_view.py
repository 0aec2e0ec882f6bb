"""What one stage may read of the config: the view behind ``Stage.config``.

A stage's hash covers its own section and the settings it declares it uses
(``Stage.uses``), so a setting read but not declared would let a resumed run reuse
stale output, silently.  The view makes that impossible: reading anything else
raises ``UndeclaredSetting`` naming the key and the fix, the first time the code
path runs (every stage's paths run in the test suite).

Always readable, because they never change the data: the executor section and the
``run`` keys that only say where and how a build runs (``FREE``).  The config's
lookups by name (``source``, ``source_mm_kwargs``) need ``sources`` declared; its
identity (``config_hash``, ``resolved``) is readable for provenance and manifests,
since the write stage stamps the final config's hash on every row.
"""
from __future__ import annotations

from typing import Any, Iterable

#: settings every stage may read without declaring them: they never change its output
FREE = ("executor", "run.work_dir", "run.output_dir", "run.log_level", "run.stage_packages", "run.partition_rows")
#: config methods a stage may call -> the setting they read (None: the config's identity)
METHODS = {"source": "sources", "source_mm_kwargs": "sources", "config_hash": None, "resolved": None}


class UndeclaredSetting(AttributeError):
    """A stage read a setting outside its section that it does not declare in ``uses``."""


class SettingsView:
    """Attribute access to ``config`` restricted to dotted ``allowed`` keys (and ``FREE``)."""

    __slots__ = ("_target", "_allowed", "_stage", "_prefix")

    def __init__(self, target: Any, allowed: Iterable[str], stage: str, prefix: str = "") -> None:
        self._target, self._stage, self._prefix = target, stage, prefix
        self._allowed = frozenset((*allowed, *FREE))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        path = self._prefix + name
        if not self._prefix and name in METHODS:
            need = METHODS[name]
            if need is not None and need not in self._allowed:
                raise self._undeclared(need, f"config.{name}()")
            return getattr(self._target, name)
        if any(path == a or path.startswith(a + ".") for a in self._allowed):
            return getattr(self._target, name)
        if any(a.startswith(path + ".") for a in self._allowed):
            return SettingsView(getattr(self._target, name), self._allowed, self._stage, path + ".")
        raise self._undeclared(path, path)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SettingsView.__slots__:
            object.__setattr__(self, name, value)
        else:
            raise AttributeError(f"stage {self._stage}: the config is read-only to a stage ({self._prefix}{name})")

    def _undeclared(self, key: str, what: str) -> UndeclaredSetting:
        return UndeclaredSetting(
            f"stage {self._stage} reads {what}, outside its section, without declaring it: add {key!r} to "
            f"its `uses` (the stage's hash covers exactly its section and what it declares)")

    def __repr__(self) -> str:
        return f"<settings of stage {self._stage}{': ' + self._prefix[:-1] if self._prefix else ''}>"
