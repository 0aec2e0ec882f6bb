"""Stages own their settings: a stage reads its section and what it declares in ``uses``, its hash
follows that declaration, shared settings live in a shared section, and an upstream stage learns
what downstream stages need from what they declare (``Stage.wants``)."""
from __future__ import annotations

import logging

import pytest

from helpers import load_config_file, make_config
from pipeline.core import graph
from pipeline.core.settings_view import UndeclaredSetting


@pytest.mark.parametrize("stage, read", [
    ("correctness", lambda c: c.generate.n),          # another stage's section
    ("filter", lambda c: c.scoring.threshold),        # a shared section it does not declare
    ("filter", lambda c: c.run.seed),                 # a run key outside what it declares
    ("image_crop", lambda c: c.scoring.max_pairs_per_prompt),  # declares scoring's answer keys only
    ("filter", lambda c: c.source("sample_gt")),      # a lookup in a setting it does not declare
    ("ingest", lambda c: c.model.path),               # declares model.max_images_per_prompt only
])
def test_reading_an_undeclared_setting_fails_naming_the_fix(stage, read):
    config = graph.make_stage(stage, make_config()).config
    with pytest.raises(UndeclaredSetting, match=rf"stage {stage} reads .* add '[\w.]+' to its `uses`"):
        read(config)


def test_a_stage_reads_its_section_what_it_declares_and_what_never_changes_data():
    cfg = make_config(executor={"kind": "local"}, scoring={"threshold": 0.7})
    image_crop = graph.make_stage("image_crop", cfg).config
    assert image_crop.image_crop.fraction == cfg.image_crop.fraction  # its own section
    assert image_crop.scoring.threshold == 0.7 and image_crop.run.seed == cfg.run.seed  # declared
    assert image_crop.source("sample_gt") is cfg.source("sample_gt")  # declares sources
    assert image_crop.executor.kind == "local" and image_crop.run.output_dir == cfg.run.output_dir  # free
    assert graph.make_stage("ingest", cfg).config.model.max_images_per_prompt == cfg.model.max_images_per_prompt
    with pytest.raises(AttributeError, match="read-only"):
        image_crop.scoring = None


@pytest.mark.parametrize("change, moved", [
    ({"scoring": {"threshold": 0.5}}, {"correctness", "image_crop", "filter", "judge", "write"}),
    # the pair budget is not one of the answer-scoring keys image_crop declares
    ({"scoring": {"max_pairs_per_prompt": 3}}, {"correctness", "filter", "judge", "write"}),
    ({"scoring": {"max_pairs_per_prompt": 3}, "generate": {"adaptive": {"enabled": True}}},
     None),  # with adaptive sampling generate stops on the pair budget: everything after it moves
])
def test_a_stage_hash_follows_its_declared_settings(change, moved):
    stages = ["ingest", "generate", "correctness", "dropout_ntp", "image_crop", "filter", "judge", "write"]
    base = {"run": {"stages": stages}, **({"generate": change["generate"]} if "generate" in change else {})}
    before, after = make_config(**base), make_config(**{**base, **change})
    changed = {s for s in stages if before.stage_hash(s) != after.stage_hash(s)}
    assert changed == (moved if moved is not None else set(stages) - {"ingest"})


def test_keys_moved_to_a_shared_section_are_read_at_their_new_place(tmp_path, caplog):
    (tmp_path / "new").mkdir()
    (tmp_path / "both").mkdir()
    with caplog.at_level(logging.WARNING):
        cfg = load_config_file(tmp_path, "correctness:\n  threshold: 0.6\n  format_negatives: false\n"
                                         "write:\n  exports: [swift]\n")
    assert cfg.scoring.threshold == 0.6 and cfg.correctness.format_negatives is False
    assert cfg.export.formats == ["swift"] and "export" in cfg.run.stages
    assert "correctness.threshold is now scoring.threshold" in caplog.text
    assert cfg.config_hash() == load_config_file(
        tmp_path / "new", "scoring: {threshold: 0.6}\ncorrectness: {format_negatives: false}\nexport: {formats: [swift]}\n",
    ).config_hash()
    with pytest.raises(Exception, match="correctness.threshold and scoring.threshold are both set"):
        load_config_file(tmp_path / "both", "correctness: {threshold: 0.6}\nscoring: {threshold: 0.7}\n")


@pytest.mark.parametrize("yaml_text, cap", [
    # the stop rule's cap is the pair selection's now: one key, in the shared scoring section
    ("generate:\n  adaptive:\n    enabled: true\n    max_reuse: 3\n", 3),
    ("generate:\n  adaptive: {enabled: true, max_reuse: 6}\nscoring: {threshold: 0.8}\n", 6),
    ("generate:\n  adaptive: {enabled: true}\nscoring: {max_pairs_per_response: 5}\n", 5),
    ("generate:\n  adaptive: {enabled: true}\n", 3),  # the default: issue 30's cheapest cap within 1.3x
    ("scoring: {max_pairs_per_response: null}\n", None),
])
def test_max_reuse_is_read_as_the_shared_per_response_cap(tmp_path, caplog, yaml_text, cap):
    with caplog.at_level(logging.WARNING):
        cfg = load_config_file(tmp_path, yaml_text)
    assert cfg.scoring.max_pairs_per_response == cap
    assert ("generate.adaptive.max_reuse is now scoring.max_pairs_per_response" in caplog.text) == (
        "max_reuse" in yaml_text)
    if cfg.generate.adaptive.enabled:
        assert cfg.generate.stop_rule(15, cfg.scoring.max_pairs_per_response).max_reuse == cap
        assert cfg.generate.adaptive.rounds == [4, 8, 12, 16, 24, 32]  # the rest of the section is kept


def test_max_reuse_and_the_cap_both_set_is_an_error(tmp_path):
    with pytest.raises(Exception, match="generate.adaptive.max_reuse and scoring.max_pairs_per_response are both"):
        load_config_file(tmp_path, "generate: {adaptive: {max_reuse: 3}}\nscoring: {max_pairs_per_response: 4}\n")


def test_generate_records_logprobs_when_a_stage_of_the_run_wants_them():
    plain = make_config()
    grounded = make_config(run={"stages": [*plain.run.stages, "grounding"]})
    no_reuse = make_config(run={"stages": [*plain.run.stages, "grounding"]},
                           grounding={"reuse_sampled_logprobs": False})
    assert [graph.make_stage("generate", c).wants_logprobs() for c in (plain, grounded, no_reuse)] == \
        [False, True, False]
    assert graph.make_stage("generate", make_config(generate={"logprobs": True})).wants_logprobs()
