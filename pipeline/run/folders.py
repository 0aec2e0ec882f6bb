"""The folders one command writes into, checked, locked and claimed before any work starts.

``python -m pipeline run`` writes the work folder (one sub-folder per stage,
``report.json``, ``logs/``) and, when it writes the dataset, the output folder;
``stage NAME --output DIR`` writes DIR (and its log under the work folder).
Before anything is written (a log included):

1. no written folder and no source folder contain each other (a build would
   read its own output back as prompts);
2. every folder is new, empty or the pipeline's own (``pipeline.files.ownership``);
3. the folders the command writes its results into are locked
   (``pipeline.files.folder_lock``): one run per folder;
4. the folders are claimed and the entries the command will write reserved.

A config mistake found after this (an unknown model, say) leaves no trace: a
folder this claim created is removed again when nothing else was written there.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator

from pipeline.files import storage
from pipeline.config.settings import ConfigError, PipelineConfig
from pipeline.files.folder_lock import FolderLock
from pipeline.files.ownership import BOOKKEEPING, STAGE_ENTRIES, WORK_ENTRIES, Folder


@dataclass(frozen=True)
class Target:
    """One folder a command writes: the key that names it, its role, what it reserves."""
    key: str
    uri: str
    role: str
    lock: bool
    reserve: tuple[str, ...] = ()


def targets(config: PipelineConfig, stage: str | None = None, output: str | None = None) -> list[Target]:
    """The folders of ``run`` (``stage`` None) or of ``stage STAGE --output OUTPUT``."""
    from pipeline.core import graph

    work = config.run.work_dir
    if stage is None:
        stages = config.run.stages
        found = [Target("run.work_dir", work, "work", True, (*WORK_ENTRIES, *(f"{s}/" for s in stages)))]
        dataset = [s for s in stages if graph.stage_class(s).kind == "dataset"]
        if dataset:
            found.append(Target("run.output_dir", config.run.output_dir, "dataset", True,
                                _dataset_entries(dataset)))
        return found
    kind = graph.stage_class(stage).kind
    found = [Target("run.work_dir", work, "work", False, ("logs/", "models/"))]
    if kind == "dataset":
        found.append(Target("--output", output, "dataset", True, _dataset_entries([stage])))
    else:
        found.append(Target("--output", output, "stage", True, STAGE_ENTRIES))
    return found


def _dataset_entries(stages: list[str]) -> tuple[str, ...]:
    """What the dataset stages write besides their shards (``DatasetStage.writes``; shards are
    reserved when planned)."""
    from pipeline.core import graph

    return tuple(e for s in stages for e in graph.stage_class(s).writes)


def check_no_feedback(config: PipelineConfig, written: list[Target]) -> None:
    """Refuse a written folder inside a folder a source reads whole (an image folder, a folder
    of Parquet files, a saved dataset), or a source inside a written folder: the next build
    would read this one's output -- exported images, shards -- back as prompts."""
    for i, src in enumerate(config.sources):
        if src.format == "hf" and not os.path.exists(src.path):
            continue  # a hub dataset id
        reads_whole = storage.is_dir(src.path)
        for t in written:
            if t.uri is None:
                continue
            if reads_whole and _within(t.uri, src.path):
                raise ConfigError(f"{t.key}: {t.uri} is inside sources.{i}.path {src.path} (source {src.name!r}), "
                                  "which is read whole: a later build would read this one's output back as "
                                  f"prompts; choose a folder outside {src.path}")
            if _within(src.path, t.uri):
                raise ConfigError(f"sources.{i}.path: {src.path} (source {src.name!r}) is inside {t.key} {t.uri}, "
                                  "which the pipeline writes: keep sources and outputs in separate folders")
    for a in written:
        for b in written:
            if a is not b and a.uri and b.uri and a.key < b.key and (_within(a.uri, b.uri) or _within(b.uri, a.uri)):
                raise ConfigError(f"{a.key} ({a.uri}) and {b.key} ({b.uri}) must be separate folders, "
                                  "neither inside the other")


def _within(inner: str, outer: str) -> bool:
    """``inner`` is ``outer`` or below it (local paths compared with symlinks resolved)."""
    if storage.is_uri(inner) != storage.is_uri(outer):
        return False
    if storage.is_uri(inner):
        a, b = inner.rstrip("/"), outer.rstrip("/")
    else:
        a, b = os.path.realpath(inner), os.path.realpath(outer)
    return a == b or a.startswith(b.rstrip("/") + "/")


def _checked(config: PipelineConfig, stage: str | None, output: str | None, adopt: bool) -> list[Target]:
    """The command's folders, once every refusal has been raised, before anything is written."""
    found = targets(config, stage, output)
    check_no_feedback(config, found)
    for t in found:
        Folder.check(t.uri, t.role, t.key, adopt).check_free(*t.reserve)
    return found


def claim_targets(config: PipelineConfig, stage: str | None = None, output: str | None = None,
                  adopt: bool = False) -> dict[str, Folder]:
    """Claim the folders of ``run`` or ``stage`` and reserve what they will write; by key.
    Idempotent: the CLI claims up front, and ``run_pipeline`` / ``run_stage`` claim again
    for callers from Python (a no-op on the CLI's own folders)."""
    return _claim(_checked(config, stage, output, adopt), adopt)


def _claim(found: list[Target], adopt: bool) -> dict[str, Folder]:
    """Claim checked folders and reserve what they will write; by key."""
    folders = {}
    for t in found:
        folder = Folder.claim(t.uri, t.role, t.key, adopt)
        folder.reserve(*t.reserve)
        folders[t.key] = folder
    return folders


@contextlib.contextmanager
def claim_folders(config: PipelineConfig, stage: str | None = None, output: str | None = None,
                  adopt: bool = False) -> Iterator[dict[str, Folder]]:
    """The CLI's claim: check, lock, claim (see the module docstring); yields the folders by key
    and releases the locks on the way out."""
    found = _checked(config, stage, output, adopt)  # the lock file is written only after this
    new = [t.uri for t in found if not storage.is_uri(t.uri) and not os.path.exists(t.uri)]
    command = " ".join(["python -m pipeline", *sys.argv[1:]])
    locks: list[FolderLock] = []
    try:
        for t in found:
            if t.lock:
                locks.append(FolderLock(t.uri, t.key).acquire(command))
        yield _claim(found, adopt)  # checked above: the lock changed nothing there but the lock file
    except ConfigError:
        for lock in locks:
            lock.release()
        locks = []
        for uri in new:
            _unmake(uri)
        raise
    finally:
        for lock in locks:
            lock.release()


def _unmake(uri: str) -> None:
    """Remove a folder this claim created, when it holds nothing but the claim's bookkeeping."""
    if not os.path.isdir(uri) or set(os.listdir(uri)) - set(BOOKKEEPING):
        return
    for name in BOOKKEEPING:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(uri, name))
    with contextlib.suppress(OSError):
        os.rmdir(uri)
