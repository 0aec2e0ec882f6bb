"""The dedup stage: keys per partition, the driver's merge across partitions, one kept per cluster
(by prompt_id order, wherever it sits), the others quarantined with the kept id and distances,
and a rerun that redoes nothing.  In-process, local executor, no model."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance

from helpers import ROOT, encode, make_config, markers, stage_rows
from schemas import PROMPT_SCHEMA

SAMPLE = ROOT / "data" / "sample"


def _row(prompt_id: str, question: str, image: bytes, answer: list[str], key: str | None = None) -> dict:
    return {"prompt_id": prompt_id, "source": "s", "row_key": key or prompt_id, "question": question,
            "images": [{"bytes": image, "path": None}], "image_positions": [], "answer": answer,
            "answer_type": "word" if answer else "open", "choices": [], "facts": None}


def _image(name: str) -> Image.Image:
    return Image.open(SAMPLE / "images" / f"{name}.png").convert("RGB")


def _inputs(folder: Path) -> Path:
    """Two partitions.  ``a0`` (part 1) is the earliest id of its cluster although part 0 holds
    the others; "How many circles" of two different scenes with the same answer stay apart."""
    scene, other = _image("int-0000"), _image("int-0001")
    q = "How many circles are there?"
    parts = {
        "part-00000": [
            _row("b1", q, encode(scene), ["3"]),
            _row("c1", "how many circles are there ? Answer with a number.", encode(scene, "JPEG", quality=50), ["3"]),
            _row("d1", q, encode(other), ["3"]),  # another scene, same question and answer: kept
            _row("e1", q, encode(ImageEnhance.Brightness(scene).enhance(0.9)), ["4"]),  # another answer: kept
        ],
        "part-00001": [
            _row("a0", q, encode(scene.resize((scene.width // 2, scene.height // 2))), ["3"]),
            _row("f1", "Describe the image.", encode(other), []),
        ],
    }
    data = folder / "data"
    data.mkdir(parents=True)
    for name, rows in parts.items():
        pq.write_table(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA), data / f"{name}.parquet")
    return folder


def test_dedup_keeps_the_first_id_of_each_cluster_across_partitions(tmp_path):
    from pipeline.run.orchestrator import run_stage

    cfg = make_config(executor={"kind": "local"}, run={"work_dir": str(tmp_path / "work")})
    src, out = _inputs(tmp_path / "in"), tmp_path / "dedup"
    stats = run_stage(cfg, "dedup", str(src), str(out))
    kept = sorted(r["prompt_id"] for r in stage_rows(out))
    assert kept == ["a0", "d1", "e1", "f1"]
    q = {r["prompt_id"]: r for r in stage_rows(out, "quarantine")}
    assert sorted(q) == ["b1", "c1"] and {r["reason"] for r in q.values()} == {"near_duplicate"}
    assert all("near-duplicate of prompt a0 (image bits [" in r["detail"] for r in q.values())
    assert "question jaccard 1.0" in q["c1"]["detail"]
    assert stats.counters["near_duplicates"] == 2
    # only the partition holding near-duplicates was redone, with the drops as an extra input
    m = markers(out)
    assert len(m["part-00000.json"]["inputs"]) == 2 and len(m["part-00001.json"]["inputs"]) == 1
    drops = json.loads(m["part-00000.json"]["inputs"][1])["drop"]
    assert [(d["position"], d["keep"]) for d in drops] == [(0, "a0"), (1, "a0")]
    # the key files hold keys, not images
    keys = pq.read_table(out / "side" / "keys" / "part-00000.parquet")
    assert "images" not in keys.column_names and keys.num_rows == 4
    # a rerun finds every partition done and redoes nothing
    before = {n: v["finished_at"] for n, v in m.items()}
    again = run_stage(cfg, "dedup", str(src), str(out))
    assert again.rows_in == 0 and {n: v["finished_at"] for n, v in markers(out).items()} == before


def test_a_generic_question_over_many_scenes_and_charts_removes_only_copies(tmp_path):
    """Every counting scene and bar chart of the sample (drawn at random) asked "How many circles are
    there?" with the same answer: only their re-encoded copies go -- and num-0039, which draws
    num-0036's bars (20, 15, 50) with "m" for "cm" as the unit label: 0 bits apart, one image to
    a perceptual hash (their own questions and answers differ)."""
    from pipeline.run.orchestrator import run_stage

    names = sorted(p.stem for p in (SAMPLE / "images").glob("*.png") if p.stem.startswith(("int-", "num-")))
    blobs = {(SAMPLE / "images" / f"{n}.png").read_bytes(): n for n in names}
    assert len(blobs) == len(names) > 80
    rows = [_row(f"p{n}", "How many circles are there?", b, ["2"]) for b, n in blobs.items()]
    copies = [_row(f"q{n}", "How many circles are there?",
                   encode(Image.open(io.BytesIO(b)).convert("RGB"), "JPEG", quality=50), ["2"])
              for b, n in list(blobs.items())[::4]]
    data = tmp_path / "in" / "data"
    data.mkdir(parents=True)
    half = len(rows) // 2
    for i, chunk in enumerate((rows[:half], rows[half:] + copies)):
        pq.write_table(pa.Table.from_pylist(chunk, schema=PROMPT_SCHEMA), data / f"part-{i:05d}.parquet")
    cfg = make_config(executor={"kind": "local"}, run={"work_dir": str(tmp_path / "work")})
    run_stage(cfg, "dedup", str(tmp_path / "in"), str(tmp_path / "out"))
    gone = {r["prompt_id"] for r in stage_rows(tmp_path / "out", "quarantine")}
    assert gone == {c["prompt_id"] for c in copies} | {"pnum-0039"}
