"""The RL exports (trl_grpo, swift_grpo, verl) of a dataset folder's prompt table, and the curriculum.

Unit tier: a small dataset folder (pair_data's pairs + a prompt table with known pass rates).
The trainers' own loaders read the sample build's exports in tests/test_rl_loaders.py."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import png
from methods.prompt_stats import wilson
from methods.reward import compute_score, reward
from schemas import PROMPT_TABLE_SCHEMA

SCORING = {"extraction": "final_answer", "threshold": 0.9, "numeric_rel_tol": 1e-3, "anls_cutoff": 0.5,
           "relaxed_numeric": False, "true_false": False}


def table_row(i: int, source: str, correct: int | None, drawn: int = 8, n_images: int = 1) -> dict:
    gt = correct is not None
    low, high = wilson(correct, drawn) if gt else (None, None)
    text = f"Picture {i}: how many circles?\nAnswer with 'Final answer: N'."
    return {
        "prompt_id": f"p{i:03d}", "source": source, "row_key": str(i), "question": f"Picture {i}",
        "prompt": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                   {"role": "user", "content": [{"type": "image", "text": None}] * n_images
                    + [{"type": "text", "text": text}]}],
        "template_id": "mmpr_final_answer", "template_hash": "h",
        "images": [{"bytes": png((i * 7 % 256, k * 40, 9)), "path": None} for k in range(n_images)],
        "answer": [str(i % 5), f"{i % 5}.0"] if gt else [], "answer_type": "integer" if gt else None,
        "choices": None, "samples_drawn": drawn, "tokens_generated": 80, "correct": correct,
        "right": correct, "wrong": None if not gt else drawn - correct, "unparseable": 0 if gt else None,
        "conflicting": 0 if gt else None, "wrong_states_truth": 0 if gt else None, "finish_length": 0,
        "pass_rate": correct / drawn if gt else None, "pass_rate_low": low, "pass_rate_high": high,
        "stop_reason": "fixed_n", "model": "tiny", "model_revision": None, "sampling": None,
        "seeds": list(range(drawn)), "scoring": SCORING if gt else SCORING,
    }


#: 30 prompts: pass rates 0/8 ... 8/8 spread over two sources, 2 without ground truth, 2 with 4 samples
ROWS = ([table_row(i, "src_a" if i % 2 else "src_b", i % 9) for i in range(26)]
        + [table_row(26, "src_a", None), table_row(27, "src_b", None)]
        + [table_row(28, "src_a", 2, drawn=4), table_row(29, "src_b", 2, drawn=4, n_images=2)])


def expected_kept(band=(0.2, 0.8), min_samples=8) -> list[str]:
    return [r["prompt_id"] for r in ROWS if r["pass_rate"] is not None and r["samples_drawn"] >= min_samples
            and band[0] <= r["pass_rate"] <= band[1]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from pair_data import write_inputs
    from pipeline.config.settings import PipelineConfig
    from stages.write import write_dataset

    base = tmp_path_factory.mktemp("rl")
    dirs, _ = write_inputs(base / "pairs")
    side = base / "work" / "correctness" / "side" / "prompts"
    side.mkdir(parents=True)
    table = pa.Table.from_pylist(ROWS, schema=PROMPT_TABLE_SCHEMA)
    pq.write_table(table.slice(0, 15), side / "part-00000.parquet")
    pq.write_table(table.slice(15), side / "part-00001.parquet")
    out = base / "out"
    write_dataset(PipelineConfig.model_validate({
        "run": {"name": "rl", "output_dir": str(out), "work_dir": str(base / "work")},
        "executor": {"kind": "local"}}), dirs)
    return out


def export_all(dataset: Path, out: Path | str, **rl) -> dict:
    from publish.exports import export_dataset
    from publish.exports.rl import Curriculum

    return export_dataset(str(dataset), ["trl_grpo", "swift_grpo", "verl"], str(out),
                          curriculum=Curriculum(**rl) if rl else None)


def test_the_band_and_min_samples_select_and_count(dataset, tmp_path):
    index = export_all(dataset, tmp_path, band=(0.2, 0.8), min_samples=8)
    kept = expected_kept()
    for fmt in ("trl_grpo", "swift_grpo", "verl"):
        sel = index["formats"][fmt]["selection"]
        assert sel["kept"] == len(kept) and sel["prompts"] == 30
        below = sum(r["pass_rate"] is not None and r["samples_drawn"] >= 8 and r["pass_rate"] < 0.2 for r in ROWS)
        above = sum(r["pass_rate"] is not None and r["samples_drawn"] >= 8 and r["pass_rate"] > 0.8 for r in ROWS)
        assert sel["removed"] == {"no_ground_truth": 2, "too_few_samples": 2, "below_band": below,
                                  "above_band": above}
        assert index["formats"][fmt]["rows"] == {"train": len(kept)}
    trl = pq.read_table(tmp_path / "exports" / "trl_grpo" / "train.parquet").to_pylist()
    assert [r["prompt_id"] for r in trl] == kept
    swift = [json.loads(line) for line in (tmp_path / "exports" / "swift_grpo" / "train.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in swift] == kept
    verl = pq.read_table(tmp_path / "exports" / "verl" / "train.parquet").to_pylist()
    assert [r["extra_info"]["prompt_id"] for r in verl] == kept
    assert "removed: no ground truth 2, too few samples 2" in \
        (tmp_path / "exports" / "verl" / "README.md").read_text()


def test_default_keeps_every_prompt_with_ground_truth(dataset, tmp_path):
    index = export_all(dataset, tmp_path)
    assert index["formats"]["verl"]["selection"]["kept"] == 28


def test_rows_carry_prompt_images_and_what_the_reward_needs(dataset, tmp_path):
    export_all(dataset, tmp_path, band=(0.0, 1.0), min_samples=1)
    src = {r["prompt_id"]: r for r in ROWS}
    ex = tmp_path / "exports"
    trl = {r["prompt_id"]: r for r in pq.read_table(ex / "trl_grpo" / "train.parquet").to_pylist()}
    swift = {r["prompt_id"]: r for r in map(json.loads, (ex / "swift_grpo" / "train.jsonl").read_text().splitlines())}
    verl = {r["extra_info"]["prompt_id"]: r for r in pq.read_table(ex / "verl" / "train.parquet").to_pylist()}
    two = "p029"  # two images
    # TRL: the table's conversation as is, images embedded
    assert trl[two]["prompt"] == src[two]["prompt"]
    assert [im["bytes"] for im in trl[two]["images"]] == [im["bytes"] for im in src[two]["images"]]
    # swift / verl: string content, one <image> tag per image, the system turn kept
    user = swift[two]["messages"][-1]
    assert swift[two]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert user["role"] == "user" and user["content"].startswith("<image><image>Picture 29")
    assert verl[two]["prompt"] == swift[two]["messages"]
    assert len(swift[two]["images"]) == 2 and all((ex / "swift_grpo" / p).is_file() for p in swift[two]["images"])
    assert verl[two]["images"][1]["bytes"] == src[two]["images"][1]["bytes"]
    v = verl["p012"]
    assert v["reward_model"] == {"style": "rule", "ground_truth": "2"} and v["ability"] == "integer"
    assert v["data_source"] == "src_b" and v["extra_info"]["pass_rate"] == pytest.approx(3 / 8)
    assert v["extra_info"]["answers"] == ["2", "2.0"] and v["extra_info"]["scoring"] == SCORING
    # the shipped reward reads each format's columns as the trainers pass them
    for pid in ("p012", two):
        right, wrong = f"Final answer: {int(pid[1:]) % 5}", "Final answer: 17"
        t = trl[pid]
        assert reward([[{"role": "assistant", "content": right}], [{"role": "assistant", "content": wrong}]],
                      [t["solution"]] * 2, [t["answer_type"]] * 2, answers=[t["answers"]] * 2,
                      choices=[t["choices"]] * 2, scoring=[t["scoring"]] * 2) == [1.0, 0.0]
        s = swift[pid]
        assert reward([right, wrong], [s["solution"]] * 2, [s["answer_type"]] * 2, scoring=[s["scoring"]] * 2) \
            == [1.0, 0.0]
        assert compute_score(verl[pid]["data_source"], right, verl[pid]["reward_model"]["ground_truth"],
                             verl[pid]["extra_info"]) == 1.0


def test_validation_split_is_stratified_and_seeded(dataset, tmp_path):
    a = export_all(dataset, tmp_path / "a", band=(0.0, 1.0), validation_fraction=0.5, seed=3)
    b = export_all(dataset, tmp_path / "b", band=(0.0, 1.0), validation_fraction=0.5, seed=3)
    assert a["formats"]["verl"]["rows"] == b["formats"]["verl"]["rows"]
    rows = a["formats"]["trl_grpo"]["rows"]
    assert rows["train"] + rows["validation"] == 28 and rows["validation"] >= 10
    val = pq.read_table(tmp_path / "a" / "exports" / "trl_grpo" / "validation.parquet").to_pylist()
    tr = pq.read_table(tmp_path / "a" / "exports" / "trl_grpo" / "train.parquet").to_pylist()
    assert not {r["prompt_id"] for r in val} & {r["prompt_id"] for r in tr}
    assert {r["source"] for r in val} == {"src_a", "src_b"}
    c = export_all(dataset, tmp_path / "c", band=(0.0, 1.0), validation_fraction=0.5, seed=4)
    val_c = pq.read_table(tmp_path / "c" / "exports" / "trl_grpo" / "validation.parquet").column("prompt_id")
    assert sorted(val_c.to_pylist()) != sorted(r["prompt_id"] for r in val)  # another seed, another draw


def test_run_report_and_html_report_show_the_curriculum(dataset, tmp_path):
    """The export stage's counts reach the run report (dataset stages have no markers) and the
    HTML report draws each source's pass-rate histogram with the band."""
    from pipeline.config.settings import PipelineConfig
    from pipeline.run.report import build_report, format_summary
    from publish.sampling_report import curriculum_html
    from stages import make_stage

    cfg = PipelineConfig.model_validate({
        "run": {"name": "rl", "output_dir": str(dataset), "work_dir": str(tmp_path / "work")},
        "executor": {"kind": "local"}, "rl_prompts": {"band": [0.2, 0.8], "min_samples": 8},
        "export": {"formats": ["verl"]}})
    from pipeline.files import storage
    from pipeline.run.orchestrator import dataset_stats_uri

    stats = make_stage("export", cfg).run_dataset([], str(dataset))
    storage.write_json(dataset_stats_uri(cfg, "export"), stats.to_dict())  # what a run keeps for the report
    report = build_report(cfg, {"export": 1.0})
    sel = report["summary"]["export"]["rl_prompts"]
    assert sel["kept"] == len(expected_kept()) and sel["removed"]["too_few_samples"] == 2
    assert f"RL prompts: {len(expected_kept())} of 30 kept" in format_summary(report)
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["config"]["rl_prompts"] = {"band": [0.2, 0.8], "min_samples": 8}
    html = curriculum_html(manifest, report["summary"])
    assert "src_a: prompts per pass rate" in html and "src_b: prompts per pass rate" in html
    assert "[0.2, 0.8]" in html and "too few samples" in html
    assert html.count('fill="#2f855a"') == 2 * 7  # bins 0.2-0.3 ... 0.8-0.9 reach into the band, per source


# -- the config ----------------------------------------------------------------------------------

def test_rl_formats_without_the_stage_that_records_the_prompt_table_are_a_config_error():
    """The RL exports read prompts/*.parquet, which correctness records: without it a run would build
    everything and then fail at the export (FileNotFoundError), so the config is refused up front."""
    from helpers import make_config

    stages = ["ingest", "generate", "dropout_ntp", "filter", "write"]
    with pytest.raises(ValueError, match=r"RL format\(s\) \['trl_grpo', 'verl'\].*add correctness to run.stages"):
        make_config(run={"stages": stages}, export={"formats": ["swift", "trl_grpo", "verl"]})
    with pytest.raises(ValueError, match=r"correctness.prompt_table is false: set it to true"):
        make_config(correctness={"prompt_table": False}, export={"formats": ["swift_grpo"]})
    # pair formats need no prompt table; a run that writes no dataset exports nothing
    assert make_config(run={"stages": stages}, export={"formats": ["swift", "llamafactory"]})
    assert make_config(run={"stages": ["ingest", "generate"]}, export={"formats": ["verl"]})
    assert make_config(export={"formats": ["trl_grpo", "swift_grpo", "verl"]})  # the sample's own


def test_the_command_line_names_the_missing_correctness_stage(tmp_path):
    from helpers import load_config_file, shipped_config
    from pipeline.config.settings import ConfigError

    data = shipped_config()
    data["run"]["stages"] = [s for s in data["run"]["stages"] if s != "correctness"]
    with pytest.raises(ConfigError, match="add correctness to run.stages"):
        load_config_file(tmp_path, data)


def whole_table_exports(dataset: Path, out: Path, cur) -> dict[str, bytes]:
    """What the RL exports wrote before they streamed: the whole prompt table read as rows, the kept
    rows split by the seeded rule written here again (sorted by ``stable_hash(seed, "rl_split",
    prompt_id)`` within each (source, pass-rate bin)), each split one table through
    ``parquet_bytes``, or its JSON lines; file bytes by ``<format>/<file>``."""
    from pipeline.core.seeds import stable_hash
    from publish.exports import REGISTRY
    from publish.exports.common import ExportFolder, SharedImages
    from publish.exports.rl import COLUMNS
    from publish.parquet import parquet_bytes
    from publish.prompt_table import BINS, read_prompt_table

    kept = [r for r in read_prompt_table(str(dataset), COLUMNS).to_pylist() if cur.reason(r) is None]
    groups: dict[tuple, list[dict]] = {}
    for r in kept:
        groups.setdefault((r["source"], min(int(r["pass_rate"] * BINS), BINS - 1)), []).append(r)
    validation = set()
    for rows in groups.values():
        ranked = sorted(rows, key=lambda r: stable_hash(cur.seed, "rl_split", r["prompt_id"]))
        validation |= {r["prompt_id"] for r in ranked[:round(cur.validation_fraction * len(rows))]}
    splits = {"train": [r for r in kept if r["prompt_id"] not in validation],
              "validation": [r for r in kept if r["prompt_id"] in validation]}
    files = {}
    for fmt in ("trl_grpo", "swift_grpo", "verl"):
        f = REGISTRY[fmt]()
        ex = ExportFolder(fmt, str(dataset), str(out / fmt), shared=SharedImages(str(out)))
        for split, rows in splits.items():
            if not rows:
                continue
            records = f.records(ex, split, rows, 0)
            if f.schema is None:
                files[f"{fmt}/{split}.jsonl"] = "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                        for r in records).encode()
            else:
                files[f"{fmt}/{split}.parquet"] = parquet_bytes(pa.Table.from_pylist(records, schema=f.schema)
                                                                ).to_pybytes()
    return files


@pytest.mark.parametrize("validation_fraction", [0.0, 0.4])
def test_streamed_exports_are_the_bytes_of_the_whole_table_exports(dataset, tmp_path, monkeypatch,
                                                                    validation_fraction):
    """The exports read the prompt table a few rows at a time (here 4, so batches straddle both
    table files and hold rows of both splits) and write each file as the rows come: the files are
    byte for byte what writing the whole table at once gives (same rows, order, content, encoding)."""
    from publish.exports import rl

    monkeypatch.setattr(rl, "BATCH_ROWS", 4)
    cur = rl.Curriculum((0.2, 1.0), 8, validation_fraction, 5)
    index = export_all(dataset, tmp_path / "out", band=cur.band, min_samples=cur.min_samples,
                       validation_fraction=validation_fraction, seed=cur.seed)
    expected = whole_table_exports(dataset, tmp_path / "ref", cur)
    assert {k.split("/")[1] for k in expected} == ({"train.parquet", "train.jsonl"} if not validation_fraction else
                                                   {"train.parquet", "train.jsonl", "validation.parquet",
                                                    "validation.jsonl"})
    for rel, data in expected.items():
        assert (tmp_path / "out" / "exports" / rel).read_bytes() == data, rel
    rows = index["formats"]["verl"]["rows"]
    assert sum(rows.values()) == len(expected_kept((0.2, 1.0)))
    verl = pq.read_table(tmp_path / "out" / "exports" / "verl" / "train.parquet").column("extra_info").to_pylist()
    assert [e["index"] for e in verl] == list(range(rows["train"]))  # counted across batches
    images = {p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref" / "images").rglob("*") if p.is_file()}
    assert images and images == {p.relative_to(tmp_path / "out" / "exports")
                                 for p in (tmp_path / "out" / "exports" / "images").rglob("*") if p.is_file()}


def test_a_file_past_a_row_group_streams_in_row_groups_with_the_same_rows(dataset, tmp_path, monkeypatch):
    """Past ``ROW_GROUP_BYTES`` the rows go out a row group at a time (bounded memory): more row
    groups than the whole table's file may have, the same rows in the same order."""
    from publish import parquet
    from publish.exports import rl

    monkeypatch.setattr(rl, "BATCH_ROWS", 3)
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 4000)
    export_all(dataset, tmp_path / "out", band=(0.0, 1.0))
    expected = whole_table_exports(dataset, tmp_path / "ref", rl.Curriculum())
    for fmt in ("trl_grpo", "verl"):
        streamed = pq.ParquetFile(tmp_path / "out" / "exports" / fmt / "train.parquet")
        whole = pq.ParquetFile(pa.BufferReader(expected[f"{fmt}/train.parquet"]))
        assert streamed.num_row_groups > 1
        assert streamed.read().to_pylist() == whole.read().to_pylist()
        assert streamed.schema_arrow == whole.schema_arrow


def test_a_format_failing_mid_stream_leaves_no_rl_export_behind(dataset, tmp_path, monkeypatch):
    """The RL formats are written in one pass: one failing after some batches went out removes the
    half-written files of all of them (no temp file, no export.json) and the error reaches the caller."""
    from publish import parquet
    from publish.exports import rl
    from publish.exports.verl import Verl

    monkeypatch.setattr(rl, "BATCH_ROWS", 4)
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 2000)  # row groups already written when it breaks
    calls = []

    def records(self, ex, split, rows, start):
        calls.append(start)
        if len(calls) > 2:
            raise RuntimeError("verl broke")
        return original(self, ex, split, rows, start)

    original = Verl.records
    monkeypatch.setattr(Verl, "records", records)
    with pytest.raises(RuntimeError, match="verl broke"):
        export_all(dataset, tmp_path, band=(0.0, 1.0))
    # the shared images folder is the build's: a later export's finish removes what no format names
    left = [p.name for p in (tmp_path / "exports").rglob("*")
            if p.is_file() and p.relative_to(tmp_path / "exports").parts[0] != "images"]
    assert calls == [0, 4, 8] and not [n for n in left if n != ".mmpr-forge.json"], left


def test_rl_exports_on_an_object_store_are_the_local_bytes(dataset, tmp_path, s3_server):
    """On S3 (no rename) each file is written locally as it streams, then uploaded in chunks: the
    objects are the bytes of the same export on local disk."""
    s3_server.create_bucket(Bucket="mmpr-rl")
    export_all(dataset, tmp_path, band=(0.0, 1.0), validation_fraction=0.3)
    export_all(dataset, "s3://mmpr-rl/out", band=(0.0, 1.0), validation_fraction=0.3)
    for rel in ("trl_grpo/train.parquet", "trl_grpo/validation.parquet", "verl/validation.parquet",
                "swift_grpo/train.jsonl"):
        body = s3_server.get_object(Bucket="mmpr-rl", Key=f"out/exports/{rel}")["Body"].read()
        assert body == (tmp_path / "exports" / rel).read_bytes(), rel
