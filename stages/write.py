"""write: the final dataset folder (DESIGN.md "Output contract").

Reads every pair row the upstream stages made and writes::

    OUT/data/train-00000-of-0000N.parquet        text-contrast pairs (correctness, format, dropout_ntp)
    OUT/data/test-...parquet                     when write.test_fraction > 0 (split by prompt)
    OUT/data/image_crop/train-...parquet         image-contrast pairs (mDPO crops), their own config
    OUT/manifest.json                            shards + SHA-256, totals, version, resolved config + hash
    OUT/README.md                                dataset card: HF ``configs:`` header, statistics, how to rebuild
    OUT/exports/<format>/                        trainer layouts listed in write.exports

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
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import yaml

from pipeline import __version__, faults, storage
from pipeline.config import PipelineConfig
from pipeline.stage import Stage, StageContext, StageStats
from schemas import PAIR_SCHEMA, with_hf_metadata

log = logging.getLogger("pipeline")

#: methods whose pairs differ in the image, not the text (their own files and config)
IMAGE_METHODS = ("image_crop",)
#: dataset configs in the card, in order: (config name, folder under OUT)
CONFIGS = (("default", "data"), ("image_crop", "data/image_crop"))
SPLITS = ("train", "test")

OUTPUT_SCHEMA = with_hf_metadata(PAIR_SCHEMA)
#: bytes of scattered rows held in memory before they are flushed to bucket files
SCATTER_BUFFER_BYTES = int(os.environ.get("MMPR_WRITE_BUFFER_MB", "64")) << 20
#: target uncompressed size of one Parquet row group in a shard
ROW_GROUP_BYTES = 64 << 20
READ_BATCH_ROWS = 256
_POS = "__pos"


class WriteStage(Stage):
    """Registry entry for ``write``; the work is :func:`write_dataset`.

    ``write`` is a whole-dataset step, not a per-partition map: the seeded
    shuffle, the dedup and the split by prompt all need every row.  Run it
    with ``write_dataset(config, input_dirs)`` (what the orchestrator and
    ``python -m pipeline stage write`` do).
    """
    name = "write"
    input_schema = PAIR_SCHEMA
    output_schema = PAIR_SCHEMA

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        raise NotImplementedError(
            "write is a whole-dataset step (global shuffle, dedup, split by prompt, manifest); "
            "call stages.write.write_dataset(config, input_dirs) instead of running it per partition")

    def write(self, input_dirs: list[str], output_dir: str | None = None) -> StageStats:
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


def _conform(batch: pa.RecordBatch | pa.Table, uri: str) -> pa.Table:
    """A batch as a PAIR_SCHEMA table (column order and metadata normalised)."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    missing = [n for n in PAIR_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"{uri}: not a pair file (PAIR_SCHEMA), missing column(s) {missing}")
    try:
        return table.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{uri}: rows do not match PAIR_SCHEMA: {e}") from None


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


def scatter(files: list[str], plan: Plan, buckets: _Buckets) -> None:
    """Stream the full rows once, appending each (with its position) to its shard's bucket."""
    offset = 0
    for uri, n_file in zip(files, plan.file_rows):
        pf = storage.parquet_file(uri)
        seen = 0
        for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS):
            table = _conform(batch, uri)
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


def _row_group_rows(table: pa.Table) -> int:
    if table.num_rows == 0:
        return 1
    per_row = max(1, table.nbytes // table.num_rows)
    return int(max(1, min(table.num_rows, ROW_GROUP_BYTES // per_row)))


_IMAGE_BYTES_SUFFIX = ".element.bytes"  # leaf path of the bytes in a list<struct<bytes, path>> image column
_COMPRESSED_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF")  # JPEG, PNG, GIF, WebP
_leaf_paths: dict[str, list[str]] = {}


def _parquet_leaf_paths(schema: pa.Schema) -> list[str]:
    key = schema.remove_metadata().to_string()
    if key not in _leaf_paths:
        sink = pa.BufferOutputStream()
        pq.write_table(schema.empty_table(), sink)
        ps = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
        _leaf_paths[key] = [ps.column(i).path for i in range(len(ps))]
    return _leaf_paths[key]


def _images_precompressed(table: pa.Table, columns: list[str]) -> bool:
    """Every image is JPEG/PNG/GIF/WebP: zstd would only spend time on them."""
    for name in columns:
        flat = pc.list_flatten(table.column(name))
        heads = pc.unique(pc.binary_slice(pc.struct_field(flat, "bytes"), 0, 4)).to_pylist()
        if any(h is not None and not h.startswith(_COMPRESSED_IMAGE_MAGIC) for h in heads):
            return False
    return True


def parquet_bytes(table: pa.Table) -> pa.Buffer:
    """A Parquet file in memory: zstd, no timestamps (the same rows always give the same bytes).

    Image bytes are neither dictionary-encoded (images barely repeat inside a shuffled shard, and
    trying costs time and a dictionary page as large as a thousand images) nor recompressed when
    they are all JPEG/PNG/GIF/WebP (zstd gains ~1% on them at 3x the write time).
    """
    paths = _parquet_leaf_paths(table.schema)
    image_paths = {p for p in paths if p.endswith(_IMAGE_BYTES_SUFFIX) and p.split(".")[0] in table.column_names}
    image_columns = sorted({p.split(".")[0] for p in image_paths})
    compress_images = not _images_precompressed(table, image_columns)
    sink = pa.BufferOutputStream()
    pq.write_table(
        table, sink, row_group_size=_row_group_rows(table),
        compression={p: "zstd" if compress_images or p not in image_paths else "none" for p in paths},
        use_dictionary=[p for p in paths if p not in image_paths],
    )
    return sink.getvalue()


shard_bytes = parquet_bytes


def gather(shard_no: int, shard: Shard, buckets: _Buckets) -> pa.Table:
    table = buckets.read(shard_no)
    if table is None or table.num_rows != shard.rows:
        got = 0 if table is None else table.num_rows
        raise RuntimeError(f"{shard.relpath}: gathered {got} rows, planned {shard.rows}")
    order = np.empty(table.num_rows, np.int64)
    order[table.column(_POS).to_numpy()] = np.arange(table.num_rows)
    table = table.drop_columns([_POS]).take(pa.array(order)).combine_chunks()
    return pa.Table.from_arrays(table.columns, schema=OUTPUT_SCHEMA)  # adds the HF metadata, no copy


# -- statistics -------------------------------------------------------------------
def assistant_chars(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Characters of text in each row's conversation (chosen/rejected: the assistant turns)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.int64)
    messages = pc.list_flatten(arr)
    msg_row = pc.list_parent_indices(arr).to_numpy()
    content = pc.struct_field(messages, "content")
    parts = pc.list_flatten(content)
    if len(parts) == 0:
        return np.zeros(n, np.int64)
    part_msg = pc.list_parent_indices(content).to_numpy()
    is_text = pc.fill_null(pc.equal(pc.struct_field(parts, "type"), "text"), False).to_numpy(zero_copy_only=False)
    lens = pc.fill_null(pc.utf8_length(pc.struct_field(parts, "text")), 0).to_numpy(zero_copy_only=False)
    weights = np.where(is_text, lens, 0)
    return np.bincount(msg_row[part_msg], weights=weights, minlength=n).astype(np.int64)


class Stats:
    """Counts and per-method length/token distributions of the written rows."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()   # (config, split, source, method) -> rows
        self.models: Counter = Counter()
        self.values: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))

    def add(self, shard: Shard, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        source = table.column("source").to_pylist()
        method = table.column("method").to_pylist()
        for s, m in zip(source, method):
            self.counts[(shard.config, shard.split, s, m)] += 1
        prov = table.column("provenance")
        self.models.update(v for v in pc.struct_field(prov, "model").to_pylist() if v)
        chosen = assistant_chars(table.column("chosen"))
        rejected = assistant_chars(table.column("rejected"))
        ct = pc.struct_field(prov, "chosen_tokens").to_numpy(zero_copy_only=False).astype(np.float64)
        rt = pc.struct_field(prov, "rejected_tokens").to_numpy(zero_copy_only=False).astype(np.float64)
        m_arr = np.asarray(method, dtype=object)
        for m in sorted(set(method)):
            sel = m_arr == m
            v = self.values[m]
            v["chosen_chars"].append(chosen[sel])
            v["rejected_chars"].append(rejected[sel])
            v["chosen_tokens"].append(ct[sel])
            v["rejected_tokens"].append(rt[sel])

    def totals(self, level: int) -> dict[str, int]:
        out: Counter = Counter()
        for key, n in self.counts.items():
            out[key[level]] += n
        return dict(sorted(out.items()))

    def source_method(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter] = defaultdict(Counter)
        for (_, _, s, m), n in self.counts.items():
            out[s][m] += n
        return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}

    def splits(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter] = defaultdict(Counter)
        for (c, sp, _, _), n in self.counts.items():
            out[c][sp] += n
        rank = {s: i for i, s in enumerate(SPLITS)}
        return {c: dict(sorted(v.items(), key=lambda kv: (rank.get(kv[0], len(SPLITS)), kv[0])))
                for c, v in sorted(out.items())}

    def lengths(self) -> dict[str, dict]:
        out = {}
        for m in sorted(self.values):
            v = {k: np.concatenate(a) for k, a in self.values[m].items()}
            c, r = v["chosen_chars"].astype(np.float64), v["rejected_chars"].astype(np.float64)
            ratio = r[c > 0] / c[c > 0]
            out[m] = {
                "rows": int(len(c)),
                "chosen_chars": _describe(c), "rejected_chars": _describe(r),
                "rejected_over_chosen": _describe(ratio, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9)),
                "rejected_longer_fraction": round(float(np.mean(r > c)), 4) if len(c) else None,
                "chosen_tokens": _describe(v["chosen_tokens"]),
                "rejected_tokens": _describe(v["rejected_tokens"]),
            }
        return out


def _describe(x: np.ndarray, quantiles=(0.5, 0.9)) -> dict:
    x = x[~np.isnan(x)] if x.dtype.kind == "f" else x
    if len(x) == 0:
        return {"n": 0}
    d = {"n": int(len(x)), "mean": round(float(np.mean(x)), 2), "min": round(float(np.min(x)), 2),
         "max": round(float(np.max(x)), 2)}
    for q in quantiles:
        name = "median" if q == 0.5 else f"p{int(round(q * 100))}"
        d[name] = round(float(np.quantile(x, q)), 2)
    return d


# -- card -------------------------------------------------------------------------
def card_header(shards: list[dict], pretty_name: str | None = None, tags: list[str] | None = None) -> str:
    """The YAML front matter of a dataset card for shards laid out as ``<folder>/<split>-*.parquet``.

    ``shards``: dicts with ``path``, ``config``, ``split``, ``rows``, ``bytes`` and ``arrow_bytes``.
    ``configs:`` maps each non-empty config to its split files (the Hugging Face convention);
    ``dataset_info:`` records the split sizes.  ``datasets`` keys its cache of a local folder on
    this header, so the sizes also make a rebuilt folder load fresh instead of from a stale cache.
    """
    configs, infos = [], []
    for name, folder in CONFIGS:
        mine = [s for s in shards if s["config"] == name]
        splits = sorted({s["split"] for s in mine}, key=lambda sp: (SPLITS.index(sp) if sp in SPLITS else 99, sp))
        if not splits:
            continue  # an empty config is left out of the card
        entry = {"config_name": name}
        if name == "default":
            entry["default"] = True
        entry["data_files"] = [{"split": sp, "path": f"{folder}/{sp}-*.parquet"} for sp in splits]
        configs.append(entry)
        infos.append({
            "config_name": name,
            "splits": [{"name": sp,
                        "num_bytes": sum(s["arrow_bytes"] for s in mine if s["split"] == sp),
                        "num_examples": sum(s["rows"] for s in mine if s["split"] == sp)} for sp in splits],
            "download_size": sum(s["bytes"] for s in mine),
            "dataset_size": sum(s["arrow_bytes"] for s in mine),
        })
    header: dict = {}
    if pretty_name:
        header["pretty_name"] = pretty_name
    if tags:
        header["tags"] = tags
    header["configs"] = configs
    header["dataset_info"] = infos
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n"


def _fmt(d: dict, key: str) -> str:
    v = d.get(key)
    return "-" if v is None else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}")


def render_card(config: PipelineConfig, manifest: dict, models: list[str]) -> str:
    t, lengths = manifest["totals"], manifest["lengths"]
    lines = [card_header(manifest["shards"], config.run.name, ["dpo", "preference", "multimodal", "mmpr-forge"])]
    lines += [
        f"# {config.run.name}",
        "",
        "Multimodal preference pairs (image + question, chosen and rejected answer) built by "
        f"mmpr-forge {manifest['pipeline_version']} (config hash "
        f"`{manifest['config_hash']}`). Methods: MMPR correctness pairs and format negatives "
        "(InternVL2.5-MPO, arXiv 2411.10442), DropoutNTP (same paper), and mDPO conditional image "
        "pairs (arXiv 2406.11839).",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "pairs = load_dataset(\"<this folder>\")                 # text-contrast pairs (TRL DPOTrainer reads them as is)",
        "crops = load_dataset(\"<this folder>\", \"image_crop\")   # image-contrast pairs: use `rejected_images`",
        "```",
        "",
        "Columns: `id`, `prompt`/`chosen`/`rejected` (TRL conversational form), `images` and "
        "`rejected_images` (decoded to PIL), `method`, `source`, `question`, `provenance` (typed struct). "
        "The `image_crop` pairs have the same text on both sides and differ only in the image; they only "
        "carry signal for trainers that read `rejected_images` (ms-swift, mDPO-style), which is why they "
        "are a separate config.",
        "",
        "## Contents",
        "",
        f"Rows: **{manifest['rows']}** ({manifest['duplicates_dropped']} duplicate ids dropped).",
        "",
        "| config | split | rows | shards |",
        "|---|---|---:|---:|",
    ]
    for cfg, splits in manifest["splits"].items():
        for sp, n in splits.items():
            k = sum(1 for s in manifest["shards"] if s["config"] == cfg and s["split"] == sp)
            lines.append(f"| {cfg} | {sp} | {n} | {k} |")
    lines += ["", "Pairs per method:", "", "| method | rows |", "|---|---:|"]
    lines += [f"| {m} | {n} |" for m, n in t["method"].items()]
    methods = list(t["method"])
    lines += ["", "Pairs per source and method:", "",
              "| source | " + " | ".join(methods) + " | total |",
              "|---|" + "---:|" * (len(methods) + 1)]
    for s, by in t["source_method"].items():
        lines.append(f"| {s} | " + " | ".join(str(by.get(m, 0)) for m in methods) + f" | {sum(by.values())} |")
    lines += ["", "## Sources and model", ""]
    for src in config.sources:
        lines.append(f"- `{src.name}`: {src.format} `{src.path}` (answer type {src.answer_type}); "
                     f"{t['source'].get(src.name, 0)} pairs")
    for s in t["source"]:
        if not config.source(s):
            lines.append(f"- `{s}`: {t['source'][s]} pairs")
    m = config.model
    lines.append(f"- policy model: `{m.resolved_path}`" + (f" (revision {m.revision})" if m.revision else "")
                 + (f"; models in provenance: {', '.join(f'`{x}`' for x in models)}" if models else ""))
    lines += [
        "",
        "## Length statistics",
        "",
        "Characters of the chosen and rejected answers per method (longer is not better: LLaVA-RLHF, "
        "RLAIF-V), the rejected/chosen length ratio, and tokens from provenance "
        "(`chosen_tokens`/`rejected_tokens`).",
        "",
        "| method | rows | chosen chars mean / median / p90 | rejected chars mean / median / p90 "
        "| rejected/chosen p10 / median / p90 | rejected longer | chosen tokens mean / median / p90 "
        "| rejected tokens mean / median / p90 |",
        "|---|---:|---|---|---|---:|---|---|",
    ]
    for meth, d in lengths.items():
        c, r, q = d["chosen_chars"], d["rejected_chars"], d["rejected_over_chosen"]
        ct, rt = d["chosen_tokens"], d["rejected_tokens"]
        lf = d["rejected_longer_fraction"]
        lines.append(
            f"| {meth} | {d['rows']} | {_fmt(c, 'mean')} / {_fmt(c, 'median')} / {_fmt(c, 'p90')} "
            f"| {_fmt(r, 'mean')} / {_fmt(r, 'median')} / {_fmt(r, 'p90')} "
            f"| {_fmt(q, 'p10')} / {_fmt(q, 'median')} / {_fmt(q, 'p90')} "
            f"| {'-' if lf is None else f'{lf:.0%}'} "
            f"| {_fmt(ct, 'mean')} / {_fmt(ct, 'median')} / {_fmt(ct, 'p90')} "
            f"| {_fmt(rt, 'mean')} / {_fmt(rt, 'median')} / {_fmt(rt, 'p90')} |")
    lines += [
        "",
        "Ratio quantiles of rejected/chosen characters per method (p10 / p25 / median / p75 / p90):",
        "",
    ]
    for meth, d in lengths.items():
        q = d["rejected_over_chosen"]
        lines.append(f"- {meth}: " + " / ".join(_fmt(q, k) for k in ("p10", "p25", "median", "p75", "p90")))
    lines += [
        "",
        "## Files",
        "",
        "`manifest.json` lists every shard with its row count and SHA-256, the totals, the pipeline "
        "version and the resolved config."
        + (f" Trainer exports: {', '.join(f'`exports/{e}/`' for e in manifest['exports'])}."
           if manifest["exports"] else ""),
        "",
        "## Reproduce",
        "",
        "Save the config below as `config.yaml` and run:",
        "",
        "```bash",
        "python -m pipeline run --config config.yaml",
        "```",
        "",
        "The shards are a deterministic function of the inputs and the seed: a rebuild with the same "
        "config (hash above) and the same model writes byte-identical shards.",
        "",
        "```yaml",
        yaml.safe_dump(config.resolved(), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


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
        scatter(files, plan, buckets)
        stats.inc("seconds.scatter", round(time.perf_counter() - t1, 3))
        t1 = time.perf_counter()
        for no, shard in enumerate(plan.shards):
            table = gather(no, shard, buckets)
            data = shard_bytes(table)
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
    if wc.exports and not rows_out:
        log.warning("write: no pairs, so no trainer exports (%s)", ", ".join(wc.exports))
    elif wc.exports:
        from pipeline.exports import export
        for fmt in wc.exports:
            export(fmt, out, storage.join(out, "exports", fmt), name=config.run.name)
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
