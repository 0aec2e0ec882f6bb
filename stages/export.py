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
from pipeline.core.stage import DatasetStage, StageStats, prefixed
from pipeline.files import storage
from publish.exports import FORMATS, export_dataset
from publish.exports.common import REGISTRY
from publish.exports.rl import Curriculum, RLFormat

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
    #: rl_prompts, run.seed: which prompts the RL formats keep, and their validation split
    uses = ("run.name", "rl_prompts", "run.seed")
    output_schema = None
    units = "formats"
    writes = ("exports/",)

    @classmethod
    def enabled_by(cls, config) -> bool:
        return bool(config.export.formats) and "write" in config.run.stages

    @classmethod
    def check_config(cls, config) -> None:
        """The RL formats read the prompt table, which only the correctness stage records: a run that
        writes a dataset with RL formats but without it would fail at the export, after the whole build."""
        rl = [f for f in config.export.formats if issubclass(REGISTRY[f], RLFormat)]
        if not rl or "write" not in config.run.stages:
            return
        if "correctness" not in config.run.stages:
            raise ValueError(f"export.formats lists the RL format(s) {rl}, which read the prompt table "
                             "(prompts/*.parquet) the correctness stage records, but run.stages has no correctness: "
                             f"add correctness to run.stages, or remove {rl} from export.formats")
        if not config.correctness.prompt_table:
            raise ValueError(f"export.formats lists the RL format(s) {rl}, which read the prompt table, but "
                             "correctness.prompt_table is false: set it to true, or remove "
                             f"{rl} from export.formats")

    @classmethod
    def summarize(cls, c: dict) -> dict:
        if "rl_prompts.prompts" not in c:
            return {}
        return {"rl_prompts": {"prompts": c["rl_prompts.prompts"], "kept": c.get("rl_prompts.kept", 0),
                               "removed": prefixed(c, "rl_prompts.removed.")}}

    @classmethod
    def summary_line(cls, s: dict) -> str:
        r = s["rl_prompts"]
        removed = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["removed"].items())
        return f"RL prompts: {r['kept']} of {r['prompts']} kept (removed: {removed})"

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
        curriculum = Curriculum.of(self.config.rl_prompts, self.config.run.seed)
        index = export_dataset(dataset, formats, output_dir, name=self.config.run.name, curriculum=curriculum)
        stats.rows_in = rows
        stats.rows_out = rows
        for fmt, summary in index["formats"].items():
            stats.inc(f"exported.{fmt}", sum(summary["rows"].values()))
        selection = next((s["selection"] for s in index["formats"].values() if "selection" in s), None)
        if selection:  # the same prompts in every RL format: counted once
            stats.inc("rl_prompts.prompts", selection["prompts"])
            stats.inc("rl_prompts.kept", selection["kept"])
            for why, n in selection["removed"].items():
                stats.inc(f"rl_prompts.removed.{why}", n)
        stats.inc("formats", len(index["formats"]))
        stats.wall_s = time.perf_counter() - t0
        log.info("export: %s -> %s (%.1f s)", ", ".join(formats), storage.join(output_dir, "exports"), stats.wall_s)
        return stats
