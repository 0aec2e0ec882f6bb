"""export: trainer layouts of the written dataset under OUT/exports/<format> (export.formats).

A whole-dataset step after ``write``: it reads the dataset folder write made
(its shards, never the work folder) and lays it out for each format in
``export.formats`` (``publish.exports``, one module per trainer), then writes
``exports/export.json`` listing what each export holds.  It joins a run by
itself whenever ``write`` runs with formats listed, so configs name the
formats once, in ``export.formats``.

``python -m pipeline stage export --input DATASET --output DIR`` exports the
dataset folder DATASET into ``DIR/exports/<format>`` (DIR = DATASET adds them
to the dataset folder, as a run does).
"""
from __future__ import annotations

import logging
import time

from pydantic import Field, field_validator

from pipeline.config.sections import Section
from pipeline.core.stage import DatasetStage, StageStats
from pipeline.files import storage
from publish.exports import FORMATS, export_dataset

log = logging.getLogger("pipeline")


class ExportConfig(Section):
    formats: list[str] = Field(default_factory=list, description=(
        "Trainer layouts written under OUT/exports/ (the formats publish.exports knows); any listed makes "
        "the export stage run after write"))

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        unknown = [f for f in v if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown export format(s) {unknown}; known: {list(FORMATS)}")
        return v


class ExportStage(DatasetStage):
    name = "export"
    after = ("write",)
    opt_in = True
    Config = ExportConfig
    uses = ("run.name",)
    output_schema = None
    units = "formats"
    writes = ("exports/",)

    @classmethod
    def enabled_by(cls, config) -> bool:
        return bool(config.export.formats) and "write" in config.run.stages

    def run_dataset(self, input_dirs: list[str], output_dir: str) -> StageStats:
        """``output_dir`` is the dataset folder in a run (write's own work folder holds nothing);
        an input that is a written dataset folder (it has a manifest) is read instead."""

        t0 = time.perf_counter()
        stats = StageStats()
        formats = list(self.config.export.formats)
        if not formats:
            return stats
        dataset = next((d for d in input_dirs if storage.exists(storage.join(d, "manifest.json"))), output_dir)
        manifest = storage.join(dataset, "manifest.json")
        if not storage.exists(manifest):
            raise FileNotFoundError(f"export: {dataset} is not a finished dataset folder (no manifest.json): "
                                    "run write first, or pass --input DATASET")
        rows = storage.read_json(manifest).get("rows", 0)
        if not rows:
            log.warning("export: no pairs in %s, so no trainer exports (%s)", dataset, ", ".join(formats))
            return stats
        index = export_dataset(dataset, formats, output_dir, name=self.config.run.name)
        stats.rows_in = rows
        stats.rows_out = rows
        for fmt, summary in index["formats"].items():
            stats.inc(f"exported.{fmt}", sum(summary["rows"].values()))
        stats.inc("formats", len(index["formats"]))
        stats.wall_s = time.perf_counter() - t0
        log.info("export: %s -> %s (%.1f s)", ", ".join(formats), storage.join(output_dir, "exports"), stats.wall_s)
        return stats
