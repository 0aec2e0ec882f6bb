"""``swift``: ms-swift rows: ``messages`` (user turn with ``<image>`` tags, then the chosen
assistant turn), ``rejected_response`` and ``images`` for text-contrast pairs (a row whose
rejected equals its chosen is left out and counted: ms-swift would delete it), or
``rejected_images`` and no ``rejected_response`` for image-contrast pairs (ms-swift then
builds the rejected side from the same messages with the rejected images).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from publish.exports.common import HERE, PAIR_COLUMNS, CanonicalShard, ExportFolder, TrainerFormat, iter_rows, log
from publish.exports.readme import again_section


def readme(ex: ExportFolder) -> str:
    root = ex.image_root
    if root:
        paths = (f"Image paths are absolute, under `{root}` (written with `--root`): copy this folder there "
                 "before training.")
        run = f"swift rlhf --rlhf_type dpo --dataset {root}/train.jsonl ..."
    else:
        paths = ("Image paths are relative to this folder. ms-swift opens a relative path from its working "
                 "directory, or joined to the `ROOT_IMAGE_DIR` environment variable when that is set: set it "
                 "to this folder (or export again with `--root DIR` for absolute paths under DIR: see the end "
                 "of this file).")
        run = f"ROOT_IMAGE_DIR={HERE} swift rlhf --rlhf_type dpo --dataset {HERE}/train.jsonl ..."
    return (
        "# ms-swift export\n\n`messages` (user turn with `<image>` tags, then the chosen answer), "
        "`rejected_response` and `images`. Rows of `image_crop_*.jsonl` are image-contrast (mDPO-style) pairs: "
        "no `rejected_response`, and `rejected_images` instead -- ms-swift builds their rejected side from the "
        f"same messages with the rejected images.\n\n{paths}\n\n```bash\n{run}\n```\n\n{again_section(ex, root_hint=True)}")


class Swift(TrainerFormat):
    name = "swift"

    def write(self, ex: ExportFolder, shards: list[CanonicalShard], dataset_name: str) -> dict:
        left_out: Counter = Counter()  # text-contrast rows whose rejected text equals the chosen
        for sh in shards:
            sink = ex.sink(f"{sh.split}.jsonl" if sh.config == "default" else f"image_crop_{sh.split}.jsonl")
            for row in iter_rows(sh.uri, PAIR_COLUMNS):
                images = [ex.ref(ex.image(im)) for im in row["images"] or []]
                system, turns = ex.text.prompt_turns(row["prompt"], len(images))
                messages = ([{"role": "system", "content": system}] if system else []) + \
                    [{"role": r, "content": t} for r, t in turns] + \
                    [{"role": "assistant", "content": ex.text.reply(row["chosen"])}]
                out: dict[str, Any] = {"messages": messages, "images": images}
                if sh.config == "image_crop":  # same text on both sides: ms-swift wants no rejected_response
                    out["rejected_images"] = [ex.ref(ex.image(im)) for im in row["rejected_images"] or []]
                else:
                    out["rejected_response"] = ex.text.reply(row["rejected"])
                    if out["rejected_response"] == messages[-1]["content"]:  # ms-swift deletes such rows
                        left_out[sh.split] += 1
                        continue
                out["id"] = row["id"]
                sink.write_json(out)
                ex.rows[f"{sh.config}.{sh.split}"] += 1
        ex.write_bytes("README.md", readme(ex).encode())
        if left_out:
            log.warning("swift export: left out %d pair(s) whose rejected text equals the chosen (ms-swift "
                        "deletes them): %s", sum(left_out.values()), dict(left_out))
        return {"left_out_rejected_equals_chosen": dict(sorted(left_out.items()))}
