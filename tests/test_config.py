"""Config mistakes fail before any work, with a message naming the key."""
from __future__ import annotations

import pytest

from helpers import ROOT, SAMPLE_CONFIG, load_config_file, run_cli
from pipeline.config.settings import ConfigError
from pipeline.config.loading import load_config


@pytest.mark.parametrize("yaml_text, key, words", [
    ("generate: {temprature: 1.0}", "generate.temprature", "Extra inputs"),
    ("dropout_ntp: {ratio: 1.5}", "dropout_ntp.ratio", "(0, 1)"),
    ("dropout_ntp: {ratio: 0}", "dropout_ntp.ratio", "(0, 1)"),
    ("run: {stages: [ingest, generat]}", "run.stages", "unknown stage"),
    ("generate: {template: cot9}", "generate.template", "unknown template"),
    ("image_crop: {area: [0.3, 0.1]}", "image_crop.area", "low <= high"),
    ("sources: [{name: a, format: csv, path: x}]", "sources.0.format", "jsonl"),
    ("sources: [{name: a, format: jsonl, path: x, answer_type: essay}]", "sources.0.answer_type", "essay"),
    ("sources: [{name: a, format: jsonl, path: x}, {name: a, format: jsonl, path: y}]", "", "unique"),
    ("engine: {tensor_parallel_size: 4, gpus_per_replica: 1}", "engine", "gpus_per_replica"),
    ("filter: {rules: {repetiton: {}}}", "filter", "repetiton"),
    ("generate: {n: 0}", "generate.n", "greater than or equal to 1"),
])
def test_invalid_configs_name_the_key(tmp_path, yaml_text, key, words):
    with pytest.raises(ConfigError) as e:
        load_config_file(tmp_path, yaml_text)
    msg = str(e.value)
    assert key in msg and words in msg, msg


def test_the_shipped_configs_are_valid():
    names = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert {"sample.yaml", "mmpr.yaml", "internvl2_5_8b.yaml", "qwen2_5_vl_7b.yaml"} <= set(names)
    for name in names:
        cfg = load_config(ROOT / "configs" / name)
        assert cfg.sources and cfg.run.stages[0] == "ingest"


def test_cluster_config_samples_like_mmpr():
    cfg = load_config(ROOT / "configs" / "mmpr.yaml")
    g = cfg.generate
    assert g.n == 32 and 0.7 <= g.temperature <= 1.0 and g.top_k == 50 and g.max_tokens >= 2048
    assert cfg.engine.gpus_per_replica >= 1 and cfg.engine.replicas >= 1
    assert any(s.answer_type != "open" for s in cfg.sources) and len(cfg.sources) >= 3


@pytest.mark.parametrize("args, words", [
    (["run", "--set", "dropout_ntp.ratio=2"], "dropout_ntp.ratio"),
    (["run", "--set", "model.path=/no/such/model"], "model.path"),
    (["stage", "generat", "--output", "x"], "unknown stage"),
    (["run", "--set", "sources.0.path=/no/such.jsonl"], "sources.0.path"),
    (["run", "--config", "configs/nope.yaml"], "does not exist"),
    (["run", "--ray-address", "127.0.0.1:1"], "executor.address"),
])
def test_cli_fails_fast_with_one_line(tmp_path, args, words):
    config = [] if "--config" in args else ["--config", SAMPLE_CONFIG]
    proc = run_cli(*args, *config, "--work-dir", tmp_path / "w", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("config error")]
    assert len(lines) == 1 and words in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "w").exists(), "no work may start before the config is valid"


@pytest.mark.parametrize("setting, line", [
    ("generate.n=abc",
     "config error: --set generate.n=abc: Input should be a valid integer, unable to parse string as an integer"),
    ("generate={n: abc}",
     "config error: --set generate={n: abc}: generate.n: Input should be a valid integer, unable to parse "
     "string as an integer"),
    ("generate.nn=3", "config error: --set generate.nn=3: generate.nn is not a config key; did you mean generate.n?"),
    ("generat.n=3", "config error: --set generat.n=3: generat is not a config key; did you mean generate?"),
    ("run.seed.x=1", "config error: --set run.seed.x=1: run.seed is a value, not a section"),
])
def test_a_bad_set_is_blamed_on_that_set_argument(tmp_path, setting, line):
    """A wrong ``--set`` is reported as the argument the user typed, not as the YAML file."""
    proc = run_cli("run", "--config", SAMPLE_CONFIG, "--work-dir", tmp_path / "w", "--set", setting, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [line]


def test_an_unknown_set_key_far_from_any_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / SAMPLE_CONFIG, {"ingest.zzz": 1}, origins={"ingest.zzz": "--set ingest.zzz=1"})
    assert str(e.value) == ("--set ingest.zzz=1: ingest.zzz is not a config key "
                            "(keys of ingest: max_question_chars, require_image)")
