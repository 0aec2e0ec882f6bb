"""The README of each trainer export: how that trainer finds the export's images.

Exports write image paths relative to the export folder, so a dataset folder
can be copied to another machine and still work; ``python -m pipeline export
--root DIR`` writes them as ``DIR/<relative path>`` instead, for a trainer that
wants absolute paths on the machine where the export will live.  These texts
say which rule each trainer applies and never name the build machine's paths
(only ``root``, which the user chose for the target machine).
"""
from __future__ import annotations

HERE = "<this folder>"


def llamafactory_readme(first_dataset: str, root: str | None) -> str:
    return (
        "# LLaMA-Factory export\n\nsharegpt preference rows (`ranking: true`) registered in `dataset_info.json`. "
        "Image paths are relative to this folder: LLaMA-Factory joins them to `media_dir`, which defaults to "
        "`dataset_dir`, so point `dataset_dir` at this folder wherever it lives:\n\n```yaml\n"
        f"dataset_dir: {root or HERE}\ndataset: {first_dataset}\nstage: dpo\n```\n\n"
        "The `*_image_crop_*` datasets have the same text on both sides and an extra `rejected_images` column "
        "that LLaMA-Factory does not read: plain DPO gets no signal from them.\n")


def swift_readme(root: str | None) -> str:
    if root:
        paths = (f"Image paths are absolute, under `{root}` (written with `--root`): copy this folder there "
                 "before training.")
        run = f"swift rlhf --rlhf_type dpo --dataset {root}/train.jsonl ..."
    else:
        paths = ("Image paths are relative to this folder. ms-swift opens a relative path from its working "
                 "directory, or joined to the `ROOT_IMAGE_DIR` environment variable when that is set: set it "
                 "to this folder (or re-export with `python -m pipeline export --format swift --root DIR` "
                 "for absolute paths under DIR).")
        run = f"ROOT_IMAGE_DIR={HERE} swift rlhf --rlhf_type dpo --dataset {HERE}/train.jsonl ..."
    return (
        "# ms-swift export\n\n`messages` (user turn with `<image>` tags, then the chosen answer), "
        "`rejected_response` and `images`. Rows of `image_crop_*.jsonl` are image-contrast (mDPO-style) pairs: "
        "no `rejected_response`, and `rejected_images` instead -- ms-swift builds their rejected side from the "
        f"same messages with the rejected images.\n\n{paths}\n\n```bash\n{run}\n```\n")


def internvl_readme(meta_files: list[str], root: str | None) -> str:
    what = {"meta.json": "the train subsets of the text-contrast pairs",
            "meta_image_crop.json": "the image-contrast pairs (same text, plus a `rejected_image` the MPO "
                                    "trainer does not read)"}
    listed = "".join(f"- `{m}`: {what.get(m, 'the ' + m[len('meta_'):-len('.json')] + ' split')}\n"
                     for m in meta_files)
    if root:
        paths = (f"`root` and `annotation` in the meta files are absolute, under `{root}` (written with "
                 "`--root`): copy this folder there before training.")
    else:
        paths = ("`root` and `annotation` in the meta files are relative to this folder: the trainer opens "
                 "`annotation` as given and each image as `os.path.join(root, image)`, so either start it "
                 "from this folder or re-export with `python -m pipeline export --format internvl --root DIR` "
                 "for absolute paths under DIR.")
    return (f"# InternVL MPO export\n\nOne jsonl per (source, method) under `annotations/` "
            f"(`--meta_path` takes a meta file):\n\n{listed}\n{paths}\n")
