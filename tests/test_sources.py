"""Every source format reads into the same prompt rows (jsonl, MMPR, Parquet, HF datasets, image folders)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import make_config, png, stage_rows
from pipeline.core.graph import make_stage
from pipeline.run.orchestrator import run_source


ROWS = [
    {"id": "a", "question": "What colour is it?", "answer": "red", "color": (255, 0, 0)},
    {"id": "b", "question": "Which shape?", "answer": "B", "choices": ["circle", "square"], "color": (0, 0, 255)},
    {"id": "c", "question": "Describe the image.", "answer": None, "color": (0, 255, 0)},
]


def _files(root: Path) -> list[str]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for r in ROWS:
        name = f"img/{r['id']}.png"
        (root / name).write_bytes(png(r["color"]))
        names.append(name)
    return names


def _source(fmt: str, root: Path) -> dict:
    names = _files(root)
    if fmt in ("jsonl", "mmpr"):
        p = root / "src.jsonl"
        p.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "color"} | {"image": n}) + "\n"
                             for r, n in zip(ROWS, names)))
        return {"format": fmt, "path": str(p), "image_root": str(root)}
    if fmt == "parquet":
        table = pa.Table.from_pylist([
            {"uid": r["id"], "prompt": r["question"], "label": r["answer"], "choices": r.get("choices"),
             "picture": {"bytes": png(r["color"]), "path": n}} for r, n in zip(ROWS, names)])
        pq.write_table(table, root / "src.parquet")
        return {"format": "parquet", "path": str(root / "src.parquet"),
                "fields": {"id": "uid", "question": "prompt", "answer": "label", "image": "picture"}}
    if fmt == "hf":
        ds = datasets.Dataset.from_list([
            {"id": r["id"], "question": r["question"], "answer": r["answer"] or "", "choices": r.get("choices") or [],
             "image": Image.open(io.BytesIO(png(r["color"])))} for r in ROWS],
            features=datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                                        "answer": datasets.Value("string"),
                                        "choices": datasets.Sequence(datasets.Value("string")),
                                        "image": datasets.Image()}))
        ds.save_to_disk(str(root / "hf"))
        return {"format": "hf", "path": str(root / "hf")}
    if fmt == "image_folder":
        for r, n in zip(ROWS, names):
            (root / n).with_suffix(".txt").write_text(f"A {r['id']} caption.")
        return {"format": "image_folder", "path": str(root / "img"), "default_question": "Describe the image."}
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["jsonl", "mmpr", "parquet", "hf", "image_folder"])
def test_every_format_normalises_to_prompt_rows(fmt, tmp_path):
    src = {"name": f"src_{fmt}", **_source(fmt, tmp_path / "src")}
    cfg = make_config(sources=[src])
    stats, n, _ = run_source(make_stage("ingest", cfg), str(tmp_path / "out"))
    rows = stage_rows(tmp_path / "out")
    assert sum(stats.quarantined.values()) == 0 and len(rows) == 3
    for row, want in zip(rows, ROWS):
        img = Image.open(io.BytesIO(row["images"][0]["bytes"]))
        assert img.getpixel((0, 0)) == want["color"]
        assert row["source"] == f"src_{fmt}" and len(row["prompt_id"]) == 32
        if fmt == "image_folder":
            assert row["question"] == "Describe the image." and row["answer"] == []
            assert row["facts"] == f"A {want['id']} caption."
            continue
        assert row["row_key"] == want["id"] and row["question"] == want["question"]
        assert row["answer"] == ([want["answer"]] if want["answer"] else [])
        assert row["choices"] == (want.get("choices") or [])
        assert row["answer_type"] == ("open" if not want["answer"] else "auto")


def test_missing_sample_data_is_generated_on_a_fresh_checkout(tmp_path):
    """`make build-mmpr` on a fresh clone: data/sample is not in git, the run makes it."""
    from pipeline.run.preflight import check_sources

    sample = tmp_path / "data" / "sample"
    cfg = make_config(sources=[{"name": "gt", "format": "jsonl", "path": str(sample / "gt.jsonl")}])
    cfg.model.tiny_model_data = str(sample)
    check_sources(cfg)
    assert (sample / "gt.jsonl").exists() and (sample / "open.jsonl").exists()
    assert len((sample / "gt.jsonl").read_text().splitlines()) >= 200
