"""The output contract, end to end: TRL's DPOTrainer trains on the canonical shards as they are.

One optimisation step of ``trl.DPOTrainer`` on CPU with the project's tiny
Idefics3, on rows of a real sample build loaded with
``datasets.load_dataset("parquet", data_files=".../data/*.parquet")``: no
column renaming, no image conversion, no dropping of provenance.
"""
from __future__ import annotations

import glob
import math

import pytest

from helpers import ROOT

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")

TINY_MODEL = ROOT / "models" / "tiny-idefics3"


def test_dpo_trainer_one_step_on_canonical_shards(sample_build, tmp_path):
    from datasets import load_dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    files = sorted(glob.glob(str(sample_build / "data" / "*.parquet")))
    assert files, f"no shards in {sample_build}/data"
    ds = load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(ds[0]["images"][0], Image.Image)  # decoded by the HF image metadata, not by us
    # a handful of text-contrast rows, chosen != rejected, from more than one method when the build has them
    picked, methods = [], set()
    for i, row in enumerate(ds.select_columns(["method", "chosen", "rejected"])):
        if row["chosen"] != row["rejected"] and (row["method"] not in methods or len(picked) >= 2):
            picked.append(i)
            methods.add(row["method"])
        if len(picked) == 4:
            break
    assert len(picked) == 4
    train = ds.select(picked)

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(TINY_MODEL)
    processor = AutoProcessor.from_pretrained(TINY_MODEL)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"), max_length=None, use_cpu=True, per_device_train_batch_size=2,
        max_steps=1, learning_rate=1e-3, report_to=[], logging_steps=1, save_strategy="no",
        dataloader_num_workers=0, seed=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=processor)

    # the images really reach the model: the collated batch carries pixels and image tokens
    batch = trainer.data_collator([dict(train[0]), dict(train[1])])
    assert batch["pixel_values"].numel() > 0
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    ids = batch.get("input_ids", batch.get("prompt_input_ids"))
    assert (ids == image_token).any()

    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses), trainer.state.log_history
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed, "one DPO step changed no weight"
    assert any("vision" in n for n in changed), "the vision tower got no gradient: images were not used"
