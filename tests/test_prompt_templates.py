"""MMPR prompt files as they are: placeholders, templates as data, languages, image allowlists.

Pure Python (no engine): the rendered prompts through the real chat templates
are checked in ``test_mmpr_prompt_files.py``.
"""
from __future__ import annotations


import pytest

from helpers import load_config_file, make_config
from methods.extract import extract_answer
from pipeline.config.settings import ConfigError
from pipeline.config.loading import load_config
from pipeline.files.image_refs import ImageError, allowed_roots, resolve_image_ref
from pipeline.config.internvl_instructions import INSTRUCTIONS
from schemas.placeholders import IMAGE_MARK, interleaved, parse_placeholders, user_content, with_marks
from pipeline.config.templates import BUILTIN_TEMPLATES, render_question, template_for_source


# -- placeholders ----------------------------------------------------------------
@pytest.mark.parametrize("question, stored, positions", [
    # MMPR's usual single-image shape: the placeholder and its newline go
    ("<image>\nWhat is the color of the bus?", "What is the color of the bus?", [0]),
    ("What is shown here? <image>", "What is shown here? ", [20]),
    ("Look at <image>\nthe chart. What is the peak?", "Look at the chart. What is the peak?", [8]),
    # multi-image: placeholders stay where they are (offsets into the stored text)
    ("Image-1: <image>\nImage-2: <image>\nWhich image has more cats?",
     "Image-1: \nImage-2: \nWhich image has more cats?", [9, 19]),
    ("<image>\n<image>\nWhat changed between the two photos?", "\n\nWhat changed between the two photos?", [0, 1]),
    # no placeholder: images go first
    ("How many circles are there?", "How many circles are there?", []),
])
def test_placeholders_are_parsed_out_and_positions_recorded(question, stored, positions):
    assert parse_placeholders(question) == (stored, positions)


def test_several_images_render_where_their_placeholders_stood():
    original = "Image-1: <image>\nImage-2: <image>\nWhich image has more cats?"
    q, pos = parse_placeholders(original)
    assert interleaved(2, pos) and not interleaved(1, [0]) and not interleaved(2, [])
    marked = with_marks(q, pos)
    assert marked.replace(IMAGE_MARK, "<image>") == original
    assert user_content(marked, 2, "<image>") == original  # InternVL's string content: the original text
    assert user_content(marked, 2) == [
        {"type": "text", "text": "Image-1: "}, {"type": "image"}, {"type": "text", "text": "\nImage-2: "},
        {"type": "image"}, {"type": "text", "text": "\nWhich image has more cats?"}]
    # images first otherwise: parts, or "<image>\n" per image for string templates
    assert user_content("What color?", 1) == [{"type": "image"}, {"type": "text", "text": "What color?"}]
    assert user_content("What color?", 1, "<image>") == "<image>\nWhat color?"
    assert user_content("Why?", 0, "<image>") == "Why?"


# -- templates ---------------------------------------------------------------------
def test_internvl_instructions_are_builtins_with_their_answer_styles():
    assert set(INSTRUCTIONS) == {"en", "en_v2", "en_r1", "zh", "zh_v2", "zh_r1"}
    en = render_question("What color? Answer the question using a single word or phrase.", None,
                         BUILTIN_TEMPLATES["internvl_en"])
    assert en.startswith("Your task is to answer the question below.") and en.endswith("Question:\n\nWhat color?")
    boxed = render_question("Solve x+1=2. Please answer the question and put the final answer within \\boxed{}.",
                            None, BUILTIN_TEMPLATES["internvl_en_v2"])
    assert boxed.startswith("Solve x+1=2.\nAnswer the preceding question.") and "\\boxed{$FINAL_ANSWER}" in boxed
    assert "<think> and </think>" in BUILTIN_TEMPLATES["internvl_zh_r1"].text
    assert [BUILTIN_TEMPLATES[f"internvl_{v}"].extraction for v in ("en", "zh", "en_v2", "zh_r1")] == [
        "final_answer", "final_answer_zh", "boxed", "think"]
    # our own built-ins render exactly as before
    assert render_question("Q", ["a", "b"], "mmpr_boxed") == (
        "Q\nOptions:\nA. a\nB. b\nThink step by step. The last line of your response must be of the form "
        "'Answer: \\boxed{<answer>}'.")


@pytest.mark.parametrize("text, style, want", [
    ("\u56fe\u4e2d\u6709\u4e09\u4e2a\u5706\u3002\n\u7b54\u6848: 3", "final_answer_zh", "3"),
    ("\u63a8\u7406\u3002\n\u7b54\u6848\uff1a\u7ea2\u8272", "final_answer_zh", "\u7ea2\u8272"),
    ("reasoning\nFinal answer: 4", "final_answer_zh", "4"),  # the reference accepts English labels too
    ("\u7b54\u6848: 2\n\u6539\u6b63\u3002\nFinal answer: 5", "final_answer_zh", "5"),  # the later label wins
    ("\u6ca1\u6709\u7b54\u6848", "final_answer_zh", None),
    ("<think>...</think>\n\\boxed{7}", "think", "7"),
])
def test_chinese_answer_lines_are_extracted(text, style, want):
    assert extract_answer(text, style) == want


def test_templates_are_data_picked_per_source_and_language(tmp_path):
    cfg = load_config_file(tmp_path, """
        templates:
          - {id: ours_en, text: "Q: {question}\\nEnd with 'Final answer: X'.", language: en, group: ours}
          - {id: ours_zh, text: "\u95ee\u9898: {question}", language: zh, group: ours,
             system: "\u7528\u4e2d\u6587\u56de\u7b54\u3002", extraction: final_answer_zh}
        sources:
          - {name: a, format: mmpr, path: /d/chartqa_en_20240611.jsonl, template: ours}
          - {name: b, format: mmpr, path: /d/geoqa_zh_20240611.jsonl, template: ours_en}
          - {name: c, format: mmpr, path: /d/geoqa_zh_20240611.jsonl, template: internvl_en_v2}
          - {name: d, format: mmpr, path: /d/geoqa_zh_20240611.jsonl}
          - {name: e, format: jsonl, path: /d/x.jsonl, template: internvl_en, language: zh}
    """)
    picked = {s.name: template_for_source(cfg, s.name, cfg.generate.template) for s in cfg.sources}
    assert {k: t.id for k, t in picked.items()} == {
        "a": "ours_en", "b": "ours_zh", "c": "internvl_zh_v2",
        "d": "mmpr_final_answer",  # our default has no Chinese variant: kept
        "e": "internvl_zh"}
    assert picked["b"].system and picked["b"].extraction == "final_answer_zh"
    assert picked["a"].hash != picked["b"].hash and len(picked["a"].hash) == 16
    # a template's text is part of the generate stage's hash
    text = (tmp_path / "c.yaml").read_text()  # the file load_config_file wrote
    other = load_config_file(tmp_path, text.replace("Q: {question}", "Question: {question}"))
    assert other.stage_hash("generate") != cfg.stage_hash("generate")
    assert other.stage_hash("ingest") == cfg.stage_hash("ingest")  # ingest never reads templates


@pytest.mark.parametrize("yaml_text, words", [
    ("generate: {template: cot9}", ["generate.template", "unknown template 'cot9'"]),
    ("sources: [{name: a, format: mmpr, path: x, template: nope}]", ["sources.0.template", "unknown template"]),
    ("sources: [{name: a, format: mmpr, path: x, template: mmpr_boxed, language: zh}]",
     ["sources.0.template", "no 'zh' variant", "group: mmpr_boxed"]),
    ("templates: [{id: t, text: 'no placeholder'}]", ["templates.0.text", "{question}"]),
    ("templates: [{id: mmpr_boxed, text: '{question}'}]", ["templates", "built-in"]),
    ("templates: [{id: t, text: '{question}', extraction: regex}]", ["templates.0.extraction"]),
    ("sources: [{name: a, format: mmpr, path: x, allowed_image_roots: ['https://cdn.example.com/']}]",
     ["sources.0.allowed_image_roots", "never fetched over https"]),
])
def test_template_and_allowlist_mistakes_fail_fast(tmp_path, yaml_text, words):
    with pytest.raises(ConfigError) as e:
        load_config_file(tmp_path, yaml_text)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_mmpr_sources_keep_text_only_items_by_default():
    cfg = make_config(sources=[{"name": "m", "format": "mmpr", "path": "x"},
                               {"name": "j", "format": "jsonl", "path": "x"},
                               {"name": "s", "format": "mmpr", "path": "x", "require_image": True}])
    assert [s.image_required(cfg.ingest.require_image) for s in cfg.sources] == [False, True, True]


# -- image references ----------------------------------------------------------------
ROOT = "/data/prompts"


@pytest.mark.parametrize("ref, extra, want", [
    ("images/a.png", [], "/data/prompts/images/a.png"),
    ("/data/prompts/images/a.png", [], "/data/prompts/images/a.png"),
    ("file:///data/prompts/images/a.png", [], "/data/prompts/images/a.png"),
    ("/mnt/shared/img/a.png", ["/mnt/shared"], "/mnt/shared/img/a.png"),
    ("s3://mmpr-images/coco/1.jpg", ["s3://mmpr-images/coco"], "s3://mmpr-images/coco/1.jpg"),
    ("s3://mmpr-images/coco//1.jpg", ["s3://mmpr-images/coco/"], "s3://mmpr-images/coco/1.jpg"),
    ("gcs://b/x/1.jpg", ["gs://b"], "gs://b/x/1.jpg"),
    # refused, whatever the scheme
    ("../../etc/passwd", [], "image_path_escapes_root"),
    ("/etc/hostname", [], "image_uri_not_allowed"),
    ("file:///etc/hostname", [], "image_uri_not_allowed"),
    ("file://otherhost/data/prompts/a.png", [], "image_uri_not_allowed"),
    ("http://169.254.169.254/latest/meta-data", [], "image_uri_not_allowed"),
    ("https://example.com/a.png", ["/mnt/shared"], "image_uri_not_allowed"),
    ("s3://other-bucket/secret.png", ["s3://mmpr-images"], "image_uri_not_allowed"),
    ("s3://mmpr-images-evil/coco/1.jpg", ["s3://mmpr-images"], "image_uri_not_allowed"),
    ("s3://mmpr-images/cocoa/1.jpg", ["s3://mmpr-images/coco"], "image_uri_not_allowed"),
    ("s3://mmpr-images/coco/../private/k.png", ["s3://mmpr-images/coco"], "image_uri_not_allowed"),
    ("s3://mmpr-images/coco/1.jpg?endpoint_override=evil.example", ["s3://mmpr-images"], "image_uri_not_allowed"),
    ("s3://key:secret@mmpr-images/coco/1.jpg", ["s3://mmpr-images"], "image_uri_not_allowed"),
    ("ftp://mmpr-images/coco/1.jpg", [], "image_uri_not_allowed"),
])
def test_image_references_resolve_only_under_allowed_roots(ref, extra, want):
    roots = allowed_roots(ROOT, extra)
    if want.startswith("image_"):
        with pytest.raises(ImageError) as e:
            resolve_image_ref(ref, ROOT, roots)
        assert e.value.reason == want
    else:
        assert resolve_image_ref(ref, ROOT, roots) == want


def test_relative_paths_under_an_object_store_root():
    root = "s3://mmpr-test/inputs"
    roots = allowed_roots(root)
    assert resolve_image_ref("images/a.png", root, roots) == "s3://mmpr-test/inputs/images/a.png"
    assert resolve_image_ref("s3://mmpr-test/inputs/images/a.png", root, roots) == "s3://mmpr-test/inputs/images/a.png"
    with pytest.raises(ImageError, match="image_path_escapes_root"):
        resolve_image_ref("../secret.png", root, roots)
    with pytest.raises(ImageError, match="image_uri_not_allowed"):
        resolve_image_ref("images/a.png", None, ())


def test_pair_prompts_keep_images_where_the_question_had_them():
    """What the trainer sees matches what the model was sent: TRL parts interleaved for a
    multi-image question, images first for one, and no marks left in image-free turns."""
    from pipeline.config.templates import render_user_text
    from schemas.records import user_turn
    from stages.dropout_ntp import continuation_messages

    cfg = make_config()
    q, pos = parse_placeholders("Image-1: <image>\nImage-2: <image>\nWhich is larger?")
    row = {"question": q, "image_positions": pos, "images": [{}, {}], "choices": [], "template_id": "plain"}
    text = render_user_text(cfg, row)
    assert user_turn(text, 2)["content"] == [
        {"type": "text", "text": "Image-1: "}, {"type": "image", "text": None}, {"type": "text", "text": "\nImage-2: "},
        {"type": "image", "text": None}, {"type": "text", "text": "\nWhich is larger?"}]
    single = render_user_text(cfg, {**row, "images": [{}], "image_positions": [0], "question": "What color?"})
    assert user_turn(single, 1)["content"] == [{"type": "image", "text": None}, {"type": "text", "text": "What color?"}]
    user, _ = continuation_messages(text, 2, "The first", keep_image=False)
    assert user["content"] == [{"type": "text", "text": "Image-1: \nImage-2: \nWhich is larger?"}]
