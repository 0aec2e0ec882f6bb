"""The admission loop: prompts enter the engine only while it has room; results leave in order.

``Engine.generate_stream`` runs here.  Prompts are admitted one at a time while the engine
has fewer unfinished sequences than it schedules at once (``refill_threshold``: ``max_num_seqs`` x
pipeline stages) and fewer than ``max_prompts`` prompts in flight
(``pipeline.engine.image_budget``), so the long tail of one partition overlaps the start of
the next without queueing a partition's images in memory.  Every finished request is filed
under its prompt and sample; a scoring prompt may be sent again without the prefix cache
(``pipeline.engine.rescoring``) and an adaptive one may draw another round
(``pipeline.engine.rounds``) before it completes.  A batch is returned once all its prompts
have.  One stream's bookkeeping is one ``Admission`` object, so the loop itself stays a loop.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from pipeline.engine.death import raise_if_dead
from pipeline.engine.protocols import EngineState
from pipeline.engine.requests import Completion, GenRequest, GenResult
from pipeline.engine.rescoring import rescore_uncached
from pipeline.engine.rounds import next_round
from pipeline.engine.submission import submit


def refill_threshold(vllm_config: Any) -> int:
    """Sequences the engine runs at once: ``max_num_seqs`` per batch, and with pipeline
    parallelism every stage holds a batch of its own in flight."""
    return vllm_config.scheduler_config.max_num_seqs * vllm_config.parallel_config.pipeline_parallel_size


def output_keys(req_id: str) -> tuple[str, ...]:
    """The ids a request's outputs may carry: the one we were given, or its external part
    (vLLM appends "-<random>" internally)."""
    return tuple({req_id, req_id.rsplit("-", 1)[0]})


@dataclass
class PendingBatch:
    results: list[GenResult]
    #: prompts not yet admitted into the engine, and admitted ones not yet complete
    unsubmitted: int = 0
    outstanding: int = 0

    @property
    def done(self) -> bool:
        return self.unsubmitted == 0 and self.outstanding == 0


@dataclass
class AdmittedPrompt:
    """One admitted prompt: its samples' completions arrive one request at a time."""
    batch: PendingBatch
    result: GenResult
    samples: list
    left: int = 0
    req: GenRequest | None = None


def collect(prompt: AdmittedPrompt, k: int, out: Any) -> bool:
    """File sample k's output; True when the prompt has all the samples asked for so far."""
    prompt.samples[k] = [Completion(c.text, str(c.finish_reason), len(c.token_ids), tuple(c.token_ids),
                                    c.logprobs) for c in out.outputs]
    prompt.result.prompt_tokens = len(out.prompt_token_ids or [])
    if out.prompt_logprobs is not None:  # a scoring request
        prompt.result.prompt_token_ids = list(out.prompt_token_ids)
        prompt.result.prompt_logprobs = out.prompt_logprobs
        prompt.result.cached_tokens = out.num_cached_tokens or 0
    prompt.left -= 1
    return not prompt.left


def complete(prompt: AdmittedPrompt) -> None:
    prompt.result.completions = [c for sample in prompt.samples for c in sample]
    prompt.batch.outstanding -= 1


class Admission:
    """One stream's bookkeeping: the batches not yet returned (in order), the prompts not
    yet admitted, and which prompt and sample each request in the engine belongs to."""

    def __init__(self, engine: EngineState, batches: Iterable[Sequence[GenRequest]]) -> None:
        self.engine = engine
        self.feed = iter(batches)
        self.pending: deque[PendingBatch] = deque()  # batches not yet returned, in order
        self.queued: deque[tuple[PendingBatch, int, GenRequest]] = deque()  # prompts not yet admitted
        self.owner: dict[str, tuple[AdmittedPrompt, int, tuple[str, ...]]] = {}
        self.in_flight = 0
        self.exhausted = False

    def pull(self) -> bool:
        reqs = next(self.feed, None)
        if reqs is None:
            return False
        batch = PendingBatch([GenResult() for _ in reqs], unsubmitted=len(reqs))
        self.pending.append(batch)
        self.queued.extend((batch, i, r) for i, r in enumerate(reqs))
        return True

    def register(self, prompt: AdmittedPrompt, ids: list[str]) -> None:
        """Expect samples len(prompt.samples).. under ``ids``."""
        first = len(prompt.samples)
        prompt.samples.extend([None] * len(ids))
        for k, req_id in enumerate(ids, start=first):
            keys = output_keys(req_id)
            for key in keys:
                self.owner[key] = (prompt, k, keys)
        prompt.left = len(ids)

    def admit(self) -> None:
        batch, i, req = self.queued.popleft()
        batch.unsubmitted -= 1
        ids = submit(self.engine, req, batch.results[i])
        if not ids:
            return
        prompt = AdmittedPrompt(batch, batch.results[i], [], req=req)
        self.register(prompt, ids)
        batch.outstanding += 1
        self.in_flight += 1

    def fill(self, llm_engine: Any) -> None:
        """Admit prompts while the engine has room, pulling the next batch when none is queued."""
        while (llm_engine.get_num_unfinished_requests() < self.engine.refill_threshold
               and self.in_flight < self.engine.max_prompts):
            if not self.queued and (self.exhausted or not self.pull()):
                self.exhausted = True
                break
            if self.queued:
                self.admit()

    def receive(self, out: Any) -> None:
        """File one output of an engine step: a finished request of ours completes its sample,
        then maybe its prompt (after a rescoring or another sampling round, if it needs one)."""
        if not (out.finished and out.request_id in self.owner):
            return
        prompt, k, keys = self.owner.pop(out.request_id)
        for key in keys:
            self.owner.pop(key, None)
        redo = rescore_uncached(self.engine, prompt, out)
        if redo:
            keys = output_keys(redo)
            self.owner.update({key: (prompt, k, keys) for key in keys})
            return
        if not collect(prompt, k, out):
            return
        extra = next_round(self.engine, prompt)
        if extra:
            self.register(prompt, extra)
        else:
            complete(prompt)
            self.in_flight -= 1


def stream(engine: EngineState, batches: Iterable[Sequence[GenRequest]]) -> Iterator[list[GenResult]]:
    """``Engine.generate_stream``: results batch by batch, in order, the engine fed across
    batch boundaries; a dead engine raises ``EngineDead``.  Counts ``engine.stream_s`` and
    ``engine.occupied_s`` (the share of the engine's batch held by unfinished sequences)."""
    llm_engine = engine.llm.llm_engine
    adm = Admission(engine, batches)
    t_stream = last = time.perf_counter()
    try:
        while True:
            adm.fill(llm_engine)
            while adm.pending and adm.pending[0].done:
                yield adm.pending.popleft().results
            if not adm.pending and adm.exhausted and not adm.queued:
                return
            if not llm_engine.has_unfinished_requests():
                if adm.queued or not adm.exhausted:
                    continue  # nothing running: admit more (the loop above ran dry only on a full cap)
                raise RuntimeError("vLLM has no unfinished requests but results are missing")
            running = llm_engine.get_num_unfinished_requests()
            outputs = llm_engine.step()
            now = time.perf_counter()
            # the engine core works on what it holds until the next step: count that as busy
            engine.occupied_s += min(running, engine.refill_threshold) / engine.refill_threshold * (now - last)
            last = now
            for out in outputs:
                adm.receive(out)
    except Exception as e:
        raise_if_dead(e, llm_engine)
        raise
    finally:
        engine.stream_s += time.perf_counter() - t_stream
