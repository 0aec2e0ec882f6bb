"""generate and dropout_ntp through the real vLLM engine with the tiny model.

All tests share the session engine (``conftest.engine``); stages run through
the same ``run_task`` the executors use, so outputs, quarantine and markers
are the real ones.
"""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from helpers import make_config
from pipeline.files import storage
from pipeline.run.orchestrator import run_source
from pipeline.run.runner import Task, run_task
from pipeline.core.seeds import derive_seed
from schemas import PAIR_SCHEMA, RESPONSE_SCHEMA
from schemas.records import turn_text
from stages import make_stage

N = 4


class SpyEngine:
    """The real engine, recording every request and the prompt text actually sent."""

    def __init__(self, engine):
        self._engine = engine
        self.requests, self.results = [], []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, requests):
        requests = list(requests)  # a stage may build them as drawn
        results = self._engine.generate(requests)
        self.requests.extend(requests)
        self.results.extend(results)
        return results


def _cfg(**over):
    return make_config(executor={"kind": "local"}, generate={"n": N, "max_tokens": 64},
                       run={"partition_rows": 24, "seed": 7}, **over)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory, sample_data):
    out = tmp_path_factory.mktemp("ingest")
    run_source(make_stage("ingest", _cfg()), str(out))
    files = storage.list_files(str(out / "data"), ".parquet")
    # one partition with ground-truth prompts and one with open prompts (the last source)
    return files[0], files[-1]


def _run(stage_name, cfg, input_uri, out_dir, engine):
    stage = make_stage(stage_name, cfg)
    task = Task(stage_name, "part", (input_uri,), str(out_dir), cfg.stage_hash(stage_name))
    stats = run_task(stage, task, engine)
    table = pq.read_table(task.data_uri())
    return stats, table, task


@pytest.fixture(scope="module")
def generated(prompts, engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("generate")
    gt, open_ = prompts
    res = {}
    for name, uri in (("gt", gt), ("open", open_)):
        res[name] = _run("generate", _cfg(), uri, out / name, engine)
    return res


def test_generate_writes_n_samples_per_prompt_with_id_seeds(generated, prompts):
    stats, table, task = generated["gt"]
    assert table.schema.equals(RESPONSE_SCHEMA, check_metadata=False)
    n_prompts = pq.read_metadata(prompts[0]).num_rows
    assert table.num_rows == stats.rows_out == n_prompts
    cfg = _cfg()
    for row in table.to_pylist():
        assert len(row["responses"]) == N
        assert row["sampling"]["seed"] == derive_seed(cfg.run.seed, row["prompt_id"], "generate")
        assert all(r["num_tokens"] > 0 and r["finish_reason"] in ("stop", "length") for r in row["responses"])
        assert "<image>" in row["prompt_text"] and "Final answer" in row["prompt_text"]
        assert row["prompt_tokens"] > 0
    assert stats.counters["tokens_generated"] == sum(
        r["num_tokens"] for row in table.to_pylist() for r in row["responses"])
    marker = json.loads(open(task.marker_uri()).read())
    assert marker["stage_hash"] == cfg.stage_hash("generate") and marker["stats"]["rows_out"] == n_prompts


def test_tiny_model_answers_in_format_and_mixes_right_and_wrong(generated):
    from methods.scoring import score_responses
    from pipeline.config.templates import EXTRACTION_STYLE

    _, table, _ = generated["gt"]
    cfg = _cfg()
    scored = [score_responses(row, cfg.scoring, cfg.source(row["source"]), EXTRACTION_STYLE)
              for row in table.to_pylist()]
    flat = [s for row in scored for s in row]
    parsed = sum(s.answer is not None for s in flat) / len(flat)
    assert parsed > 0.8, f"only {parsed:.0%} of samples have a parseable final answer"
    mixed = sum(any(s.correct for s in row) and any(not s.correct for s in row) for row in scored)
    assert mixed >= 3, "the tiny model must be right on some samples and wrong on others"


def test_generate_rerun_is_identical(generated, prompts, engine, tmp_path):
    _, first, _ = generated["gt"]
    _, again, _ = _run("generate", _cfg(), prompts[0], tmp_path, engine)
    assert again.column("responses").to_pylist() == first.column("responses").to_pylist()


def test_over_long_prompt_is_quarantined_alone(prompts, engine, tmp_path):
    rows = pq.read_table(prompts[0]).slice(0, 3).to_pylist()
    rows[1]["question"] = "count the circles " * 600  # far beyond max_model_len=2048
    src = tmp_path / "in.parquet"
    pq.write_table(__import__("pyarrow").Table.from_pylist(rows, schema=pq.read_schema(prompts[0])), src)
    stats, table, task = _run("generate", _cfg(), str(src), tmp_path / "out", engine)
    assert table.num_rows == 2
    assert rows[1]["prompt_id"] not in table.column("prompt_id").to_pylist()
    q = pq.read_table(task.quarantine_uri()).to_pylist()
    assert [r["reason"] for r in q] == ["prompt_too_long"]


def test_engine_isolates_a_request_vllm_rejects(engine, prompts):
    """A request that passes the text-length pre-check but that vLLM refuses
    (its image tokens push it past the context) fails alone, not its batch."""
    from vllm import SamplingParams

    from pipeline.engine.engine import GenRequest
    from pipeline.sources.images import to_pil

    image = to_pil(pq.read_table(prompts[0]).slice(0, 1).to_pylist()[0]["images"][0])

    def request(text, images):
        parts = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
        return GenRequest([{"role": "user", "content": parts}], images, SamplingParams(n=1, max_tokens=4, seed=1))

    # calibrate a question whose *text* is just under max_model_len tokens
    limit = engine.max_model_len
    ids = engine.tokenizer(" circles" * limit, add_special_tokens=False)["input_ids"]
    budget = limit - engine.count_tokens(engine.render(request("", [image]).messages)) - 2
    while True:
        filler = engine.tokenizer.decode(ids[:budget])
        n = engine.count_tokens(engine.render(request(filler, [image]).messages))
        if n < limit:
            break
        budget -= n - limit + 1
    results = engine.generate([request("How many circles?", [image]), request(filler, [image]),
                               request("Describe the image.", [image])])
    assert results[0].error is None and results[2].error is None
    assert results[0].completions and results[2].completions
    assert results[1].error == "prompt_too_long", (results[1].error, results[1].detail)
    assert not results[1].completions


@pytest.fixture(scope="module")
def dropout(generated, engine, tmp_path_factory):
    spy = SpyEngine(engine)
    _, _, gen_task = generated["open"]
    out = tmp_path_factory.mktemp("dropout")
    stats, table, _ = _run("dropout_ntp", _cfg(), gen_task.data_uri(), out, spy)
    return stats, table, spy, gen_task


def test_dropout_continuation_is_sent_without_image(dropout):
    stats, table, spy, _ = dropout
    assert table.num_rows > 0 and spy.requests
    for req, res in zip(spy.requests, spy.results):
        assert req.continue_final and req.images == []
        assert all(p["type"] != "image" for m in req.messages for p in m["content"])
        assert "<image>" not in res.prompt_text, res.prompt_text
        assert "<fake_token_around_image>" not in res.prompt_text
        # the prompt ends with the partial assistant turn (continue_final_message)
        assert res.prompt_text.endswith(req.messages[-1]["content"][0]["text"])


def test_dropout_rejected_extends_the_exact_prefix_of_chosen(dropout):
    stats, table, _, _ = dropout
    assert table.schema.equals(PAIR_SCHEMA, check_metadata=False)
    for row in table.to_pylist():
        chosen, rejected = turn_text(row["chosen"]), turn_text(row["rejected"])
        p = row["provenance"]
        prefix = chosen[: p["cut_chars"]]
        assert rejected.startswith(prefix) and rejected != chosen
        n_words = len(chosen.split())
        assert len(prefix.split()) == p["cut_words"] == max(1, min(int(n_words * 0.5), n_words - 1))
        assert p["truncation_ratio"] == 0.5 and p["truncation_unit"] == "words" and p["image_kept"] is False
        assert p["continuation_tokens"] > 0 and row["method"] == "dropout_ntp"
        assert row["images"] and row["rejected_images"] == []
    assert stats.counters["pairs.dropout_ntp"] == table.num_rows


def test_dropout_rerun_gives_identical_rows(dropout, engine, tmp_path):
    _, first, _, gen_task = dropout
    _, again, _ = _run("dropout_ntp", _cfg(), gen_task.data_uri(), tmp_path, engine)
    assert again.to_pylist() == first.to_pylist()


def test_dropout_keep_image_switch_sends_the_image(generated, engine, tmp_path):
    spy = SpyEngine(engine)
    _, _, gen_task = generated["open"]
    _run("dropout_ntp", _cfg(dropout_ntp={"keep_image": True, "ratio": 0.5}), gen_task.data_uri(), tmp_path, spy)
    assert spy.requests and all(len(r.images) == 1 for r in spy.requests)
    assert all("<image>" in r.prompt_text for r in spy.results)


def test_a_finish_failure_is_kept_not_regenerated(prompts, engine, tmp_path):
    """finish() raising after the engine ran: the partition's rows are quarantined with the
    traceback (quarantine detail and marker), the engine's results are kept in failed/, and
    nothing is generated again (one engine pass, however many retries are allowed)."""
    from pipeline.run.runner import run_engine_tasks
    from stages.generate import GenerateStage

    class BrokenFinish(GenerateStage, register=False):
        passes = 0

        def prepare(self, rows, ctx):
            type(self).passes += 1
            return super().prepare(rows, ctx)

        def finish(self, todo, results, ctx):
            raise RuntimeError("a bug in finish")

    cfg = _cfg()
    stage = BrokenFinish(cfg)
    task = Task("generate", "part", (prompts[0],), str(tmp_path), cfg.stage_hash("generate"))
    stats = run_engine_tasks(stage, [task], engine, max_retries=3)
    n = pq.read_metadata(prompts[0]).num_rows
    assert BrokenFinish.passes == 1
    assert stats.rows_in == n and stats.rows_out == 0 and stats.quarantined == {"finish_error": n}
    quarantined = pq.read_table(task.quarantine_uri()).to_pylist()
    assert len(quarantined) == n and all("RuntimeError: a bug in finish" in q["detail"] and "Traceback" in q["detail"]
                                         for q in quarantined)
    marker = json.loads(open(task.marker_uri()).read())
    assert "RuntimeError: a bug in finish" in marker["error"] and "in finish" in marker["error"]
    kept = json.loads((tmp_path / "failed" / "part.json").read_text())
    assert kept["step"] == "finish" and len(kept["results"]) == n
    assert all(len(r["completions"]) == N and r["completions"][0]["num_tokens"] > 0 for r in kept["results"])


def test_each_partition_is_yielded_as_soon_as_its_marker_is_written(prompts, engine, tmp_path):
    """``iter_engine_tasks`` reports a partition (an engine actor yields it to the scheduler,
    which starts its downstream work at once) right after its marker is written, before the
    next partition's results are committed; a partition whose prepare raised is reported too,
    quarantined, with the first results after it (it is done before them)."""
    from pipeline.run.runner import completed, iter_engine_tasks
    from stages.generate import GenerateStage

    class PrepareFailsOnB(GenerateStage, register=False):
        def prepare(self, rows, ctx):
            if ctx.partition == "b":
                raise RuntimeError("a bug in prepare")
            return super().prepare(rows, ctx)

    cfg = _cfg()
    stage = PrepareFailsOnB(cfg)
    tasks = [Task("generate", name, (prompts[0],), str(tmp_path), cfg.stage_hash("generate")) for name in "abc"]
    seen = []
    for task, stats in iter_engine_tasks(stage, tasks, engine):
        seen.append(task.name)
        assert completed(task), f"{task.name} yielded before its marker"
        if task.name == "a":
            assert not completed(tasks[2]), "c was committed before a was reported"
        if task.name == "b":
            assert stats.quarantined == {"prepare_error": stats.rows_in} and stats.rows_out == 0
        else:
            assert stats.rows_out == stats.rows_in > 0
    assert sorted(seen) == ["a", "b", "c"] and seen.index("a") < seen.index("c")


def test_a_request_iterator_that_raises_quarantines_its_partition_alone(prompts, engine, tmp_path):
    """``prepare`` may return its requests as an iterator the engine draws from while it runs
    the earlier ones.  One that raises part-way: its partition is quarantined with the
    traceback as a raising ``prepare``'s is (never retried: the code is deterministic), the
    partitions before and after it are written whole, and none of its requests is left in
    the engine -- streamed (``iter_engine_tasks``) or run alone (``run_task``, whose retries
    then quarantine it)."""
    from pipeline.run.runner import iter_engine_tasks
    from stages.generate import GenerateStage

    class LazyFailsOnB(GenerateStage, register=False):
        def prepare(self, rows, ctx):
            todo, requests = super().prepare(rows, ctx)

            def draw():
                for i, req in enumerate(requests):
                    if ctx.partition == "b" and i == 2:
                        raise RuntimeError("a bug while building requests")
                    yield req
            return todo, draw()

    cfg = _cfg()
    stage = LazyFailsOnB(cfg)
    n = pq.read_metadata(prompts[0]).num_rows
    tasks = [Task("generate", name, (prompts[0],), str(tmp_path / "stream"), cfg.stage_hash("generate"))
             for name in "abc"]
    got = {task.name: stats for task, stats in iter_engine_tasks(stage, tasks, engine)}
    assert got["b"].quarantined == {"prepare_error": n} and got["b"].rows_out == 0
    assert got["a"].rows_out == got["c"].rows_out == n
    marker = json.loads(open(tasks[1].marker_uri()).read())
    assert "RuntimeError: a bug while building requests" in marker["error"]
    # the lazy partitions give the rows an eager prepare gives
    eager = _run("generate", cfg, prompts[0], tmp_path / "eager", engine)[1]
    assert pq.read_table(tasks[0].data_uri()).column("responses").to_pylist() == eager.column("responses").to_pylist()
    assert not engine.llm.llm_engine.has_unfinished_requests()
    alone = Task("generate", "b", (prompts[0],), str(tmp_path / "alone"), cfg.stage_hash("generate"))
    stats = run_task(stage, alone, engine, max_retries=1)
    assert stats.quarantined == {"stage_error": n} and stats.retries == 1
    assert not engine.llm.llm_engine.has_unfinished_requests(), "the raising stream left its requests in the engine"
