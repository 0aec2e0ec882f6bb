"""``verl``: verl's RL Parquet, read by ``verl.utils.dataset.rl_dataset.RLHFDataset``: one row per
prompt the curriculum keeps (``publish.exports.rl``) with ``data_source`` (the source's name),
``prompt`` (chat messages with string content, ``<image>`` where each image goes), ``images``
(embedded: verl copies the Parquet into its cache, so relative paths would not resolve),
``ability`` (the answer type), ``reward_model: {style: rule, ground_truth}`` and ``extra_info``
(``index``, ``prompt_id``, ``pass_rate``, ``answer_type``, ``answers``, ``choices``, ``scoring``:
what ``methods.reward.compute_score`` needs).
"""
from __future__ import annotations

import pyarrow as pa

from publish.exports.common import ExportFolder
from publish.exports.readme import again_section
from publish.exports.rl import REWARD_NOTE, RLFormat, reward_fields, selection_text, tagged_messages
from publish.exports.trl_grpo import embedded
from schemas import IMAGES_TYPE, SCORING_TYPE

SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("images", IMAGES_TYPE),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
    ("extra_info", pa.struct([
        ("index", pa.int64()), ("prompt_id", pa.string()), ("split", pa.string()),
        ("pass_rate", pa.float64()), ("pass_rate_low", pa.float64()), ("pass_rate_high", pa.float64()),
        ("samples_drawn", pa.int32()), ("answer_type", pa.string()), ("answers", pa.list_(pa.string())),
        ("choices", pa.list_(pa.string())), ("scoring", SCORING_TYPE),
    ])),
])


class Verl(RLFormat):
    name = "verl"

    schema = SCHEMA

    def records(self, ex: ExportFolder, split: str, rows: list[dict], start: int) -> list[dict]:
        out = []
        for i, r in enumerate(rows, start):
            f = reward_fields(r)
            out.append({
                "data_source": r["source"], "prompt": tagged_messages(ex, r), "images": embedded(ex, r["images"]),
                "ability": f["answer_type"],
                "reward_model": {"style": "rule", "ground_truth": f["solution"]},
                "extra_info": {"index": i, "split": split, **{k: f[k] for k in (
                    "prompt_id", "pass_rate", "pass_rate_low", "pass_rate_high", "samples_drawn", "answer_type",
                    "answers", "choices", "scoring")}},
            })
        return out

    def readme(self, ex: ExportFolder, selection: dict) -> str:
        return (
            "# verl export\n\n" + selection_text(selection) + "\n\n"
            "Columns: `data_source`, `prompt` (messages, `<image>` tags), `images` (embedded), `ability`, "
            "`reward_model` (`style: rule`, `ground_truth`: the first ground truth) and `extra_info` (`index`, "
            "`prompt_id`, `pass_rate` and its interval, `samples_drawn`, `answer_type`, `answers`, `choices`, "
            "`scoring`).\n\n" + REWARD_NOTE + " For verl, `compute_score`:\n\n```bash\npython -m verl.trainer.main_ppo "
            "data.train_files=<this folder>/train.parquet data.image_key=images "
            "custom_reward_function.path=<mmpr-forge>/methods/reward.py custom_reward_function.name=compute_score ...\n"
            "```\n\n" + again_section(ex))
