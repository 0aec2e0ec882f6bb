"""One configuration reference: the stage sections are fields of the config model, every key
has a description, ``python -m pipeline config`` prints them, docs/config.md and
docs/config.schema.json are generated from them, and settings that were environment
variables are config keys the environment may still override."""
from __future__ import annotations

import json
import pickle
import sys
import textwrap
from typing import get_args

import pytest
from pydantic import BaseModel

from helpers import ROOT, SAMPLE_CONFIG, config_file, load_config_file, run_cli
from pipeline.config.settings import ConfigError, PipelineConfig
from pipeline.config.loading import load_config

SAMPLE = ROOT / SAMPLE_CONFIG

#: configs/sample.yaml's hashes.  Finished work and the dataset's provenance.config_hash depend on
#: them, so a change that moves one must be on purpose; the last were the prompt table and the RL
#: exports (``correctness.prompt_table``, write using ``run.stages``, ``rl_prompts``, export using
#: rl_prompts and run.seed), the ``dedup`` / ``decontaminate`` stages (generate reads dedup's output),
#: ``run.partition_rows`` leaving the config hash and ingest's ``uses``,
#: ``scoring.max_pairs_per_response`` (was ``generate.adaptive.max_reuse``; now also a pair-selection cap),
#: and ``generate.adaptive`` leaving the hashes while adaptive sampling is off (``Stage.unhashed_in``)
SAMPLE_CONFIG_HASH = "353b5617648f8a76"
SAMPLE_STAGE_HASHES = {
    "ingest": "5bf5b6a9960d23ad", "dedup": "0925e4c5341186c8", "decontaminate": "39a5d3665a7b6fa7",
    "generate": "57a9f075d205586b", "correctness": "ab2f8556d9a271b4", "dropout_ntp": "0d3098df473e417a",
    "image_crop": "7899cc711317cf23", "grounding": "d97160eb3e5fa493", "filter": "440e4e9a908d9479",
    "judge": "35a54afa8d50b08b", "write": "0d2586f7de9f686b", "export": "1df45128aa371f0c",
}


def _models(model: type[BaseModel], seen: dict[str, type[BaseModel]], where: str = "") -> dict:
    """Every model reachable from ``model``'s fields (sections, list items, mapping values), by key path."""
    seen.setdefault(where or "<config>", model)
    for name, field in model.model_fields.items():
        todo = [field.annotation]
        while todo:
            ann = todo.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                _models(ann, seen, f"{where}{name}.")
            else:
                todo.extend(get_args(ann))
    return seen


# -- the stage sections are fields ------------------------------------------------------------
def test_stage_sections_are_fields_of_the_config_model():
    from pipeline.core import graph

    full = PipelineConfig.full_model()
    sections = [n for n in graph.ordered() if graph.stage_class(n).Config is not None]
    assert list(full.model_fields)[8:] == sections  # after run ... templates, scoring and rl_prompts, in pipeline order
    for name in sections:
        assert full.model_fields[name].annotation is graph.stage_class(name).Config
    schema = PipelineConfig.model_json_schema()
    assert {"generate", "correctness", "write", "run"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    cfg = load_config(SAMPLE)
    assert isinstance(cfg, PipelineConfig) and type(cfg) is full
    assert PipelineConfig().generate.n == 8 == PipelineConfig.model_validate({}).generate.n


def test_a_config_pickles_copies_and_validates_again():
    import cloudpickle

    cfg = load_config(SAMPLE)
    for again in (pickle.loads(pickle.dumps(cfg)), cloudpickle.loads(cloudpickle.dumps(cfg)),
                  PipelineConfig.model_validate(cfg.resolved()), PipelineConfig.model_validate_json(
                      json.dumps(cfg.resolved()))):
        assert again == cfg and again.resolved() == cfg.resolved()
        assert again.generate.n == cfg.generate.n and again.stage_hash("write") == cfg.stage_hash("write")
    judged = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"model": "some/judge"})})
    assert judged.resolved()["judge"]["model"] == "some/judge" and cfg.judge.model is None


def test_unknown_keys_still_fail_with_their_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config_file(tmp_path, "generate: {temprature: 1}\nfoo: 1\njudge:\n")
    assert "generate.temprature: Extra inputs are not permitted" in str(e.value)
    assert "foo: Extra inputs are not permitted" in str(e.value)


def test_the_hashes_of_the_sample_config_did_not_move():
    cfg = load_config(SAMPLE)
    assert cfg.config_hash() == SAMPLE_CONFIG_HASH
    assert {s: cfg.stage_hash(s) for s in SAMPLE_STAGE_HASHES} == SAMPLE_STAGE_HASHES


# -- descriptions and the generated reference ---------------------------------------------------
def test_every_config_key_has_a_description():
    missing = [f"{where if where != '<config>' else ''}{name} ({model.__module__}.{model.__qualname__})"
               for where, model in _models(PipelineConfig.full_model(), {}).items()
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, "config keys without a description (Field(description=...)):\n" + "\n".join(missing)


@pytest.mark.parametrize("path, option", [("docs/config.md", "--markdown"),
                                          ("docs/config.schema.json", "--json-schema")])
def test_the_generated_reference_is_up_to_date(path, option):
    from pipeline.config import reference

    wanted = reference.reference_markdown() if option == "--markdown" else reference.json_schema()
    assert (ROOT / path).read_text() == wanted, \
        f"{path} is out of date: run .venv/bin/python -m pipeline config {option} > {path}"


def test_the_reference_lists_every_key_with_type_default_and_description():
    from pipeline.config.reference import keys

    found = {k.key: k for k in keys()}
    assert found["generate.n"].type == "int (>= 1, <= 256)" and found["generate.n"].default == "8"
    assert found["sources.<i>.path"].default == "required"
    assert "grounding.per_method.<name>.min_crop_gain" in found and found["generate.adaptive"].section
    assert found["executor.write_buffer_mb"].default == "64.0"
    assert all(k.description for k in found.values())


def test_config_command_prints_the_reference():
    proc = run_cli("config")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "mmpr-forge configuration: every key, its type, default and description"
    head = lines[lines.index("run: section"):][:4]
    assert head == ["run: section",
                    "    What is built and where: the build's name, folders, seed, partitions and stages.",
                    'run.name: str = "mmpr"',
                    "    The build's name: the dataset card's title, the manifest's name and the exports' dataset name"]
    assert "generate.n: int (>= 1, <= 256) = 8" in lines and "write.shard_rows: int (>= 1) = 5000" in lines
    assert any(line.startswith("MMPR_FAULT: test machinery") for line in lines)


def test_config_command_prints_resolved_values(capsys, monkeypatch):
    from pipeline.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["config", "--config", SAMPLE_CONFIG, "--set", "generate.n=3",
                 "--set", "sources.0.limit=5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'run.name = "mmpr-sample"'
    assert "generate.n = 3" in lines and "sources.0.limit = 5" in lines
    assert main(["config", "--config", SAMPLE_CONFIG, "--set", "generate.nn=3"]) == 2
    assert "generate.nn is not a config key; did you mean generate.n?" in capsys.readouterr().err


# -- environment settings are config keys ---------------------------------------------------------
def test_the_environment_overrides_a_moved_setting(monkeypatch):
    from stages.write import scatter_buffer_bytes

    assert scatter_buffer_bytes(load_config(SAMPLE)) == 64 << 20
    monkeypatch.setenv("MMPR_WRITE_BUFFER_MB", "8")
    monkeypatch.setenv("MMPR_LOG_LEVEL", "debug")
    cfg = load_config(SAMPLE)
    assert cfg.executor.write_buffer_mb == 8 and scatter_buffer_bytes(cfg) == 8 << 20
    assert cfg.run.log_level == "DEBUG"
    assert cfg.config_hash() == SAMPLE_CONFIG_HASH  # neither changes the data
    assert load_config(SAMPLE, {"executor.write_buffer_mb": 2}).executor.write_buffer_mb == 2  # --set wins
    monkeypatch.setenv("MMPR_WRITE_BUFFER_MB", "lots")
    with pytest.raises(ConfigError, match="MMPR_WRITE_BUFFER_MB=lots: Input should be a valid number"):
        load_config(SAMPLE)


def test_the_write_memory_budget_is_checked_and_the_environment_sets_it(monkeypatch):
    from stages.write import held_budget

    cfg = load_config(SAMPLE, {"executor.kind": "local"})
    assert cfg.executor.write_memory_mb == 0 and held_budget(cfg) == 0  # the default: spill
    monkeypatch.setenv("MMPR_WRITE_MEMORY_MB", "3")
    cfg = load_config(SAMPLE, {"executor.kind": "local"})
    assert cfg.executor.write_memory_mb == 3 and held_budget(cfg) == 3 << 20
    assert cfg.config_hash() == SAMPLE_CONFIG_HASH  # scheduling only: the same data
    for bad, why in (("-1", "greater than or equal to 0"), ("lots", "valid number"), ("nan", "finite number"),
                     ("inf", "finite number")):
        monkeypatch.setenv("MMPR_WRITE_MEMORY_MB", bad)
        with pytest.raises(ConfigError, match=f"MMPR_WRITE_MEMORY_MB={bad}: Input should be .*{why}"):
            load_config(SAMPLE)


@pytest.fixture
def stage_package(tmp_path, monkeypatch):
    """A package of stages outside ``stages/``, importable, removed from the registry afterwards."""
    from pipeline.core import graph
    from pipeline.core.stage import REGISTRY

    pkg = tmp_path / "shout_stages"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "shout.py").write_text(textwrap.dedent('''
        """shout: a test stage from a package the config names."""
        from pydantic import Field

        from pipeline.config.sections import Section
        from pipeline.core.stage import RowStage
        from schemas import PROMPT_SCHEMA


        class ShoutConfig(Section):
            volume: int = Field(3, ge=1, description="How loud")


        class ShoutStage(RowStage):
            name = "shout"
            after = ("ingest",)
            Config = ShoutConfig
            opt_in = True
            input_schema = PROMPT_SCHEMA
            output_schema = PROMPT_SCHEMA

            def run(self, rows, ctx):
                yield from rows
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "shout_stages"
    REGISTRY.pop("shout", None)
    graph._loaded.discard("shout_stages")
    for name in [m for m in sys.modules if m == "shout_stages" or m.startswith("shout_stages.")]:
        del sys.modules[name]


def test_stage_packages_is_a_config_key(stage_package, tmp_path):
    path = config_file(tmp_path, f"run: {{stage_packages: [{stage_package}]}}\nshout: {{volume: 5}}\n")
    cfg = load_config(path)
    assert cfg.shout.volume == 5 and "shout" in type(cfg).model_fields
    assert pickle.loads(pickle.dumps(cfg)).shout.volume == 5
    path.write_text(f"run: {{stage_packages: [{stage_package}]}}\nshout: {{volume: 0}}\n")
    with pytest.raises(ConfigError, match="shout.volume: Input should be greater than or equal to 1"):
        load_config(path)
    with pytest.raises(ConfigError, match="run.stage_packages: cannot import stage package no_such_stages"):
        load_config(None, {"run.stage_packages": ["no_such_stages"]})
