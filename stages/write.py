"""write: the final dataset folder (docs/architecture.md, "The output contract").

Reads every pair row the upstream stages made and writes::

    OUT/data/train-00000-of-0000N.parquet        text-contrast pairs (correctness, format, dropout_ntp)
    OUT/data/test-...parquet                     when write.test_fraction > 0 (split by prompt)
    OUT/data/image_crop/train-...parquet         image-contrast pairs (mDPO crops), their own config
    OUT/prompts/train-00000-of-0000N.parquet     the prompt table: every generated prompt's pass rate
                                                 (publish.prompt_table; the card's ``prompts`` config)
    OUT/manifest.json                            shards + SHA-256, totals, version, resolved config + hash
    OUT/README.md                                dataset card: HF ``configs:`` header, statistics, how to rebuild
    OUT/exports/<format>/                        trainer layouts in export.formats (the export stage, after write)

Writing is a whole-dataset step (global seeded shuffle, exact dedup, split by
prompt).  The driver only plans; the bytes move in tasks (``publish.shard_tasks``:
Ray tasks under the Ray executor, ``executor.write_workers`` at once, in-process otherwise):

1. *Plan* (driver): stream only ``id``, ``method`` and ``provenance.prompt_id``
   from the inputs, a few dozen bytes per row.  Each row gets a 128-bit key
   ``blake2b(seed, id)``; equal keys are equal ids (the ids are 128-bit content
   hashes themselves), so later copies of an id are dropped.  Each prompt
   (``prompt_id``) gets a seeded 64-bit key.  Rows are grouped by (config,
   split), ordered by prompt key and cut into ``ceil(n / shard_rows)`` shards
   at prompt boundaries (``publish.shard_order``): a prompt's pairs share a shard.
2. *Scatter* (one task per input file): stream the file's rows, buffer each by
   its shard and spill past ``executor.write_buffer_mb`` into Arrow IPC temp
   files.  With ``executor.write_memory_mb`` above 0 (default 0), a task whose
   rows fit its share of it returns one piece per shard instead, which stays in
   memory (under Ray: the object store, a Ray object per piece), so no byte goes
   through temp disk (``publish.shard_pieces``).
3. *Gather* (one task per shard): read the shard's pieces, pack its prompts
   into row groups, shuffle rows inside each by row key, write the shard
   atomically with the Hugging Face image metadata, image bytes
   dictionary-encoded so a prompt's image is stored once.

A config or split without rows gets no shard and no entry in the card
(``datasets`` cannot load an empty split).  The card's ``dataset_info`` records
the split sizes: ``datasets`` keys its cache of a local folder on the card's
header, so a rebuilt folder then loads fresh rather than from a stale cache.

Shard contents depend only on the input rows and the seed, Parquet carries no
timestamps, so a rerun over the same inputs writes byte-identical shards,
whatever the number of workers.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from pydantic import Field

from pipeline import __version__
from pipeline.run import faults
from pipeline.files import storage
from pipeline.config.settings import PipelineConfig, Section
from pipeline.files.ownership import Folder, open_folder
from pipeline.core.stage import DatasetStage, StageStats
from publish.card import render_card
from publish.layout import SPLITS, configs, image_methods
from publish.prompt_table import FOLDER as PROMPTS_FOLDER, side_files, write_prompt_table
from publish.parquet import parquet_bytes  # noqa: F401  (bench_report encodes shards as the stage does)
from publish.shard_order import prompt_keys, prompts_of, row_keys, shard_cuts, split_draw
from publish.shard_tasks import OUTPUT_SCHEMA, Shard, gather_shard, run_tasks, scatter_partition
from publish.stats import Stats
from schemas import PAIR_SCHEMA

log = logging.getLogger("pipeline")

READ_BATCH_ROWS = 256
#: spill folders beside the output (each reserved in the output's ledger before it is made)
TMP_PREFIX = ".write-tmp-"


class WriteConfig(Section):
    shard_rows: int = Field(5000, ge=1, description="Rows per Parquet shard of the dataset")
    test_fraction: float = Field(0.0, ge=0, lt=1, description=(
        "Fraction of prompts whose pairs go to the test split (split by prompt; 0 = train only)"))


class WriteStage(DatasetStage):
    """The final dataset folder: a whole-dataset step, not a per-partition map (the seeded
    shuffle, the dedup and the split by prompt all need every row)."""
    name = "write"
    after = ("judge",)
    Config = WriteConfig
    #: sources, model: the card names them; run.stages: whose ``prompts`` side outputs are the prompt table
    uses = ("run.seed", "run.name", "run.stages", "sources", "model")
    #: report.json and report_images.parquet come from the run report (``pipeline.run.report``)
    writes = ("README.md", "manifest.json", "report.json", "report_images.parquet", "report.html")
    input_schema = PAIR_SCHEMA
    output_schema = PAIR_SCHEMA

    def run_dataset(self, input_dirs: list[str], output_dir: str) -> StageStats:
        # what the build's stages say on the card (reading the whole config, as the framework does)
        from publish.card import stage_sections

        return write_dataset(self.config, input_dirs, output_dir, stage_sections(self.pipeline_config))


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


# -- plan -----------------------------------------------------------------------
@dataclass
class Plan:
    shards: list[Shard]
    dest: np.ndarray       # per input row: shard number, -1 = duplicate (dropped)
    rows_in: int
    duplicates: int
    file_rows: list[int]


def plan_shards(files: list[str], seed: int, shard_rows: int, test_fraction: float) -> Plan:
    keys, prompts, groups, file_rows = [], [], [], []
    image = pa.array(image_methods(), pa.string())
    for uri in files:
        pf = storage.parquet_file(uri)
        n_file = 0
        for batch in pf.iter_batches(batch_size=65536, columns=["id", "method", "provenance.prompt_id"]):
            keys.append(row_keys(seed, batch.column("id").to_pylist()))
            prompt = prompts_of(batch)
            prompts.append(prompt_keys(seed, prompt))
            # the row's config: 0 = default (text contrast), 1 + i = the i-th image-contrast method's
            config = pc.fill_null(pc.add(pc.index_in(batch.column("method"), value_set=image), 1), 0)
            g = config.to_numpy(zero_copy_only=False).astype(np.uint8) * 2
            if test_fraction > 0:
                g = g + (split_draw(seed, prompt) < test_fraction).astype(np.uint8)
            groups.append(g)
            n_file += batch.num_rows
        file_rows.append(n_file)
    n = sum(file_rows)
    key = np.concatenate(keys) if keys else np.empty((0, 2), np.uint64)
    pkey = np.concatenate(prompts) if prompts else np.empty(0, np.uint64)
    group = np.concatenate(groups) if groups else np.empty(0, np.uint8)

    order = np.lexsort((key[:, 1], key[:, 0]))  # stable: copies of an id keep their input order
    ks = key[order]
    dup_sorted = np.zeros(n, bool)
    if n > 1:
        dup_sorted[1:] = (ks[1:, 0] == ks[:-1, 0]) & (ks[1:, 1] == ks[:-1, 1])
    kept = order[~dup_sorted]
    kept = kept[np.argsort(pkey[kept], kind="stable")]  # unique rows, a prompt's rows together

    dest = np.full(n, -1, np.int64)
    shards: list[Shard] = []
    for ci, (config, folder) in enumerate(configs()):
        for si, split in enumerate(SPLITS):
            if split == "test" and test_fraction <= 0:
                continue
            rows = kept[group[kept] == ci * 2 + si]
            starts = shard_cuts(pkey[rows], shard_rows)  # no rows, no shard (datasets cannot load an empty split)
            sizes = np.diff(np.append(starts, len(rows)))
            base = len(shards)
            for i, size in enumerate(sizes):
                shards.append(Shard(config, split, i, len(sizes), int(size), folder))
            dest[rows] = base + np.searchsorted(starts, np.arange(len(rows)), side="right") - 1
    return Plan(shards, dest, n, int(dup_sorted.sum()), file_rows)


# -- the step -----------------------------------------------------------------------
def _local_tmp_dir(folder: Folder) -> tuple[str, str | None]:
    """A new spill folder beside a local output (the same disk), reserved in its ledger first,
    and its ledger entry; spill folders an interrupted write left behind are removed (only
    those the ledger names).  For a remote output, a local temp folder (no entry)."""
    fs, path = storage.resolve(folder.uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        return tempfile.mkdtemp(prefix=TMP_PREFIX), None
    for stale in sorted(e for e in folder.entries if e.startswith(TMP_PREFIX)):
        folder.remove(stale, forget=True)
    name = f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}/"
    folder.reserve(name)
    os.makedirs(folder.path(name))
    return folder.path(name), name


def _remove_stale(folder: Folder, keep: set[str]) -> int:
    """Shards (and prompt-table files) an earlier write made that this one does not (a shard count
    that changed).  Only files the folder's ledger names go: a ``data/*.parquet`` of someone else's stays."""
    stale = sorted(e for e in folder.entries if e.startswith(("data/", f"{PROMPTS_FOLDER}/"))
                   and e.endswith(".parquet") and e not in keep)
    return sum(folder.remove(rel, forget=True) for rel in stale)


def _spill_root(config: PipelineConfig, folder: Folder) -> tuple[str, str | None]:
    """Where scatter tasks spill (and its entry in the output's ledger, if there): beside a local
    output (or a local temp dir); under the output store itself when Ray workers on other
    nodes must read it back."""
    fs, _ = storage.resolve(folder.uri)
    cluster = config.executor.kind == "ray" and (config.executor.address or os.environ.get("RAY_ADDRESS"))
    if isinstance(fs, pafs.LocalFileSystem) or not cluster:
        return _local_tmp_dir(folder)
    name = f"{TMP_PREFIX}{config.config_hash()[:12]}/"
    folder.reserve(name)
    return folder.path(name), name


def scatter_buffer_bytes(config: PipelineConfig) -> int:
    """Bytes of scattered rows a scatter task holds in memory before it flushes them to bucket
    files: ``executor.write_buffer_mb`` (the config loader applies MMPR_WRITE_BUFFER_MB to it)."""
    return max(1, int(config.executor.write_buffer_mb * (1 << 20)))


def held_budget(config: PipelineConfig) -> int:
    """Bytes of scattered rows the write may hold in memory rather than spill to temp disk
    (``executor.write_memory_mb``; 0 = spill, the default).  In-process the driver's memory;
    under Ray the object store, never more than 80% of its capacity: past it Ray spills
    objects to its own disk, which measured costlier than the write's own spill."""
    asked = int(config.executor.write_memory_mb * (1 << 20))
    if asked == 0 or config.executor.kind != "ray":
        return asked
    import ray

    from publish.shard_tasks import start_ray

    start_ray(config)
    return min(asked, int(ray.cluster_resources().get("object_store_memory", 0) * 0.8))


def task_shares(budget: int, plan: Plan) -> list[int]:
    """Each scatter task's share of ``budget``, by its rows (it holds its pieces while its rows'
    Arrow bytes stay under it, and spills them otherwise), so all tasks together hold at most
    ``budget`` whatever order they run in."""
    total = max(1, plan.rows_in)
    return [budget * n // total for n in plan.file_rows]


def build_manifest(config: PipelineConfig, plan: Plan, shard_entries: list[dict], row_stats: Stats,
                   prompts: dict | None = None) -> dict:
    """``manifest.json``: shards with checksums, totals per method and source, lengths, the
    pipeline version and the resolved config with its hash."""
    manifest = {
        "name": config.run.name,
        "pipeline_version": __version__,
        "config_hash": config.config_hash(),
        "rows": sum(s["rows"] for s in shard_entries),
        "rows_in": plan.rows_in,
        "duplicates_dropped": plan.duplicates,
        "splits": {c: {s.split: 0 for s in plan.shards if s.config == c} for c, _ in configs()},
        "totals": {
            "method": row_stats.totals(3),
            "source": row_stats.totals(2),
            "source_method": row_stats.source_method(),
        },
        "lengths": row_stats.lengths(),
        "diversity": row_stats.diversity(),
        "shards": shard_entries,
        # the prompt table (publish.prompt_table): files, rows, pass-rate histograms
        "prompts": prompts,
        "config": config.resolved(),
    }
    for cfg, splits in row_stats.splits().items():
        manifest["splits"][cfg].update(splits)
    return manifest


def _scatter_gather(config: PipelineConfig, plan: Plan, files: list[str], out: str, tmp: str, local: bool,
                    stats: StageStats) -> tuple[list[dict], list[dict]]:
    """The scatter tasks, then the gather tasks (module docstring, steps 2 and 3): their results."""
    workers = config.executor.write_workers or config.executor.cpu_concurrency
    t1 = time.perf_counter()
    offsets = np.concatenate(([0], np.cumsum(plan.file_rows))).astype(np.int64)
    dests = [plan.dest[offsets[i]:offsets[i] + n] for i, n in enumerate(plan.file_rows)]
    targets = [np.unique(d[d >= 0]).tolist() for d in dests]  # the shards each file feeds
    shares = task_shares(held_budget(config), plan)
    scattered = run_tasks(scatter_partition, [
        (uri, n, dests[i], config.config_hash(), tmp, f"part-{i:06d}", scatter_buffer_bytes(config),
         READ_BATCH_ROWS, shares[i], targets[i]) for i, (uri, n) in enumerate(zip(files, plan.file_rows))
    ], config, workers, on_driver_node=local, num_returns=[1 + len(t) for t in targets])
    stats.inc("seconds.scatter", round(time.perf_counter() - t1, 3))
    spilled: dict[int, list] = {no: [] for no in range(len(plan.shards))}
    held: dict[int, list] = {no: [] for no in range(len(plan.shards))}
    for (res, pieces), shards in zip(scattered, targets):
        for no, where in res["index"].items():
            spilled[no].extend(where)
        if res["held"]:  # Ray object refs (in-process: the pieces), one per shard it feeds
            for no, piece in zip(shards, pieces):
                held[no].append(piece)
    scattered = [res for res, _ in scattered]
    t1 = time.perf_counter()
    # a shard's held pieces are arguments of their own: Ray hands them to the task from the object store
    gathered = run_tasks(gather_shard, [(shard, spilled[no], config.run.seed, out, *held.pop(no))
                                        for no, shard in enumerate(plan.shards)],
                         config, workers, on_done=lambda i, res: faults.on_data_written("write"),
                         on_driver_node=local)
    stats.inc("seconds.gather", round(time.perf_counter() - t1, 3))
    stats.inc("scatter_held_mb", round(sum(r["held_bytes"] for r in scattered) / 2**20, 1))
    stats.inc("scatter_spill_files", sum(r["spill_files"] for r in scattered))
    return scattered, gathered


def _task_stats(stats: StageStats, scattered: list[dict], gathered: list[dict]) -> None:
    """Where the tasks' time and memory went, per step."""
    for step, results in (("scatter", scattered), ("gather", gathered)):
        if not results:
            continue
        stats.inc(f"peak_task_mb.{step}", round(max(r["peak_mb"] for r in results), 1))
        for r in results:  # task-seconds inside each step (summed over its tasks, however many ran at once)
            for part, secs in r.get("seconds", {}).items():
                stats.inc(f"task_seconds.{step}.{part}", round(secs, 3))
        # CPU (all threads), run-queue wait and blocked seconds of the tasks; the costliest task
        for part in ("cpu", "runq", "blocked"):
            stats.inc(f"task_{part}_seconds.{step}", round(sum(r[f"{part}_s"] for r in results), 3))
        stats.inc(f"task_max_cpu_seconds.{step}", round(max(r["cpu_s"] for r in results), 3))
        stats.inc(f"peak_task_shm_mb.{step}", round(max(r["shm_mb"] for r in results), 1))


def write_dataset(config: PipelineConfig, input_dirs: list[str], output_dir: str | None = None,
                  card_sections: list[str] = ()) -> StageStats:
    """Write the final dataset folder from the pair files of ``input_dirs``; see the module docstring."""
    t0 = time.perf_counter()
    out = output_dir or config.run.output_dir
    wc = config.write
    files = input_files(input_dirs)
    stats = StageStats()

    # only files this pipeline wrote are replaced or removed (pipeline.files.ownership): the card and
    # the manifest are reserved before anything is written, every shard once it is planned
    folder = open_folder(out, "dataset", "run.output_dir" if out == config.run.output_dir else "--output")
    folder.reserve("README.md", "manifest.json")
    # the manifest is the dataset's completion marker (object stores have no
    # rename): while shards are rewritten, no manifest describes the folder
    storage.remove(storage.join(out, "manifest.json"))
    plan = plan_shards(files, config.run.seed, wc.shard_rows, wc.test_fraction)
    folder.reserve(*(s.relpath for s in plan.shards))
    stats.inc("seconds.plan", round(time.perf_counter() - t0, 3))
    tmp, tmp_entry = _spill_root(config, folder)
    local = not storage.is_uri(tmp)  # a local spill folder: the tasks run where the driver is
    try:
        scattered, gathered = _scatter_gather(config, plan, files, out, tmp, local, stats)
    finally:
        if tmp_entry:
            folder.remove(tmp_entry, forget=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    t1 = time.perf_counter()
    prompts = write_prompt_table(side_files(config.run.work_dir, config.run.stages), out, folder.reserve)
    stats.inc("seconds.prompts", round(time.perf_counter() - t1, 3))
    stats.inc("prompt_table_rows", prompts["rows"])
    removed = _remove_stale(folder, {s.relpath for s in plan.shards} | {f["path"] for f in prompts["files"]})
    shard_entries = [g["entry"] for g in gathered]
    row_stats = Stats()
    for g in gathered:  # in shard order: the statistics do not depend on which task finished first
        row_stats.merge(g["stats"])
    stats.inc("bytes_written", sum(e["bytes"] for e in shard_entries))
    _task_stats(stats, scattered, gathered)

    manifest = build_manifest(config, plan, shard_entries, row_stats, prompts)
    rows_out = manifest["rows"]
    storage.write_bytes(storage.join(out, "README.md"),
                        render_card(config, manifest, sorted(row_stats.models), card_sections).encode())
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
