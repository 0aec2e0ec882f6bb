"""``internvl``: InternVL MPO jsonl, one file per (source, method): ``image`` (a path, or a
list for several images), ``question`` (``<image>\\n`` placeholder, or ``Image-1: <image>\\n...``
for several), ``chosen``, ``rejected``; images under ``images/``; ``meta.json`` maps each
subset to ``{root, annotation, data_augment, repeat_time, length}``.  ``meta.json`` holds
the train split of the text-contrast pairs; test subsets go to ``meta_test.json`` and
image-crop subsets (rows with an extra ``rejected_image``) to ``meta_image_crop.json``,
since the MPO trainer has no rejected image.
"""
from __future__ import annotations

import re
from typing import Any

from publish.exports.common import IMAGE_TAG, CanonicalShard, ExportFolder, TrainerFormat, iter_rows
from publish.exports.readme import WHERE, again_section, export_command


def internvl_question(text: str, n_images: int) -> str:
    """InternVL's placeholder convention: ``<image>\\n`` for one image, ``Image-k: <image>\\n`` for several."""
    if n_images == 0:
        return text
    if n_images == 1:
        return f"{IMAGE_TAG}\n{text}"
    return "".join(f"Image-{k + 1}: {IMAGE_TAG}\n" for k in range(n_images)) + text


def subset_name(source: str, method: str, split: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", f"{source}_{method}")
    return name if split == "train" else f"{name}_{split}"


def readme(ex: ExportFolder, meta_files: list[str]) -> str:
    """Without ``--root`` the README leads with exporting again with it: InternVL's MPO launch
    scripts start the trainer in ``internvl_chat/``, where paths relative to this folder fail."""
    what = {"meta.json": "the train subsets of the text-contrast pairs",
            "meta_image_crop.json": "the image-contrast pairs (same text, plus a `rejected_image` the MPO "
                                    "trainer does not read)"}
    listed = "".join(f"- `{m}`: {what.get(m, 'the ' + m[len('meta_'):-len('.json')] + ' split')}\n"
                     for m in meta_files)
    if ex.image_root:
        lead = (f"**Paths are absolute, under `{ex.image_root}`** (written with `--root`): copy this folder "
                "there before training.")
        paths = f"`root` and `annotation` in the meta files are under `{ex.image_root}`."
    else:
        command = export_command(ex.fmt, ex.input_dir, ex.root, "DIR")
        lead = ("**Export again with `--root` before training.** InternVL's MPO launch scripts run from "
                "`internvl_chat/`, not from this folder, and the trainer opens each `annotation` and image "
                "(`os.path.join(root, image)`) from its working directory, so the relative paths written here "
                f"do not resolve there. On the machine that wrote this export, from {WHERE}, write absolute "
                "paths under DIR, the folder this export will have on the training machine, then copy this "
                f"folder to DIR:\n\n```bash\n{command}\n```")
        paths = ("`root` and `annotation` in the meta files are relative to this folder: the trainer opens "
                 "`annotation` as given and each image as `os.path.join(root, image)`, so as written they "
                 "resolve only when the trainer starts in this folder.")
    return (f"# InternVL MPO export\n\n{lead}\n\nOne jsonl per (source, method) under `annotations/` "
            f"(`--meta_path` takes a meta file):\n\n{listed}\n{paths}\n\n{again_section(ex)}")


def _meta_file(config: str, split: str) -> str:
    if config == "image_crop":
        return "meta_image_crop.json"
    return "meta.json" if split == "train" else f"meta_{split}.json"


class InternVL(TrainerFormat):
    name = "internvl"

    def write(self, ex: ExportFolder, shards: list[CanonicalShard], dataset_name: str) -> dict:
        subsets: dict[str, tuple[str, str]] = {}  # subset -> (meta file, annotation rel)
        for sh in shards:
            cols = ["prompt", "chosen", "rejected", "images", "rejected_images", "source", "method", "id"]
            for row in iter_rows(sh.uri, cols):
                images = [ex.image(im) for im in row["images"] or []]
                system, turns = ex.text.prompt_turns(row["prompt"], len(images))
                text = "\n".join(t for r, t in turns if r == "user").replace(IMAGE_TAG, "")
                if system:
                    text = f"{system}\n{text}"
                cut = len(ex.image_dir) + 1  # relative to the subset root (the image folder)
                rel_images = [p[cut:] for p in images]
                out: dict[str, Any] = {
                    "id": row["id"],
                    "image": rel_images[0] if len(rel_images) == 1 else rel_images,
                    "question": internvl_question(text, len(images)),
                    "chosen": ex.text.reply(row["chosen"]),
                    "rejected": ex.text.reply(row["rejected"]),
                }
                if sh.config == "image_crop":
                    rej = [ex.image(im)[cut:] for im in row["rejected_images"] or []]
                    out["rejected_image"] = rej[0] if len(rej) == 1 else rej
                subset = subset_name(row["source"], row["method"], sh.split)
                rel = f"annotations/{subset}.jsonl"
                subsets[subset] = (_meta_file(sh.config, sh.split), rel)
                ex.sink(rel).write_json(out)
                ex.rows[f"{sh.config}.{sh.split}"] += 1
        metas: dict[str, dict] = {"meta.json": {}}
        for subset in sorted(subsets):
            meta, rel = subsets[subset]
            metas.setdefault(meta, {})[subset] = {
                "root": ex.ref(ex.image_dir), "annotation": ex.ref(rel),
                "data_augment": False, "repeat_time": 1, "length": ex.sinks[rel].lines,
            }
        for meta, content in metas.items():
            ex.write_json(meta, content)
        ex.write_bytes("README.md", readme(ex, list(metas)).encode())
        return {"subsets": {m: sorted(c) for m, c in metas.items()}}
