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

import pytest

from helpers import ROOT, encode, make_config, markers, stage_rows
from schemas import PROMPT_SCHEMA, REPORT_IMAGES_SIDE

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
    # the partition holding near-duplicates was redone with the drops as an extra input, and the one
    # holding their kept prompt with nothing to drop, only to show it in the report
    m = markers(out)
    drops = json.loads(m["part-00000.json"]["inputs"][1])["drop"]
    assert [(d["position"], d["keep"]) for d in drops] == [(0, "a0"), (1, "a0")]
    assert json.loads(m["part-00001.json"]["inputs"][1]) == {
        "drop": [], "show": [{"group": "a0", "position": 0, "role": "kept", "size": 3}]}
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


# -- the HTML report's thumbnails of removed clusters ---------------------------------------
def _report_side(out: Path) -> pa.Table:
    files = sorted((out / "side" / REPORT_IMAGES_SIDE).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_the_report_side_output_shows_each_cluster_with_its_distances(tmp_path):
    """The kept prompt (in another partition than its removed ones) and each removed one, as small
    JPEGs, with the distances the quarantine detail names; the same input gives the same bytes."""
    from pipeline.run.orchestrator import run_stage

    src = _inputs(tmp_path / "in")
    cfg = make_config(executor={"kind": "local"}, run={"work_dir": str(tmp_path / "work")})
    run_stage(cfg, "dedup", str(src), str(tmp_path / "a"))
    side = _report_side(tmp_path / "a")
    rows = {r["prompt_id"]: r for r in side.to_pylist()}
    assert sorted(rows) == ["a0", "b1", "c1"]  # d1, e1, f1 are in no cluster
    assert {r["group"] for r in rows.values()} == {"a0"} and {r["group_size"] for r in rows.values()} == {3}
    assert rows["a0"]["role"] == "kept" and rows["a0"]["image_bits"] is None
    assert rows["a0"]["question_jaccard"] is None
    detail = {r["prompt_id"]: r["detail"] for r in stage_rows(tmp_path / "a", "quarantine")}
    for pid in ("b1", "c1"):
        r = rows[pid]
        assert r["role"] == "removed" and r["stage"] == "dedup"
        colour = ", ".join(f"{c:g}" for c in r["colour"])
        assert (f"(image bits {r['image_bits']}, colour [{colour}], question jaccard {r['question_jaccard']})"
                in detail[pid]), (r, detail[pid])
    assert rows["b1"]["image_bits"] == [0] and rows["c1"]["question_jaccard"] == 1.0  # c1: the same scene at q50
    for r in rows.values():
        assert r["n_images"] == 1 and len(r["thumbnails"]) == 1
        im = Image.open(io.BytesIO(r["thumbnails"][0]))
        assert im.format == "JPEG" and max(im.size) <= 96 and len(r["thumbnails"][0]) < 8000
    run_stage(cfg, "dedup", str(src), str(tmp_path / "b"))
    assert _report_side(tmp_path / "b").equals(side)


class _M:
    def __init__(self, drop, keep, bits):
        self.drop, self.keep, self.image_bits, self.colour, self.jaccard = drop, keep, (bits,), (1.5,), 0.95


def test_the_report_shows_a_bounded_number_of_clusters_in_id_order():
    from stages.dedup import REPORT_CLUSTERS, REPORT_MEMBERS, shown_clusters

    # 40 clusters of 12 removed prompts each; kept row g names prompt "k<39 - g>" so id order is
    # not row order, and the matches come in removed-id order (as near_duplicates gives them)
    keeps = list(range(40))
    found = [_M(1000 + 100 * g + i, g, i) for i in range(12) for g in keeps]
    ids = {g: f"k{39 - g:02d}" for g in keeps}
    shown = shown_clusters(found, ids)
    groups = [e["group"] for _, e in shown if e["role"] == "kept"]
    assert groups == [f"k{i:02d}" for i in range(REPORT_CLUSTERS)]
    assert len(shown) == REPORT_CLUSTERS * (1 + REPORT_MEMBERS) < len(found)
    first = [(g, e) for g, e in shown if e["group"] == "k00"]
    assert first[0] == (39, {"group": "k00", "size": 13, "role": "kept"})
    assert [g for g, _ in first[1:]] == [1000 + 3900 + i for i in range(REPORT_MEMBERS)]
    assert [e["bits"] for _, e in first[1:]] == [[i] for i in range(REPORT_MEMBERS)]
    assert all(e["colour"] == [1.5] and e["jaccard"] == 0.95 for _, e in first[1:])
    assert shown_clusters(found, ids) == shown


def test_the_html_report_shows_the_removed_clusters_side_by_side(tmp_path):
    """The run report gathers the side output into the dataset folder; the HTML report of that
    folder shows every thumbnail inline, with the distances, and escapes the questions."""
    import base64

    from pipeline.run.orchestrator import run_stage
    from pipeline.run.report import REPORT_IMAGES, report_images
    from publish.html_report import build_report_html

    src = _inputs(tmp_path / "in")
    table = pq.read_table(src / "data" / "part-00000.parquet")
    rows = table.to_pylist()
    rows[0]["source"] = "<script>alert(1)</script>"  # texts from the data are escaped
    pq.write_table(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA), src / "data" / "part-00000.parquet")
    cfg = make_config(executor={"kind": "local"}, run={"work_dir": str(tmp_path / "work")})
    run_stage(cfg, "dedup", str(src), str(tmp_path / "build" / "dedup"))
    build = make_config(executor={"kind": "local"}, run={"work_dir": str(tmp_path / "build")})
    assert "dedup" in build.run.stages
    gathered = report_images(build)  # the stage folders of the build's work folder
    assert gathered.column("prompt_id").to_pylist() == ["a0", "b1", "c1"]  # kept first
    folder = tmp_path / "dataset"
    folder.mkdir()
    pq.write_table(gathered, folder / REPORT_IMAGES)
    page = build_report_html(str(folder))
    assert "Near-duplicate clusters removed before generation" in page
    for r in gathered.to_pylist():
        assert f'src="data:image/jpeg;base64,{base64.b64encode(r["thumbnails"][0]).decode()}"' in page
    b1 = gathered.to_pylist()[1]
    assert f"removed: image {b1['image_bits'][0]} bits, colour {b1['colour'][0]:g} \u00b7 question jaccard" in page
    assert "kept (first by prompt id)" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # kept beside removed, in one row
    row = page[page.index('<div class="dups">'):]
    assert row.index("<b>a0</b>") < row.index("<b>b1</b>") < row.index("<b>c1</b>")


@pytest.mark.build
def test_the_sample_builds_html_report_shows_its_removed_clusters(sample_build):
    """The sample build's dataset folder has the thumbnails of every prompt dedup removed, and its
    report.html shows each of them inline."""
    import base64

    table = pq.read_table(sample_build / "report_images.parquet")
    removed = [r for r in table.to_pylist() if r["role"] == "removed"]
    report = json.loads((sample_build / "report.json").read_text())
    assert len(removed) == report["summary"]["dedup"]["near_duplicates"] == 13
    assert all(r["thumbnails"] and r["image_bits"] for r in removed)
    page = (sample_build / "report.html").read_text()
    for r in table.to_pylist():
        assert base64.b64encode(r["thumbnails"][0]).decode() in page, r["prompt_id"]
