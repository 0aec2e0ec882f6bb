"""The write stage's worker tasks: scatter one input partition, gather one shard.

The driver plans (``stages.write.plan_shards``: which shard every input row
goes to); these tasks move the bytes, as Ray tasks when the executor is Ray
and in this process otherwise:

* ``scatter_partition`` streams one input file and sends each row to its
  shard's buffer (``publish.shard_pieces.Buckets``).  Within its share of the
  write's memory budget it returns each shard's rows as an in-memory piece (a
  Ray object under Ray: no temp disk); past it, it spills the buffers past a
  byte budget into Arrow IPC files of its own (one record batch per shard).
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
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.files import storage
from publish.parquet import ROW_GROUP_BYTES, parquet_bytes
from publish.shard_pieces import Buckets, Held, Spilled, held_size, read_pieces
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


def _schedstat(tid: int | str) -> tuple[int, int]:
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        run, queued = f.read().split()[:2]
    return int(run), int(queued)


def sched_seconds() -> tuple[float, float, float]:
    """(CPU seconds of all this process's threads, and the calling thread's on-CPU and
    waiting-for-a-CPU seconds) so far, from ``/proc/self/task/*/schedstat``.  A task's wall
    time less its thread's two is time off the CPU and not queued for one: blocked on the
    disk, page faults or Arrow's helper threads.  So the breakdown says whether the disk or
    the CPUs held a task up, however loaded the machine.  Elsewhere: (process CPU time, 0, 0)."""
    import os
    import threading

    cpu = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                cpu += _schedstat(tid)[0]
            except OSError:  # the thread ended meanwhile
                continue
        run, queued = _schedstat(threading.get_native_id())
    except OSError:
        return time.process_time(), 0.0, 0.0
    return cpu / 1e9, run / 1e9, queued / 1e9


def _sched_since(start: tuple[float, float, float], wall: float) -> dict:
    """A task's CPU seconds (all threads), its thread's run-queue wait, and the rest of its wall
    time off the CPU (``sched_seconds``)."""
    now = sched_seconds()
    cpu, run, queued = (b - a for a, b in zip(start, now))
    return {"cpu_s": cpu, "runq_s": queued, "blocked_s": max(0.0, wall - run - queued)}


def shared_rss_mb() -> float:
    """Shared memory in this process's RSS now (RssShmem, MB): object-store pages a Ray worker
    wrote or read count in its peak RSS (``peak_rss_mb``) although they are the store's, not
    the task's."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssShmem:")) / 1024
    except (OSError, StopIteration):
        return 0.0


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


def scatter_partition(uri: str, planned_rows: int, dest: np.ndarray, config_hash: str | None, root: str,
                      tag: str, budget: int, batch_rows: int, hold: int = 0, shards: Sequence[int] = ()) -> tuple:
    """Send every row of one input file to its shard (``dest[i]``; -1 = a dropped duplicate).

    Returns ``(result, *held)``: one held piece (or None when the task spilled) per shard
    of ``shards``, the shards this file's rows go to in the driver's order, so that under
    Ray each piece is a task return of its own, in the object store, owned by the driver."""
    t0, sched0 = time.perf_counter(), sched_seconds()
    buckets = Buckets(root, tag, budget, hold)
    seen = 0
    # one thread, as the task's one CPU says: Arrow's pool would spread a read over every core,
    # so one worker would already take both of a 2-core machine's and two could not scale
    for batch in storage.parquet_file(uri).iter_batches(batch_size=batch_rows, use_threads=False):
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
    buckets.finish()
    held, wall = buckets.returns(shards), time.perf_counter() - t0
    result = {"index": dict(buckets.index), "peak_mb": peak_rss_mb(), "shm_mb": shared_rss_mb(),
              **_sched_since(sched0, wall), "held": bool(buckets.held),
              "held_bytes": sum(held_size(b) for b in buckets.held.values()), "spill_files": buckets.files,
              "seconds": {"spill": buckets.flush_s, "read_route": wall - buckets.flush_s}}
    return (result, *held)


def gather_shard(shard: Shard, pieces: list[Spilled], seed: int, out: str, *held: Held | None) -> dict:
    """Read one shard's pieces (``pieces`` spilled, ``held`` in memory: under Ray, object refs
    passed as arguments of their own, which Ray resolves from the object store), order its
    rows, write it; its manifest entry and statistics."""
    t, sched0 = [time.perf_counter()], sched_seconds()
    table = read_pieces(pieces, held)
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
    return {"entry": entry, "stats": stats, "peak_mb": peak_rss_mb(), "shm_mb": shared_rss_mb(), "seconds": seconds,
            **_sched_since(sched0, t[-1] - t[0])}


def start_ray(config: Any) -> None:
    """Ray, started (or joined) the way the stages' executor does, unless it is up already."""
    import ray

    if not ray.is_initialized():
        from pipeline.run.executors import RayExecutor

        RayExecutor(config)


def run_tasks(fn: Callable[..., Any], calls: Sequence[tuple], config: Any, workers: int,
              on_done: Callable[[int, Any], None] | None = None, on_driver_node: bool = False,
              num_returns: Sequence[int] | None = None) -> list:
    """``fn(*call)`` for every call, results in call order: Ray tasks (at most ``workers``
    at once) when ``config.executor.kind == "ray"``, this process otherwise.
    ``on_done(i, result)`` runs in the driver as each call finishes.  ``on_driver_node``:
    the tasks share local paths with the driver (a local output or spill folder), so on a
    cluster they run on the driver's node.

    ``num_returns[i]``: call i returns a tuple of that many values, the first a small result;
    each result is then ``(first, rest)`` where ``rest`` are the other values as Ray object
    refs (never fetched to the driver) or, in-process, the values themselves."""
    results: list[Any] = [None] * len(calls)
    if config.executor.kind != "ray":
        for i, call in enumerate(calls):
            out = fn(*call)
            results[i] = (out[0], list(out[1:])) if num_returns is not None else out
            if on_done:
                on_done(i, results[i])
        return results
    import ray

    start_ray(config)
    options: dict[str, Any] = {"num_cpus": 1, "max_retries": config.executor.max_retries}
    if on_driver_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)
    remote = ray.remote(**options)(fn)
    pending: dict[Any, tuple[int, list]] = {}
    todo = iter(enumerate(calls))
    while True:
        for i, call in todo:
            if num_returns is None:
                refs = [remote.remote(*call)]
            else:
                refs = remote.options(num_returns=num_returns[i]).remote(*call)
                refs = refs if num_returns[i] > 1 else [refs]
            pending[refs[0]] = (i, refs[1:])
            if len(pending) >= workers:
                break
        if not pending:
            break
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        i, rest = pending.pop(ref)
        value = ray.get(ref)
        if num_returns is None:
            results[i] = value
        else:  # one return: Ray stored the whole tuple as that one object
            results[i] = (value[0] if num_returns[i] == 1 else value, rest)
        if on_done:
            on_done(i, results[i])
    return results
