"""Teaching the tiny model to answer: its training examples, their encoding, the training loop.

The examples come from the sample data (``demo.sample_data``): each ground-truth question
rendered with the pipeline's own prompt templates and answered with its ``facts`` sentence
and the answer in the template's format, each open prompt with its caption.  Training is
seeded and reads the examples in a fixed order, so the same data gives the same weights
(``demo.tiny_model`` runs it with deterministic torch algorithms).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from demo.tiny_parts import EOS


# -- data -------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _answer_text(row: dict) -> str:
    a = row["answer"]
    return a[0] if isinstance(a, list) else str(a)


def _cot_response(row: dict, template_id: str) -> str:
    reason = row["facts"].strip()
    ans = _answer_text(row)
    if template_id == "mmpr_boxed":
        return f"{reason}\nAnswer: \\boxed{{{ans}}}"
    return f"{reason}\nFinal answer: {ans}"


def training_examples(data_dir: Path) -> list[dict]:
    """(user text, response, image path or None) in a fixed order."""
    from pipeline.config.templates import render_question

    gt = read_jsonl(data_dir / "gt.jsonl")
    op = read_jsonl(data_dir / "open.jsonl")
    ex: list[dict] = []
    for i, row in enumerate(gt):
        templates = ["mmpr_final_answer"] + (["mmpr_boxed"] if i % 4 == 0 else [])
        for t in templates:
            ex.append({
                "user": render_question(row["question"], row.get("choices"), t),
                "response": _cot_response(row, t),
                "image": data_dir / row["image"],
            })
    for i, row in enumerate(op):
        user = render_question(row["question"], None, "plain", has_ground_truth=False)
        ex.append({"user": user, "response": row["facts"].strip(), "image": data_dir / row["image"]})
        if i % 4 == 0:  # a few image-free ones: continuations without the image stay fluent
            ex.append({"user": user, "response": row["facts"].strip(), "image": None})
    return ex


def _messages(user: str, with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": user}]
    return [{"role": "user", "content": content}]


def encode_examples(processor, examples: list[dict]):
    """Token ids, labels (-100 on the prompt) and pixel values per example."""
    import numpy as np
    from PIL import Image

    tok = processor.tokenizer
    eos_id = tok.convert_tokens_to_ids(EOS)
    encoded = []
    for e in examples:
        has_img = e["image"] is not None
        prompt = tok.apply_chat_template(_messages(e["user"], has_img), tokenize=False,
                                         add_generation_prompt=True)
        if has_img:
            with Image.open(e["image"]) as im:
                img = im.convert("RGB")
            enc = processor(text=prompt, images=[img], add_special_tokens=False)
            prompt_ids = list(enc["input_ids"][0])
            pixels = np.asarray(enc["pixel_values"][0], dtype=np.float32)   # (1, 3, H, W)
        else:
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            pixels = None
        resp_ids = tok(" " + e["response"], add_special_tokens=False)["input_ids"] + [eos_id]
        encoded.append({"input_ids": prompt_ids + resp_ids,
                        "labels": [-100] * len(prompt_ids) + resp_ids,
                        "pixels": pixels})
    return encoded


def train(model, encoded: list[dict], p: dict, pad_id: int, log=print) -> list[float]:
    import numpy as np
    import torch

    rng = random.Random(p["seed"])
    order: list[int] = []
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / p["steps"]))
    model.train()
    losses = []
    side = p["image_size"]
    for step in range(p["steps"]):
        batch = []
        while len(batch) < p["batch_size"]:
            if not order:
                order = list(range(len(encoded)))
                rng.shuffle(order)
            batch.append(encoded[order.pop()])
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        kwargs = {}
        if any(b["pixels"] is not None for b in batch):
            # image-free rows get an all-zero image, which Idefics3 drops as padding
            pix = np.stack([b["pixels"] if b["pixels"] is not None
                            else np.zeros((1, 3, side, side), np.float32) for b in batch])
            kwargs["pixel_values"] = torch.from_numpy(pix)
            kwargs["pixel_attention_mask"] = torch.from_numpy(
                np.stack([np.full((1, side, side), b["pixels"] is not None) for b in batch]))
        out = model(input_ids=ids, attention_mask=mask, labels=labels, **kwargs)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        if step % 50 == 0 or step == p["steps"] - 1:
            log(f"step {step:4d} loss {out.loss.item():.4f}")
    model.eval()
    return losses

