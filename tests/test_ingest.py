"""ingest on a corpus of bad rows: each is quarantined with its own reason, the rest goes on.

Images that need only a fix (CMYK, palette, 16-bit, alpha, EXIF rotation)
are converted, never refused.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import encode, make_config, png, stage_rows
from pipeline.files import storage
from pipeline.core.graph import make_stage
from pipeline.run.orchestrator import run_source


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return path.name


@pytest.fixture()
def corpus(tmp_path: Path):
    """A jsonl source with one row per kind of bad input, plus good rows."""
    img = tmp_path / "imgs"
    img.mkdir()
    ok = _write(img / "ok.png", png(size=(32, 24)))
    rows: list[bytes] = []
    expect: dict[str, str] = {}          # row id -> quarantine reason
    converted: dict[str, str] = {}       # row id -> original PIL mode

    def add(rid, reason=None, **fields):
        rows.append(json.dumps({"id": rid, **fields}).encode())
        if reason:
            expect[rid] = reason

    add("good-1", image=f"imgs/{ok}", question="What colour?", answer="red")
    add("good-open", image=f"imgs/{ok}", question="Describe the image.")
    add("missing-file", "missing_image_file", image="imgs/nope.png", question="q", answer="a")
    add("zero-byte", "empty_image", image=f"imgs/{_write(img / 'zero.png', b'')}", question="q", answer="a")
    add("truncated", "corrupt_image", image=f"imgs/{_write(img / 'trunc.png', png(size=(64, 64))[:120])}",
        question="q", answer="a")
    add("not-image", "not_an_image", image=f"imgs/{_write(img / 'text.png', b'hello, not an image')}",
        question="q", answer="a")
    bomb = encode(Image.new("1", (12000, 9000)))  # 108 Mpx > PIL's limit, tiny file
    add("bomb", "image_too_large", image=f"imgs/{_write(img / 'bomb.png', bomb)}",
        question="q", answer="a")
    add("escape", "image_path_escapes_root", image="../../etc/passwd", question="q", answer="a")
    add("no-image", "missing_image", question="q", answer="a")
    add("no-question", "missing_question", image=f"imgs/{ok}", answer="a")
    add("int-image", "bad_image_reference", image=12345, question="q", answer="a")
    add("dir-image", "missing_image_file", image="imgs", question="q", answer="a")
    add("empty-q", "empty_question", image=f"imgs/{ok}", question="   ", answer="a")
    add("int-q", "question_not_string", image=f"imgs/{ok}", question=42, answer="a")
    add("dict-answer", "bad_answer_type", image=f"imgs/{ok}", question="q", answer={"x": 1})
    add("bool-answer", "bad_answer_type", image=f"imgs/{ok}", question="q", answer=True)
    add("huge-q", "question_too_long", image=f"imgs/{ok}", question="x" * 1_000_000, answer="a")
    add("two-images", "too_many_images", images=[f"imgs/{ok}", f"imgs/{ok}"], question="q", answer="a")
    add("weird-type", "unknown_answer_type", image=f"imgs/{ok}", question="q", answer="a",
        answer_type="haiku")
    add("bad-choices", "bad_choices", image=f"imgs/{ok}", question="q", answer="A", choices="ABCD")
    # references outside the source's root, whatever the scheme: refused per row, before any read
    add("metadata-url", "image_uri_not_allowed", image="http://169.254.169.254/latest/meta-data",
        question="q", answer="a")
    add("other-bucket", "image_uri_not_allowed", image="s3://other-bucket/secret.png", question="q", answer="a")
    add("file-uri", "image_uri_not_allowed", image="file:///etc/hostname", question="q", answer="a")
    add("abs-path", "image_uri_not_allowed", image="/etc/hostname", question="q", answer="a")
    add("endpoint-query", "image_uri_not_allowed", image=f"file://{img / ok}?endpoint_override=evil",
        question="q", answer="a")
    add("placeholders", "image_placeholder_mismatch", image=f"imgs/{ok}", question="<image>\n<image>\nq",
        answer="a")
    add("good-1", "duplicate_prompt_id", image=f"imgs/{ok}", question="dup", answer="red")
    rows.append(b'{"id": "bad-utf8", "question": "caf\xe9", "image": "x.png"}')
    expect["#bad-utf8"] = "invalid_utf8"
    rows.append(b'{"id": "broken json", "question": ')
    expect["#broken-json"] = "invalid_json"
    rows.append(b'["a", "list", "not", "an", "object"]')
    expect["#list"] = "malformed_row"

    # convertible images: kept, converted to a model-ready mode
    for mode, color in [("CMYK", (0, 255, 0, 0)), ("P", 3), ("I;16", 40000), ("RGBA", (10, 20, 30, 128)),
                        ("LA", (100, 50))]:
        name = f"mode-{mode.replace(';', '')}.png" if mode != "CMYK" else "mode-CMYK.jpg"
        data = encode(Image.new(mode, (20, 10), color), "JPEG" if mode == "CMYK" else "PNG")
        add(f"conv-{mode}", image=f"imgs/{_write(img / name, data)}", question="q", answer="a")
        converted[f"conv-{mode}"] = mode
    exif_img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = exif_img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    add("exif", image=f"imgs/{_write(img / 'exif.jpg', encode(exif_img, 'JPEG', exif=exif.tobytes()))}",
        question="q", answer="a")

    src = tmp_path / "src.jsonl"
    src.write_bytes(b"\n".join(rows) + b"\n")
    return src, tmp_path, expect, converted


def _ingest(src: Path, root: Path, out: Path, **model):
    cfg = make_config(
        sources=[{"name": "bad", "format": "jsonl", "path": str(src), "image_root": str(root)}],
        model={"max_images_per_prompt": 1, **model}, run={"partition_rows": 7},
    )
    stats, n, skipped = run_source(make_stage("ingest", cfg), str(out))
    return stats, stage_rows(out), stage_rows(out, "quarantine")


def test_every_bad_row_is_quarantined_with_its_reason(corpus, tmp_path):
    src, root, expect, converted = corpus
    stats, rows, quarantine = _ingest(src, root, tmp_path / "out")
    by_key = {}
    for q in quarantine:
        by_key.setdefault(q["row_key"], []).append(q["reason"])
    got = {}
    for rid, reason in expect.items():
        if rid.startswith("#"):
            continue
        got[rid] = reason
    # keyed rows: each expected reason is present for its id
    for rid, reason in got.items():
        assert reason in by_key.get(rid, []), f"{rid}: expected {reason}, quarantine has {by_key.get(rid)}"
    # rows that could not even be parsed are keyed by line position
    reasons = [q["reason"] for q in quarantine]
    for reason in ("invalid_utf8", "invalid_json", "malformed_row"):
        assert reason in reasons
    assert len(set(expect.values())) >= 20, "the corpus must cover at least 20 kinds of bad rows"
    assert sum(stats.quarantined.values()) == len(quarantine) == len(expect)
    kept = {r["row_key"] for r in rows}
    assert kept == {"good-1", "good-open", "exif", *converted}, kept


def test_disallowed_references_are_never_opened(corpus, tmp_path, monkeypatch):
    """The allowlist is checked before storage is asked anything: no request reaches
    the metadata endpoint, the other bucket or /etc, and no partition fails."""
    touched = []
    resolve = storage.resolve
    monkeypatch.setattr(storage, "resolve", lambda uri: (touched.append(uri), resolve(uri))[1])
    src, root, expect, _ = corpus
    stats, rows, quarantine = _ingest(src, root, tmp_path / "out")
    assert not [u for u in touched if "169.254" in u or "other-bucket" in u or "hostname" in u], touched
    assert "stage_error" not in stats.quarantined and stats.retries == 0
    assert {q["row_key"] for q in quarantine if q["reason"] == "image_uri_not_allowed"} == {
        "metadata-url", "other-bucket", "file-uri", "abs-path", "endpoint-query"}


def test_allowed_image_roots_admit_absolute_references(tmp_path):
    """Absolute paths and file:// URIs load when their folder is allowlisted, and only then."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "a.png").write_bytes(png(size=(32, 24)))
    (tmp_path / "prompts").mkdir()
    src = tmp_path / "prompts" / "src.jsonl"
    src.write_text(json.dumps({"id": "abs", "image": str(shared / "a.png"), "question": "q"}) + "\n"
                   + json.dumps({"id": "uri", "image": f"file://{shared}/a.png", "question": "q"}) + "\n")
    for allowed, kept in (([], set()), ([str(shared)], {"abs", "uri"})):
        cfg = make_config(sources=[{"name": "s", "format": "jsonl", "path": str(src),
                                    "allowed_image_roots": allowed}])
        out = tmp_path / f"out{len(allowed)}"
        stats, _, _ = run_source(make_stage("ingest", cfg), str(out))
        assert {r["row_key"] for r in stage_rows(out)} == kept
        assert stats.quarantined.get("image_uri_not_allowed", 0) == 2 - len(kept)


def test_convertible_images_are_converted_not_rejected(corpus, tmp_path):
    src, root, _, converted = corpus
    _, rows, _ = _ingest(src, root, tmp_path / "out")
    by_key = {r["row_key"]: r for r in rows}
    for rid in converted:
        im = Image.open(io.BytesIO(by_key[rid]["images"][0]["bytes"]))
        assert im.mode in ("RGB", "L"), (rid, im.mode)
    # EXIF orientation 6 means the stored 40x20 pixels display as 20x40
    assert Image.open(io.BytesIO(by_key["exif"]["images"][0]["bytes"])).size == (20, 40)
    # a plain RGB PNG keeps its original bytes
    assert by_key["good-1"]["images"][0]["bytes"] == (root / "imgs" / "ok.png").read_bytes()


def test_ground_truth_and_ids_are_normalised(corpus, tmp_path):
    src, root, _, _ = corpus
    _, rows, _ = _ingest(src, root, tmp_path / "out")
    by_key = {r["row_key"]: r for r in rows}
    assert by_key["good-1"]["answer"] == ["red"]
    assert by_key["good-open"]["answer"] == [] and by_key["good-open"]["answer_type"] == "open"
    # the sample id is a stable hash of (source, row key): same in every run
    _, rows2, _ = _ingest(src, root, tmp_path / "out2")
    assert [r["prompt_id"] for r in rows] == [r["prompt_id"] for r in rows2]
    assert len({r["prompt_id"] for r in rows}) == len(rows)


def test_a_bad_image_in_a_multi_image_row_quarantines_the_row(tmp_path):
    (tmp_path / "a.png").write_bytes(png(size=(32, 24)))
    (tmp_path / "b.png").write_bytes(b"garbage")
    src = tmp_path / "multi.jsonl"
    src.write_text(json.dumps({"id": "m", "images": ["a.png", "b.png"], "question": "q", "answer": "1"}) + "\n"
                   + json.dumps({"id": "ok", "images": ["a.png", "a.png"], "question": "q", "answer": "1"}) + "\n")
    _, rows, quarantine = _ingest(src, tmp_path, tmp_path / "out", max_images_per_prompt=2)
    assert [r["row_key"] for r in rows] == ["ok"] and len(rows[0]["images"]) == 2
    assert quarantine[0]["reason"] == "not_an_image" and "image 2 of 2" in quarantine[0]["detail"]


def _one_reader(cfg):
    """What a single reader over every source makes -- the rule ingest keeps whatever its
    ranges: output rows, and the context holding quarantine and counters."""
    from pipeline.sources.readers import iter_source
    from pipeline.core.stage import StageContext

    raws = []
    for src in cfg.sources:
        seen: set[str] = set()
        for raw in iter_source(src):
            if raw["error"] is None:
                raw["duplicate"] = raw["row_key"] in seen
                seen.add(raw["row_key"])
            raws.append(raw)
    ctx = StageContext("ingest", "all", cfg)
    return list(make_stage("ingest", cfg).run(iter(raws), ctx)), ctx


def _outputs(out: Path) -> tuple[list[dict], list[tuple]]:
    return stage_rows(out), [_q(q) for q in stage_rows(out, "quarantine")]


def _q(q: dict) -> tuple:
    """A quarantine row's identity and reason (object addresses in details differ per process)."""
    return q["source"], q["row_key"], q["prompt_id"], q["reason"], re.sub(r"0x[0-9a-f]+", "0x", q["detail"])


@pytest.mark.parametrize("partition_rows", [1, 3, 7, 1000])
def test_ranges_make_what_one_reader_makes(corpus, sample_data, tmp_path, partition_rows):
    """Sample data plus the bad-row corpus, cut at any size: the same rows in the same order,
    the same quarantine rows with the same reasons, the same counters as one reader."""
    src, root, _, _ = corpus
    cfg = make_config(run={"partition_rows": partition_rows}, model={"max_images_per_prompt": 1},
                      sources=[*make_config().model_dump()["sources"],
                               {"name": "bad", "format": "jsonl", "path": str(src), "image_root": str(root)}])
    want_rows, want = _one_reader(cfg)
    stats, _, _ = run_source(make_stage("ingest", cfg), str(tmp_path / "out"))
    rows, quarantine = _outputs(tmp_path / "out")
    assert rows == [{k: r[k] for k in rows[0]} for r in want_rows]
    want_q = [_q(q) for q in want._quarantine]
    assert sorted(quarantine) == sorted(want_q) and want.stats.quarantined["duplicate_prompt_id"] == 1
    assert stats.quarantined == want.stats.quarantined and stats.counters == want.stats.counters
    assert stats.rows_out == len(want_rows)


def test_duplicates_across_ranges_keep_the_first_in_file_order(tmp_path, monkeypatch):
    """Keys repeated inside a range, across ranges, three times, on a row that fails
    validation anyway, and rows keyed by line: the first occurrence wins, every later one is
    quarantined as duplicate_prompt_id, a redone range loads no image it kept before, and a
    rerun redoes nothing."""
    import stages.ingest

    loads = []
    real_load = stages.ingest.load_image
    monkeypatch.setattr(stages.ingest, "load_image", lambda ref, *a: (loads.append(ref), real_load(ref, *a))[1])
    (tmp_path / "a.png").write_bytes(png(size=(32, 24)))
    ids = ["a", "b", "a", "c", None, "d", "b", "e", "#4", "a", "bad", "f", "bad", "g"]
    lines = [json.dumps({**({"id": i} if i else {}), "image": "missing.png" if i == "bad" else "a.png",
                         "question": f"q{n}", "answer": "1"}) for n, i in enumerate(ids)]
    src = tmp_path / "dups.jsonl"
    src.write_text("\n".join(lines) + "\n")
    cfg = make_config(run={"partition_rows": 4}, sources=[{"name": "d", "format": "jsonl", "path": str(src)}])
    stats, n, _ = run_source(make_stage("ingest", cfg), str(tmp_path / "out"))
    rows, quarantine = _outputs(tmp_path / "out")
    dups = sorted(q[1] for q in quarantine if q[3] == "duplicate_prompt_id")
    # line 2 "a" (same range as line 0), line 6 "b" (range 1), "#4" (the id of line 4's key), line 9 "a"
    # (third), line 12 "bad" (its first, line 10, is quarantined for its image)
    assert dups == ["#4", "a", "a", "b", "bad"], quarantine
    assert [r["row_key"] for r in rows] == ["a", "b", "c", "#4", "d", "e", "f", "g"]
    assert [r["question"] for r in rows][:2] == ["q0", "q1"]
    assert stats.quarantined == {"duplicate_prompt_id": 5, "missing_image_file": 1} and n == 4
    redone = storage.read_json(str(tmp_path / "out" / "markers" / "part-00002.json"))
    assert json.loads(redone["inputs"][0])["dups"] == [8, 9]
    # first pass: 13 rows reach their images (not the in-range repeat at line 2); the redo of
    # ranges 1 and 2 loads only line 10's (quarantined before, so checked again)
    assert len(loads) == 14 and loads.count("missing.png") == 3
    stats2, n2, skipped2 = run_source(make_stage("ingest", cfg), str(tmp_path / "out"))
    assert (n2, skipped2, stats2.rows_in) == (4, 4, 0)
    assert _outputs(tmp_path / "out") == (rows, quarantine)


def test_partitions_follow_partition_rows(sample_data, tmp_path):
    cfg = make_config(run={"partition_rows": 100})
    stats, n, skipped = run_source(make_stage("ingest", cfg), str(tmp_path / "ingest"))
    files = storage.list_files(str(tmp_path / "ingest" / "data"), ".parquet")
    # ranges never cross sources: each source's ranges hold partition_rows rows, its last the rest
    # (sample_gt has 230 rows, sample_open 64)
    assert [pq.read_metadata(f).num_rows for f in files] == [100, 100, 30, 64] and n == len(files) == 4
    assert (skipped, stats.rows_in) == (0, 294)


def test_a_rerun_reads_no_source(sample_data, tmp_path, monkeypatch):
    """Finished ranges are skipped unread: the rerun passes with the source file gone and
    nothing opened under the source's folder."""
    copy = tmp_path / "gt.jsonl"
    copy.write_bytes((sample_data / "gt.jsonl").read_bytes())
    cfg = make_config(run={"partition_rows": 64}, sources=[
        {"name": "gt", "format": "jsonl", "path": str(copy), "image_root": str(sample_data)}])
    stats, n, _ = run_source(make_stage("ingest", cfg), str(tmp_path / "ingest"))
    assert (n, stats.rows_out) == (4, 230)
    copy.unlink()
    opened = []
    for name in ("open_input", "open_input_file", "read_bytes"):
        real = getattr(storage, name)
        monkeypatch.setattr(storage, name, lambda uri, real=real: (opened.append(uri), real(uri))[1])
    stats2, n2, skipped2 = run_source(make_stage("ingest", cfg), str(tmp_path / "ingest"))
    assert (n2, skipped2, stats2.rows_in) == (4, 4, 0)
    assert not [u for u in opened if str(sample_data) in u or str(copy) in u], opened


@pytest.mark.parametrize("exif_tags", [{}, {0x0132: "2024:01:01 00:00:00"}, {0x0112: 1}])
def test_an_upright_jpeg_is_stored_as_its_source_bytes(tmp_path, exif_tags):
    """No orientation to apply: the source JPEG is kept, not re-encoded as a (larger) PNG."""
    from pipeline.sources.images import load_image

    img = Image.new("RGB", (64, 48), (200, 30, 30))
    exif = img.getexif()
    for tag, value in exif_tags.items():
        exif[tag] = value
    jpeg = encode(img, "JPEG", exif=exif.tobytes())
    (tmp_path / "a.jpg").write_bytes(jpeg)
    assert load_image("a.jpg", str(tmp_path))["bytes"] == jpeg
