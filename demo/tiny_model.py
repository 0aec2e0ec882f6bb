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
algorithms) and cached: ``out_dir/build-stamp.json`` records a hash of the
tiny model's source modules, the prompt templates, the data and the parameters;
when it matches the build returns at once.  vLLM, transformers and TRL load the
folder directly.

This module builds, caches and saves; the model's parts (tokens, chat template,
sizes, tokenizer, configuration, processor) are ``demo.tiny_parts``, its training
examples and loop ``demo.tiny_training``.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from demo import tiny_parts, tiny_training
from demo.tiny_parts import DEFAULT_PARAMS, build_config, build_processor, build_tokenizer
from demo.tiny_training import encode_examples, read_jsonl, train, training_examples

STAMP_FILE = "build-stamp.json"
#: the source of the build: a change to any of them builds the model again
SOURCES = (__file__, tiny_parts.__file__, tiny_training.__file__)


# -- caching ----------------------------------------------------------------------
def _hash_file(h, path: Path) -> None:
    h.update(str(path.name).encode())
    h.update(path.read_bytes())


def build_fingerprint(data_dir: Path, params: dict) -> str:
    from importlib.metadata import version

    h = hashlib.sha256()
    for source in SOURCES:
        h.update(Path(source).read_bytes())
    from pipeline.config import templates  # the prompts it was taught are part of the model

    h.update(Path(templates.__file__).read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update("|".join(version(d) for d in ("torch", "transformers", "tokenizers", "pillow")).encode())
    for name in ("gt.jsonl", "open.jsonl"):
        _hash_file(h, data_dir / name)
        for row in read_jsonl(data_dir / name):
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
    encoded = encode_examples(processor, examples)
    log(f"{len(examples)} training examples, vocab {len(tokenizer)}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    losses = train(model, encoded, params, tokenizer.pad_token_id, log=log)

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
