"""Read ranges: planned from line ends, footers and lengths; together they read exactly the source.

For every format, with and without ``limit``, at several range sizes, the
rows of all ranges in plan order are the rows one reader gets from the whole
source (same keys, positions and data), and each range holds ``rows`` rows
but the last of a file.
"""
from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import make_config
from pipeline.sources.ranges import plan_partitions, plan_ranges, read_range
from pipeline.sources.readers import iter_source


def _jsonl(tmp_path):
    lines = [json.dumps({"id": f"r{i}", "question": f"q{i}"}) if i % 5 else json.dumps({"question": f"q{i}"})
             for i in range(23)]
    lines[7] = ""             # blank lines are no rows but count as lines (keys of id-less rows)
    lines[8] = "   "
    lines[11] = '{"broken": '  # an unreadable row is still a row
    (tmp_path / "s.jsonl").write_bytes("\n".join(lines).encode())  # no newline at the end
    return {"format": "jsonl", "path": str(tmp_path / "s.jsonl")}


def _parquet(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    for f, n in (("a", 13), ("b", 0), ("c", 9)):  # an empty file in between, several row groups each
        pq.write_table(pa.table({"id": [f"{f}{i}" for i in range(n)], "question": ["q"] * n}, schema=pa.schema(
            [("id", pa.string()), ("question", pa.string())])), d / f"{f}.parquet", row_group_size=4)
    return {"format": "parquet", "path": str(d)}


def _hf(tmp_path):
    datasets.Dataset.from_list([{"id": f"h{i}", "question": "q"} for i in range(17)]).save_to_disk(str(tmp_path / "hf"))
    return {"format": "hf", "path": str(tmp_path / "hf")}


def _folder(tmp_path):
    d = tmp_path / "img"
    (d / "sub").mkdir(parents=True)
    for i in range(11):
        (d / ("sub" if i % 2 else "") / f"{i:02d}.png").write_bytes(b"x")
    (d / "03.txt").write_text("caption")
    return {"format": "image_folder", "path": str(d), "default_question": "Describe."}


@pytest.mark.parametrize("make", [_jsonl, _parquet, _hf, _folder], ids=["jsonl", "parquet", "hf", "image_folder"])
@pytest.mark.parametrize("rows", [1, 3, 5, 100])
@pytest.mark.parametrize("limit", [None, 7])
def test_ranges_read_exactly_the_source(tmp_path, make, rows, limit):
    cfg = make_config(sources=[{"name": "s", **make(tmp_path), "limit": limit}])
    src = cfg.sources[0]
    want = list(iter_source(src))
    ranges = plan_ranges(src, rows)
    got = [list(read_range(cfg, r)) for r in ranges]
    assert [r for part in got for r in part] == want
    assert len(want) == (min(limit, len(want)) if limit else len(want)) > 3
    if src.format != "parquet":  # one file: every range is full but the last
        assert [len(p) for p in got[:-1]] == [rows] * (len(got) - 1) and 0 < len(got[-1]) <= rows
    assert [p[0]["position"] for p in got] == sorted({p[0]["position"] for p in got})


def test_plans_are_the_same_in_every_run_and_named_in_file_order(tmp_path):
    cfg = make_config(run={"partition_rows": 4}, sources=[{"name": "j", **_jsonl(tmp_path)},
                                                          {"name": "p", **_parquet(tmp_path)}])
    first = plan_partitions(cfg)
    assert first == plan_partitions(cfg)
    names = [n for n, _ in first]
    assert names == sorted(names) == [f"part-{k:05d}" for k in range(len(names))]
    sources = [json.loads(inputs[0])["source"] for _, inputs in first]
    assert sources == sorted(sources) and set(sources) == {"j", "p"}
    # parquet ranges never cross files: 13 rows -> 4,4,4,1; the empty file none; 9 -> 4,4,1
    sizes = [r["stop"] - r["start"] for _, (i,) in first if (r := json.loads(i))["source"] == "p"]
    assert sizes == [4, 4, 4, 1, 4, 4, 1]
