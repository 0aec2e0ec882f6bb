"""A tiny local vision-language model for machines without a model hub.

``python -m pipeline tiny-model --out models/tiny-idefics3 --data data/sample``

builds a randomly initialised ``Idefics3ForConditionalGeneration`` small enough
for CPU (2-layer SigLIP-style vision tower on 64 px images with patch 16 and no
image splitting, so an image costs 4 + 3 tokens; 2-layer Llama text model,
hidden 128, head_dim 64 -- vLLM's CPU attention backend rejects head_dim 16),
a byte-level BPE tokenizer trained locally with ``tokenizers`` and an
``Idefics3Processor`` with a chat template, then trains it briefly on the
sample data (:mod:`demo.sample_data`) so that it answers

* prompts rendered with the ``mmpr_final_answer`` template with one reasoning
  sentence and a last line ``Final answer: <answer>`` (the option letter for
  multiple choice), ``mmpr_boxed`` prompts with ``Answer: \\boxed{<answer>}``;
* open prompts (template ``plain``) with a 2-3 sentence description.

Sampled at temperature 1 the answers are parseable but only sometimes right:
the material correctness pairs need.  The model is a test fixture, not a model.

The build is deterministic (fixed seeds, fixed data order, deterministic torch
algorithms) and cached: ``out_dir/build-stamp.json`` records a hash of this
source, the prompt templates, the data and the parameters; when it matches the
build returns at once.  vLLM, transformers and TRL load the folder directly.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

STAMP_FILE = "build-stamp.json"

BOS = "<|begin_of_text|>"
EOS = "<end_of_utterance>"   # ends every turn; generation stops on it
PAD = "<pad>"
IMAGE = "<image>"
FAKE_IMAGE = "<fake_token_around_image>"
GLOBAL_IMG = "<global-img>"
ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE, FAKE_IMAGE, GLOBAL_IMG, *ROW_COL]

#: Idefics3-style chat template.  Content may be a string or a list of
#: ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts.  Message
#: content is emitted verbatim (no stripping), so transformers'
#: ``continue_final_message=True`` can cut the text right after a partial
#: assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}"
    "{{ ': ' + message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if loop.first %}{{ ':' if part['type'] == 'image' else ': ' }}{% endif %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<end_of_utterance>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

DEFAULT_PARAMS = {
    "seed": 0,
    "steps": 300,
    "batch_size": 16,
    "lr": 3e-3,
    "vocab_size": 900,
    "image_size": 64,
    "patch_size": 16,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_layers": 2,
    "num_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
}


# -- data -------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
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

    gt = _read_jsonl(data_dir / "gt.jsonl")
    op = _read_jsonl(data_dir / "open.jsonl")
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


# -- tokenizer -------------------------------------------------------------------
def _tokenizer_corpus(examples: list[dict]) -> list[str]:
    from pipeline.config.templates import TEMPLATES

    texts = ["User:", "Assistant:", "User: ", "Assistant: ", "Final answer:", "Answer: \\boxed{}"]
    texts += [t.format(question="") for t in TEMPLATES.values()]
    texts += [str(i) for i in range(0, 101)]
    texts += list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    for e in examples:
        texts.append(e["user"])
        texts.append(" " + e["response"])
    return texts


def build_tokenizer(examples: list[dict], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(examples), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS, eos_token=EOS, pad_token=PAD,
        extra_special_tokens=[IMAGE, FAKE_IMAGE, GLOBAL_IMG],
        model_max_length=DEFAULT_PARAMS["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# -- model ------------------------------------------------------------------------
def build_config(tokenizer, p: dict):
    from transformers import Idefics3Config, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD, IMAGE)}
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_layers"],
        num_attention_heads=p["num_heads"],
        num_key_value_heads=p["num_heads"],
        head_dim=p["head_dim"],
        max_position_embeddings=p["max_position_embeddings"],
        rms_norm_eps=1e-5,
        bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    vision = Idefics3VisionConfig(
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_layers"],
        num_attention_heads=p["num_heads"],
        image_size=p["image_size"],
        patch_size=p["patch_size"],
    )
    cfg = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=ids[IMAGE],
        pad_token_id=ids[PAD],
        scale_factor=2,
        tie_word_embeddings=False,
    )
    cfg.bos_token_id, cfg.eos_token_id = ids[BOS], ids[EOS]
    return cfg


def build_processor(tokenizer, p: dict):
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    side = p["image_size"]
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": side},
        max_image_size={"longest_edge": side},
    )
    seq_len = (side // p["patch_size"]) ** 2 // 4  # scale_factor 2
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                             image_seq_len=seq_len, chat_template=CHAT_TEMPLATE)


def _encode(processor, examples: list[dict]):
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


def _train(model, encoded: list[dict], p: dict, pad_id: int, log=print) -> list[float]:
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


# -- caching ----------------------------------------------------------------------
def _hash_file(h, path: Path) -> None:
    h.update(str(path.name).encode())
    h.update(path.read_bytes())


def build_fingerprint(data_dir: Path, params: dict) -> str:
    from importlib.metadata import version

    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    from pipeline.config import templates  # the prompts it was taught are part of the model

    h.update(Path(templates.__file__).read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update("|".join(version(d) for d in ("torch", "transformers", "tokenizers", "pillow")).encode())
    for name in ("gt.jsonl", "open.jsonl"):
        _hash_file(h, data_dir / name)
        for row in _read_jsonl(data_dir / name):
            _hash_file(h, data_dir / row["image"])
    return h.hexdigest()


def _stamp_matches(out_dir: Path, fingerprint: str) -> bool:
    try:
        stamp = json.loads((out_dir / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("fingerprint") == fingerprint and (out_dir / "config.json").exists()


# -- build ------------------------------------------------------------------------
def build_tiny_model(out_dir: Path, data_dir: Path, seed: int = 0, steps: int = 300,
                     force: bool = False, log=print) -> Path:
    """Build (or reuse) the tiny Idefics3 model in ``out_dir``; return ``out_dir``."""
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    if not (data_dir / "gt.jsonl").exists():
        from demo.sample_data import build_sample_data
        log(f"no sample data in {data_dir}; building it")
        build_sample_data(data_dir)
    params = dict(DEFAULT_PARAMS, seed=seed, steps=steps)
    fingerprint = build_fingerprint(data_dir, params)
    if not force and _stamp_matches(out_dir, fingerprint):
        log(f"{out_dir}: up to date ({fingerprint[:12]})")
        return out_dir
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / STAMP_FILE).exists():
        # a rebuild replaces the folder whole: only one this builder made (it has the stamp)
        from pipeline.files.ownership import NotOwned

        raise NotOwned(f"--out: {out_dir} is not empty and holds no tiny model built by mmpr-forge "
                       f"(no {STAMP_FILE}); give a new or empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time per folder (parallel test sessions share models/)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _stamp_matches(out_dir, fingerprint):
            log(f"{out_dir}: built by another process ({fingerprint[:12]})")
            return out_dir
        _build(out_dir, data_dir, params, fingerprint, log)
    return out_dir


def _build(out_dir: Path, data_dir: Path, params: dict, fingerprint: str, log) -> None:
    import torch

    # seeds and deterministic mode only for the build: the caller's state is restored
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        try:
            torch.manual_seed(params["seed"])
            torch.use_deterministic_algorithms(True, warn_only=True)
            _build_seeded(out_dir, data_dir, params, fingerprint, log)
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def _build_seeded(out_dir: Path, data_dir: Path, params: dict, fingerprint: str, log) -> None:
    import torch
    from transformers import GenerationConfig, Idefics3ForConditionalGeneration

    t0 = time.perf_counter()
    examples = training_examples(data_dir)
    tokenizer = build_tokenizer(examples, params["vocab_size"])
    processor = build_processor(tokenizer, params)
    config = build_config(tokenizer, params)
    model = Idefics3ForConditionalGeneration(config)
    encoded = _encode(processor, examples)
    log(f"{len(examples)} training examples, vocab {len(tokenizer)}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    losses = _train(model, encoded, params, tokenizer.pad_token_id, log=log)

    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        # saved in the dtype its config and configs/sample.yaml declare (bfloat16), so vLLM loads
        # the weights as they are instead of warning once per float32 tensor it converts
        model.to(torch.bfloat16).save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / STAMP_FILE).write_text(json.dumps({
            "fingerprint": fingerprint,
            "params": params,
            "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        }, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log(f"built {out_dir} in {time.perf_counter() - t0:.1f}s")
