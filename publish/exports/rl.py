"""What the RL exports (``trl_grpo``, ``swift_grpo``, ``verl``) share: the prompts they keep
(the curriculum) and each prompt's fields.

They read the dataset folder's prompt table (``publish.prompt_table``), never its
pairs: one row per prompt with ground truth whose measured pass rate lies in
``rl_prompts.band`` and that drew at least ``rl_prompts.min_samples`` samples
(``Curriculum``); how many prompts each bound removed goes into the export's
``export.json`` (``selection``) and the run report.  An optional validation split
is drawn by the seed within each (source, pass-rate bin), so both splits span the
same sources and difficulties.

The table is never read whole (at a million prompts its images alone outweigh memory):
``select`` chooses the rows from the small columns (``SELECT_COLUMNS``: no prompt, no
image), then ``write_rl`` reads the kept rows ``BATCH_ROWS`` at a time (row groups
without one are skipped) and hands each batch to every RL format of the build, which
writes it at once (JSON lines, or ``publish.parquet.ParquetStream``: the bytes of
writing the whole table while a file is under one row group, the same rows past it).

Every row carries what the shipped reward (``methods/reward.py``) needs to give the
correctness stage's verdict: ``solution`` (the first ground truth, a string, as
TRL's and ms-swift's built-in rewards expect), ``answers`` (all of them),
``answer_type``, ``choices`` and ``scoring`` (the build's scoring settings), plus the
prompt's ``pass_rate`` and interval, ``samples_drawn``, ``prompt_id`` and ``source``.
"""
from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.core.seeds import stable_hash
from pipeline.files import storage
from publish.exports.common import ExportFolder, TrainerFormat
from publish.prompt_table import BINS, prompt_table_files

#: columns of the prompt table the RL exports read
COLUMNS = ["prompt_id", "source", "prompt", "template_id", "images", "answer", "answer_type", "choices",
           "samples_drawn", "pass_rate", "pass_rate_low", "pass_rate_high", "scoring"]
#: the columns the selection reads: no prompt, no images, so choosing among a million prompts is cheap
SELECT_COLUMNS = ["prompt_id", "source", "answer", "samples_drawn", "pass_rate"]
#: prompt-table rows turned into Python rows at a time when writing (a batch's images are in memory)
BATCH_ROWS = 256
SELECT_BATCH_ROWS = 8192
SPLITS = ("train", "validation")
#: ``Plan.labels`` of a row no split holds (the others are indexes into ``SPLITS``)
DROPPED = 255
#: why a prompt is not exported, in the order the bounds are checked
REMOVED = ("no_ground_truth", "too_few_samples", "below_band", "above_band")


@dataclass(frozen=True)
class Curriculum:
    """The ``rl_prompts`` settings (``pipeline.config.shared.RLPromptsConfig``) as the exports use them."""
    band: tuple[float, float] = (0.0, 1.0)
    min_samples: int = 1
    validation_fraction: float = 0.0
    seed: int = 0

    @classmethod
    def of(cls, settings: Any, seed: int = 0) -> "Curriculum":
        if settings is None:
            return cls(seed=seed)
        return cls(tuple(settings.band), settings.min_samples, settings.validation_fraction, seed)

    def reason(self, row: dict) -> str | None:
        """Why ``row`` (a prompt-table row) is left out, or None: it is kept."""
        if row["pass_rate"] is None or not row["answer"]:
            return "no_ground_truth"
        if (row["samples_drawn"] or 0) < self.min_samples:
            return "too_few_samples"
        if row["pass_rate"] < self.band[0]:
            return "below_band"
        if row["pass_rate"] > self.band[1]:
            return "above_band"
        return None

    def validation(self, groups: dict[tuple, tuple[array, array, array]], labels: bytearray) -> None:
        """Label ``round(fraction * n)`` rows of each (source, pass-rate bin) group ``validation``: those
        first by their seeded hash (``stable_hash(seed, "rl_split", prompt_id)``, ties in table order).
        A group is (hash's high 64 bits, its low 64 bits, row number) per kept row, in table order."""
        for high, low, rows in groups.values():
            n = round(self.validation_fraction * len(rows))
            if not n:
                continue
            order = np.lexsort((np.frombuffer(rows, np.uint64), np.frombuffer(low, np.uint64),
                                np.frombuffer(high, np.uint64)))
            for i in order[:n]:
                labels[rows[i]] = SPLITS.index("validation")


def build_curriculum(dataset_dir: str) -> Curriculum:
    """The curriculum the dataset folder was built with (its manifest's ``rl_prompts`` and seed), so
    ``python -m pipeline export`` writes what the build's export stage wrote."""
    manifest = storage.join(dataset_dir, "manifest.json")
    config = (storage.read_json(manifest) if storage.exists(manifest) else {}).get("config") or {}
    rl = config.get("rl_prompts")
    if not rl:
        return Curriculum()
    return Curriculum(tuple(rl["band"]), rl["min_samples"], rl.get("validation_fraction", 0.0),
                      (config.get("run") or {}).get("seed", 0))


@dataclass
class Plan:
    """The prompts the RL exports hold, chosen from the prompt table's small columns before any
    image is read: ``labels[i]`` is row i's split (an index into ``SPLITS``) or ``DROPPED``, rows
    numbered across ``files`` in order; ``selection`` is the counts for ``export.json``."""
    files: list[str]
    labels: bytearray
    selection: dict

    def batches(self, columns: list[str] = COLUMNS) -> Iterator[tuple[str, list[dict]]]:
        """The kept rows (``columns``) in table order, ``BATCH_ROWS`` rows read at a time: ``(split,
        rows)`` for each split with rows in the batch.  A row group without kept rows is not read."""
        pos = 0
        for uri in self.files:
            with storage.parquet_file(uri) as pf:
                for rg in range(pf.num_row_groups):
                    n = pf.metadata.row_group(rg).num_rows
                    if self.labels.count(DROPPED, pos, pos + n) == n:
                        pos += n
                        continue
                    for batch in pf.iter_batches(BATCH_ROWS, row_groups=[rg], columns=columns):
                        labels = np.frombuffer(self.labels, np.uint8, batch.num_rows, pos)
                        pos += batch.num_rows
                        for i, split in enumerate(SPLITS):
                            mask = labels == i
                            if mask.any():
                                yield split, batch.filter(pa.array(mask)).to_pylist()


def select(dataset_dir: str, cur: Curriculum) -> Plan:
    """The rows of ``dataset_dir``'s prompt table each split holds (``Curriculum.reason``, then the
    seeded validation split), read from ``SELECT_COLUMNS`` only: memory is a byte per prompt
    (plus 24 bytes per kept prompt with a validation split), whatever the images weigh."""
    files = prompt_table_files(dataset_dir)
    labels = bytearray()
    removed: Counter = Counter()
    groups: dict[tuple, tuple[array, array, array]] = {}
    for uri in files:
        with storage.parquet_file(uri) as pf:
            for batch in pf.iter_batches(SELECT_BATCH_ROWS, columns=SELECT_COLUMNS):
                for row in batch.to_pylist():
                    why = cur.reason(row)
                    if why:
                        removed[why] += 1
                        labels.append(DROPPED)
                        continue
                    if cur.validation_fraction > 0:
                        h = stable_hash(cur.seed, "rl_split", row["prompt_id"])
                        key = (row["source"], min(int(row["pass_rate"] * BINS), BINS - 1))
                        high, low, rows = groups.setdefault(key, (array("Q"), array("Q"), array("Q")))
                        high.append(int(h[:16], 16))
                        low.append(int(h[16:], 16))
                        rows.append(len(labels))
                    labels.append(SPLITS.index("train"))
    cur.validation(groups, labels)
    counts = {split: labels.count(i) for i, split in enumerate(SPLITS)}
    selection = {"band": list(cur.band), "min_samples": cur.min_samples, "prompts": len(labels),
                 "kept": len(labels) - labels.count(DROPPED), "removed": {k: removed.get(k, 0) for k in REMOVED},
                 "splits": {k: v for k, v in counts.items() if v}}
    return Plan(files, labels, selection)


def write_rl(exports: list[tuple["RLFormat", ExportFolder]]) -> dict:
    """RL exports of one dataset folder (one curriculum: the first export's) in one pass over its
    prompt table: each batch of kept rows goes to every export in turn, so the images are read
    once however many formats are written; the extra fields of their ``export.json``."""
    first = exports[0][1]
    plan = select(first.input_dir, first.curriculum or build_curriculum(first.input_dir))
    for split, rows in plan.batches():
        for fmt, ex in exports:
            fmt.write_rows(ex, split, rows, ex.rows[split])
            ex.rows[split] += len(rows)
    for fmt, ex in exports:
        ex.write_bytes("README.md", fmt.readme(ex, plan.selection).encode())
    return {"selection": plan.selection}


def reward_fields(row: dict) -> dict:
    """The columns every RL export carries (see the module docstring)."""
    return {
        "prompt_id": row["prompt_id"], "source": row["source"],
        "solution": row["answer"][0], "answers": list(row["answer"]),
        "answer_type": row["answer_type"] or "auto", "choices": list(row["choices"] or []),
        "scoring": row["scoring"], "pass_rate": row["pass_rate"],
        "pass_rate_low": row["pass_rate_low"], "pass_rate_high": row["pass_rate_high"],
        "samples_drawn": row["samples_drawn"],
    }


def tagged_messages(ex: ExportFolder, row: dict) -> list[dict]:
    """The prompt as chat messages with string content, ``<image>`` where each image goes."""
    system, turns = ex.text.prompt_turns(row["prompt"], len(row["images"] or []))
    return ([{"role": "system", "content": system}] if system else []) + \
        [{"role": role, "content": text} for role, text in turns]


class RLFormat(TrainerFormat):
    """An RL export: ``records(ex, split, rows, start)`` are its rows for a batch of one split's prompts
    (``start`` of the split's rows came before), written to ``<split>.parquet`` with ``schema`` or, without
    one, ``<split>.jsonl``, a batch at a time (``write_rows``); the README is ``readme``.  ``write_rl``
    writes several in one pass over the prompt table (``publish.exports.export_dataset``)."""

    #: the Parquet schema of the split files; None: JSON lines
    schema: pa.Schema | None = None

    def write(self, ex: ExportFolder, shards, dataset_name: str) -> dict:
        return write_rl([(self, ex)])

    def write_rows(self, ex: ExportFolder, split: str, rows: list[dict], start: int) -> None:
        records = self.records(ex, split, rows, start)
        if self.schema is None:
            sink = ex.sink(f"{split}.jsonl")
            for r in records:
                sink.write_json(r)
        else:
            ex.parquet_sink(f"{split}.parquet", self.schema).write(pa.Table.from_pylist(records, schema=self.schema))

    def records(self, ex: ExportFolder, split: str, rows: list[dict], start: int) -> list[dict]:  # pragma: no cover
        raise NotImplementedError

    def readme(self, ex: ExportFolder, selection: dict) -> str:  # pragma: no cover
        raise NotImplementedError


def selection_text(selection: dict) -> str:
    """The README's sentence on which prompts the export holds."""
    lo, hi = selection["band"]
    removed = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in selection["removed"].items())
    return (f"{selection['kept']} of the build's {selection['prompts']} prompts: those with ground truth, at least "
            f"{selection['min_samples']} samples drawn and a measured pass rate in [{lo}, {hi}] "
            f"(`rl_prompts`; removed: {removed}). Splits: "
            + ", ".join(f"{k} {v}" for k, v in selection["splits"].items()) + ".")


REWARD_NOTE = (
    "The reward: `methods/reward.py` of mmpr-forge (with the checkout on `PYTHONPATH`; it imports only the "
    "`methods` package) gives the "
    "build's correctness verdict: 1.0 when the response's final answer matches a ground truth by the same rules, "
    "extraction style and threshold that measured `pass_rate` (each row's `scoring`), else 0.0.")
