"""Driver-side checks of the model before any engine (or GPU) is started.

A mistake found here costs seconds and one line naming the key; found by vLLM
it costs an engine start on every replica and a long traceback, or -- for a
missing stop token -- a whole build of responses that run on to
``max_tokens`` with invented follow-on turns.

* The tokenizer/processor loads with this transformers version (remote-code
  tokenizers break across versions).
* One prompt per source renders through the chat template, and the marker the
  template puts after an assistant turn (``<|im_end|>``, ``<end_of_utterance>``)
  is a stop token: the tokenizer's EOS, an ``eos_token_id`` of the generation
  config (both of which vLLM stops on), or ``model.stop_token_ids`` / ``model.stop``.
* ``model.max_model_len`` is within the model's own limit, computed the way
  vLLM does (the smallest length key of the text config, times a RoPE scaling
  factor, capped by the tokenizer's ``model_max_length``).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.config import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import PipelineConfig

log = logging.getLogger("pipeline")

ENGINE_STAGES = ("generate", "dropout_ntp", "judge")
#: the config keys vLLM reads a model's length from (ModelArchConfigConvertor)
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
               "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
#: RoPE types whose max_position_embeddings is already scaled (vLLM's _get_and_verify_max_len)
PRESCALED_ROPE = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
MARK = "\x00MMPR-END\x00"


def check_model(config: "PipelineConfig") -> None:
    """Raise ConfigError (one line, naming the key) when the model cannot run this config."""
    if not any(s in ENGINE_STAGES for s in config.run.stages):
        return
    m = config.model
    path = m.resolved_path
    if storage.is_uri(path):
        log.info("pre-flight: model on a store (%s): tokenizer checks left to the engines", path)
        return
    tokenizer = _load(path, m, "tokenizer")
    hf_config = _load(path, m, "config")
    check_max_model_len(m.max_model_len, hf_config, tokenizer)
    stops = _stop_ids(config, tokenizer, path)
    for src_name, messages in _sample_messages(config):
        marker = end_of_turn(tokenizer, messages, m.image_placeholder, src_name)
        if marker is None:
            continue
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        first = ids[0] if ids else None
        if first in stops or any(marker.startswith(s) for s in m.stop):
            continue
        raise ConfigError(
            f"model.stop_token_ids: the chat template of {m.path} ends an assistant turn with "
            f"{marker!r} (token {first}), which is not a stop token (EOS {tokenizer.eos_token!r}, "
            f"generation config, configured {sorted(stops)}): add {marker!r} to model.stop_token_ids "
            f"(source {src_name!r})")


def _load(path: str, m: Any, what: str) -> Any:
    from transformers import AutoConfig, AutoTokenizer
    import transformers

    loader = AutoTokenizer if what == "tokenizer" else AutoConfig
    try:
        return loader.from_pretrained(path, revision=m.revision, trust_remote_code=m.trust_remote_code)
    except Exception as e:  # noqa: BLE001 -- any failure here is the model's or the config's
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(f"model.path: cannot load the {what} of {m.path} with transformers "
                          f"{transformers.__version__}: {first}") from None


def model_length_limit(hf_config: Any, tokenizer: Any = None) -> int | None:
    """The longest context the model supports, as vLLM derives it (None: not stated)."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    text = getattr(hf_config, "llm_config", None) or text  # InternVL's remote-code config
    found = [getattr(text, k, None) for k in LENGTH_KEYS]
    found = [v for v in found if isinstance(v, (int, float)) and v > 0]
    if not found:
        return None
    limit = float(min(found))
    rope = getattr(text, "rope_scaling", None) or getattr(text, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("factor"):
        rope_type = rope.get("rope_type") or rope.get("type")
        if rope_type not in PRESCALED_ROPE:
            limit *= float(rope["factor"])
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1e9:
        limit = min(limit, tok_max)
    return int(limit)


def check_max_model_len(max_model_len: int, hf_config: Any, tokenizer: Any = None) -> None:
    limit = model_length_limit(hf_config, tokenizer)
    if limit is not None and max_model_len > limit:
        raise ConfigError(f"model.max_model_len: {max_model_len} exceeds the model's own limit of {limit} "
                          f"tokens: set model.max_model_len: {limit} or less")


def _stop_ids(config: "PipelineConfig", tokenizer: Any, path: str) -> set[int]:
    from pipeline.engine import resolve_token_ids

    stops = {tokenizer.eos_token_id} - {None}
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(path, revision=config.model.revision).eos_token_id
        stops |= set(eos if isinstance(eos, list) else [eos]) - {None}
    except Exception:  # noqa: BLE001 -- no generation_config.json: vLLM uses the tokenizer's EOS
        pass
    try:
        stops |= set(resolve_token_ids(config.model.stop_token_ids, tokenizer))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return stops


def _sample_messages(config: "PipelineConfig"):
    """(source name, user turn) for the first row of each source that ingest accepts,
    built the way generate builds it."""
    from itertools import islice

    from pipeline.sources import iter_source
    from pipeline.stage import StageContext
    from pipeline.templates import render_question
    from stages import make_stage
    from stages.generate import user_message

    ingest = make_stage("ingest", config)
    rendered = False
    for src in config.sources:
        try:
            raws = list(islice(iter_source(src), 20))
            row = next(iter(ingest.run(iter(raws), StageContext("ingest", "preflight", config))), None)
        except Exception:  # noqa: BLE001 -- an unreadable source is check_sources' business
            row = None
        if row is None:
            continue
        rendered = True
        text = render_question(row["question"], row["choices"], config.generate.template, bool(row["answer"]))
        yield src.name, [user_message(text, max(1, len(row["images"] or [])))]
    if not rendered:
        yield "<none>", [user_message("Describe the image.", 1)]


def end_of_turn(tokenizer: Any, messages: list[dict], placeholder: str | None, src_name: str) -> str | None:
    """What the chat template writes right after an assistant turn's text (None: nothing)."""
    from pipeline.engine import _as_string_content

    convo = messages + [{"role": "assistant", "content": [{"type": "text", "text": MARK}]}]
    if placeholder is not None:
        convo = [_as_string_content(m, placeholder) for m in convo]
    try:
        text = tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=False)
    except Exception as e:  # noqa: BLE001 -- a template that cannot render our prompts
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(f"model.path: the chat template cannot render a prompt of source {src_name!r}: "
                          f"{first}") from None
    if MARK not in text:
        return None
    marker = text.split(MARK, 1)[1].strip()
    return marker.split()[0] if marker else None
