"""The prompt table: correctness's ``prompts`` side output, published by write as ``prompts/*.parquet``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import make_config, png, run_stage_on
from methods.prompt_stats import wilson
from schemas import PROMPT_TABLE_SCHEMA, RESPONSE_SCHEMA

RIGHT = "I count three.\nFinal answer: 3"
RIGHT_TWICE = "Final answer: 4\nNo wait.\nFinal answer: 3"   # right by its last answer, conflicting
WRONG = "I count four.\nFinal answer: 4"
STATES_TRUTH = "Final answer: 3\nActually no.\nFinal answer: 5"  # wrong, but stated the truth first
NONE = "I cannot tell."


def response_row(prompt_id, answer, texts, sampling=None, source="sample_gt"):
    return {
        "prompt_id": prompt_id, "source": source, "row_key": prompt_id, "question": f"How many? ({prompt_id})",
        "images": [{"bytes": png(), "path": None}], "image_positions": [], "answer": answer,
        "answer_type": "integer" if answer else None, "choices": [], "facts": None,
        "template_id": "mmpr_final_answer", "template_hash": "th", "prompt_text": "...", "prompt_tokens": 3,
        "model": "tiny", "model_revision": "rev1", "sampling": sampling,
        "responses": [{"index": i, "text": t, "finish_reason": "length" if t == NONE else "stop",
                       "num_tokens": 10 + i, "seed": 100 + i} for i, t in enumerate(texts)],
    }


FIXED = {"n": 5, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_tokens": 64, "seed": 100,
         "rounds": None, "stop_reason": None}
ADAPTIVE = {**FIXED, "rounds": [4], "stop_reason": "all_right"}
ROWS = [
    response_row("mixed", ["3"], [RIGHT, RIGHT_TWICE, WRONG, STATES_TRUTH, NONE], FIXED),
    response_row("easy", ["3"], [RIGHT] * 4, ADAPTIVE),
    response_row("open", [], ["It is a cat.", "A cat."], FIXED, source="sample_open"),
]


def test_wilson_interval_known_values():
    # textbook values (Wilson 1927; Newcombe 1998, table I: 81/263 -> 0.2553-0.3662)
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert wilson(0, 8)[0] == 0.0 and round(wilson(0, 8)[1], 3) == 0.324
    assert round(wilson(8, 8)[0], 3) == 0.676 and wilson(8, 8)[1] == 1.0
    assert wilson(0, 0) == (None, None)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("correctness")
    run_stage_on("correctness", make_config(), ROWS, RESPONSE_SCHEMA, folder)
    side = pq.read_table(folder / "out" / "side" / "prompts" / "p.parquet")
    assert side.schema.names == PROMPT_TABLE_SCHEMA.names
    return folder, {r["prompt_id"]: r for r in side.to_pylist()}


def test_every_prompt_gets_a_row_with_the_stages_counts(table):
    _, rows = table
    assert set(rows) == {"mixed", "easy", "open"}  # all-right and no-ground-truth prompts included
    m = rows["mixed"]
    assert (m["samples_drawn"], m["correct"], m["right"], m["wrong"], m["unparseable"]) == (5, 2, 1, 1, 1)
    assert (m["conflicting"], m["wrong_states_truth"], m["finish_length"]) == (1, 1, 1)
    assert m["pass_rate"] == pytest.approx(0.4)
    assert (m["pass_rate_low"], m["pass_rate_high"]) == pytest.approx(wilson(2, 5))
    assert m["stop_reason"] == "fixed_n" and m["seeds"] == [100, 101, 102, 103, 104]
    assert m["tokens_generated"] == sum(10 + i for i in range(5))
    assert (m["model"], m["model_revision"], m["template_id"]) == ("tiny", "rev1", "mmpr_final_answer")
    e = rows["easy"]
    assert (e["samples_drawn"], e["correct"], e["pass_rate"], e["stop_reason"]) == (4, 4, 1.0, "all_right")
    o = rows["open"]
    assert o["samples_drawn"] == 2 and o["pass_rate"] is None and o["correct"] is None


def test_prompt_row_records_the_conversation_sent_and_the_scoring(table):
    _, rows = table
    m = rows["mixed"]
    user = m["prompt"][-1]
    assert user["role"] == "user" and user["content"][0]["type"] == "image"
    text = user["content"][-1]["text"]
    assert text.startswith("How many? (mixed)") and text != "How many? (mixed)"  # the template's wording
    assert m["scoring"] == {"extraction": "final_answer", "threshold": 0.9, "numeric_rel_tol": 1e-3,
                            "anls_cutoff": 0.5, "relaxed_numeric": False, "true_false": False}


def test_write_publishes_the_table_in_the_folder_manifest_and_card(table, tmp_path):
    from pipeline.config.settings import PipelineConfig
    from stages.write import write_dataset
    from test_write import load_folder
    from pair_data import write_inputs

    folder, rows = table
    dirs, _ = write_inputs(tmp_path / "pairs")
    work = tmp_path / "work"
    side = work / "correctness" / "side" / "prompts"
    side.mkdir(parents=True)
    shutil.copy(folder / "out" / "side" / "prompts" / "p.parquet", side / "part-00000.parquet")
    out = tmp_path / "out"
    cfg = PipelineConfig.model_validate({"run": {"name": "t", "output_dir": str(out), "work_dir": str(work)},
                                         "executor": {"kind": "local"}})
    write_dataset(cfg, dirs)
    files = sorted((out / "prompts").glob("*.parquet"))
    assert [f.name for f in files] == ["train-00000-of-00001.parquet"]
    got = pq.read_table(files[0]).to_pylist()
    assert [r["prompt_id"] for r in got] == sorted(rows)  # in prompt_id order
    manifest = json.loads((out / "manifest.json").read_text())
    p = manifest["prompts"]
    assert (p["rows"], p["with_ground_truth"]) == (3, 2)
    assert p["files"][0]["path"] == "prompts/train-00000-of-00001.parquet" and p["files"][0]["rows"] == 3
    assert p["pass_rate_histogram"][4] == 1 and p["pass_rate_histogram"][9] == 1
    card = (out / "README.md").read_text()
    assert "config_name: prompts" in card and "adaptive sampling" in card
    ds = load_folder(out, "prompts")["train"]
    assert sorted(ds["prompt_id"]) == sorted(rows)
    assert ds[0]["images"][0].size == (24, 16)  # decoded to PIL: the card's loading line works
    assert set(ds.column_names) == set(PROMPT_TABLE_SCHEMA.names)

    # a rebuild with no prompt table removes the files the earlier write made
    shutil.rmtree(side)
    write_dataset(cfg, dirs)
    assert not list((out / "prompts").glob("*.parquet"))
    assert json.loads((out / "manifest.json").read_text())["prompts"]["rows"] == 0
    assert "No prompt table" in (out / "README.md").read_text()
    assert Path(out / "data").is_dir()
