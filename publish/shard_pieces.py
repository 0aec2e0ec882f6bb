"""A scatter task's per-shard pieces: held in memory (or the object store), or spilled to disk.

A scatter task (``publish.shard_tasks.scatter_partition``) sends each row of
its input file to its shard's buffer.  ``Buckets`` keeps those buffers and
hands them on one of two ways:

* *held*: while the task's rows stay under its share of the write's memory
  budget (``hold`` bytes, ``stages.write.held_budget``, 0 by default), nothing is written:
  at the end each shard's rows become one record batch (or, when a prompt's
  pairs repeat its image, one zstd-compressed Arrow IPC stream), which the
  task returns.  Under the Ray executor each is a task return of its own, so
  Ray copies it into the object store once and the gather task maps it from
  shared memory; in-process it stays in the driver's memory.  No byte goes to
  disk.
* *spilled*: past the share (or with a share of 0), the buffers are flushed
  past ``budget`` bytes into ONE Arrow IPC file of the task's own in the spill
  folder (one record batch per shard), as before: temp files number
  ``partition bytes / budget`` whatever the number of shards.

A gather task reads every kind of piece back into the same rows, so a shard's bytes
do not depend on which way its pieces came (``gather_shard`` recomputes the
row order from the rows' keys).
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from pipeline.files import storage

#: spill files of a partition whose prompts have several pairs are zstd-compressed: a prompt's
#: pairs sit next to each other in a shard's batch, so zstd's window stores their shared image
#: about once (15x less temp disk at 15 pairs per image); with one pair per prompt nothing
#: repeats and compressing would only cost ~30% of the write's CPU
SPILL_OPTIONS = {False: ipc.IpcWriteOptions(), True: ipc.IpcWriteOptions(compression="zstd")}

#: a spilled piece: (spill file, record batch number)
Spilled = tuple[str, int]
#: a held piece: the shard's rows as one record batch, or (zstd-compressed) as an IPC stream
Held = pa.RecordBatch | pa.Buffer


def held_size(piece: Held) -> int:
    return piece.nbytes if isinstance(piece, pa.RecordBatch) else piece.size


def _one_batch(tables: list[pa.Table]) -> pa.RecordBatch:
    batch = pa.concat_tables(tables).combine_chunks().to_batches()
    return batch[0] if len(batch) == 1 else pa.concat_batches(batch)


class Buckets:
    """One scatter task's rows per shard: held while they fit ``hold`` bytes, else spilled
    past ``budget`` bytes into IPC files under ``root``.  ``index`` maps a shard to its
    spilled pieces; ``held`` (after ``finish``) to its in-memory piece."""

    def __init__(self, root: str, tag: str, budget: int, hold: int = 0) -> None:
        self.root, self.tag, self.budget, self.hold = root, tag, budget, hold
        self.buffers: dict[int, list[pa.Table]] = defaultdict(list)
        self.buffered = 0
        self.holding = hold > 0
        self.files = 0
        self.index: dict[int, list[Spilled]] = defaultdict(list)
        self.held: dict[int, Held] = {}
        self.compress = False
        self.flush_s = 0.0

    def add(self, shard: int, table: pa.Table) -> None:
        self.buffers[shard].append(table)
        self.buffered += table.nbytes
        if self.holding and self.buffered > self.hold:
            self.holding = False  # over this task's share: everything goes to disk from now on
        if not self.holding and self.buffered >= self.budget:
            self.flush()

    def flush(self) -> None:
        if not self.buffers:
            return
        t0 = time.perf_counter()
        uri = storage.join(self.root, f"{self.tag}-{self.files:05d}.arrow")
        self.files += 1
        fs, path = storage.resolve(uri)
        schema = next(iter(self.buffers.values()))[0].schema
        with fs.open_output_stream(path) as sink, ipc.new_file(sink, schema, options=SPILL_OPTIONS[self.compress]) as writer:
            for i, (shard, tables) in enumerate(sorted(self.buffers.items())):
                writer.write_batch(_one_batch(tables))
                self.index[shard].append((uri, i))
        self.buffers.clear()
        self.buffered = 0
        self.flush_s += time.perf_counter() - t0

    def finish(self) -> None:
        """The last rows: each shard's as one held IPC buffer when the task stayed within its
        share, else flushed to disk.  Buffers are serialized shard by shard and let go, so the
        task holds its rows about once."""
        if not self.holding:
            self.flush()
            return
        t0 = time.perf_counter()
        for shard in sorted(self.buffers):
            batch = _one_batch(self.buffers.pop(shard))
            if self.compress:  # a prompt's pairs repeat its image: zstd keeps the held piece small
                sink = pa.BufferOutputStream()
                with ipc.new_stream(sink, batch.schema, options=SPILL_OPTIONS[True]) as writer:
                    writer.write_batch(batch)
                self.held[shard] = sink.getvalue()
            else:  # as is: Ray copies its buffers into the store once, a gather task maps them
                self.held[shard] = batch
        self.buffered = 0
        self.flush_s += time.perf_counter() - t0

    def returns(self, shards: Sequence[int]) -> list[Held | None]:
        """The held pieces in the order of ``shards`` (the shards this task's rows go to, as the
        driver planned them), None for each when the task spilled."""
        return [self.held.get(s) for s in shards]


def read_pieces(spilled: Sequence[Spilled], held: Sequence[Held | None]) -> pa.Table | None:
    """A shard's pieces as one table.  Local spill files are memory-mapped: an uncompressed
    batch is then read without a copy (its pages come from the page cache as the shard is
    encoded); a file on an object store is read as before.  Held pieces are read in place
    (from the object store's shared memory under Ray)."""
    batches, opened = [], {}
    for uri, i in spilled:
        if uri not in opened:
            fs, path = storage.resolve(uri)
            source = pa.memory_map(path) if isinstance(fs, pafs.LocalFileSystem) else fs.open_input_file(path)
            opened[uri] = ipc.open_file(source)
        batches.append(opened[uri].get_batch(i))
    for piece in held:
        if isinstance(piece, pa.RecordBatch):
            batches.append(piece)
        elif piece is not None:
            batches.extend(ipc.open_stream(piece))
    return pa.Table.from_batches(batches) if batches else None
