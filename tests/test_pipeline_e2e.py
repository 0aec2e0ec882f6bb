"""The sample build end to end: `python -m pipeline run` through Ray and vLLM.

One build per session (``conftest.sample_build``); these tests read what it
wrote: the work folder (each stage's Parquet) and the final dataset folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import shipped_config
from pipeline.core.seeds import derive_seed
from schemas import PAIR_SCHEMA, RESPONSE_SCHEMA
from schemas.records import turn_text

CFG = shipped_config()


def _rows(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="module")
def work(sample_build) -> Path:
    return sample_build.parent / "work"


def test_every_stage_ran_and_printed_a_summary(sample_build):
    log = (sample_build.parent / "run.log").read_text()
    for stage in CFG["run"]["stages"]:
        line = next((ln for ln in log.splitlines() if ln.startswith(f"[{stage}]")), None)
        assert line and "rows in" in line and "quarantined" in line, stage
    report = json.loads((sample_build / "report.json").read_text())
    assert set(CFG["run"]["stages"]) <= set(report["stages"])
    assert report["tokens_generated"] > 0
    for method in ("correctness", "dropout_ntp", "image_crop"):
        assert report["pairs_by_method"].get(method, 0) > 0, method
    summary = report["summary"]
    acc = summary["correctness"]["policy_accuracy"]
    assert {k.split(".")[-1] for k in acc} == {"multiple_choice", "integer", "yes_no", "word", "number"}
    assert all(0 < v < 1 for v in acc.values()), "the tiny model is right on some and wrong on others"
    assert summary["dropout_ntp"]["generated_tokens_per_pair"] > 0
    f = summary["filter"]
    assert sum(f["length_ratio_before"].values()) == report["stages"]["filter"]["rows_in"]
    assert sum(f["length_ratio_after"].values()) == report["stages"]["filter"]["rows_out"]
    assert "policy accuracy" in log and "generated tokens per pair" in log


def test_the_build_leaves_nothing_in_its_temp_dir(sample_build):
    """vLLM's sockets and rendezvous file went with each engine's private folder, which the
    engine actors removed when the pool closed (``pipeline.engine.private_tmp``,
    ``EnginePool.close``); before, every engine start left 7 sockets (``<uuid4>``) there."""
    assert json.loads((sample_build.parent / "tmpdir.json").read_text()) == []


def test_each_replica_loads_the_model_once_and_the_run_is_timed(sample_build):
    """Generate and dropout_ntp share one engine pool: the model is loaded once per replica
    per build (it was loaded again for dropout_ntp before), and the report times the run
    against the generate stage."""
    logs = sorted((sample_build.parent / "work" / "logs").glob("build-*.log"))
    loads = logs[-1].read_text(errors="replace").count("starting vLLM engine for")
    assert loads == CFG["engine"]["replicas"], loads
    timing = json.loads((sample_build / "report.json").read_text())["timing"]
    assert timing["engine_stage"] == "generate"
    assert 0 < timing["span_s"] < timing["stage_s"] <= timing["wall_s"]
    assert abs(timing["wall_over_stage"] - timing["wall_s"] / timing["stage_s"]) < 0.01
    log = (sample_build.parent / "run.log").read_text()
    assert f"{timing['wall_over_stage']:.2f}x the generate stage" in log


def test_generate_output_has_n_samples_per_prompt(work):
    table = pq.read_table(sorted((work / "generate" / "data").glob("*.parquet"))[0])
    assert table.schema.equals(RESPONSE_SCHEMA, check_metadata=False)
    n = CFG["generate"]["n"]
    for row in table.to_pylist():
        assert len(row["responses"]) == n
        seed = derive_seed(CFG["run"]["seed"], row["prompt_id"], "generate")
        assert [r["seed"] for r in row["responses"]] == [seed + i for i in range(n)]
    rows = {stage: sum(pq.read_metadata(p).num_rows for p in (work / stage / "data").glob("*.parquet"))
            for stage in ("ingest", "dedup", "generate")}
    near_duplicates = sum(pq.read_metadata(p).num_rows for p in (work / "dedup" / "quarantine").glob("*.parquet"))
    # generate reads dedup's output: the sample's 13 near-duplicate prompts are not generated for
    assert rows == {"ingest": 294, "dedup": 294 - near_duplicates, "generate": 294 - near_duplicates}
    assert near_duplicates == 13


def test_the_dataset_loads_with_datasets_and_decodes_images(sample_build):
    ds = datasets.load_dataset("parquet", data_files=str(sample_build / "data" / "*.parquet"))["train"]
    assert ds.num_rows > 100
    assert isinstance(ds[0]["images"][0], Image.Image)
    assert set(ds.unique("method")) <= {"correctness", "format", "dropout_ntp"}
    assert {"correctness", "dropout_ntp"} <= set(ds.unique("method"))
    assert len(set(ds["id"])) == ds.num_rows
    row = ds[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert sum(p["type"] == "image" for p in row["prompt"][0]["content"]) == len(row["images"])
    # same table schema as declared (plus the Hugging Face metadata)
    shard = sorted((sample_build / "data").glob("*.parquet"))[0]
    assert pq.read_schema(shard).remove_metadata().equals(PAIR_SCHEMA)


def test_provenance_is_complete_and_typed(sample_build):
    manifest = json.loads((sample_build / "manifest.json").read_text())
    rows = _rows(sample_build / "data")
    for row in rows:
        p = row["provenance"]
        assert p["prompt_id"] and p["row_key"] and p["model"] and p["template_id"]
        assert p["sampling"]["n"] == CFG["generate"]["n"] and p["pipeline_version"]
        assert p["config_hash"] == manifest["config_hash"]
        assert p["chosen_tokens"] > 0 and p["rejected_tokens"] > 0
        if row["method"] == "correctness":
            assert p["chosen_score"] > 0.9 >= p["rejected_score"] and p["ground_truth"]
            assert p["chosen_answer"] and p["rejected_answer"]
        if row["method"] == "dropout_ntp":
            chosen, rejected = turn_text(row["chosen"]), turn_text(row["rejected"])
            assert rejected.startswith(chosen[: p["cut_chars"]]) and p["image_kept"] is False
        assert all(v["passed"] or v["target"] == "rejected" for v in p["filters"])


def test_image_crop_pairs_are_their_own_config(sample_build):
    crops = datasets.load_dataset(str(sample_build), "image_crop")["train"]
    assert crops.num_rows > 0 and set(crops.unique("method")) == {"image_crop"}
    lo, hi = CFG["image_crop"].get("area", (0.01, 0.2))
    for row in crops:
        assert turn_text(row["chosen"]) == turn_text(row["rejected"])
        orig, bad = row["images"][0], row["rejected_images"][0]
        assert isinstance(bad, Image.Image) and bad.size == orig.size
        left, top, right, bottom = row["provenance"]["crop_boxes"][0]
        frac = (right - left) * (bottom - top) / (orig.size[0] * orig.size[1])
        assert lo - 1e-9 <= frac <= hi + 1e-9


def test_quarantine_and_all_wrong_side_output_are_written(work):
    report = json.loads((work / "report.json").read_text())
    c = report["stages"]["correctness"]["counters"]
    # the 230 ground-truth prompts, but those dedup removed (9 of its 13 have ground truth)
    deduped = [r for r in _rows(work / "dedup" / "quarantine") if r["source"] == "sample_gt"]
    assert c["prompts"] == 230 - len(deduped) and len(deduped) == 9
    all_wrong = _rows(work / "correctness" / "side" / "all_wrong")
    assert len(all_wrong) == c.get("prompts.all_wrong", 0)
    for row in all_wrong:
        assert row["answer"] and len(row["responses"]) == CFG["generate"]["n"]


def test_write_shards_store_each_image_about_once(sample_build):
    """Compact shards: ``data/`` is at most 1.3x "each distinct image once plus the text columns"
    (a prompt's 8 samples make up to 15 pairs, each once stored the image), and every prompt's
    pairs are in one shard."""
    from publish.shard_size import compactness

    files = sorted(str(p) for p in (sample_build / "data").rglob("*.parquet"))
    size = compactness(files)
    assert size["distinct_image_bytes"] > 0 and size["ratio"] <= 1.3, size
    shard_of: dict[tuple, set] = {}
    for f in files:
        for r in pq.read_table(f, columns=["method", "provenance"]).to_pylist():
            key = (r["method"] == "image_crop", r["provenance"]["prompt_id"])
            shard_of.setdefault(key, set()).add(f)
    assert max(len(v) for v in shard_of.values()) == 1
