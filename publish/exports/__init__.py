"""Trainer layouts of a built dataset: ``python -m pipeline export --format F --input OUT --output DIR``.

Reads the canonical shards of a dataset folder written by the ``write`` stage
(``data/*.parquet`` text-contrast pairs and ``data/image_crop/*.parquet``
image-contrast pairs) one shard at a time and lays them out for a trainer
(docs/architecture.md, "Where to add").  One module per trainer (``trl``,
``llamafactory``, ``swift``, ``internvl``: each module's docstring describes
its layout and holds its README); what they share is in ``common``.  The
format list is the registry those modules fill: adding a format is adding a
module with a ``common.TrainerFormat`` subclass.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any

from pipeline.files import storage
from pipeline.files.ownership import open_folder
from publish.exports.common import REGISTRY, ExportFolder, SharedImages, canonical_shards, dataset_name
from publish.exports.rl import RLFormat, write_rl

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

#: every registered format, by name
FORMATS: tuple[str, ...] = tuple(sorted(REGISTRY))


def export(fmt: str, input_dir: str, output_dir: str, name: str | None = None, root: str | None = None,
           adopt: bool = False, curriculum: Any = None, shared: SharedImages | None = None) -> dict:
    """Lay the dataset folder ``input_dir`` out for trainer ``fmt`` under ``output_dir``; returns a summary.

    ``name`` prefixes the LLaMA-Factory dataset names (default: the manifest's ``name``).  ``root``:
    where the export folder will be on the training machine; paths are written under it instead
    of relative to the export folder.  ``adopt``: write into a non-empty folder mmpr-forge did not
    create (its files are never touched; one in the way stops the export).  ``curriculum``: which
    prompts the RL formats keep (``publish.exports.rl.Curriculum``; default: the dataset's own, from its
    manifest's ``rl_prompts``).  ``shared``: the build's image folder the export writes into
    (``export_dataset``); None: its own ``images/``.
    """
    if fmt not in REGISTRY:
        raise ValueError(f"unknown export format {fmt!r}; known: {list(FORMATS)}")
    shards = canonical_shards(input_dir)
    alone = shared is None and _same(output_dir, storage.join(input_dir, "exports", fmt))
    if alone:  # written again into its dataset folder (the README's command): the build's shared images
        shared = SharedImages(storage.join(input_dir, "exports"))
    ex = ExportFolder(fmt, input_dir, output_dir, root, adopt, curriculum, shared)
    try:
        extra = REGISTRY[fmt]().write(ex, shards, dataset_name(input_dir, name))
    except BaseException:
        ex.abort()
        raise
    summary = ex.finish(extra)
    if alone:
        _list_shared(storage.join(input_dir, "exports", "export.json"), shared)
    return summary


def _same(a: str, b: str) -> bool:
    """Whether two folders are one (local paths compared absolute, URIs as given)."""
    norm = (lambda p: p.rstrip("/")) if storage.is_uri(a) or storage.is_uri(b) else os.path.abspath  # noqa: E731
    return norm(a) == norm(b)


def _list_shared(index_uri: str, shared: SharedImages) -> None:
    """Add the images one export written alone put in the shared folder to the build's index, so a
    later export of the build can tell them from files it does not own."""
    if not storage.exists(index_uri):
        return
    index = storage.read_json(index_uri)
    files = sorted(set((index.get("images") or {}).get("files") or []) | shared.files)
    index["images"] = {"folder": SharedImages.FOLDER, "count": len(files), "files": files}
    storage.write_json(index_uri, index)


def export_dataset(dataset_dir: str, formats: list[str], out_dir: str, name: str | None = None,
                   curriculum: Any = None) -> dict:
    """Every format of ``formats`` under ``out_dir/exports/<format>``, and ``exports/export.json``
    listing them (format -> its export summary without the file list) and the images they share:
    one content-addressed folder, ``exports/images/``, for all of them (each image once)."""
    open_folder(out_dir, "dataset", "run.output_dir").reserve("exports/")
    index_uri = storage.join(out_dir, "exports", "export.json")
    previous = storage.read_json(index_uri) if storage.exists(index_uri) else {}
    shared = SharedImages(storage.join(out_dir, "exports"))
    rl = [fmt for fmt in formats if issubclass(REGISTRY.get(fmt, object), RLFormat)]
    done = _export_rl(rl, dataset_dir, out_dir, curriculum, shared) if rl else {}
    summaries = {}
    for fmt in formats:
        summary = done.get(fmt) or export(fmt, dataset_dir, storage.join(out_dir, "exports", fmt), name=name,
                                          curriculum=curriculum, shared=shared)
        summaries[fmt] = {k: v for k, v in summary.items() if k != "files"}
    dropped = set(previous.get("formats") or {}) - set(formats)  # their folders stay, naming the old images
    images = shared.finish((previous.get("images") or {}).get("files") or [], keep=bool(dropped))
    index = {"source": os.path.basename(dataset_dir.rstrip("/")), "formats": summaries, "images": images}
    storage.write_json(index_uri, index)
    return index


def _export_rl(formats: list[str], dataset_dir: str, out_dir: str, curriculum: Any, shared: SharedImages) -> dict:
    """The RL formats of a build in one pass over the prompt table (``rl.write_rl``): summaries by
    format.  One failing leaves none of them behind."""
    canonical_shards(dataset_dir)  # not a dataset folder: the message ``export`` gives
    folders = [ExportFolder(fmt, dataset_dir, storage.join(out_dir, "exports", fmt), None, False, curriculum, shared)
               for fmt in formats]
    try:
        extra = write_rl([(REGISTRY[fmt](), ex) for fmt, ex in zip(formats, folders)])
    except BaseException:
        for ex in folders:
            ex.abort()
        raise
    return {fmt: ex.finish(extra) for fmt, ex in zip(formats, folders)}
