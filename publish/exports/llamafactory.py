"""``llamafactory``: sharegpt ranking rows (``conversations``/``chosen``/``rejected``/``images``)
in jsonl, images as files (LLaMA-Factory resolves them against its ``media_dir``, which
defaults to ``dataset_dir``), and ``dataset_info.json`` entries with ``"ranking": true``.
Image-crop rows go to their own files/entries and carry an extra ``rejected_images``
column that LLaMA-Factory itself does not read.
"""
from __future__ import annotations

from typing import Any

from publish.exports.common import HERE, PAIR_COLUMNS, CanonicalShard, ExportFolder, TrainerFormat, iter_rows
from publish.exports.readme import again_section


def readme(ex: ExportFolder, first_dataset: str, first_file: str) -> str:
    """Both ways to register the datasets: this folder as ``dataset_dir``, or the entries merged
    into LLaMA-Factory's own ``data/dataset_info.json`` -- which needs ``media_dir`` set here, as
    it defaults to ``dataset_dir`` and the images are relative to this folder."""
    here = ex.image_root or HERE
    return (
        "# LLaMA-Factory export\n\nsharegpt preference rows (`ranking: true`) registered in `dataset_info.json`. "
        "Image paths are relative to this folder: LLaMA-Factory joins them to `media_dir`, which defaults to "
        "`dataset_dir`, so point `dataset_dir` at this folder wherever it lives:\n\n```yaml\n"
        f"dataset_dir: {here}\ndataset: {first_dataset}\nstage: dpo\n```\n\n"
        "To register these datasets in LLaMA-Factory's own `data/dataset_info.json` instead, copy their entries "
        f"there with `file_name` made absolute (`{here}/{first_file}`) and set `media_dir: {here}`: "
        "LLaMA-Factory joins image paths to `media_dir`, which defaults to `dataset_dir`, so without it every "
        f"image fails to open:\n\n```yaml\ndataset_dir: data\nmedia_dir: {here}\ndataset: {first_dataset}\n"
        "stage: dpo\n```\n\n"
        "The `*_image_crop_*` datasets have the same text on both sides and an extra `rejected_images` column "
        f"that LLaMA-Factory does not read: plain DPO gets no signal from them.\n\n"
        f"{again_section(ex)}")  # no --root hint: its image paths stay relative, media_dir resolves them


class LlamaFactory(TrainerFormat):
    name = "llamafactory"

    def write(self, ex: ExportFolder, shards: list[CanonicalShard], dataset_name: str) -> dict:
        has_system: dict[str, bool] = {}
        for sh in shards:
            base = sh.split if sh.config == "default" else f"image_crop_{sh.split}"
            rel = f"{base}.jsonl"
            sink = ex.sink(rel)
            has_system.setdefault(rel, False)
            for row in iter_rows(sh.uri, PAIR_COLUMNS):
                images = [ex.image(im) for im in row["images"] or []]
                system, turns = ex.text.prompt_turns(row["prompt"], len(images))
                out: dict[str, Any] = {
                    "conversations": [{"from": "human" if r == "user" else "gpt", "value": t} for r, t in turns],
                    "chosen": {"from": "gpt", "value": ex.text.reply(row["chosen"])},
                    "rejected": {"from": "gpt", "value": ex.text.reply(row["rejected"])},
                    "images": images,
                }
                if system:
                    out["system"] = system
                    has_system[rel] = True
                if sh.config == "image_crop":
                    out["rejected_images"] = [ex.image(im) for im in row["rejected_images"] or []]
                out["id"] = row["id"]
                sink.write_json(out)
                ex.rows[f"{sh.config}.{sh.split}"] += 1
        info = {}
        for rel in sorted(has_system):
            columns = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "images": "images"}
            if has_system[rel]:
                columns["system"] = "system"
            info[f"{dataset_name}_{rel[:-len('.jsonl')]}"] = {
                "file_name": rel, "formatting": "sharegpt", "ranking": True, "columns": columns,
            }
        ex.write_json("dataset_info.json", info)
        first = f"{dataset_name}_train"
        first = first if first in info else next(iter(sorted(info)), first)
        ex.write_bytes("README.md", readme(ex, first, info.get(first, {}).get("file_name", "train.jsonl")).encode())
        return {"datasets": sorted(info)}
