"""``swift_grpo``: JSON lines for ms-swift's GRPO (``swift rlhf --rlhf_type grpo``), one row per
prompt the curriculum keeps (``publish.exports.rl``): ``messages`` ending with the user turn
(``<image>`` tags where the images go), ``images`` (paths into the content-addressed image
folder: the build's shared ``../images/``, or this export's ``images/`` when written alone) and
the reward columns ``solution``, ``answers``, ``answer_type``, ``choices``, ``scoring``, with
``pass_rate``.  ms-swift's GRPO keeps extra columns
(``remove_unused_columns=False``) and passes them to reward functions as keyword lists.
"""
from __future__ import annotations

from publish.exports.common import HERE, ExportFolder
from publish.exports.readme import again_section
from publish.exports.rl import REWARD_NOTE, RLFormat, reward_fields, selection_text, tagged_messages


class SwiftGRPO(RLFormat):
    name = "swift_grpo"

    def records(self, ex: ExportFolder, split: str, rows: list[dict], start: int) -> list[dict]:
        return [{"messages": tagged_messages(ex, r), "images": [ex.ref(ex.image(im)) for im in r["images"] or []],
                 **reward_fields(r)} for r in rows]

    def readme(self, ex: ExportFolder, selection: dict) -> str:
        root = ex.image_root
        paths = (f"Image paths are absolute, under `{root}`." if root else
                 "Image paths are relative to this folder: set `ROOT_IMAGE_DIR` to this folder (ms-swift joins "
                 "relative paths to it).")
        where = root or HERE
        plugin = ("Register the reward in a plugin file (`--external_plugins plugin.py`):\n\n```python\n"
                  "from swift.rewards import ORM, orms\nfrom methods.reward import reward\n\nclass MMPRReward(ORM):\n"
                  "    def __call__(self, completions, solution, answer_type, **kwargs):\n"
                  "        return reward(completions, solution, answer_type, **kwargs)\n\n"
                  "orms['mmpr_correct'] = MMPRReward\n```\n")
        return (
            "# ms-swift GRPO export\n\n" + selection_text(selection) + "\n\n"
            "`messages` (system and user turns, `<image>` tags), `images`, and the reward's columns `solution`, "
            "`answers`, `answer_type`, `choices`, `scoring`; `pass_rate` and `samples_drawn` as the build measured "
            f"them. {paths}\n\n" + REWARD_NOTE + "\n\n" + plugin + "\n```bash\n"
            f"{'' if root else f'ROOT_IMAGE_DIR={HERE} '}swift rlhf --rlhf_type grpo --dataset {where}/train.jsonl "
            "--external_plugins plugin.py --reward_funcs mmpr_correct ...\n```\n\n"
            + again_section(ex, root_hint=True))
