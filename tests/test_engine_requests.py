"""How the engine sends a prompt's samples: N requests with seed+i, a bounded number of
prompts in flight -- checked on the real tiny vLLM engine against vLLM's own n=N fan-out."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from helpers import make_config
from pipeline.files import storage
from pipeline.engine.engine import GenRequest, sample_params
from pipeline.sources.images import to_pil
from pipeline.core.graph import make_stage
from pipeline.run.orchestrator import run_source
from pipeline.core.seeds import derive_seed
from stages.generate import request_user_turn

N = 6


@pytest.fixture(scope="module")
def rows(tmp_path_factory, sample_data):
    out = tmp_path_factory.mktemp("ingest")
    run_source(make_stage("ingest", make_config(executor={"kind": "local"}, run={"partition_rows": 12})), str(out))
    first = storage.list_files(str(out / "data"), ".parquet")[0]
    return pq.read_table(first).to_pylist()[:10]


def _requests(rows, n=N, max_tokens=40):
    from vllm import SamplingParams

    return [GenRequest([request_user_turn(r["question"] + " Answer with a sentence.", len(r["images"]))],
                       [to_pil(im) for im in r["images"]],
                       SamplingParams(n=n, temperature=1.0, top_k=50, max_tokens=max_tokens,
                                      seed=derive_seed(3, r["prompt_id"], "generate")))
            for r in rows]


def _vllm_n_fanout(engine, requests):
    """Today's path, straight through vLLM: one SamplingParams(n=N) request per prompt."""
    prompts = [{"prompt": engine.render(r.messages), "multi_modal_data": {"image": r.images[0]}}
               for r in requests]
    outs = engine.llm.generate(prompts, [r.params for r in requests], use_tqdm=False)
    return [[(c.text, str(c.finish_reason), len(c.token_ids)) for c in sorted(o.outputs, key=lambda c: c.index)]
            for o in outs]


def _watch_unfinished(engine, monkeypatch) -> list[int]:
    """The engine's unfinished sequences before each step, filled in as it runs."""
    llm_engine = engine.llm.llm_engine
    seen: list[int] = []
    real_step = llm_engine.step

    def step():
        seen.append(llm_engine.get_num_unfinished_requests())
        return real_step()

    monkeypatch.setattr(llm_engine, "step", step)
    return seen


def test_sample_params_give_child_i_the_seed_plus_i():
    from vllm import SamplingParams

    kids = sample_params(SamplingParams(n=4, seed=100, temperature=0.7, top_k=50, max_tokens=9))
    assert [k.seed for k in kids] == [100, 101, 102, 103]
    assert {(k.n, k.temperature, k.top_k, k.max_tokens) for k in kids} == {(1, 0.7, 50, 9)}
    one = SamplingParams(n=1, seed=5)
    assert sample_params(one) == [one]


def test_per_sample_requests_give_vllms_n_fanout_responses(engine, rows):
    requests = _requests(rows)
    expected = _vllm_n_fanout(engine, requests)
    got = engine.generate(requests)
    assert len(got) == len(expected) == len(rows)
    for res, exp in zip(got, expected):
        assert res.error is None, res.detail
        assert [(c.text, c.finish_reason, c.num_tokens) for c in res.completions] == exp
    texts = [c.text for res in got for c in res.completions]
    assert len(set(texts)) > len(rows), "samples of a prompt must differ (distinct seeds)"


def test_prompts_in_flight_are_bounded_and_change_nothing(engine, rows, monkeypatch):
    """With a cap of 2 prompts the engine never holds more than 2 x N sequences, and the
    responses are the same as without the cap."""
    requests = _requests(rows)
    free = engine.generate(requests)
    seen = _watch_unfinished(engine, monkeypatch)
    monkeypatch.setattr(engine, "max_prompts", 2)
    capped = engine.generate(requests)
    assert seen and max(seen) <= 2 * N
    assert max(seen) > N, "two prompts should be in flight at once"
    assert [[c.text for c in r.completions] for r in capped] == [[c.text for c in r.completions] for r in free]


def test_low_water_admits_prompts_only_while_the_scheduler_has_room(engine, rows, monkeypatch):
    """With refill_threshold N the engine takes one more prompt only when fewer than N sequences are
    unfinished: at most 2N-1 sequences at once, never a whole partition queued."""
    requests = _requests(rows)
    seen = _watch_unfinished(engine, monkeypatch)
    monkeypatch.setattr(engine, "refill_threshold", N)
    results = engine.generate(requests)
    assert all(len(r.completions) == N for r in results)
    assert max(seen) <= 2 * N - 1 < len(rows) * N
