"""Checks that fail a config before any engine starts: worst-case image tokens per model
family against max_model_len (with the arithmetic), the model's own length limit, and the
chat template's end-of-turn marker being a stop token -- each as one line naming the key."""
from __future__ import annotations

import shutil

import pytest

from helpers import ROOT, SAMPLE_CONFIG, config_file, load_config_file, make_config, run_cli, shipped_config
from pipeline.config.settings import ConfigError, PipelineConfig
from pipeline.config.loading import load_config
from pipeline.engine.image_budget import image_cost, prompts_in_flight
from pipeline.run.preflight import check_model


# (config, override of the model section, words the error must carry: the arithmetic)
OVERFLOWS = [
    # mmpr.yaml before this change: 4 images at 24 tiles in 16384 tokens
    ("mmpr.yaml", {"max_model_len": 16384},
     ["model.max_model_len=16384", "4 image(s) x (24+1 tiles x 256 + 2) = 25608 image tokens (internvl)",
      "generate.max_tokens 4096 = 29704 > 16384"]),
    # internvl2_5_8b.yaml before: 2 images at 24 tiles + 4096 new tokens
    ("internvl2_5_8b.yaml", {"max_model_len": 16384},
     ["2 image(s) x (24+1 tiles x 256 + 2) = 12804 image tokens", "4096 = 16900 > 16384"]),
    # Qwen2.5-VL: tokens from max_pixels
    ("qwen2_5_vl_7b.yaml", {"max_model_len": 8192, "limit_mm_per_prompt": {"image": 4, "video": 0}},
     ["4 image(s) x (max_pixels 2007040 / 28x28 + 2) = 10248 image tokens (qwen2_vl)"]),
    # Idefics3 at its default splitting (4x4 crops of 364 px + the global image)
    ("sample.yaml", {"path": "HuggingFaceM4/Idefics3-8B-Llama3"},
     ["1 image(s) x (17 crops x (169 + 10)) = 3043 image tokens (idefics3)", "> 2048"]),
]


@pytest.mark.parametrize("name, model, words", OVERFLOWS, ids=[o[0] for o in OVERFLOWS])
def test_worst_case_image_tokens_that_overflow_the_context_fail_with_the_arithmetic(tmp_path, name, model, words):
    data = shipped_config(name)
    data["model"].update(model)
    with pytest.raises(ConfigError) as err:
        load_config_file(tmp_path, data)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("name", ["mmpr.yaml", "internvl2_5_8b.yaml", "qwen2_5_vl_7b.yaml", "sample.yaml"])
def test_the_shipped_configs_fit_their_worst_case_prompt(name):
    cfg = load_config(ROOT / "configs" / name)
    cost = image_cost(cfg.model)
    assert cost is not None
    assert cfg.model.max_images_per_prompt * cost.tokens + cfg.generate.max_tokens <= cfg.model.max_model_len


def test_tiny_model_image_cost_is_read_from_its_processor_files(tiny_model):
    """The Idefics3 arithmetic on the real tiny model's processor files: its 64 px images
    are one crop of 4 tokens, plus at most 10 wrapper tokens."""
    cost = image_cost(make_config().model)
    assert (cost.family, cost.arithmetic) == ("idefics3", "(1 crops x (4 + 10))")


def test_prompts_in_flight_follow_the_image_memory_budget():
    cfg = load_config(ROOT / "configs" / "internvl2_5_8b.yaml")
    per_prompt = 2 * 25 * 3 * 448 * 448 * 4  # 2 images x 25 float32 tiles
    assert prompts_in_flight(cfg, 256) == int(8 * 2**30 // per_prompt) == 71
    cfg.engine.image_memory_gib = 1
    assert prompts_in_flight(cfg, 256) == 8
    cfg.engine.max_prompts_in_flight = 500
    assert prompts_in_flight(cfg, 256) == 500


def test_the_tiny_model_passes_the_pre_flight_check(tiny_model):
    check_model(make_config())


def test_max_model_len_above_the_models_limit_fails_in_one_line_before_any_engine(tiny_model, tmp_path):
    """A new user's config: the tiny model without max_model_len (default 4096 > its 2048)."""
    data = shipped_config()
    del data["model"]["max_model_len"]
    data["model"]["tiny_model_dir"] = str(tiny_model)
    for src in data["sources"]:
        src["path"] = str(ROOT / src["path"])
    proc = run_cli("run", "--config", config_file(tmp_path, data), "--executor", "local",
                   "--work-dir", tmp_path / "w", "--output", tmp_path / "o")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("config error:")]
    assert lines == ["config error: model.max_model_len: 4096 exceeds the model's own limit of 2048 tokens: "
                     "set model.max_model_len: 2048 or less"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w" / "generate").exists()


@pytest.fixture()
def im_end_model(tiny_model, tmp_path):
    """The tiny model with a chat template whose turns end with <|im_end|>, a token that is
    not its EOS (<end_of_utterance>) -- InternVL2.5's situation."""
    from transformers import AutoTokenizer

    d = tmp_path / "im-end-model"
    shutil.copytree(tiny_model, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tok.chat_template = tok.chat_template.replace("<end_of_utterance>", "<|im_end|>")
    tok.save_pretrained(d)
    (d / "chat_template.jinja").write_text(tok.chat_template)
    return d


@pytest.mark.parametrize("stop_token_ids, fails", [([], True), (["<|im_end|>"], False), ([1], True)])
def test_an_end_of_turn_marker_that_is_not_a_stop_token_fails(im_end_model, stop_token_ids, fails):
    from transformers import AutoTokenizer

    cfg = make_config(model={"path": str(im_end_model), "max_model_len": 2048,
                             "stop_token_ids": stop_token_ids})
    if not fails:
        check_model(cfg)
        im_end = AutoTokenizer.from_pretrained(im_end_model).convert_tokens_to_ids("<|im_end|>")
        from pipeline.engine.engine import stop_kwargs
        assert stop_kwargs(cfg, AutoTokenizer.from_pretrained(im_end_model)) == {"stop_token_ids": [im_end]}
        return
    with pytest.raises(ConfigError) as err:
        check_model(cfg)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and msg.startswith("model.stop_token_ids:")
    assert "'<|im_end|>'" in msg and "add '<|im_end|>' to model.stop_token_ids" in msg


def test_an_unknown_stop_token_string_names_the_key(tiny_model):
    with pytest.raises(ConfigError, match=r"model.stop_token_ids: '<\|nope\|>' is not a token"):
        check_model(make_config(model={"stop_token_ids": ["<|nope|>"]}))


def test_batch_invariant_is_part_of_the_stage_hash_only_when_on():
    cfg = make_config()
    on = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"batch_invariant": True})})
    assert cfg.stage_hash("generate") != on.stage_hash("generate")
    assert PipelineConfig.model_validate(cfg.resolved()).stage_hash("generate") == cfg.stage_hash("generate")


@pytest.mark.parametrize("stage", ["generate", "correctness"])
def test_a_missing_stage_input_fails_in_one_line_before_the_model(stage, tmp_path, monkeypatch, capsys):
    """``stage generate --input <typo>`` used to start the engine (a minute on CPU), then fail
    every partition with FileNotFoundError."""
    import pipeline.run.preflight
    from pipeline.cli import main

    def no_model(*_a, **_k):
        raise AssertionError("the model was prepared before the input was checked")

    monkeypatch.setattr(pipeline.run.preflight, "ensure_model", no_model)
    monkeypatch.chdir(ROOT)
    missing = tmp_path / "no-such-ingest"
    rc = main(["stage", stage, "--config", SAMPLE_CONFIG, "--executor", "local", "--input", str(missing),
               "--output", str(tmp_path / "out"), "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert [ln for ln in err.splitlines() if ln.startswith("config error:")] == [
        f"config error: --input: {missing} does not exist (give a stage's output folder or a .parquet file)"], err
    assert not (tmp_path / "out").exists()
