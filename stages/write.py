"""write: the final dataset folder (DESIGN.md "Output contract").

Reads every pair row the upstream stages made and writes::

    OUT/data/train-00000-of-0000N.parquet        text-contrast pairs (correctness, format, dropout_ntp)
    OUT/data/test-...parquet                     when write.test_fraction > 0 (split by prompt)
    OUT/data/image_crop/train-...parquet         image-contrast pairs (mDPO crops), their own config
    OUT/manifest.json                            shards + SHA-256, totals, version, resolved config + hash
    OUT/README.md                                dataset card: HF ``configs:`` header, statistics, how to rebuild
    OUT/exports/<format>/                        trainer layouts in write.exports (the export stage, after write)

Writing is a whole-dataset step (global seeded shuffle, exact dedup, split by
prompt), done with memory bounded by one shard plus a few dozen bytes per row:

1. *Plan*: stream only ``id``, ``method`` and ``provenance.sample_id`` from the
   inputs.  Each row gets a 128-bit key ``blake2b(seed, id)``; equal keys are
   equal ids (the ids are 128-bit content hashes themselves), so later copies
   of an id are dropped.  Rows are grouped by (config, split), sorted by key
   and cut into ``ceil(n / shard_rows)`` balanced shards: the shard and the
   position inside it of every row are now known.
2. *Scatter*: stream the full rows once; each row goes, with its position, to
   its shard's buffer; past a byte budget the buffers spill into one Arrow IPC
   temp file (one record batch per shard), so temp files number
   ``dataset bytes / budget`` whatever the shard count.
3. *Gather*: per shard, read its pieces back, put the rows in key order and
   write the shard atomically with the Hugging Face image metadata.

A config or split without rows gets no shard and no entry in the card
(``datasets`` cannot load an empty split).  The card's ``dataset_info`` records
the split sizes: ``datasets`` keys its cache of a local folder on the card's
header, so a rebuilt folder then loads fresh rather than from a stale cache.

Shard contents depend only on the input rows and the seed, Parquet carries no
timestamps, so a rerun over the same inputs writes byte-identical shards.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
from pydantic import Field, field_validator

from pipeline import __version__, faults, storage
from pipeline.config import PipelineConfig, Section
from pipeline.stage import Stage, StageStats
from publish.card import render_card
from publish.exports import FORMATS
from publish.layout import CONFIGS, IMAGE_METHODS, SPLITS
from publish.parquet import parquet_bytes
from publish.stats import Stats
from schemas import PAIR_SCHEMA, with_hf_metadata

log = logging.getLogger("pipeline")

OUTPUT_SCHEMA = with_hf_metadata(PAIR_SCHEMA)
#: bytes of scattered rows held in memory before they are flushed to bucket files
SCATTER_BUFFER_BYTES = int(os.environ.get("MMPR_WRITE_BUFFER_MB", "64")) << 20
READ_BATCH_ROWS = 256
_POS = "__pos"


class WriteConfig(Section):
    shard_rows: int = Field(5000, ge=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    #: trainer layouts written under OUT/exports/ (the formats publish.exports knows)
    exports: list[str] = Field(default_factory=list)

    @field_validator("exports")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        unknown = [f for f in v if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown export format(s) {unknown}; known: {list(FORMATS)}")
        return v


class WriteStage(Stage):
    """The final dataset folder: a whole-dataset step, not a per-partition map (the seeded
    shuffle, the dedup and the split by prompt all need every row)."""
    name = "write"
    kind = "dataset"
    after = ("judge",)
    Config = WriteConfig
    reads = ("run.seed", "run.name")
    input_schema = PAIR_SCHEMA
    output_schema = PAIR_SCHEMA

    def run_dataset(self, input_dirs: list[str], output_dir: str) -> StageStats:
        return write_dataset(self.config, input_dirs, output_dir)


# -- inputs -------------------------------------------------------------------
def input_files(input_dirs: list[str]) -> list[str]:
    """Parquet files of each input: a file, a stage folder (``data/*.parquet``) or a folder of files."""
    files: list[str] = []
    for src in input_dirs:
        if src.endswith(".parquet") and storage.exists(src):
            files.append(src)
            continue
        data = storage.join(src, "data")
        files.extend(storage.list_files(data if storage.exists(data) else src, ".parquet"))
    return files


def _conform(batch: pa.RecordBatch | pa.Table, uri: str, config_hash: str | None = None) -> pa.Table:
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


# -- keys ---------------------------------------------------------------------
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


# -- plan -----------------------------------------------------------------------
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


@dataclass
class Plan:
    shards: list[Shard]
    dest: np.ndarray       # per input row: shard number, -1 = duplicate (dropped)
    pos: np.ndarray        # per input row: position inside its shard
    rows_in: int
    duplicates: int
    file_rows: list[int]


def plan_shards(files: list[str], seed: int, shard_rows: int, test_fraction: float) -> Plan:
    keys, groups, file_rows = [], [], []
    for uri in files:
        pf = storage.parquet_file(uri)
        n_file = 0
        for batch in pf.iter_batches(batch_size=65536, columns=["id", "method", "provenance.sample_id"]):
            ids = batch.column("id").to_pylist()
            keys.append(row_keys(seed, ids))
            is_image = pc.is_in(batch.column("method"), pa.array(IMAGE_METHODS)).to_numpy(zero_copy_only=False)
            g = is_image.astype(np.uint8) * 2
            if test_fraction > 0:
                sample = pc.struct_field(batch.column("provenance"), "sample_id").to_pylist()
                prompt = [s if s else i for s, i in zip(sample, ids)]
                g = g + (split_draw(seed, prompt) < test_fraction).astype(np.uint8)
            groups.append(g)
            n_file += batch.num_rows
        file_rows.append(n_file)
    n = sum(file_rows)
    key = np.concatenate(keys) if keys else np.empty((0, 2), np.uint64)
    group = np.concatenate(groups) if groups else np.empty(0, np.uint8)

    order = np.lexsort((key[:, 1], key[:, 0]))  # stable: copies of an id keep their input order
    ks = key[order]
    dup_sorted = np.zeros(n, bool)
    if n > 1:
        dup_sorted[1:] = (ks[1:, 0] == ks[:-1, 0]) & (ks[1:, 1] == ks[:-1, 1])
    kept = order[~dup_sorted]  # unique rows in key order

    dest = np.full(n, -1, np.int64)
    pos = np.zeros(n, np.int64)
    shards: list[Shard] = []
    for ci, (config, folder) in enumerate(CONFIGS):
        for si, split in enumerate(SPLITS):
            if split == "test" and test_fraction <= 0:
                continue
            rows = kept[group[kept] == ci * 2 + si]
            m = len(rows)
            count = math.ceil(m / shard_rows)  # no rows, no shard (datasets cannot load an empty split)
            local = (np.arange(m) * count) // max(m, 1)  # balanced: sizes differ by at most one
            starts = np.searchsorted(local, np.arange(count))
            sizes = np.diff(np.append(starts, m))
            base = len(shards)
            for i in range(count):
                shards.append(Shard(config, split, i, count, int(sizes[i]), folder))
            dest[rows] = base + local
            pos[rows] = np.arange(m) - starts[local]
    return Plan(shards, dest, pos, n, int(dup_sorted.sum()), file_rows)


# -- scatter / gather -------------------------------------------------------------
class _Buckets:
    """Rows scattered to shards, spilled to disk in Arrow IPC files.

    Rows are buffered per shard; when the buffered bytes pass ``budget`` they
    are flushed into ONE IPC file (one record batch per shard), so the number
    of temp files is ``dataset bytes / budget`` whatever the number of shards.
    An index maps each shard to its (file, batch) pieces, in scatter order.
    """

    def __init__(self, root: str, budget: int) -> None:
        self.root, self.budget = root, budget
        self.buffers: dict[int, list[pa.Table]] = defaultdict(list)
        self.buffered = 0
        self.files = 0
        self.index: dict[int, list[tuple[str, int]]] = defaultdict(list)

    def add(self, shard: int, table: pa.Table) -> None:
        self.buffers[shard].append(table)
        self.buffered += table.nbytes
        if self.buffered >= self.budget:
            self.flush()

    def flush(self) -> None:
        if not self.buffers:
            return
        path = os.path.join(self.root, f"spill-{self.files:06d}.arrow")
        self.files += 1
        schema = next(iter(self.buffers.values()))[0].schema
        with pa.OSFile(path, "wb") as sink, ipc.new_file(sink, schema) as writer:
            for i, (shard, tables) in enumerate(sorted(self.buffers.items())):
                batch = pa.concat_tables(tables).combine_chunks().to_batches()
                writer.write_batch(batch[0] if len(batch) == 1 else pa.concat_batches(batch))
                self.index[shard].append((path, i))
        self.buffers.clear()
        self.buffered = 0

    def read(self, shard: int) -> pa.Table | None:
        batches = []
        for path, i in self.index.get(shard, []):
            with pa.memory_map(path) as src:
                batches.append(ipc.open_file(src).get_batch(i))
        return pa.Table.from_batches(batches) if batches else None


def scatter(files: list[str], plan: Plan, buckets: _Buckets, config_hash: str | None = None) -> None:
    """Stream the full rows once, appending each (with its position) to its shard's bucket."""
    offset = 0
    for uri, n_file in zip(files, plan.file_rows):
        pf = storage.parquet_file(uri)
        seen = 0
        for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS):
            table = _conform(batch, uri, config_hash)
            lo, hi = offset + seen, offset + seen + table.num_rows
            seen += table.num_rows
            dest = plan.dest[lo:hi]
            order = np.argsort(dest, kind="stable")
            d_sorted = dest[order]
            first = int(np.searchsorted(d_sorted, 0))  # duplicates (-1) sort first: skip them
            if first == len(order):
                continue
            order = order[first:]
            d_sorted = d_sorted[first:]
            grouped = table.take(pa.array(order)).append_column(_POS, pa.array(plan.pos[lo:hi][order]))
            cuts = np.flatnonzero(np.diff(d_sorted)) + 1
            for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(order)]))):
                buckets.add(int(d_sorted[a]), grouped.slice(int(a), int(b - a)))
        if seen != n_file:
            raise RuntimeError(f"{uri} changed while writing: {seen} rows, planned {n_file}")
        offset += n_file
    buckets.flush()


def gather(shard_no: int, shard: Shard, buckets: _Buckets) -> pa.Table:
    table = buckets.read(shard_no)
    if table is None or table.num_rows != shard.rows:
        got = 0 if table is None else table.num_rows
        raise RuntimeError(f"{shard.relpath}: gathered {got} rows, planned {shard.rows}")
    order = np.empty(table.num_rows, np.int64)
    order[table.column(_POS).to_numpy()] = np.arange(table.num_rows)
    table = table.drop_columns([_POS]).take(pa.array(order)).combine_chunks()
    return pa.Table.from_arrays(table.columns, schema=OUTPUT_SCHEMA)  # adds the HF metadata, no copy


# -- the step -----------------------------------------------------------------------
def _local_tmp_dir(out: str) -> str:
    fs, path = storage.resolve(out)
    parent = None
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, ".write-tmp-*")):
            shutil.rmtree(stale, ignore_errors=True)
        parent = path
    return tempfile.mkdtemp(prefix=".write-tmp-", dir=parent)


def _remove_stale(out: str, keep: set[str]) -> int:
    removed = 0
    for _, folder in CONFIGS:
        for uri in storage.list_files(storage.join(out, folder), ".parquet"):
            rel = f"{folder}/{uri.rsplit('/', 1)[1]}"
            if rel not in keep:
                fs, path = storage.resolve(uri)
                fs.delete_file(path)
                removed += 1
    return removed


def write_dataset(config: PipelineConfig, input_dirs: list[str], output_dir: str | None = None) -> StageStats:
    """Write the final dataset folder from the pair files of ``input_dirs``; see the module docstring."""
    t0 = time.perf_counter()
    out = output_dir or config.run.output_dir
    wc = config.write
    files = input_files(input_dirs)
    stats = StageStats()

    # the manifest is the dataset's completion marker (object stores have no
    # rename): while shards are rewritten, no manifest describes the folder
    storage.remove(storage.join(out, "manifest.json"))
    plan = plan_shards(files, config.run.seed, wc.shard_rows, wc.test_fraction)
    stats.inc("seconds.plan", round(time.perf_counter() - t0, 3))
    tmp = _local_tmp_dir(out)
    row_stats = Stats()
    shard_entries = []
    try:
        buckets = _Buckets(tmp, SCATTER_BUFFER_BYTES)
        t1 = time.perf_counter()
        scatter(files, plan, buckets, config.config_hash())
        stats.inc("seconds.scatter", round(time.perf_counter() - t1, 3))
        t1 = time.perf_counter()
        for no, shard in enumerate(plan.shards):
            table = gather(no, shard, buckets)
            data = parquet_bytes(table)
            storage.write_bytes(storage.join(out, shard.relpath), data)
            faults.on_data_written("write")
            row_stats.add(shard, table)
            shard_entries.append({
                "path": shard.relpath, "config": shard.config, "split": shard.split,
                "index": shard.index, "count": shard.count, "rows": table.num_rows,
                "bytes": data.size, "arrow_bytes": table.nbytes, "sha256": hashlib.sha256(data).hexdigest(),
            })
            stats.inc("bytes_written", data.size)
            del table, data
        stats.inc("seconds.gather", round(time.perf_counter() - t1, 3))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    removed = _remove_stale(out, {s.relpath for s in plan.shards})

    rows_out = sum(s["rows"] for s in shard_entries)
    lengths = row_stats.lengths()
    manifest = {
        "name": config.run.name,
        "pipeline_version": __version__,
        "config_hash": config.config_hash(),
        "rows": rows_out,
        "rows_in": plan.rows_in,
        "duplicates_dropped": plan.duplicates,
        "splits": {c: {s.split: 0 for s in plan.shards if s.config == c} for c, _ in CONFIGS},
        "totals": {
            "method": row_stats.totals(3),
            "source": row_stats.totals(2),
            "source_method": row_stats.source_method(),
        },
        "lengths": lengths,
        "shards": shard_entries,
        "exports": list(wc.exports),
        "config": config.resolved(),
    }
    for cfg, splits in row_stats.splits().items():
        manifest["splits"][cfg].update(splits)
    storage.write_bytes(storage.join(out, "README.md"),
                        render_card(config, manifest, sorted(row_stats.models)).encode())
    storage.write_json(storage.join(out, "manifest.json"), manifest)  # last: the dataset is complete

    stats.rows_in = plan.rows_in
    stats.rows_out = rows_out
    stats.inc("duplicates_dropped", plan.duplicates)
    stats.inc("shards", len(shard_entries))
    if removed:
        stats.inc("stale_shards_removed", removed)
    for m, n in manifest["totals"]["method"].items():
        stats.inc(f"written.{m}", n)
    stats.wall_s = time.perf_counter() - t0
    log.info("write: %d rows in, %d out (%d duplicates) in %d shards -> %s (%.1f s)", plan.rows_in, rows_out,
             plan.duplicates, len(shard_entries), out, stats.wall_s)
    return stats
