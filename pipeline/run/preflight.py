"""Pre-flight checks: fail in seconds, with the key to fix, before a build starts any work.

Sources exist (the shipped sample data is generated when a source reads it),
the work and output folders are writable, a configured Ray address answers,
and the model is there (the tiny model is built, and published to the work
folder's store when workers cannot see this machine's disk).

Then the model itself is checked on the driver before any engine (or GPU) is started.

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

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.files import storage
from pipeline.config.settings import ConfigError, PipelineConfig

log = logging.getLogger("pipeline")


def ensure_sample_data(config: PipelineConfig) -> None:
    """Generate the shipped sample data when a source reads it and it is not there yet."""
    sample = os.path.abspath(config.model.tiny_model_data)
    wanted = [s for s in config.sources if os.path.abspath(s.path).startswith(sample + os.sep)]
    if wanted and not all(os.path.exists(s.path) for s in wanted):
        from demo.sample_data import build_sample_data

        log.info("generating the sample data in %s", sample)
        build_sample_data(Path(sample))


def check_sources(config: PipelineConfig) -> None:
    ensure_sample_data(config)
    if not config.sources:
        raise ConfigError("sources: no sources configured; add at least one")
    for i, src in enumerate(config.sources):
        if src.format == "hf" and not os.path.exists(src.path):
            continue  # a hub dataset id
        try:
            found = storage.exists(src.path)
        except OSError as e:  # unreachable store, bad credentials, unknown scheme
            raise ConfigError(f"sources.{i}.path: cannot read {src.path} ({e})") from None
        if not found:
            raise ConfigError(f"sources.{i}.path: {src.path} does not exist (source {src.name!r})")


def check_storage(config: PipelineConfig) -> None:
    """Fail before any work when the work or output folder cannot be written
    (a missing bucket, no credentials, a read-only mount).  On a store a probe
    object is written and removed; a local folder is checked without creating
    anything (its nearest existing parent must be a writable folder)."""
    for key, uri in (("run.work_dir", config.run.work_dir), ("run.output_dir", config.run.output_dir)):
        if not storage.is_uri(uri):
            parent = os.path.abspath(uri)
            while not os.path.exists(parent):
                parent = os.path.dirname(parent)
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{key}: cannot write to {uri} ({parent} is not a writable folder)")
            continue
        probe = storage.join(uri, f".mmpr-probe-{os.getpid()}")
        try:
            storage.write_bytes(probe, b"")
            storage.remove(probe)
        except OSError as e:
            raise ConfigError(f"{key}: cannot write to {uri} ({str(e).splitlines()[0][:300]})") from None


def check_ray_address(config: PipelineConfig) -> None:
    """Fail in seconds, not minutes, when a configured Ray address cannot be reached."""
    import socket

    address = config.executor.address or os.environ.get("RAY_ADDRESS")
    if config.executor.kind != "ray" or not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"executor.address: {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"executor.address: cannot reach Ray at {address} ({e})") from None


def ensure_model(config: PipelineConfig) -> None:
    """Build the tiny model when the config names it; check a local model path exists."""
    m = config.model
    if m.is_tiny:
        from demo.tiny_model import build_tiny_model

        # builds the sample data it trains on first when that is missing
        build_tiny_model(Path(m.tiny_model_dir), Path(m.tiny_model_data))
        publish_tiny_model(config)
    elif (m.path.startswith((".", "/")) or os.sep in m.path and not _looks_like_hub_id(m.path)) \
            and not os.path.exists(m.path):
        raise ConfigError(f"model.path: {m.path} does not exist")


def publish_tiny_model(config: PipelineConfig) -> None:
    """Put the tiny model where every worker can read it.

    The tiny model is built on the driver's disk.  When the work folder is on
    a store (``s3://...``), cluster nodes may not see that disk, so the model
    goes to ``<work_dir>/models/`` and engine workers load it from there
    (``pipeline.engine.engine.model_location``).  A marker written last makes the
    upload all-or-nothing for readers.
    """
    from pipeline.engine.engine import model_location

    uri = model_location(config)
    if not storage.is_uri(uri):
        return
    local = config.model.tiny_model_dir
    stamp = hashlib.sha256(b"".join(
        p.read_bytes() for p in sorted(Path(local).rglob("*")) if p.is_file())).hexdigest().encode()
    done = storage.join(uri, ".published")
    if storage.exists(done) and storage.read_bytes(done) == stamp:
        return
    log.info("publishing the tiny model to %s", uri)
    storage.remove_tree(uri)
    storage.upload_dir(local, uri)
    storage.write_bytes(done, stamp)


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(parts[0])


#: the config keys vLLM reads a model's length from (ModelArchConfigConvertor)
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
               "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
#: RoPE types whose max_position_embeddings is already scaled (vLLM's _get_and_verify_max_len)
PRESCALED_ROPE = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
END_MARK = "\x00MMPR-END\x00"


def check_model(config: "PipelineConfig") -> None:
    """Raise ConfigError (one line, naming the key) when the model cannot run this config."""
    from pipeline.core.graph import stage_class

    if not any(stage_class(s).kind == "engine" for s in config.run.stages):
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
    from pipeline.engine.engine import resolve_token_ids

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
    """(source name, user turn) for the first row of each source that the source stage
    accepts, built by the first engine stage that can show its prompt (``Stage.preview_messages``)."""
    from itertools import islice

    from pipeline.core.graph import make_stage, ordered, stage_class
    from pipeline.sources.readers import iter_source
    from pipeline.core.stage import StageContext

    source = make_stage(next(n for n in ordered() if stage_class(n).kind == "source"), config)
    engine_stages = [make_stage(n, config) for n in ordered() if stage_class(n).kind == "engine"]
    rendered = False
    for src in config.sources:
        try:
            raws = list(islice(iter_source(src), 20))
            row = next(iter(source.run(iter(raws), StageContext(source.name, "preflight", config))), None)
        except Exception:  # noqa: BLE001 -- an unreadable source is check_sources' business
            row = None
        messages = next((m for m in (s.preview_messages(row) for s in engine_stages) if m), None) if row else None
        if messages is None:
            continue
        rendered = True
        yield src.name, messages
    if not rendered:
        yield "<none>", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]


def end_of_turn(tokenizer: Any, messages: list[dict], placeholder: str | None, src_name: str) -> str | None:
    """What the chat template writes right after an assistant turn's text (None: nothing)."""
    from pipeline.engine.engine import _as_string_content

    convo = messages + [{"role": "assistant", "content": [{"type": "text", "text": END_MARK}]}]
    if placeholder is not None:
        convo = [_as_string_content(m, placeholder) for m in convo]
    try:
        text = tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=False)
    except Exception as e:  # noqa: BLE001 -- a template that cannot render our prompts
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(f"model.path: the chat template cannot render a prompt of source {src_name!r}: "
                          f"{first}") from None
    if END_MARK not in text:
        return None
    marker = text.split(END_MARK, 1)[1].strip()
    return marker.split()[0] if marker else None
