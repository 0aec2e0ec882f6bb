"""The sample-data generator: deterministic, balanced, self-consistent."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from demo.sample_data import ANSWER_TYPES, build_sample_data
from pipeline.config.templates import LETTERS, SHORT_ANSWER_SUFFIXES, strip_short_answer_suffix


def _hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("sample_a")
    return d, build_sample_data(d)


def test_deterministic(built, tmp_path):
    d, counts = built
    counts_b = build_sample_data(tmp_path / "b")
    assert counts == counts_b
    assert _hashes(d) == _hashes(tmp_path / "b")
    # rebuilding into the same folder gives the same bytes too (stale images removed)
    (tmp_path / "b" / "images" / "stale.png").write_bytes(b"x")
    build_sample_data(tmp_path / "b")
    assert _hashes(d) == _hashes(tmp_path / "b")


def test_other_seed_differs(built, tmp_path):
    d, _ = built
    build_sample_data(tmp_path / "s1", seed=1)
    assert (tmp_path / "s1" / "gt.jsonl").read_bytes() != (d / "gt.jsonl").read_bytes()


def test_counts_and_types(built):
    d, counts = built
    gt, op = _rows(d / "gt.jsonl"), _rows(d / "open.jsonl")
    assert len(gt) >= 200 and len(op) >= 50
    assert counts["gt"] == len(gt) and counts["open"] == len(op)
    per_type = {t: sum(r["answer_type"] == t for r in gt) for t in ANSWER_TYPES}
    assert per_type == counts["by_type"]
    assert set(per_type) == {"multiple_choice", "integer", "yes_no", "word", "number"}
    assert max(per_type.values()) - min(per_type.values()) <= 0.1 * len(gt)
    assert len({r["id"] for r in gt + op}) == len(gt) + len(op)


def test_row_schema(built):
    d, _ = built
    gt, op = _rows(d / "gt.jsonl"), _rows(d / "open.jsonl")
    for r in gt:
        assert isinstance(r["question"], str) and r["question"]
        assert isinstance(r["answer"], (str, list)) and r["answer"]
        assert isinstance(r["facts"], str) and r["facts"]
        if r["answer_type"] == "multiple_choice":
            assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
            assert r["answer"] in LETTERS[:4]
        else:
            assert "choices" not in r
        if r["answer_type"] == "integer":
            assert r["answer"].isdigit()
        if r["answer_type"] == "yes_no":
            assert r["answer"] in ("yes", "no")
        if r["answer_type"] == "number":
            assert r["answer"][0].isdigit() and not r["answer"].isdigit()  # a value with a unit
    yes = sum(r["answer"] == "yes" for r in gt if r["answer_type"] == "yes_no")
    no = sum(r["answer"] == "no" for r in gt if r["answer_type"] == "yes_no")
    assert abs(yes - no) <= 1
    # some questions carry a short-answer suffix the pipeline strips
    with_suffix = [r for r in gt if strip_short_answer_suffix(r["question"]) != r["question"]]
    assert 0 < len(with_suffix) < len(gt)
    assert all(any(r["question"].endswith(s) for s in SHORT_ANSWER_SUFFIXES) for r in with_suffix)
    for r in op:
        assert "answer" not in r and r["question"] and r["facts"].count(".") >= 2


def test_images_exist_and_open(built):
    d, _ = built
    rows = _rows(d / "gt.jsonl") + _rows(d / "open.jsonl")
    referenced = set()
    for r in rows:
        path = d / r["image"]
        assert r["image"].startswith("images/") and path.is_file()
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG" and im.mode == "RGB"
            assert 64 <= im.width <= 256 and 64 <= im.height <= 256
        referenced.add(path.name)
    assert referenced == {p.name for p in (d / "images").iterdir()}
    assert sum(p.stat().st_size for p in (d / "images").iterdir()) < 5 * 1024 * 1024
    assert (d / "README.md").is_file()
