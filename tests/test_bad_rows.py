"""One bad row stays that row's problem: real files a user could hand ingest, each bad row
quarantined alone with its reason and where it sits, the other rows of the same range kept.

Every case puts its bad row between good ones in a single read range, as a user's file
would have it, and runs the real ingest stage over it.
"""
from __future__ import annotations

import io
import json
import os
import unicodedata
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import make_config, png, stage_rows
from pipeline.core.graph import make_stage
from pipeline.run.orchestrator import run_source

DEEP = 100_000  # nesting of the JSON line that used to stop the whole ingest
SECRET = "root:x:0:0:not-for-the-dataset"


def _jsonl(path: Path, lines: list[bytes | dict]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines))
    return path


def _row(rid: str, **fields) -> dict:
    return {"id": rid, "image": "a.png", "question": "What colour is it?", "answer": "red", **fields}


def _folder(d: Path, captions: dict[str, bytes]) -> Path:
    """An image folder: a.png, b.png, c.png and the given caption files."""
    folder = d / "folder"
    folder.mkdir(parents=True)
    for name in ("a", "b", "c"):
        (folder / f"{name}.png").write_bytes(png())
    for name, text in captions.items():
        (folder / name).write_bytes(text)
    return folder


def _ingest(tmp_path: Path, *sources: dict, run_with=None, **sections) -> tuple[dict, list[dict], list[dict]]:
    """Run ingest over ``sources`` in one range each; (stats, output rows, quarantine rows)."""
    cfg = make_config(sources=[{"name": f"s{i}", **s} for i, s in enumerate(sources)],
                      run={"partition_rows": 1000}, **sections)
    out = tmp_path / "out"
    stats, n, _ = run_source(make_stage("ingest", cfg), str(out), run_with and (lambda: run_with(cfg)))
    assert n == len(sources)  # one range per source: the bad row shares it with the good ones
    return stats, stage_rows(out), stage_rows(out, "quarantine")


# -- item 4: whatever reading or normalising one row raises -------------------------------

def _deep_json(d: Path):
    (d / "a.png").write_bytes(png())
    nested = b'{"id": "deep", "image": "a.png", "question": "q", "answer": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    p = _jsonl(d / "src.jsonl", [_row("before"), nested, _row("after")])
    return ({"format": "jsonl", "path": str(p)}, ["before", "after"], "#1", "unreadable_row",
            f"{p} line 2: RecursionError: maximum recursion depth exceeded while decoding a JSON array "
            "from a unicode string")


def _huge_int_json(d: Path):
    (d / "a.png").write_bytes(png())
    p = _jsonl(d / "src.jsonl", [_row("before"), b'{"id": "big", "answer": ' + b"7" * 5000 + b"}", _row("after")])
    return ({"format": "jsonl", "path": str(p)}, ["before", "after"], "#1", "unreadable_row",
            f"{p} line 2: ValueError: Exceeds the limit (4300 digits) for integer string conversion: "
            "value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit")


def _lone_surrogate_json(d: Path):
    (d / "a.png").write_bytes(png())
    p = _jsonl(d / "src.jsonl", [_row("before"), b'{"id": "half", "image": "a.png", "question": "caf\\ud800"}',
                                 _row("after")])
    return ({"format": "jsonl", "path": str(p)}, ["before", "after"], "#1", "invalid_utf8",
            f"{p} line 2: \\ud800 is half of a UTF-16 surrogate pair, not a character")


def _caption_not_utf8(d: Path):
    folder = _folder(d, {"a.txt": b"A red square.", "b.txt": b"Caf\xe9 au lait", "c.txt": b"Another one."})
    return ({"format": "image_folder", "path": str(folder), "default_question": "Describe the image."},
            ["a.png", "c.png"], "b.png", "invalid_utf8",
            f"{folder}/b.txt: 'utf-8' codec can't decode byte 0xe9 in position 3: invalid continuation byte")


def _timestamps(n: int, bad: int) -> pa.Array:
    """Milliseconds since 1970; row ``bad`` lies past year 9999, where Python has no datetime."""
    return pa.array([10**15 * 300 if i == bad else 1_700_000_000_000 for i in range(n)], type=pa.timestamp("ms"))


def _parquet_timestamp(d: Path):
    (d / "a.png").write_bytes(png())
    p = d / "src.parquet"
    pq.write_table(pa.table({"id": ["before", "far", "after"], "question": ["q"] * 3, "image": ["a.png"] * 3,
                             "taken_at": _timestamps(3, 1)}), p)
    return ({"format": "parquet", "path": str(p), "image_root": str(d)}, ["before", "after"], "#1",
            "unreadable_row", f"{p} row 1: OverflowError: Python int too large to convert to C int")


def _hf_timestamp(d: Path):
    ds = datasets.Dataset(pa.table({"id": ["before", "far", "after"], "question": ["q"] * 3,
                                    "taken_at": _timestamps(3, 1)}))
    ds = ds.add_column("image", [{"bytes": png(), "path": None}] * 3, feature=datasets.Image())
    ds.save_to_disk(str(d / "hf"))
    return ({"format": "hf", "path": str(d / "hf")}, ["before", "after"], "#1",
            "unreadable_row", f"{d / 'hf'} row 1: OverflowError: Python int too large to convert to C int")


def _image_bytes_as_text(d: Path):
    """Base64 text where bytes belong: ingest's own code raised on it (TypeError)."""
    (d / "a.png").write_bytes(png())
    p = _jsonl(d / "src.jsonl", [_row("before"), _row("b64", image={"bytes": "iVBORw0KGgo="}), _row("after")])
    return ({"format": "jsonl", "path": str(p)}, ["before", "after"], "b64", "ingest_error",
            f"{p} line 2: TypeError: string argument without an encoding")


@pytest.mark.parametrize("case", [_deep_json, _huge_int_json, _lone_surrogate_json, _caption_not_utf8,
                                  _parquet_timestamp, _hf_timestamp, _image_bytes_as_text])
def test_a_row_that_raises_is_quarantined_alone_and_its_range_goes_on(case, tmp_path):
    source, kept, key, reason, detail = case(tmp_path)
    stats, rows, quarantine = _ingest(tmp_path, source)
    assert [(q["row_key"], q["reason"], q["detail"]) for q in quarantine] == [(key, reason, detail)]
    assert [r["row_key"] for r in rows] == kept
    assert dict(stats.quarantined) == {reason: 1} and "stage_error" not in stats.quarantined


def test_under_ray_a_bad_row_is_quarantined_alone(tmp_path):
    """On Ray the read ran in a worker, failed on every retry, then again in the driver's
    quarantine pass, which ended the build; now the range finishes like anywhere else."""
    import ray

    from pipeline.run.executors import RayExecutor

    deep, _, _, _, deep_detail = _deep_json(tmp_path)
    caption, _, _, _, caption_detail = _caption_not_utf8(tmp_path)
    try:
        stats, rows, quarantine = _ingest(tmp_path, deep, caption, run_with=RayExecutor,
                                          executor={"kind": "ray", "num_cpus": 2, "max_retries": 0})
    finally:
        ray.shutdown()
    assert sorted((q["source"], q["row_key"], q["reason"], q["detail"]) for q in quarantine) == [
        ("s0", "#1", "unreadable_row", deep_detail), ("s1", "b.png", "invalid_utf8", caption_detail)]
    assert [(r["source"], r["row_key"]) for r in rows] == [
        ("s0", "before"), ("s0", "after"), ("s1", "a.png"), ("s1", "c.png")]
    assert stats.retries == 0 and "worker_died" not in stats.quarantined


# -- item 5: nothing outside a source's root is read ---------------------------------------

def _secret(d: Path) -> Path:
    outside = d / "elsewhere"
    outside.mkdir()
    (outside / "passwd").write_text(SECRET)
    (outside / "photo.png").write_bytes(png((0, 0, 255)))
    return outside


def test_a_caption_is_read_only_from_inside_the_roots(tmp_path):
    """A caption linked out of the folder used to land in facts (and the exports and the
    report); links that stay inside the folder or an allowed root are read as before."""
    outside = _secret(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "caption.txt").write_text("A shared caption.")
    folder = _folder(tmp_path, {"a.txt": b"A red square."})
    (folder / "d.png").write_bytes(png())
    (folder / "b.txt").symlink_to(outside / "passwd")
    (folder / "c.txt").symlink_to(folder / "a.txt")
    (folder / "d.txt").symlink_to(shared / "caption.txt")
    _, rows, quarantine = _ingest(tmp_path, {"format": "image_folder", "path": str(folder),
                                             "default_question": "Describe.", "allowed_image_roots": [str(shared)]})
    assert [(q["row_key"], q["reason"], q["detail"]) for q in quarantine] == [
        ("b.png", "caption_path_escapes_root",
         f"{folder}/b.txt: resolves outside the source's root and allowed_image_roots; not read")]
    assert [(r["row_key"], r["facts"]) for r in rows] == [
        ("a.png", "A red square."), ("c.png", "A red square."), ("d.png", "A shared caption.")]
    assert SECRET not in repr(rows) + repr(quarantine)


def _image_link_outside_folder(d: Path):
    outside = _secret(d)
    folder = _folder(d, {})
    (folder / "b.png").unlink()
    (folder / "b.png").symlink_to(outside / "photo.png")
    return ({"format": "image_folder", "path": str(folder), "default_question": "Describe the image."},
            ["a.png", "c.png"], "b.png", f"'b.png' resolves outside '{folder}'")


def _image_link_outside_jsonl(d: Path):
    outside = _secret(d)
    src = d / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png())
    (src / "b.png").symlink_to(outside / "photo.png")
    p = _jsonl(src / "src.jsonl", [_row("before"), _row("linked", image="b.png"), _row("after")])
    return {"format": "jsonl", "path": str(p)}, ["before", "after"], "linked", f"'b.png' resolves outside '{src}'"


@pytest.mark.parametrize("case", [_image_link_outside_folder, _image_link_outside_jsonl])
def test_an_image_linked_out_of_the_source_root_is_never_read(case, tmp_path):
    source, kept, key, detail = case(tmp_path)
    stats, rows, quarantine = _ingest(tmp_path, source)
    assert [(q["row_key"], q["reason"], q["detail"]) for q in quarantine] == [
        (key, "image_path_escapes_root", detail)]
    assert [r["row_key"] for r in rows] == kept


# -- item 6: no garbage ground truth ------------------------------------------------------

@pytest.mark.parametrize("line, detail", [
    (b'{"id": "x", "image": "a.png", "question": "q", "answer": NaN}', "answer holds nan"),
    (b'{"id": "x", "image": "a.png", "question": "q", "answer": Infinity}', "answer holds inf"),
    (b'{"id": "x", "image": "a.png", "question": "q", "answer": [3, -Infinity]}', "answer holds -inf"),
    (b'{"id": "x", "image": "a.png", "question": "q", "answer": 1e400}', "answer holds inf"),
    (b'{"id": "x", "image": "a.png", "question": "q", "answer": "A", "choices": [1.5, NaN]}', "choices holds nan"),
])
def test_a_non_finite_answer_in_json_is_quarantined(tmp_path, line, detail):
    (tmp_path / "a.png").write_bytes(png())
    p = _jsonl(tmp_path / "src.jsonl", [_row("before", answer=2.5), line, _row("after")])
    _, rows, quarantine = _ingest(tmp_path, {"format": "jsonl", "path": str(p)})
    assert [(q["row_key"], q["reason"], q["detail"]) for q in quarantine] == [("x", "non_finite_number", detail)]
    assert [(r["row_key"], r["answer"]) for r in rows] == [("before", ["2.5"]), ("after", ["red"])]


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_a_non_finite_float_in_a_typed_source_is_quarantined(tmp_path, fmt):
    """Parquet and datasets columns hold real floats: NaN and inf arrive as Python floats."""
    table = pa.table({"id": ["ok", "nan-answer", "inf-choice"], "question": ["q"] * 3,
                      "image": [{"bytes": png(), "path": None}] * 3,
                      "answer": pa.array([1.5, float("nan"), 2.0]),
                      "choices": pa.array([[1.5, 2.0], [1.0], [2.0, float("inf")]])})
    if fmt == "parquet":
        pq.write_table(table, tmp_path / "src.parquet")
        source = {"format": "parquet", "path": str(tmp_path / "src.parquet")}
    else:
        ds = datasets.Dataset(table.drop_columns(["image"]))
        ds.add_column("image", [{"bytes": png(), "path": None}] * 3,
                      feature=datasets.Image()).save_to_disk(str(tmp_path / "hf"))
        source = {"format": "hf", "path": str(tmp_path / "hf")}
    _, rows, quarantine = _ingest(tmp_path, source)
    assert [(q["row_key"], q["reason"], q["detail"]) for q in quarantine] == [
        ("nan-answer", "non_finite_number", "answer holds nan"), ("inf-choice", "non_finite_number", "choices holds inf")]
    assert [(r["row_key"], r["answer"], r["choices"]) for r in rows] == [("ok", ["1.5"], ["1.5", "2.0"])]


# -- item 8: messages name the file; names found up to Unicode normalisation ---------------

def test_not_an_image_names_the_file(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "notes.png").write_bytes(b"hello, not an image")
    p = _jsonl(tmp_path / "src.jsonl", [_row("before"), _row("text", image="notes.png"), _row("after")])
    pq.write_table(pa.table({"id": ["before", "named", "unnamed"], "question": ["q"] * 3, "image": [
        {"bytes": png(), "path": "a.png"}, {"bytes": b"not an image", "path": "scan-07.png"},
        {"bytes": b"nor this", "path": None}]}), tmp_path / "src.parquet")
    _, rows, quarantine = _ingest(tmp_path, {"format": "jsonl", "path": str(p)},
                                  {"format": "parquet", "path": str(tmp_path / "src.parquet")})
    assert sorted((q["row_key"], q["reason"], q["detail"]) for q in quarantine) == [
        ("named", "not_an_image", "'scan-07.png': cannot identify image file"),
        ("text", "not_an_image", "'notes.png': cannot identify image file"),
        ("unnamed", "not_an_image", "image bytes in the row (8 bytes): cannot identify image file")]
    assert [r["row_key"] for r in rows] == ["before", "after", "before"]


@pytest.mark.parametrize("on_disk, in_row", [("NFD", "NFC"), ("NFC", "NFD")])
def test_an_image_named_in_another_unicode_normalisation_is_found(tmp_path, on_disk, in_row):
    """macOS writes file names decomposed (NFD), most text is composed (NFC): the same name."""
    name = "café-Å.png"
    (tmp_path / unicodedata.normalize(on_disk, name)).write_bytes(png((0, 128, 0)))
    (tmp_path / "a.png").write_bytes(png())
    assert not os.path.exists(tmp_path / unicodedata.normalize(in_row, name))
    p = _jsonl(tmp_path / "src.jsonl", [_row("before"), _row("accent", image=unicodedata.normalize(in_row, name)),
                                        _row("gone", image=unicodedata.normalize(in_row, "gone-é.png"))])
    _, rows, quarantine = _ingest(tmp_path, {"format": "jsonl", "path": str(p)})
    assert [r["row_key"] for r in rows] == ["before", "accent"]
    assert Image.open(io.BytesIO(rows[1]["images"][0]["bytes"])).getpixel((0, 0)) == (0, 128, 0)
    assert [(q["row_key"], q["reason"]) for q in quarantine] == [("gone", "missing_image_file")]
    assert "NFC" in quarantine[0]["detail"] and "NFD" in quarantine[0]["detail"]
