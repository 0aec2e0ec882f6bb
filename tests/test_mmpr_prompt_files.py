"""Prompt files shaped exactly like MMPR's, through ingest and generate with the real engine.

The five shapes InternVL's MMPR pipeline reads (one image with ``<image>\\n``, two
images with two placeholders, a text-only item, a ``_zh_`` file, an ``s3://``
image on another bucket, allowlisted), checked on the prompt text generate
records -- the text the engine was actually sent, rendered by the tiny model's
own chat template -- and on InternVL's string-placeholder path (an
InternLM-style template that prints ``message['content']`` as a string).
"""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from helpers import INTERNLM_TEMPLATE, make_config, stage_rows
from pipeline.files import storage
from pipeline.config.internvl_instructions import INSTRUCTIONS
from pipeline.run.orchestrator import run_source
from pipeline.run.runner import Task, run_task
from pipeline.core.stage import StageContext
from pipeline.config.templates import BUILTIN_TEMPLATES
from stages import make_stage

PROMPTS, IMAGES = "mmpr-prompt-files", "mmpr-images"
COT = "\nThink step by step, then end your response with a line of the form 'Final answer: <answer>'."
ZH_Q = "\u56fe\u4e2d\u6709\u51e0\u4e2a\u5706\uff1f"  # "how many circles are in the picture?"
ZH_PROMPT = INSTRUCTIONS["zh"].replace("{question}", ZH_Q)  # internvl_zh, picked by the _zh_ file name
EN_FILE = [
    {"image": "images/int-0000.png", "question": "<image>\nHow many circles are there?", "answer": "3"},
    {"image": ["images/int-0001.png", "images/int-0002.png"],
     "question": "Image-1: <image>\nImage-2: <image>\nWhich image has more circles? "
                 "Answer the question using a single word or phrase.", "answer": "Image-1"},
    {"question": "A train travels 60 km in 1.5 hours. What is its average speed in km/h?", "answer": "40"},
    {"image": "images/int-0000.png", "question": "<image>\n<image>\nTwo placeholders, one image?", "answer": "1"},
]


@pytest.fixture(scope="module")
def mmpr_sources(tmp_path_factory, sample_data, s3_server):
    base = tmp_path_factory.mktemp("mmpr_files")
    (base / "images").mkdir()
    for name in ("int-0000.png", "int-0001.png", "int-0002.png"):
        (base / "images" / name).write_bytes((sample_data / "images" / name).read_bytes())
    (base / "chartqa_en_20240611.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EN_FILE))
    (base / "geoqa_zh_20240611.jsonl").write_text(
        json.dumps({"image": "images/int-0000.png", "question": f"<image>\n{ZH_Q}", "answer": "3"},
                   ensure_ascii=False) + "\n")
    for bucket in (PROMPTS, IMAGES):
        s3_server.create_bucket(Bucket=bucket)
    s3_server.put_object(Bucket=IMAGES, Key="ai2d/0.png", Body=(sample_data / "images/int-0001.png").read_bytes())
    row = {"image": f"s3://{IMAGES}/ai2d/0.png", "question": "<image>\nHow many circles are there?", "answer": "3"}
    s3_server.put_object(Bucket=PROMPTS, Key="mmpr/ai2d_en_20240611.jsonl", Body=(json.dumps(row) + "\n").encode())
    return [
        {"name": "chartqa", "format": "mmpr", "path": str(base / "chartqa_en_20240611.jsonl")},
        {"name": "geoqa_zh", "format": "mmpr", "path": str(base / "geoqa_zh_20240611.jsonl"),
         "template": "internvl_en"},
        {"name": "ai2d", "format": "mmpr", "path": f"s3://{PROMPTS}/mmpr/ai2d_en_20240611.jsonl",
         "allowed_image_roots": [f"s3://{IMAGES}/ai2d"]},
    ]


def _cfg(sources, **model):
    return make_config(executor={"kind": "local"}, run={"partition_rows": 16, "seed": 7}, sources=sources,
                       model={"max_images_per_prompt": 2, **model}, generate={"n": 2, "max_tokens": 8})


@pytest.fixture(scope="module")
def generated(mmpr_sources, tiny_model, tmp_path_factory):
    from pipeline.engine.engine import get_engine

    cfg = _cfg(mmpr_sources)
    out = tmp_path_factory.mktemp("mmpr_generate")
    stats, _, _ = run_source(make_stage("ingest", cfg), str(out / "ingest"))
    parts = tuple(storage.list_files(str(out / "ingest" / "data"), ".parquet"))  # one per source
    task = Task("generate", "part", parts, str(out / "generate"), cfg.stage_hash("generate"))
    run_task(make_stage("generate", cfg), task, get_engine(cfg))
    rows = {(r["source"], r["row_key"]): r for r in pq.read_table(task.data_uri()).to_pylist()}
    quarantine = stage_rows(out / "ingest", "quarantine")
    return cfg, stats, rows, quarantine, [r for part in parts for r in pq.read_table(part).to_pylist()]


def test_ingest_stores_questions_without_placeholders(generated):
    _, stats, rows, quarantine, _ = generated
    assert set(rows) == {("chartqa", "#0"), ("chartqa", "#1"), ("chartqa", "#2"), ("geoqa_zh", "#0"),
                         ("ai2d", "#0")}
    one, two, text = rows["chartqa", "#0"], rows["chartqa", "#1"], rows["chartqa", "#2"]
    assert (one["question"], one["image_positions"], len(one["images"])) == ("How many circles are there?", [0], 1)
    assert two["question"].startswith("Image-1: \nImage-2: \nWhich") and two["image_positions"] == [9, 19]
    assert text["images"] == [] and stats.counters["text_only"] == 1
    assert [(q["row_key"], q["reason"]) for q in quarantine] == [("#3", "image_placeholder_mismatch")]


def test_prompts_sent_to_the_engine_have_one_image_token_per_image(generated):
    _, _, rows, _, _ = generated
    sent = {k: r["prompt_text"] for k, r in rows.items()}
    bos = sent["chartqa", "#0"].split("User:")[0]  # the tiny tokenizer's BOS text, if any
    assert sent == {
        ("chartqa", "#0"): f"{bos}User:<image>How many circles are there?{COT}<end_of_utterance>\nAssistant:",
        ("chartqa", "#1"): f"{bos}User: Image-1: <image>\nImage-2: <image>\nWhich image has more circles?{COT}"
                           "<end_of_utterance>\nAssistant:",
        ("chartqa", "#2"): f"{bos}User: A train travels 60 km in 1.5 hours. What is its average speed in km/h?"
                           f"{COT}<end_of_utterance>\nAssistant:",
        ("geoqa_zh", "#0"): f"{bos}User:<image>{ZH_PROMPT}"
                            "<end_of_utterance>\nAssistant:",
        ("ai2d", "#0"): f"{bos}User:<image>How many circles are there?{COT}<end_of_utterance>\nAssistant:",
    }
    for key, row in rows.items():
        assert row["prompt_text"].count("<image>") == len(row["images"]), key
        assert len(row["responses"]) == 2 and row["prompt_tokens"] > 0  # the engine took it
    zh = rows["geoqa_zh", "#0"]
    assert (zh["template_id"], zh["template_hash"]) == ("internvl_zh", BUILTIN_TEMPLATES["internvl_zh"].hash)
    assert rows["chartqa", "#2"]["template_id"] == "mmpr_final_answer"


#: Qwen2-VL / Qwen2.5-VL's chat template (content parts; an image renders as a vision block)
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.mark.parametrize("family, chat_template, placeholder, image, user", [
    # InternVL (configs/internvl2_5_8b.yaml): a template that prints content as a string
    ("internvl", INTERNLM_TEMPLATE, "<image>", "<image>",
     "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n".format),
    # Qwen2.5-VL (configs/qwen2_5_vl_7b.yaml): content parts
    ("qwen2_5_vl", QWEN2_VL_TEMPLATE, None, QWEN_IMAGE,
     "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
     "<|im_start|>assistant\n".format),
])
def test_other_model_families_render_each_image_once(generated, tiny_model, family, chat_template, placeholder,
                                                     image, user):
    """The same MMPR rows through each shipped family's chat template: one image first, several
    in place (InternVL's string form is then the reference pipeline's own prompt text)."""
    from transformers import AutoTokenizer

    from pipeline.engine.engine import Engine

    cfg, _, _, _, prompts = generated
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"image_placeholder": placeholder})})
    requests = list(make_stage("generate", cfg).prepare(prompts, StageContext("generate", "p", cfg))[1])
    eng = Engine.__new__(Engine)  # render() needs only the config and a tokenizer
    eng.tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    eng.tokenizer.chat_template = chat_template
    eng.config = cfg
    rendered = {(p["source"], p["row_key"]): eng.render(r.messages) for p, r in zip(prompts, requests)}
    first = image + "\n" if placeholder else image  # string templates separate the image by a newline
    assert rendered == {
        ("chartqa", "#0"): user(f"{first}How many circles are there?{COT}"),
        ("chartqa", "#1"): user(f"Image-1: {image}\nImage-2: {image}\nWhich image has more circles?{COT}"),
        ("chartqa", "#2"): user(f"A train travels 60 km in 1.5 hours. What is its average speed in km/h?{COT}"),
        ("geoqa_zh", "#0"): user(first + ZH_PROMPT),
        ("ai2d", "#0"): user(f"{first}How many circles are there?{COT}"),
    }
