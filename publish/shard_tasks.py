"""The write stage's worker tasks: scatter one input partition, gather one shard.

The driver plans (``stages.write.plan_shards``: which shard every input row
goes to); these tasks move the bytes, as Ray tasks when the executor is Ray
and in this process otherwise:

* ``scatter_partition`` streams one input file, sends each row to its shard's
  buffer and spills the buffers past a byte budget into Arrow IPC files of its
  own (one record batch per shard).  It holds one read batch plus its buffers.
* ``gather_shard`` reads one shard's pieces back, orders them
  (``publish.shard_order.shard_layout``), encodes and writes the shard and
  returns its manifest entry and statistics.  It holds one shard.

A shard's bytes depend only on its set of rows and the seed (the order is
recomputed from the rows' keys), never on which task scattered which piece,
so any number of workers writes the same files.
"""
from __future__ import annotations

import hashlib
import resource
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from pipeline.files import storage
from publish.parquet import ROW_GROUP_BYTES, parquet_bytes
from publish.shard_order import shard_layout
from publish.stats import Stats
from schemas import PAIR_SCHEMA, with_hf_metadata

OUTPUT_SCHEMA = with_hf_metadata(PAIR_SCHEMA)


@dataclass
class Shard:
    config: str
    split: str
    index: int
    count: int
    rows: int
    folder: str

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}.parquet"

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.name}"


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM (ru_maxrss would carry a parent's peak over exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def conform(batch: pa.RecordBatch | pa.Table, uri: str, config_hash: str | None = None) -> pa.Table:
    """A batch as a PAIR_SCHEMA table (column order and metadata normalised), its
    ``provenance.config_hash`` set to the hash of the config that built the dataset
    (a stage that did not rerun after a tuning wrote its rows under an older hash)."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    missing = [n for n in PAIR_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"{uri}: not a pair file (PAIR_SCHEMA), missing column(s) {missing}")
    try:
        table = table.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{uri}: rows do not match PAIR_SCHEMA: {e}") from None
    if config_hash is None or table.num_rows == 0:
        return table
    prov = table.column("provenance").combine_chunks()
    fields = list(prov.type)
    arrays = [pa.array([config_hash] * len(prov), f.type) if f.name == "config_hash" else prov.field(i)
              for i, f in enumerate(fields)]
    prov = pa.StructArray.from_arrays(arrays, fields=fields, mask=prov.is_null())
    return table.set_column(table.schema.get_field_index("provenance"), table.schema.field("provenance"), prov)


#: spill files of a partition whose prompts have several pairs are zstd-compressed: a prompt's
#: pairs sit next to each other in a shard's batch, so zstd's window stores their shared image
#: about once (15x less temp disk at 15 pairs per image); with one pair per prompt nothing
#: repeats and compressing would only cost ~30% of the write's CPU
_SPILL_OPTIONS = {False: ipc.IpcWriteOptions(), True: ipc.IpcWriteOptions(compression="zstd")}


class _Buckets:
    """One scatter task's rows per shard, spilled past ``budget`` bytes into ONE IPC file
    (one record batch per shard), so temp files number ``partition bytes / budget``
    whatever the number of shards.  ``index`` maps a shard to its (file, batch) pieces."""

    def __init__(self, root: str, tag: str, budget: int) -> None:
        self.root, self.tag, self.budget = root, tag, budget
        self.buffers: dict[int, list[pa.Table]] = defaultdict(list)
        self.buffered = 0
        self.files = 0
        self.index: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.compress = False
        self.flush_s = 0.0

    def add(self, shard: int, table: pa.Table) -> None:
        self.buffers[shard].append(table)
        self.buffered += table.nbytes
        if self.buffered >= self.budget:
            self.flush()

    def flush(self) -> None:
        if not self.buffers:
            return
        t0 = time.perf_counter()
        uri = storage.join(self.root, f"{self.tag}-{self.files:05d}.arrow")
        self.files += 1
        fs, path = storage.resolve(uri)
        schema = next(iter(self.buffers.values()))[0].schema
        with fs.open_output_stream(path) as sink, ipc.new_file(sink, schema, options=_SPILL_OPTIONS[self.compress]) as writer:
            for i, (shard, tables) in enumerate(sorted(self.buffers.items())):
                batch = pa.concat_tables(tables).combine_chunks().to_batches()
                writer.write_batch(batch[0] if len(batch) == 1 else pa.concat_batches(batch))
                self.index[shard].append((uri, i))
        self.buffers.clear()
        self.buffered = 0
        self.flush_s += time.perf_counter() - t0


def scatter_partition(uri: str, planned_rows: int, dest: np.ndarray, config_hash: str | None, root: str,
                      tag: str, budget: int, batch_rows: int) -> dict:
    """Send every row of one input file to its shard (``dest[i]``; -1 = a dropped duplicate)."""
    t0 = time.perf_counter()
    buckets = _Buckets(root, tag, budget)
    seen = 0
    for batch in storage.parquet_file(uri).iter_batches(batch_size=batch_rows):
        table = conform(batch, uri, config_hash)
        if not buckets.compress and table.num_rows > 1:
            prompt_ids = pc.struct_field(table.column("provenance"), "prompt_id")
            buckets.compress = pc.count_distinct(prompt_ids).as_py() < table.num_rows
        d = dest[seen:seen + table.num_rows]
        seen += table.num_rows
        order = np.argsort(d, kind="stable")
        d_sorted = d[order]
        first = int(np.searchsorted(d_sorted, 0))  # duplicates (-1) sort first: skip them
        if first == len(order):
            continue
        order, d_sorted = order[first:], d_sorted[first:]
        grouped = table.take(pa.array(order))
        cuts = np.flatnonzero(np.diff(d_sorted)) + 1
        for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(order)]))):
            buckets.add(int(d_sorted[a]), grouped.slice(int(a), int(b - a)))
    if seen != planned_rows:
        raise RuntimeError(f"{uri} changed while writing: {seen} rows, planned {planned_rows}")
    buckets.flush()
    return {"index": dict(buckets.index), "peak_mb": peak_rss_mb(),
            "seconds": {"spill": buckets.flush_s, "read_route": time.perf_counter() - t0 - buckets.flush_s}}


def _read_pieces(pieces: list[tuple[str, int]]) -> pa.Table | None:
    """A shard's pieces as one table.  Local spill files are memory-mapped: an uncompressed
    batch is then read without a copy (its pages come from the page cache as the shard is
    encoded); a file on an object store is read as before."""
    batches, opened = [], {}
    for uri, i in pieces:
        if uri not in opened:
            fs, path = storage.resolve(uri)
            source = pa.memory_map(path) if isinstance(fs, pafs.LocalFileSystem) else fs.open_input_file(path)
            opened[uri] = ipc.open_file(source)
        batches.append(opened[uri].get_batch(i))
    return pa.Table.from_batches(batches) if batches else None


def gather_shard(shard: Shard, pieces: list[tuple[str, int]], seed: int, out: str) -> dict:
    """Read one shard's pieces, order its rows, write it; its manifest entry and statistics."""
    t = [time.perf_counter()]
    table = _read_pieces(pieces)
    if table is None or table.num_rows != shard.rows:
        got = 0 if table is None else table.num_rows
        raise RuntimeError(f"{shard.relpath}: gathered {got} rows, planned {shard.rows}")
    order, row_groups, repeats = shard_layout(table, seed, ROW_GROUP_BYTES)
    table = table.take(pa.array(order)).combine_chunks()
    table = pa.Table.from_arrays(table.columns, schema=OUTPUT_SCHEMA)  # adds the HF metadata, no copy
    t.append(time.perf_counter())
    data = parquet_bytes(table, row_groups, dictionary_images=repeats)
    t.append(time.perf_counter())
    storage.write_bytes(storage.join(out, shard.relpath), data)
    t.append(time.perf_counter())
    stats = Stats()
    stats.add(shard, table)
    entry = {
        "path": shard.relpath, "config": shard.config, "split": shard.split,
        "index": shard.index, "count": shard.count, "rows": table.num_rows,
        "bytes": data.size, "arrow_bytes": table.nbytes, "sha256": hashlib.sha256(data).hexdigest(),
    }
    seconds = {"read_order": t[1] - t[0], "encode": t[2] - t[1], "write": t[3] - t[2]}
    return {"entry": entry, "stats": stats, "peak_mb": peak_rss_mb(), "seconds": seconds}


def run_tasks(fn: Callable[..., dict], calls: Sequence[tuple], config: Any, workers: int,
              on_done: Callable[[int, dict], None] | None = None, on_driver_node: bool = False) -> list[dict]:
    """``fn(*call)`` for every call, results in call order: Ray tasks (at most ``workers``
    at once) when ``config.executor.kind == "ray"``, this process otherwise.
    ``on_done(i, result)`` runs in the driver as each call finishes.  ``on_driver_node``:
    the tasks share local paths with the driver (a local output or spill folder), so on a
    cluster they run on the driver's node."""
    results: list[dict | None] = [None] * len(calls)
    if config.executor.kind != "ray":
        for i, call in enumerate(calls):
            results[i] = fn(*call)
            if on_done:
                on_done(i, results[i])
        return results  # type: ignore[return-value]
    import ray

    if not ray.is_initialized():
        from pipeline.run.executors import RayExecutor

        RayExecutor(config)  # starts (or joins) Ray the way the stages' executor does
    options: dict[str, Any] = {"num_cpus": 1, "max_retries": config.executor.max_retries}
    if on_driver_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)
    remote = ray.remote(**options)(fn)
    pending: dict[Any, int] = {}
    todo = iter(enumerate(calls))
    while True:
        for i, call in todo:
            pending[remote.remote(*call)] = i
            if len(pending) >= workers:
                break
        if not pending:
            break
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ref)
        results[i] = ray.get(ref)
        if on_done:
            on_done(i, results[i])
    return results  # type: ignore[return-value]
