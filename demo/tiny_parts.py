"""What the tiny model is made of: its special tokens, chat template, sizes, tokenizer,
model configuration and processor (``demo.tiny_model`` builds and trains it).

Kept apart from the training because these are the model's definition: the sizes are read
by the image budget before any model exists (``pipeline.engine.image_budget``), and the
tokenizer and processor are what vLLM, transformers and TRL load from the folder.
"""
from __future__ import annotations

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


# -- model and processor ---------------------------------------------------------
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

