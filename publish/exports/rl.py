"""What the RL exports (``trl_grpo``, ``swift_grpo``, ``verl``) share: the prompts they keep
(the curriculum) and each prompt's fields.

They read the dataset folder's prompt table (``publish.prompt_table``), never its
pairs: one row per prompt with ground truth whose measured pass rate lies in
``rl_prompts.band`` and that drew at least ``rl_prompts.min_samples`` samples
(``Curriculum``); how many prompts each bound removed goes into the export's
``export.json`` (``selection``) and the run report.  An optional validation split
is drawn by the seed within each (source, pass-rate bin), so both splits span the
same sources and difficulties.

Every row carries what the shipped reward (``methods/reward.py``) needs to give the
correctness stage's verdict: ``solution`` (the first ground truth, a string, as
TRL's and ms-swift's built-in rewards expect), ``answers`` (all of them),
``answer_type``, ``choices`` and ``scoring`` (the build's scoring settings), plus the
prompt's ``pass_rate`` and interval, ``samples_drawn``, ``prompt_id`` and ``source``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa

from pipeline.core.seeds import stable_hash
from pipeline.files import storage
from publish.exports.common import ExportFolder, TrainerFormat
from publish.prompt_table import BINS, read_prompt_table

#: columns of the prompt table the RL exports read
COLUMNS = ["prompt_id", "source", "prompt", "template_id", "images", "answer", "answer_type", "choices",
           "samples_drawn", "pass_rate", "pass_rate_low", "pass_rate_high", "scoring"]
SPLITS = ("train", "validation")
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

    def split(self, kept: list[dict]) -> dict[str, list[dict]]:
        """Kept rows by split: within each (source, pass-rate bin), the seeded first
        ``round(fraction * n)`` go to validation; rows keep the prompt table's order."""
        if self.validation_fraction <= 0:
            return {"train": kept}
        groups: dict[tuple, list[dict]] = {}
        for r in kept:
            groups.setdefault((r["source"], min(int(r["pass_rate"] * BINS), BINS - 1)), []).append(r)
        validation: set[str] = set()
        for rows in groups.values():
            ranked = sorted(rows, key=lambda r: stable_hash(self.seed, "rl_split", r["prompt_id"]))
            validation.update(r["prompt_id"] for r in ranked[:round(self.validation_fraction * len(rows))])
        return {"train": [r for r in kept if r["prompt_id"] not in validation],
                "validation": [r for r in kept if r["prompt_id"] in validation]}


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


def select(ex: ExportFolder) -> tuple[dict[str, list[dict]], dict]:
    """The exported prompts of ``ex``'s dataset folder by split, and the selection's counts."""
    cur: Curriculum = ex.curriculum or build_curriculum(ex.input_dir)
    table = read_prompt_table(ex.input_dir, COLUMNS)
    removed: Counter = Counter()
    kept = []
    for row in _rows(table):
        why = cur.reason(row)
        if why:
            removed[why] += 1
        else:
            kept.append(row)
    splits = {k: v for k, v in cur.split(kept).items() if v}
    selection = {"band": list(cur.band), "min_samples": cur.min_samples, "prompts": table.num_rows,
                 "kept": len(kept), "removed": {k: removed.get(k, 0) for k in REMOVED},
                 "splits": {k: len(v) for k, v in splits.items()}}
    return splits, selection


def _rows(table: pa.Table) -> Iterator[dict]:
    for batch in table.to_batches(max_chunksize=256):
        yield from batch.to_pylist()


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
    """An RL export: ``rows(ex, split, rows)`` writes one split's prompts; the README is ``readme``."""

    def write(self, ex: ExportFolder, shards, dataset_name: str) -> dict:
        splits, selection = select(ex)
        for split, rows in splits.items():
            self.write_split(ex, split, rows)
            ex.rows[split] += len(rows)
        ex.write_bytes("README.md", self.readme(ex, selection).encode())
        return {"selection": selection}

    def write_split(self, ex: ExportFolder, split: str, rows: list[dict]) -> None:  # pragma: no cover
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
