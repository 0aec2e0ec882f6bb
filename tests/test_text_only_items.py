"""Text-only items of MMPR prompt files: kept, paired by correctness, skipped (and counted)
by the two methods that need an image, and counted in the run report."""
from __future__ import annotations

import json

from helpers import make_config, stage_rows
from pipeline.run.orchestrator import run_source
from pipeline.run.report import derived
from pipeline.core.stage import StageContext
from pipeline.config.templates import BUILTIN_TEMPLATES
from stages import make_stage

QUESTION = "A train travels 60 km in 1.5 hours. What is its average speed in km/h?"


def _response_row(images: list) -> dict:
    texts = ["Speed is distance over time: 60 / 1.5 = 40.\nFinal answer: 40",
             "60 divided by 1.5 is 45.\nFinal answer: 45",
             "Distance over time gives 40 km/h.\nFinal answer: 40",
             "I think it is 90.\nFinal answer: 90"]
    t = BUILTIN_TEMPLATES["mmpr_final_answer"]
    return {"prompt_id": "t1", "source": "mmpr_text", "row_key": "0", "question": QUESTION, "images": images,
            "image_positions": [], "answer": ["40"], "answer_type": "number", "choices": [], "facts": None,
            "template_id": t.id, "template_hash": t.hash, "prompt_text": "", "prompt_tokens": 1, "model": "m",
            "model_revision": "", "sampling": None,
            "responses": [{"index": i, "text": x, "finish_reason": "stop", "num_tokens": 9, "seed": i}
                          for i, x in enumerate(texts)]}


def test_text_only_rows_yield_correctness_pairs_and_skip_the_image_methods():
    cfg = make_config(sources=[{"name": "mmpr_text", "format": "mmpr", "path": "x"}],
                      image_crop={"fraction": 1.0}, dropout_ntp={"on_correct": True})
    row = _response_row([])
    ctx = StageContext("correctness", "p", cfg)
    pairs = list(make_stage("correctness", cfg).run([row], ctx))
    assert len(pairs) == 4 and all(p["images"] == [] for p in pairs)
    assert {p["provenance"]["chosen_answer"] for p in pairs} == {"40"}
    assert pairs[0]["provenance"]["template_hash"] == BUILTIN_TEMPLATES["mmpr_final_answer"].hash
    assert pairs[0]["prompt"][0]["content"] == [{"type": "text", "text": pairs[0]["prompt"][0]["content"][0]["text"]}]

    ctx = StageContext("dropout_ntp", "p", cfg)
    requests = list(make_stage("dropout_ntp", cfg).prepare([row], ctx)[1])
    assert requests == [] and ctx.stats.counters["skipped.text_only"] == 1

    ctx = StageContext("image_crop", "p", cfg)
    assert list(make_stage("image_crop", cfg).run([row], ctx)) == []
    assert ctx.stats.counters["skipped.text_only"] == 1

    report = derived({"ingest": {"counters": {"text_only": 3}},
                      "dropout_ntp": {"counters": {"skipped.text_only": 3}},
                      "image_crop": {"counters": {"skipped.text_only": 3}}})
    # each stage reports its own part (Stage.summarize)
    assert report["ingest"] == {"text_only_prompts": 3}
    assert report["dropout_ntp"]["skipped_text_only"] == 3
    assert report["image_crop"]["skipped_text_only"] == 3


def test_ingest_keeps_and_counts_text_only_items_of_mmpr_files(tmp_path):
    src = tmp_path / "mathqa_en_20240611.jsonl"
    src.write_text(json.dumps({"question": QUESTION, "answer": "40"}) + "\n"
                   + json.dumps({"image": "", "question": "What is 2+2?", "answer": "4"}) + "\n")
    for fmt, kept in (("mmpr", 2), ("jsonl", 0)):
        cfg = make_config(sources=[{"name": "m", "format": fmt, "path": str(src)}])
        out = tmp_path / fmt
        stats, _, _ = run_source(make_stage("ingest", cfg), str(out))
        rows = stage_rows(out)
        assert len(rows) == kept and stats.counters.get("text_only", 0) == kept
        assert all(r["images"] == [] and r["image_positions"] == [] for r in rows)
        assert stats.quarantined.get("missing_image", 0) == 2 - kept
