"""A weightless model folder of a real VLM architecture, for throughput benchmarks.

    python bench/realsize_model.py --preset full|cpu --out DIR

writes ``config.json``, ``generation_config.json``, the tokenizer, the chat
template and the processor config of an ``Idefics3ForConditionalGeneration``
-- and no weights.  vLLM builds such a model with random weights
(``load_format="dummy"``), so a benchmark measures the real architecture's
cost on a machine that has no checkpoint and no model hub.

Presets:

* ``full``: the shape of HuggingFaceM4/Idefics3-8B-Llama3 -- a Llama-3.1-8B
  text model (hidden 4096, 32 layers, 32 query / 8 KV heads, head_dim 128,
  MLP 14336, rope theta 500000 with llama3 scaling, vocabulary 128259 =
  Llama 3's 128256 + Idefics3's three added tokens), the SigLIP-so400m vision
  tower (hidden 1152, 27 layers, 16 heads, MLP 4304, patch 14, 364 px tiles),
  pixel shuffle with scale factor 2, so 169 tokens per 364 px tile, and the
  real processor's image splitting (longest edge resized to 4 x 364, split
  into 364 px tiles plus a global image).  ~8.5B parameters: for a GPU.
* ``cpu``: the same architecture scaled down until it runs on 2 CPU cores in
  minutes: hidden 512, 4 layers, 8 query / 2 KV heads (head_dim 64), a 2-layer
  vision tower of hidden 384 at the real tile size (364 px, patch 14, so still
  169 image tokens per image), no image splitting, and the full 128259-token
  vocabulary (so the embedding and the LM head keep their real width).

The tokenizer, chat template and special tokens are the project's tiny
model's (``models/tiny-idefics3``, built by ``make tiny-model``), whose BPE
vocabulary has a few hundred tokens, not Llama 3's 128k.  Its vocabulary is
padded with filler tokens (``Ġab3``-style: letters then a digit, which the
byte-level pre-tokenizer always splits, so no text ever encodes to one and
every prompt encodes exactly as with the tiny tokenizer) up to the model's
vocabulary size.  vLLM would accept a model vocabulary larger than the
tokenizer's, but a model with random weights samples nearly uniformly over
the 128k ids, and ids the tokenizer does not know decode to nothing: the
responses would be empty strings, which would make the per-response work
after the engine (stripping, Parquet rows) unrealistically cheap.  With the
padding every sampled token decodes to a few characters, like real text.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the real vocabulary: Llama 3's 128256 plus <fake_token_around_image>, <image>, <end_of_utterance>
REAL_VOCAB = 128259

PRESETS: dict[str, dict] = {
    "full": {
        "desc": "Idefics3-8B-Llama3 shape (Llama-3.1-8B + SigLIP-so400m)",
        "dtype": "bfloat16",
        "max_model_len": 8192,
        "text": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, intermediate_size=14336,
                     max_position_embeddings=131072, vocab_size=REAL_VOCAB),
        "vision": dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16,
                       intermediate_size=4304, image_size=364, patch_size=14),
        "image_splitting": True,
    },
    "cpu": {
        "desc": "Idefics3 architecture scaled down for 2 CPU cores (real vocabulary and tile size)",
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "text": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=2, head_dim=64, intermediate_size=1792,
                     max_position_embeddings=131072, vocab_size=REAL_VOCAB),
        "vision": dict(hidden_size=384, num_hidden_layers=2, num_attention_heads=6,
                       intermediate_size=1536, image_size=364, patch_size=14),
        "image_splitting": False,
    },
}

#: Llama 3.1's rotary embedding (Idefics3-8B-Llama3 is built on Llama-3.1-8B-Instruct)
ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
SCALE_FACTOR = 2

#: what is taken from the tiny model as is (tokenizer, chat template)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def image_seq_len(preset: dict) -> int:
    v = preset["vision"]
    return (v["image_size"] // v["patch_size"]) ** 2 // SCALE_FACTOR ** 2


def build_config(preset: dict, token_ids: dict[str, int]):
    """The ``Idefics3Config`` of a preset; ``token_ids``: bos/eos/pad/image ids of the tokenizer."""
    from transformers import Idefics3Config, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    text = LlamaConfig(
        **preset["text"],
        rope_parameters=dict(ROPE),
        rms_norm_eps=1e-5,
        hidden_act="silu",
        bos_token_id=token_ids["bos"], eos_token_id=token_ids["eos"], pad_token_id=token_ids["pad"],
        tie_word_embeddings=False,
    )
    vision = Idefics3VisionConfig(**preset["vision"], hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    cfg = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=token_ids["image"],
        pad_token_id=token_ids["pad"],
        scale_factor=SCALE_FACTOR,
        tie_word_embeddings=False,
    )
    cfg.bos_token_id, cfg.eos_token_id = token_ids["bos"], token_ids["eos"]
    cfg.architectures = ["Idefics3ForConditionalGeneration"]
    cfg.dtype = preset["dtype"]
    return cfg


def count_parameters(preset: dict) -> dict[str, int]:
    """Parameters of ``Idefics3ForConditionalGeneration`` for a preset, by part (computed, not built)."""
    t, v = preset["text"], preset["vision"]
    h, L, hd = t["hidden_size"], t["num_hidden_layers"], t["head_dim"]
    q, kv = t["num_attention_heads"] * hd, t["num_key_value_heads"] * hd
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * t["intermediate_size"] + 2 * h
    text = t["vocab_size"] * h + L * per_layer + h          # embeddings, layers, final norm
    lm_head = t["vocab_size"] * h
    vh, vi = v["hidden_size"], v["intermediate_size"]
    n_pos = (v["image_size"] // v["patch_size"]) ** 2
    v_layer = 4 * (vh * vh + vh) + (vh * vi + vi) + (vi * vh + vh) + 2 * 2 * vh
    vision = (3 * v["patch_size"] ** 2 * vh + vh) + n_pos * vh + v["num_hidden_layers"] * v_layer + 2 * vh
    connector = vh * SCALE_FACTOR ** 2 * h                     # pixel shuffle -> text width, no bias
    return {"text": text, "lm_head": lm_head, "vision": vision, "connector": connector,
            "total": text + lm_head + vision + connector}


def _filler(i: int) -> str:
    """A filler token: byte-level space, letters (base 26 of ``i``), one digit."""
    letters = ""
    i += 26  # at least two letters
    while i:
        i, r = divmod(i, 26)
        letters = chr(ord("a") + r) + letters
    return f"\u0120{letters}{len(letters) % 10}"


def pad_tokenizer(path: Path, vocab_size: int) -> int:
    """Append filler tokens to a byte-level BPE ``tokenizer.json`` until it has ``vocab_size`` ids.

    Returns how many were added.  Ids already taken (BPE vocabulary and added
    tokens) are left alone; no merges are added, so encoding is unchanged.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE" or (data.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise SystemExit(f"{path}: expected a byte-level BPE tokenizer")
    vocab: dict[str, int] = model["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in data.get("added_tokens", [])}
    added, i = 0, 0
    for token_id in range(vocab_size):
        if token_id in taken:
            continue
        while _filler(i) in vocab:
            i += 1
        vocab[_filler(i)] = token_id
        i += 1
        added += 1
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return added


def write_model(preset_name: str, out_dir: Path, tiny_dir: Path | None = None) -> Path:
    """Write the weightless model folder of ``preset_name`` to ``out_dir``; return ``out_dir``."""
    from transformers import AutoTokenizer, GenerationConfig

    preset = PRESETS[preset_name]
    tiny_dir = Path(tiny_dir or ROOT / "models" / "tiny-idefics3")
    if not (tiny_dir / "tokenizer.json").exists():
        raise SystemExit(f"{tiny_dir} has no tokenizer: run `make tiny-model` first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tiny_dir / name).exists():
            shutil.copyfile(tiny_dir / name, out_dir / name)
    pad_tokenizer(out_dir / "tokenizer.json", preset["text"]["vocab_size"])
    tok_cfg = json.loads((out_dir / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = preset["max_model_len"]   # an image of the full preset is ~2900 tokens
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    tok = AutoTokenizer.from_pretrained(out_dir)
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id,
           "image": tok.convert_tokens_to_ids("<image>")}
    if len(tok) != preset["text"]["vocab_size"]:
        raise SystemExit(f"padded tokenizer has {len(tok)} tokens, the model {preset['text']['vocab_size']}")

    cfg = build_config(preset, ids)
    cfg.save_pretrained(out_dir)
    GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                     pad_token_id=ids["pad"]).save_pretrained(out_dir)

    # the tiny model's processor config with the real tile geometry
    proc = json.loads((tiny_dir / "processor_config.json").read_text())
    side = preset["vision"]["image_size"]
    ip = proc["image_processor"]
    ip["do_image_splitting"] = preset["image_splitting"]
    # Idefics3's processor resizes the longest edge to 4 tiles when it splits, to one tile when not
    ip["size"] = {"longest_edge": 4 * side if preset["image_splitting"] else side}
    ip["max_image_size"] = {"longest_edge": side}
    proc["image_seq_len"] = image_seq_len(preset)
    (out_dir / "processor_config.json").write_text(json.dumps(proc, indent=2, sort_keys=True) + "\n")
    (out_dir / "realsize-preset.json").write_text(json.dumps(
        {"preset": preset_name, **preset, "image_seq_len": image_seq_len(preset),
         "parameters": count_parameters(preset)}, indent=1) + "\n")
    return out_dir


def image_tokens_per_image(model_dir: Path, image) -> int:
    """How many ``<image>`` tokens the folder's processor expands one image into."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    enc = processor(text="<image>", images=[image], add_special_tokens=False)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    return sum(1 for t in enc["input_ids"][0] if t == image_id)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", type=Path, default=ROOT / "models" / "tiny-idefics3")
    args = ap.parse_args(argv)
    out = write_model(args.preset, args.out, args.tiny)
    p = count_parameters(PRESETS[args.preset])
    print(f"{out}: {args.preset} ({PRESETS[args.preset]['desc']}), {p['total'] / 1e9:.2f}B parameters "
          f"(text {p['text'] / 1e9:.2f}B, lm_head {p['lm_head'] / 1e9:.2f}B, vision {p['vision'] / 1e9:.3f}B, "
          f"connector {p['connector'] / 1e6:.1f}M); {image_seq_len(PRESETS[args.preset])} tokens per tile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
