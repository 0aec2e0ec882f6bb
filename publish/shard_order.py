"""Where each written pair goes: seeded keys, prompt-grouped shard cuts, row order inside a shard.

A prompt's pairs (rows with the same ``provenance.prompt_id``; a row without
one is its own prompt) stay together: prompts are shuffled across a split's
shards by a seeded prompt key, and inside a shard they are packed into Parquet
row groups of about ``ROW_GROUP_BYTES`` of *distinct* data, whose rows are then
shuffled by a seeded row key.  A row group then holds all repeats of a
prompt's image, so the shard's dictionary-encoded image column stores it once
(``publish.parquet``).  Trainers shuffle rows themselves (TRL, LLaMA-Factory
and ms-swift sample with a random sampler), so grouping a prompt's pairs in
one file changes nothing they see.

Everything here is a function of the rows and the seed only.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _digests(seed: int, purpose: bytes, values: Iterable[str], size: int) -> np.ndarray:
    key = f"mmpr-forge:{seed}".encode()
    h = hashlib.blake2b(digest_size=size, key=key, person=purpose[:16])
    out = []
    for v in values:
        c = h.copy()
        c.update(v.encode("utf-8", "surrogatepass"))
        out.append(c.digest())
    return np.frombuffer(b"".join(out), dtype=">u8").astype(np.uint64).reshape(-1, size // 8)


def row_keys(seed: int, ids: Iterable[str]) -> np.ndarray:
    """(n, 2) uint64: the seeded 128-bit sort key of each pair id (high word first)."""
    return _digests(seed, b"write.order", ids, 16)


def split_draw(seed: int, prompt_keys: Iterable[str]) -> np.ndarray:
    """A uniform draw in [0, 1) per prompt: the same prompt always lands in the same split."""
    return _digests(seed, b"write.split", prompt_keys, 8)[:, 0].astype(np.float64) / 2.0 ** 64


def prompt_keys(seed: int, prompts: Iterable[str]) -> np.ndarray:
    """(n,) uint64: the seeded key that orders prompts across a split's shards."""
    return _digests(seed, b"write.prompt", prompts, 8)[:, 0]


def prompts_of(table: pa.Table | pa.RecordBatch) -> list[str]:
    """Each row's prompt: its ``provenance.prompt_id``, or its own id when it has none."""
    ids = table.column("id").to_pylist()
    sample = pc.struct_field(table.column("provenance"), "prompt_id").to_pylist()
    return [s if s else i for s, i in zip(sample, ids)]


def shard_cuts(prompt_key_sorted: np.ndarray, shard_rows: int) -> np.ndarray:
    """Row offsets where a split's shards start, given its rows sorted by prompt key.

    ``ceil(n / shard_rows)`` balanced targets, each moved to the nearest prompt
    boundary (a prompt is never cut); targets that meet collapse, so a split
    with a few big prompts gets fewer shards rather than empty ones.
    """
    n = len(prompt_key_sorted)
    if n == 0:
        return np.zeros(0, np.int64)
    count = -(-n // shard_rows)
    bounds = np.flatnonzero(np.diff(prompt_key_sorted)) + 1  # where a new prompt starts
    bounds = np.concatenate(([0], bounds, [n]))
    targets = (np.arange(1, count) * n) // count
    i = np.clip(np.searchsorted(bounds, targets), 1, len(bounds) - 1)
    nearest = np.where(targets - bounds[i - 1] <= bounds[i] - targets, bounds[i - 1], bounds[i])
    return np.unique(np.concatenate(([0], nearest[(nearest > 0) & (nearest < n)])))


def _image_bytes(column: pa.ChunkedArray) -> np.ndarray:
    """Image bytes per row, chunk by chunk: a gathered shard has a chunk per scattered piece,
    and combining them would copy every image once more just to measure them."""
    parts = [np.zeros(0, np.int64)]
    for arr in column.chunks:
        flat = pc.list_flatten(arr)
        if len(flat) == 0:
            parts.append(np.zeros(len(arr), np.int64))
            continue
        lengths = pc.fill_null(pc.binary_length(pc.struct_field(flat, "bytes")), 0).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(arr).to_numpy()
        parts.append(np.bincount(parents, weights=lengths, minlength=len(arr)).astype(np.int64))
    return np.concatenate(parts)


def _other_bytes(table: pa.Table) -> int:
    """Bytes of every column but ``images``, the same however the rows are chunked (a gathered
    shard has a chunk per scattered piece, and ``Table.nbytes`` counts each chunk's offsets and
    validity buffers: the row-group cuts would depend on the number of input files and spills).
    Image-list columns count their image bytes, the rest are measured combined."""
    total = 0
    for name in table.column_names:
        if name == "images":
            continue
        col = table.column(name)
        if name == "rejected_images":
            total += int(_image_bytes(col).sum())
        else:
            total += col.combine_chunks().nbytes
    return total


def shard_layout(table: pa.Table, seed: int, row_group_bytes: int) -> tuple[np.ndarray, list[int], bool]:
    """(row order, row-group sizes, whether any prompt has several pairs) for one shard's rows.

    Prompts in prompt-key order are packed into row groups of about
    ``row_group_bytes`` counting a prompt's ``images`` once (its pairs repeat
    them) and every other byte per row; rows inside a row group go in row-key order.
    """
    n = table.num_rows
    if n == 0:
        return np.zeros(0, np.int64), [], False
    ids = table.column("id").to_pylist()
    rk = row_keys(seed, ids)
    pk = prompt_keys(seed, prompts_of(table))
    by_prompt = np.lexsort((rk[:, 1], rk[:, 0], pk))
    images = _image_bytes(table.column("images"))[by_prompt]
    other = _other_bytes(table) / n  # text, provenance, rejected_images: per row
    first = np.ones(n, bool)
    first[1:] = pk[by_prompt][1:] != pk[by_prompt][:-1]
    cost = np.cumsum(np.where(first, images, 0) + other)
    starts = np.flatnonzero(first)
    groups, lo, base = [], 0, 0.0
    for s in starts[1:]:  # close a row group at the first prompt boundary past the budget
        if cost[s - 1] - base >= row_group_bytes:
            groups.append((lo, int(s)))
            lo, base = int(s), float(cost[s - 1])
    groups.append((lo, n))
    order = []
    for lo, hi in groups:
        rows = by_prompt[lo:hi]
        order.append(rows[np.lexsort((rk[rows, 1], rk[rows, 0]))])
    return np.concatenate(order), [hi - lo for lo, hi in groups], len(starts) < n
