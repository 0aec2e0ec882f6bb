"""The dataset does not depend on how its rows were cut into pieces.

* ``publish.shard_order.shard_layout``: a gathered shard has one chunk per scattered piece
  (input files x spills), so the row-group cuts must not depend on the chunking.
* ``run.partition_rows``: the automatic size (``pipeline.sources.ranges.auto_partition_rows``),
  alone, at 1k, 1M and 10M rows; and two builds at different sizes write the same shard bytes.
"""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from pipeline.core.seeds import stable_hash
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
