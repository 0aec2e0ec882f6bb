"""Adaptive sampling's later rounds: more samples for a prompt whose samples so far are in.

A request with ``GenRequest.more`` (``methods.adaptive``) is asked, each time every sample
drawn so far has finished, how many more to draw; those go into the engine between engine
steps while the engine core goes on with every other prompt in flight, so a round's scoring
never stops generation.  Sample i always gets the seed ``seed + i`` whichever round draws it
(``pipeline.engine.requests.sample_params``), so rounds change how many samples a prompt
gets, never what any one of them says.  The time spent deciding rounds is counted in
``Engine.rounds_s`` (``bench/bench_adaptive.py``).
"""
from __future__ import annotations

import logging
import time

from pipeline.engine.death import raise_if_dead
from pipeline.engine.protocols import EngineState, PromptInFlight
from pipeline.engine.requests import sample_params
from pipeline.engine.submission import engine_prompt

log = logging.getLogger("pipeline.engine.rounds")


def next_round(engine: EngineState, prompt: PromptInFlight) -> list[str]:
    """The request ids of a prompt's next sampling round (``GenRequest.more``), or none.

    Runs between engine steps while the engine core goes on with every other
    prompt in flight: a round's scoring never stops generation."""
    req = prompt.req
    if req is None or req.more is None:
        return []
    so_far = [c for sample in prompt.samples for c in sample]
    t0 = time.perf_counter()
    count = req.more(so_far)
    engine.rounds_s += time.perf_counter() - t0
    if count <= 0:
        return []
    request = engine_prompt(req, prompt.result.input_ids)
    ids: list[str] = []
    try:
        for params in sample_params(req.params, start=len(prompt.samples), count=count):
            ids += engine.llm.enqueue([request], [params], use_tqdm=False)
    except Exception as e:  # noqa: BLE001 -- accepted once, so only a dead engine refuses now
        raise_if_dead(e, engine.llm.llm_engine)
        if ids:
            engine.llm.llm_engine.abort_request(ids)
        log.warning("a later sampling round was refused (%s); keeping the samples drawn", e)
        return []
    return ids
