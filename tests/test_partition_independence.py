"""The dataset does not depend on how its rows were cut into pieces.

* ``publish.shard_order.shard_layout``: a gathered shard has one chunk per scattered piece
  (input files x spills), so the row-group cuts must not depend on the chunking.
* ``run.partition_rows``: the automatic size (``pipeline.sources.ranges.auto_partition_rows``),
  alone, at 1k, 1M and 10M rows; and two builds at different sizes write the same shard bytes.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from helpers import SAMPLE_CONFIG, CliRun, make_config
from pipeline.core.seeds import stable_hash
from pipeline.sources.ranges import auto_partition_rows, plan_partitions, plan_workers
from publish.shard_order import shard_layout
from schemas import PAIR_SCHEMA
from schemas.arrow import from_rows
from schemas.records import pair_row, provenance


def _pairs() -> pa.Table:
    rng = np.random.default_rng(3)
    rows = []
    for p in range(60):  # 60 prompts, 1-6 pairs each, one image of 2-6 KB
        img = bytes(rng.integers(0, 256, int(rng.integers(2_000, 6_000)), dtype=np.uint8))
        for k in range(int(rng.integers(1, 7))):
            rows.append(pair_row(
                pair_id=stable_hash("pair", p, k), method="correctness", source="s", question=f"q{p}",
                user_text=f"q{p} think", images=[{"bytes": img, "path": None}],
                chosen="c" * int(rng.integers(5, 400)), rejected="r" * int(rng.integers(5, 400)),
                prov=provenance(prompt_id=stable_hash("p", p), model="m")))
    table = from_rows(rows, PAIR_SCHEMA)
    return table.take(pa.array(rng.permutation(table.num_rows)))  # pieces hold rows in scatter order


def _pieces(table: pa.Table, k: int) -> pa.Table:
    """``table`` as k Arrow IPC batches read back, as ``gather_shard`` reads a shard's pieces."""
    batches = []
    for a, b in zip(*(lambda c: (c[:-1], c[1:]))(np.linspace(0, table.num_rows, k + 1).astype(int))):
        sink = io.BytesIO()
        with ipc.new_file(sink, table.schema) as w:
            w.write_table(table.slice(a, b - a))
        batches.append(ipc.open_file(pa.BufferReader(sink.getvalue())).get_batch(0))
    return pa.Table.from_batches(batches)


def test_shard_layout_is_the_same_from_2_or_many_pieces():
    table = _pairs()
    two, many = _pieces(table, 2), _pieces(table, table.num_rows)  # many: a piece per row
    assert two.column("id").num_chunks == 2 and many.column("id").num_chunks == table.num_rows
    ids_two, ids_many = two.column("id").to_numpy(), many.column("id").to_numpy()
    budgets = range(4_000, 120_000, 397)  # a few rows to many prompts per row group
    differ = []
    for budget in budgets:
        o2, g2, r2 = shard_layout(two, 0, budget)
        om, gm, rm = shard_layout(many, 0, budget)
        if g2 != gm or r2 != rm or list(ids_two[o2]) != list(ids_many[om]):
            differ.append(budget)
    assert not differ, f"row-group layout depends on the chunking at {len(differ)}/{len(budgets)} budgets"


@pytest.mark.parametrize("rows, workers, size, partitions", [
    (1_000, 1, 32, 32), (1_000, 2, 16, 63), (1_000, 64, 1, 1_000),
    (294, 1, 16, 19),  # the sample: 230 + 64 rows
    (1_000_000, 1, 1024, 977), (1_000_000, 8, 1024, 977), (1_000_000, 64, 512, 1_954),
    (10_000_000, 8, 1024, 9_766), (10_000_000, 64, 1024, 9_766),
])
def test_auto_partition_rows(rows, workers, size, partitions):
    got = auto_partition_rows(rows, workers)
    assert got == size and -(-rows // got) == partitions
    if size < 1024:  # tens of partitions per worker where the rows allow it
        assert 16 <= partitions / workers <= 64 or size == 1
    assert got & (got - 1) == 0  # a power of two: a slightly longer source keeps its size
    assert auto_partition_rows(rows + rows // 100, workers) in (got, 2 * got)


def test_auto_partition_rows_follows_the_sources_and_the_workers(sample_data):
    """The sample (230 + 64 rows) on 1 worker: 16 rows; on 2 (engine replicas): 8 rows."""
    one = make_config(run={"partition_rows": "auto"}, executor={"cpu_concurrency": 1}, engine={"replicas": 1})
    two = make_config(run={"partition_rows": "auto"}, executor={"cpu_concurrency": 1}, engine={"replicas": 2})
    assert (plan_workers(one), plan_workers(two)) == (1, 2)
    p1, p2 = plan_partitions(one), plan_partitions(two)
    assert (p1.rows, len(p1)) == (16, 15 + 4) and (p2.rows, len(p2)) == (8, 29 + 8)
    limited = make_config(run={"partition_rows": "auto"}, executor={"cpu_concurrency": 1},
                          sources=[{"name": "gt", "format": "jsonl", "path": str(sample_data / "gt.jsonl"),
                                    "image_root": str(sample_data), "limit": 40}])
    assert plan_partitions(limited).rows == 2  # limit counts: ceil(40 / 32) = 2


@pytest.mark.build
def test_two_builds_at_different_partition_sizes_write_the_same_shards(sample_data, tiny_model, tmp_path):
    """Same config and seed, 18 prompts in partitions of 3 rows (6) vs 64 rows (2): the same
    config hash and byte-identical shards."""
    small = ["--set", "sources.0.limit=12", "--set", "sources.1.limit=6", "--set", "generate.n=3",
             "--set", "generate.max_tokens=32", "--set", "dropout_ntp.max_tokens=32", "--set", "write.shard_rows=8",
             "--set", "export.formats=[]", "--set", "model.engine_kwargs={max_num_seqs: 16}"]
    # the two builds share nothing (own work folder, output and engine): run side by side, one
    # core each on a 2-core machine, instead of one after the other
    runs = {}
    try:
        for rows in (3, 64):
            base = tmp_path / str(rows)
            base.mkdir()
            runs[rows] = CliRun("run", "--config", SAMPLE_CONFIG, "--executor", "local", "--work-dir", base / "work",
                                "--output", base / "out", *small, "--set", f"run.partition_rows={rows}",
                                log=base / "output.txt")
        for run in runs.values():
            run.finish()
    finally:
        for run in runs.values():
            run.stop()
    builds = []
    for rows in runs:
        base = tmp_path / str(rows)
        plan = json.loads((base / "work" / "ingest" / "plan.json").read_text())
        assert (plan["partition_rows"], plan["rows"]) == (rows, rows)
        builds.append((len(plan["partitions"]), json.loads((base / "out" / "manifest.json").read_text())))
    (n3, a), (n64, b) = builds
    assert (n3, n64) == (4 + 2, 1 + 1)
    assert a["config_hash"] == b["config_hash"] and a["rows"] == b["rows"] > 0 and len(a["shards"]) > 1
    assert [(s["path"], s["sha256"]) for s in a["shards"]] == [(s["path"], s["sha256"]) for s in b["shards"]]
