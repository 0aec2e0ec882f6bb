"""The prompt table of a dataset folder: ``prompts/train-NNNNN-of-NNNNN.parquet``.

One row per generated prompt (``schemas.PROMPT_TABLE_SCHEMA``): the correctness
stage writes them as its ``prompts`` side output (``methods.prompt_stats``), one file
per partition; the write stage publishes them here, one file per partition, rows in
``prompt_id`` order (the same rows always give the same bytes), and names them in
``manifest.json`` (``prompts``) and the card (config ``prompts``).  The RL exports
read this table, never the work folder.

A prompt with ground truth has its samples' verdict counts, its pass rate and a Wilson
95% interval; one without has null counts.  With adaptive sampling ``samples_drawn``
is where the prompt stopped (``stop_reason``), so a pass rate of 1.0 may be 4/4: read
the interval, not the rate alone (or require ``min_samples``).
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import pyarrow as pa

from pipeline.files import storage
from publish.parquet import parquet_bytes
from schemas import PROMPT_TABLE_SCHEMA, with_hf_metadata

#: the dataset folder's prompt table, and the side output it is made of
FOLDER = "prompts"
SIDE = "prompts"
#: pass-rate histogram bins of the manifest and the reports: [0, 0.1), ..., [0.9, 1.0]
BINS = 10


def side_files(work_dir: str, stages: Iterable[str]) -> list[str]:
    """Every ``prompts`` side-output file of ``stages`` under ``work_dir`` (partition order)."""
    files: list[str] = []
    for stage in stages:
        files.extend(storage.list_files(storage.join(work_dir, stage, "side", SIDE), ".parquet"))
    return files


def histogram(rates: Iterable[float]) -> list[int]:
    """Prompts per pass-rate bin (bin 9 holds 1.0)."""
    out = [0] * BINS
    for r in rates:
        out[min(int(r * BINS), BINS - 1)] += 1
    return out


def write_prompt_table(files: list[str], out: str, reserve) -> dict:
    """Write ``files`` (prompt-table side outputs) as ``out/prompts/*.parquet``; the manifest entry.

    ``reserve``: claims a path in the output folder's ledger before it is written."""
    schema = with_hf_metadata(PROMPT_TABLE_SCHEMA)
    entries, rows, with_gt, rates, sources = [], 0, 0, [], {}
    names = [f"{FOLDER}/train-{i:05d}-of-{len(files):05d}.parquet" for i in range(len(files))]
    reserve(*names)
    for uri, rel in zip(files, names):
        table = storage.read_table(uri).cast(schema)
        table = table.sort_by("prompt_id")
        data = parquet_bytes(table, dictionary_images=False)
        storage.write_bytes(storage.join(out, rel), data)
        entries.append({"path": rel, "config": "prompts", "split": "train", "rows": table.num_rows,
                        "bytes": data.size, "arrow_bytes": table.nbytes,
                        "sha256": hashlib.sha256(data).hexdigest()})
        rows += table.num_rows
        rate = table.column("pass_rate")
        with_gt += table.num_rows - rate.null_count
        for src, r in zip(table.column("source").to_pylist(), rate.to_pylist()):
            if r is not None:
                sources.setdefault(src, []).append(r)
                rates.append(r)
        del table
    return {
        "rows": rows, "with_ground_truth": with_gt, "files": entries,
        "pass_rate_histogram": histogram(rates),
        "pass_rate_histogram_by_source": {s: histogram(v) for s, v in sorted(sources.items())},
    }


def prompt_table_files(dataset_dir: str) -> list[str]:
    """The prompt table's files of a dataset folder (every file under ``prompts/``), in order."""
    files = storage.list_files(storage.join(dataset_dir, FOLDER), ".parquet")
    if not files:
        raise FileNotFoundError(f"{dataset_dir}: no prompt table ({FOLDER}/*.parquet): build it with a version "
                                "whose correctness stage records it")
    return files


def read_prompt_table(dataset_dir: str, columns: list[str] | None = None) -> pa.Table:
    """The prompt table of a dataset folder (every file under ``prompts/``), in file order."""
    tables = [storage.read_table(f, columns=columns) for f in prompt_table_files(dataset_dir)]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
