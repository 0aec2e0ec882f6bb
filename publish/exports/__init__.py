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
from publish.exports.common import REGISTRY, ExportFolder, canonical_shards, dataset_name

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

#: every registered format, by name
FORMATS: tuple[str, ...] = tuple(sorted(REGISTRY))


def export(fmt: str, input_dir: str, output_dir: str, name: str | None = None, root: str | None = None,
           adopt: bool = False, curriculum: Any = None) -> dict:
    """Lay the dataset folder ``input_dir`` out for trainer ``fmt`` under ``output_dir``; returns a summary.

    ``name`` prefixes the LLaMA-Factory dataset names (default: the manifest's ``name``).  ``root``:
    where the export folder will be on the training machine; paths are written under it instead
    of relative to the export folder.  ``adopt``: write into a non-empty folder mmpr-forge did not
    create (its files are never touched; one in the way stops the export).  ``curriculum``: which
    prompts the RL formats keep (``publish.exports.rl.Curriculum``; default: the dataset's own, from its
    manifest's ``rl_prompts``).
    """
    if fmt not in REGISTRY:
        raise ValueError(f"unknown export format {fmt!r}; known: {list(FORMATS)}")
    shards = canonical_shards(input_dir)
    ex = ExportFolder(fmt, input_dir, output_dir, root, adopt, curriculum)
    try:
        extra = REGISTRY[fmt]().write(ex, shards, dataset_name(input_dir, name))
    except BaseException:
        ex.abort()
        raise
    return ex.finish(extra)


def export_dataset(dataset_dir: str, formats: list[str], out_dir: str, name: str | None = None,
                   curriculum: Any = None) -> dict:
    """Every format of ``formats`` under ``out_dir/exports/<format>``, and ``exports/export.json``
    listing them (format -> its export summary without the file list)."""
    open_folder(out_dir, "dataset", "run.output_dir").reserve("exports/")
    summaries = {}
    for fmt in formats:
        summary = export(fmt, dataset_dir, storage.join(out_dir, "exports", fmt), name=name, curriculum=curriculum)
        summaries[fmt] = {k: v for k, v in summary.items() if k != "files"}
    index = {"source": os.path.basename(dataset_dir.rstrip("/")), "formats": summaries}
    storage.write_json(storage.join(out_dir, "exports", "export.json"), index)
    return index
