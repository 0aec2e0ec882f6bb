"""``trl_grpo``: Parquet for TRL's ``GRPOTrainer`` (vision-language), one row per prompt the
curriculum keeps (``publish.exports.rl``): ``prompt`` in TRL's conversational form (image parts
where the images go, the template's wording as the build sent it), ``images`` (embedded, the
Hugging Face image layout) and the reward columns ``solution``, ``answers``, ``answer_type``,
``choices``, ``scoring``, with ``pass_rate`` and its interval.  TRL passes every column but
``prompt`` to each reward function, so ``methods.reward.reward`` reads them as they are.
"""
from __future__ import annotations

import pyarrow as pa

from publish.exports.common import ExportFolder
from publish.exports.readme import again_section
from publish.exports.rl import REWARD_NOTE, RLFormat, reward_fields, selection_text
from schemas import CONVERSATION_TYPE, IMAGES_TYPE, SCORING_TYPE, with_hf_metadata

SCHEMA = with_hf_metadata(pa.schema([
    ("prompt", CONVERSATION_TYPE), ("images", IMAGES_TYPE),
    ("solution", pa.string()), ("answers", pa.list_(pa.string())), ("answer_type", pa.string()),
    ("choices", pa.list_(pa.string())), ("scoring", SCORING_TYPE),
    ("prompt_id", pa.string()), ("source", pa.string()), ("pass_rate", pa.float64()),
    ("pass_rate_low", pa.float64()), ("pass_rate_high", pa.float64()), ("samples_drawn", pa.int32()),
]))


def embedded(ex: ExportFolder, images: list[dict] | None) -> list[dict]:
    """Images with their bytes in the row (a path-only image is read once, through the export's store)."""
    return [{"bytes": ex.image_bytes(im), "path": None} for im in images or []]


class TRLGRPO(RLFormat):
    name = "trl_grpo"

    schema = SCHEMA

    def records(self, ex: ExportFolder, split: str, rows: list[dict], start: int) -> list[dict]:
        return [{"prompt": r["prompt"], "images": embedded(ex, r["images"]), **reward_fields(r)} for r in rows]

    def readme(self, ex: ExportFolder, selection: dict) -> str:
        return (
            "# TRL GRPO export\n\n" + selection_text(selection) + "\n\n"
            "Columns: `prompt` (conversational, image parts where the images go), `images`, and the reward's "
            "columns `solution`, `answers`, `answer_type`, `choices`, `scoring`; `pass_rate` (with "
            "`pass_rate_low`/`pass_rate_high`, Wilson 95%) and `samples_drawn` as the build measured them.\n\n"
            + REWARD_NOTE + "\n\n```python\nfrom datasets import load_dataset\nfrom trl import GRPOConfig, "
            "GRPOTrainer\nfrom methods.reward import reward\n\ntrain = load_dataset(\"parquet\", data_files="
            "\"<this folder>/train.parquet\", split=\"train\")\ntrainer = GRPOTrainer(model=..., reward_funcs="
            "[reward], args=GRPOConfig(...), train_dataset=train)\n```\n\n" + again_section(ex))
