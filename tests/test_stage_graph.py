"""The stage contract: the graph, the config sections and the hashes come from the stage classes.

* the framework (``pipeline/``) imports no stage module: stages are found by a
  package scan and register themselves;
* the stage order and each stage's inputs follow the ``after`` declarations,
  looking through disabled pair-to-pair stages;
* a stage's hash changes exactly when its own section, a key it reads or an
  upstream stage changes: tuning one stage never invalidates a sibling;
* adding a stage is one class: its config section validates, the CLI lists it,
  the pipeline runs it and the dataset and run report carry its output.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Iterable, Iterator

import datasets
import pytest
from pydantic import Field

from helpers import ROOT, SAMPLE_CONFIG, load_config_file, make_config
from pipeline.core import graph
from pipeline.config.settings import ConfigError, Section
from pipeline.config.loading import load_config

PIPELINE_STAGES = ["ingest", "dedup", "generate", "correctness", "dropout_ntp", "image_crop", "filter", "judge", "write"]


def _imported_modules(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


#: the command line is the application: it may call the product features (never a stage by name)
ENTRY_POINTS = {"pipeline/cli.py", "pipeline/__main__.py"}


@pytest.mark.parametrize("package, forbidden", [
    ("pipeline", ("stages", "publish")),   # the framework names no stage and no product feature
    ("publish", ("stages",)),              # product features work on datasets, not on stages
    ("methods", ("stages", "pipeline", "publish")),  # methods are pure functions under all of them
    ("schemas", ("stages", "pipeline", "publish", "methods")),
])
def test_dependencies_point_one_way(package, forbidden):
    offenders = {
        f"{path.relative_to(ROOT)}: {mod}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in ENTRY_POINTS
        for mod in _imported_modules(path)
        if mod.split(".")[0] in forbidden
    }
    assert not offenders, sorted(offenders)
    cli = set(_imported_modules(ROOT / "pipeline" / "cli.py"))
    assert not {m for m in cli if m.split(".")[0] == "stages"}


def test_no_stage_imports_another_stage():
    names = set(graph.load())
    for path in sorted((ROOT / "stages").glob("*.py")):
        mods = {m for m in _imported_modules(path) if m.startswith("stages.")}
        assert not mods, f"{path.name} imports {sorted(mods)}"
    assert set(PIPELINE_STAGES) <= names


def test_order_and_inputs_come_from_the_classes():
    default_on = [s for s in graph.ordered() if not graph.stage_class(s).opt_in]
    assert default_on[:len(PIPELINE_STAGES)] == PIPELINE_STAGES
    # the opt-in grounding stage sits between the pair stages and filter, which looks through it
    assert graph.ordered().index("grounding") == graph.ordered().index("filter") - 1
    assert graph.upstream("filter") == ("grounding",)
    cfg = make_config()  # sample config: no judge
    assert graph.input_stages(cfg, "write") == ["filter"]
    assert graph.input_stages(cfg, "filter") == ["correctness", "dropout_ntp", "image_crop"]
    no_filter = make_config(run={"stages": ["ingest", "generate", "dropout_ntp", "judge", "write"]},
                            export={"formats": []})  # the RL formats need correctness's prompt table
    assert graph.input_stages(no_filter, "judge") == ["dropout_ntp"]  # filter is looked through
    # a disabled stage that changes the schema is not looked through: correctness reads nothing
    assert graph.input_stages(make_config(run={"stages": ["ingest", "correctness"]}), "correctness") == []
    # generate reads dedup, and looks through it to ingest when it is off
    assert graph.input_stages(cfg, "generate") == ["dedup"]
    assert graph.input_stages(make_config(run={"stages": ["ingest", "generate"]}), "generate") == ["ingest"]
    kinds = {name: graph.stage_class(name).kind for name in PIPELINE_STAGES}
    assert kinds == {"ingest": "source", "dedup": "row", "generate": "engine", "correctness": "row", "dropout_ntp": "engine",
                     "image_crop": "row", "filter": "row", "judge": "engine", "write": "dataset"}


def _downstream(stage: str, enabled: list[str]) -> set[str]:
    cfg = make_config(run={"stages": enabled})
    out = {stage}
    for s in enabled:  # pipeline order: every upstream is decided before s
        if out & set(graph.input_stages(cfg, s)):
            out.add(s)
    return out


#: one parameter per stage section (and the keys stages read), with the stages it may change
CHANGES = [
    ({"ingest": {"max_question_chars": 99}}, "ingest"),
    ({"dedup": {"image_distance": 8}}, "dedup"),
    ({"generate": {"temperature": 0.5}}, "generate"),
    ({"scoring": {"max_pairs_per_prompt": 3}}, "correctness"),
    ({"dropout_ntp": {"temperature": 0.3}}, "dropout_ntp"),
    ({"image_crop": {"fraction": 0.9}}, "image_crop"),
    ({"filter": {"require_final_answer": False}}, "filter"),
    ({"judge": {"margin": 1.0}}, "judge"),
    ({"write": {"shard_rows": 3}}, "write"),
]


@pytest.mark.parametrize("change, stage", CHANGES, ids=[s for _, s in CHANGES])
def test_a_stage_parameter_changes_exactly_that_stage_and_its_downstream(change, stage):
    enabled = PIPELINE_STAGES
    base = make_config(run={"stages": enabled})
    changed = make_config(run={"stages": enabled}, **change)
    moved = {s for s in enabled if base.stage_hash(s) != changed.stage_hash(s)}
    assert moved == _downstream(stage, enabled)


@pytest.mark.parametrize("change, moved", [
    # scoring settings decide which responses are right: image_crop's texts depend on them
    ({"scoring": {"threshold": 0.5}}, {"correctness", "image_crop", "filter", "judge", "write"}),
    # ... and dropout_ntp's only when it pairs correct responses
    ({"scoring": {"threshold": 0.5}, "dropout_ntp": {"on_correct": True}},
     {"correctness", "dropout_ntp", "image_crop", "filter", "judge", "write"}),
    ({"run": {"seed": 5}}, set(PIPELINE_STAGES) - {"ingest", "dedup", "filter"} | {"filter"}),
    # the partition size never changes the data (docs/architecture.md, "Partitions"): no hash moves,
    # so a resume on another cluster (auto follows the workers) redoes nothing
    ({"run": {"partition_rows": 5}}, set()),
    ({"run": {"partition_rows": "auto"}}, set()),
    ({"model": {"max_model_len": 1024}}, set(PIPELINE_STAGES) - {"ingest", "dedup"}),
    ({"engine": {"replicas": 3}, "executor": {"cpu_concurrency": 4}}, set()),
])
def test_keys_a_stage_reads_are_part_of_its_hash(change, moved):
    base = make_config(run={"stages": PIPELINE_STAGES})
    run = {**{"stages": PIPELINE_STAGES}, **change.pop("run", {})}
    changed = make_config(run=run, **change)
    assert {s for s in PIPELINE_STAGES if base.stage_hash(s) != changed.stage_hash(s)} == moved


ADAPTIVE_TWEAKS = [{"rounds": [2, 5]}, {"stop": "both"}, {"min_each": 2}, {"all_right_after": 3},
                   {"all_wrong_after": 6}, {"no_gt_max": 2}]


@pytest.mark.parametrize("tweak", ADAPTIVE_TWEAKS, ids=[next(iter(t)) for t in ADAPTIVE_TWEAKS])
def test_adaptive_settings_move_the_hashes_only_while_adaptive_sampling_is_on(tweak):
    """Fixed-N sampling never reads generate.adaptive (``Stage.unhashed_in``): tuning it while it is
    off redoes nothing; while it is on, it redoes generate and everything downstream."""
    def cfg(enabled: bool, **extra):
        return make_config(run={"stages": PIPELINE_STAGES}, generate={"adaptive": {"enabled": enabled, **extra}})

    for enabled in (False, True):
        base, changed = cfg(enabled), cfg(enabled, **tweak)
        moved = {s for s in PIPELINE_STAGES if base.stage_hash(s) != changed.stage_hash(s)}
        assert moved == (_downstream("generate", PIPELINE_STAGES) if enabled else set())
        assert (base.config_hash() != changed.config_hash()) is enabled
        # the settings stay in the resolved config (workers, `pipeline config`): only the hashes skip them
        assert changed.resolved()["generate"]["adaptive"] == {**base.resolved()["generate"]["adaptive"], **tweak}
    assert cfg(False).stage_hash("generate") != cfg(True).stage_hash("generate")  # turning it on is a change


def test_an_unhashed_key_another_stage_uses_stays_in_the_config_hash(monkeypatch):
    """A key left out of its own stage's hash (``unhashed_in``) still counts where another stage
    declares it reads it: in that stage's hash and in the config hash."""
    from stages.correctness import CorrectnessStage

    base = make_config(run={"stages": PIPELINE_STAGES})
    changed = make_config(run={"stages": PIPELINE_STAGES}, generate={"adaptive": {"rounds": [2, 5]}})
    assert base.config_hash() == changed.config_hash()
    uses = CorrectnessStage.uses
    monkeypatch.setattr(CorrectnessStage, "uses_in", classmethod(lambda cls, config: (*uses, "generate.adaptive")))
    assert base.config_hash() != changed.config_hash()
    assert base.stage_hash("generate") == changed.stage_hash("generate")
    assert base.stage_hash("correctness") != changed.stage_hash("correctness")


def test_unhashed_keys_must_be_in_the_stages_own_section(monkeypatch):
    from stages.generate import GenerateStage

    monkeypatch.setattr(GenerateStage, "unhashed_in", classmethod(lambda cls, config: ("scoring.threshold",)))
    with pytest.raises(TypeError, match=r"stage generate: unhashed_in may name only keys of its own section"):
        make_config().stage_hash("generate")


def test_stage_sections_validate_with_the_stage_model(tmp_path):
    with pytest.raises(ConfigError, match=r"filter\.rulez: Extra inputs are not permitted"):
        load_config_file(tmp_path, (ROOT / SAMPLE_CONFIG).read_text() + "\nfilter:\n  rulez: {}\n")
    c = make_config(dropout_ntp={"ratio": 0.25})
    assert c.dropout_ntp.ratio == 0.25 and c.resolved()["dropout_ntp"]["ratio"] == 0.25
    again = type(c).model_validate(c.resolved())
    assert again.resolved() == c.resolved() and again.stage_hash("write") == c.stage_hash("write")


# -- adding a stage: one class --------------------------------------------------------
def _echo_stage():
    """A new pair method declared in one class: prompt rows in, pairs out, feeding the filter."""
    from pipeline.core.stage import PairMethod, RowStage, StageContext
    from schemas import PAIR_SCHEMA, PROMPT_SCHEMA
    from schemas.records import pair_row, provenance

    class EchoConfig(Section):
        prefix: str = Field("Not", min_length=1)

    class EchoStage(RowStage):
        """echo: the ground truth as chosen, its negation as rejected (a test method)."""
        name = "echo"
        pair_methods = (PairMethod("echo"),)
        after = ("ingest",)
        feeds = ("filter",)
        Config = EchoConfig
        input_schema = PROMPT_SCHEMA
        output_schema = PAIR_SCHEMA

        def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
            for row in rows:
                if not row["answer"]:
                    continue
                ctx.stats.inc("pairs.echo")
                answer = f"Final answer: {row['answer'][0]}"
                yield pair_row(pair_id=f"echo-{row['prompt_id']}", method="echo", source=row["source"],
                               question=row["question"], user_text=row["question"], images=row["images"],
                               chosen=answer, rejected=f"{self.section.prefix} {answer}",
                               prov=provenance(prompt_id=row["prompt_id"], template_id="mmpr_final_answer"))

        @classmethod
        def summarize(cls, counters: dict) -> dict:
            return {"pairs": counters.get("pairs.echo", 0)}

    return EchoStage


def test_adding_a_stage_is_one_class(sample_data, tmp_path):
    from pipeline.run.orchestrator import run_pipeline
    from pipeline.core.stage import REGISTRY

    echo = _echo_stage()
    try:
        assert "echo" in graph.ordered() and graph.upstream("filter")[-1] == "echo"
        assert "echo" in graph.method_names()  # the pair method joins what reports and filters know
        with pytest.raises(Exception, match="prefix"):
            make_config(echo={"prefix": ""})
        stages = ["ingest", "echo", "filter", "write"]
        cfg = make_config(run={"stages": stages, "work_dir": str(tmp_path / "w"), "output_dir": str(tmp_path / "o")},
                          executor={"kind": "local"}, echo={"prefix": "Surely not"},
                          sources=[{"name": "sample_gt", "format": "jsonl", "path": str(sample_data / "gt.jsonl"),
                                    "limit": 6}],
                          write={"shard_rows": 100}, export={"formats": []})
        assert "  echo         the ground truth as chosen, its negation as rejected" in _stage_help()
        report = run_pipeline(cfg)
        rows = datasets.load_dataset("parquet", data_files=str(tmp_path / "o" / "data" / "*.parquet"))["train"]
        assert len(rows) == 6 and set(rows["method"]) == {"echo"}
        assert all(r[0]["content"][0]["text"].startswith("Surely not") for r in rows["rejected"])
        assert report["summary"]["echo"] == {"pairs": 6} and report["stages"]["filter"]["rows_in"] == 6
        # its section is part of its hash and of its downstream stages' hashes only
        other = make_config(**{**{k: getattr(cfg, k).model_dump() for k in ("run", "executor")},
                               "sources": [s.model_dump() for s in cfg.sources],
                               "write": cfg.write.model_dump(), "export": {"formats": []}, "echo": {"prefix": "No"}})
        assert [s for s in stages if other.stage_hash(s) != cfg.stage_hash(s)] == ["echo", "filter", "write"]
    finally:
        REGISTRY.pop(echo.name)
    assert "echo" not in graph.ordered()


def _stage_help() -> str:
    from pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["stage"].format_help()


@pytest.mark.parametrize("bases, attrs", [
    ("Stage", {}),                      # no kind at all
    ("RowStage", {"kind": "engine"}),   # a kind string over the class's own
])
def test_a_stage_gets_its_kind_from_its_base_class(bases, attrs):
    """The kind is the base class (SourceStage, RowStage, EngineStage, DatasetStage): a stage
    declaring one by string, or none, is refused when it is defined."""
    from pipeline.core import stage as stage_mod

    with pytest.raises(TypeError, match="derive from SourceStage, RowStage, EngineStage or DatasetStage"):
        type("Bad", (getattr(stage_mod, bases),), {"name": "bad-kind", **attrs})
    assert "bad-kind" not in stage_mod.REGISTRY


def test_every_registered_stage_has_the_hooks_of_its_kind_only():
    from pipeline.core import graph
    from pipeline.core.stage import DatasetStage, EngineStage, RowStage, SourceStage

    bases = {"source": SourceStage, "row": RowStage, "engine": EngineStage, "dataset": DatasetStage}
    for name in graph.ordered():
        cls = graph.stage_class(name)
        assert issubclass(cls, bases[cls.kind]), name
        assert hasattr(cls, "run_dataset") == (cls.kind == "dataset"), name
        assert hasattr(cls, "prepare") == (cls.kind == "engine"), name
        assert hasattr(cls, "plan_sources") == (cls.kind == "source"), name
    assert graph.stage_class("judge").kind == "engine" and not graph.stage_class("judge").streams


def test_an_image_contrast_method_gets_a_dataset_config_of_its_own():
    """The dataset layout follows the pair methods the stages declare: a new image-contrast
    method gets its config and folder without editing publish/ or schemas/."""
    from pipeline.core.stage import REGISTRY, PairMethod, RowStage
    from publish import layout
    from schemas import PAIR_SCHEMA

    assert layout.configs() == (("default", "data"), ("image_crop", "data/image_crop"))
    assert layout.method_order() == ("correctness", "format", "dropout_ntp", "image_crop")

    class BlurStage(RowStage):
        name = "blur"
        after = ("ingest",)
        pair_methods = (PairMethod("blur", image_contrast=True),)
        output_schema = PAIR_SCHEMA

    try:
        # in pipeline order of the declaring stages (blur sorts before image_crop after ingest)
        assert layout.configs() == (("default", "data"), ("blur", "data/blur"), ("image_crop", "data/image_crop"))
        assert layout.image_methods() == ("blur", "image_crop")
    finally:
        REGISTRY.pop(BlurStage.name)
    assert layout.image_methods() == ("image_crop",)
