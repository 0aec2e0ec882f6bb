"""The stage graph, derived from the stage classes alone.

Stages live in the packages named by ``STAGE_PACKAGES``, plus the config's
``run.stage_packages`` and any listed in the ``MMPR_STAGE_PACKAGES`` environment
variable (comma-separated); every module there is imported once and its
``Stage`` subclasses register themselves.  The framework never
names a stage: order, inputs and hashes all come from what the classes declare.

* **order**: a topological order of the ``after``/``feeds`` edges, ties broken
  by name (so the order is the same on every machine).
* **inputs**: a stage reads its nearest *enabled* upstream stages; a disabled
  stage that keeps the schema (filter, judge: pairs in, pairs out) is looked
  through to what it would have read.
* **hash**: a stage's hash covers its own config section (less the keys it says
  cannot change its output under the config, ``Stage.unhashed_in``), the settings
  it declares it uses (``Stage.uses``; the only others it can read), and the hashes
  of the stages it really reads -- nothing else, so tuning one stage never redoes a sibling.
* **wants**: what a stage needs of its upstream output (``Stage.wants``), asked
  with ``wanted``, so an upstream stage never names the stages downstream of it.
"""
from __future__ import annotations

import copy
import importlib
import json
import os
import pkgutil
from functools import reduce
from typing import Any, Iterable

from pipeline.core.protocols import BuildConfig
from pipeline.core.seeds import stable_hash
from pipeline.core.stage import REGISTRY, PairMethod, Stage

#: packages whose modules are stages (imported by name only here, never a module of them)
STAGE_PACKAGES = ("stages",)
_loaded: set[str] = set()


def env_packages() -> list[str]:
    """The stage packages ``MMPR_STAGE_PACKAGES`` names (comma-separated)."""
    return [p.strip() for p in os.environ.get("MMPR_STAGE_PACKAGES", "").split(",") if p.strip()]


def load(extra: Iterable[str] = ()) -> dict[str, type[Stage]]:
    """Import every stage module once; returns the registry (name -> class).

    ``extra``: stage packages besides ``STAGE_PACKAGES`` and ``MMPR_STAGE_PACKAGES`` (the
    config's ``run.stage_packages``); a package, once loaded, stays loaded."""
    for package in dict.fromkeys((*STAGE_PACKAGES, *env_packages(), *extra)):
        if package in _loaded:
            continue
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{package}.{info.name}")
        _loaded.add(package)
    return REGISTRY


def upstream(name: str) -> tuple[str, ...]:
    """Stages whose output ``name`` reads when all are enabled: its ``after`` plus those that feed it."""
    reg = load()
    cls = stage_class(name)
    fed = sorted(s for s, c in reg.items() if name in c.feeds)
    return tuple(dict.fromkeys((*cls.after, *fed)))


def ordered() -> list[str]:
    """Every registered stage in pipeline order (topological, ties by name)."""
    reg = load()
    deps = {s: [u for u in upstream(s) if u in reg] for s in reg}
    out: list[str] = []
    while len(out) < len(reg):
        ready = sorted(s for s in reg if s not in out and all(u in out for u in deps[s]))
        if not ready:
            raise TypeError(f"stage graph has a cycle among {sorted(set(reg) - set(out))}")
        out.append(ready[0])
    return out


def pair_methods() -> list[PairMethod]:
    """Every pair method, in pipeline order of the stages that declare them."""
    return [m for s in ordered() for m in stage_class(s).pair_methods]


def method_names() -> list[str]:
    return [m.name for m in pair_methods()]


def stage_class(name: str) -> type[Stage]:
    reg = load()
    if name not in reg:
        raise KeyError(f"unknown stage {name!r}; known: {ordered()}")
    return reg[name]


def make_stage(name: str, config: BuildConfig) -> Stage:
    return stage_class(name)(config)


def input_stages(config: BuildConfig, stage: str) -> list[str]:
    """The enabled stages whose output ``stage`` reads, in pipeline order."""
    enabled = set(config.run.stages)
    found: list[str] = []

    def visit(s: str) -> None:
        if s in enabled:
            found.append(s)
            return
        cls = stage_class(s)
        if cls.input_schema is not None and cls.input_schema == cls.output_schema:
            for up in upstream(s):
                visit(up)
    for up in upstream(stage):
        visit(up)
    rank = {s: i for i, s in enumerate(ordered())}
    return sorted(dict.fromkeys(found), key=rank.__getitem__)


def wanted(config: BuildConfig, capability: str) -> bool:
    """Whether a stage of this run wants ``capability`` of its upstream output (``Stage.wants``)."""
    return any(capability in stage_class(s).wants(config) for s in config.run.stages)


def config_value(resolved: dict, dotted: str) -> Any:
    """``resolved["a"]["b"]`` for ``"a.b"`` (None when a key is missing)."""
    return reduce(lambda node, key: node.get(key) if isinstance(node, dict) else None, dotted.split("."), resolved)


def unhashed(config: BuildConfig, stage: str) -> tuple[str, ...]:
    """``Stage.unhashed_in``, checked: only keys of the stage's own section."""
    keys = stage_class(stage).unhashed_in(config)
    foreign = [k for k in keys if not k.startswith(f"{stage}.")]
    if foreign:
        raise TypeError(f"stage {stage}: unhashed_in may name only keys of its own section, not {foreign}")
    return keys


def _drop(tree: dict, dotted: str) -> None:
    """Remove ``tree["a"]["b"]`` for ``"a.b"`` in place (nothing if it is not there)."""
    *path, last = dotted.split(".")
    node = reduce(lambda n, key: n.get(key) if isinstance(n, dict) else None, path, tree)
    if isinstance(node, dict):
        node.pop(last, None)


def drop_unhashed(config: BuildConfig, data: dict) -> dict:
    """``data`` (a resolved config, changed in place) less every stage's
    ``unhashed_in`` keys that no other stage declares it uses: what the config hash covers."""
    reg = load()
    for stage in reg:
        for key in unhashed(config, stage):
            used = any(u == key or key.startswith(f"{u}.") or u.startswith(f"{key}.")
                       for other, cls in reg.items() if other != stage for u in cls.uses_in(config))
            if not used:
                _drop(data, key)
    return data


def stage_hash(config: BuildConfig, stage: str) -> str:
    """Hash of everything that can change ``stage``'s output (see the module docstring)."""
    resolved = config.resolved()
    memo: dict[str, str] = {}

    def section(s: str) -> Any:
        """Its section less its ``unhashed_in`` keys (a copy: ``uses`` read ``resolved`` whole)."""
        keys = unhashed(config, s)
        if not keys:
            return resolved.get(s)
        own = {s: copy.deepcopy(resolved.get(s))}
        for key in keys:
            _drop(own, key)
        return own[s]

    def h(s: str) -> str:
        if s not in memo:
            cls = stage_class(s)
            part = {
                "stage": s,
                "section": section(s),
                "uses": {k: config_value(resolved, k) for k in cls.uses_in(config)},
                "inputs": {up: h(up) for up in input_stages(config, s)},
            }
            memo[s] = stable_hash(json.dumps(part, sort_keys=True))[:16]
        return memo[s]
    return h(stage)
