"""The admission loop: prompts enter the engine only while it has room; results leave in order.

``Engine.generate_stream`` runs here.  Prompts are admitted one at a time while the engine
has fewer unfinished sequences than it schedules at once (``refill_threshold``: ``max_num_seqs`` x
pipeline stages) and fewer than ``max_prompts`` prompts in flight
(``pipeline.engine.image_budget``), so the long tail of one partition overlaps the start of
the next without queueing a partition's images in memory.  A batch may be an iterator that
builds its requests as they are drawn: the engine core (its own process) then computes the
first requests while the rest are built.  Every finished request is filed
under its prompt and sample; a scoring prompt may be sent again without the prefix cache
(``pipeline.engine.rescoring``) and an adaptive one may draw another round
(``pipeline.engine.rounds``) before it completes.  A batch is returned once all its prompts
have.  One stream's bookkeeping is one ``Admission`` object, so the loop itself stays a loop.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

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
    """One batch: its results so far (one per request drawn from it, in order), whether more
    requests may still come from it, and its admitted prompts not yet complete."""
    results: list[GenResult]
    drawing: bool = True
    outstanding: int = 0

    @property
    def done(self) -> bool:
        return not self.drawing and self.outstanding == 0


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
    """One stream's bookkeeping: the batches not yet returned (in order), the batches whose
    requests are still being drawn, and which prompt and sample each request in the engine
    belongs to.

    A batch is drawn one request at a time, only when the engine has room: a batch may be
    an iterator that builds its requests as they are drawn (``EngineStage.prepare``), so the
    engine works on a partition's first requests while its later ones are built, and the
    batch's size is known only once it is exhausted."""

    def __init__(self, engine: EngineState, batches: Iterable[Iterable[GenRequest]]) -> None:
        self.engine = engine
        self.feed = iter(batches)
        self.pending: deque[PendingBatch] = deque()  # batches not yet returned, in order
        self.drawing: deque[tuple[PendingBatch, Iterator[GenRequest]]] = deque()  # batches with requests to draw
        self.owner: dict[str, tuple[AdmittedPrompt, int, tuple[str, ...]]] = {}
        self.in_flight = 0
        self.exhausted = False

    def pull(self) -> bool:
        reqs = next(self.feed, None)
        if reqs is None:
            return False
        batch = PendingBatch([])
        self.pending.append(batch)
        self.drawing.append((batch, iter(reqs)))
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
        """Draw the next request of the first batch still drawing and admit it (or, when that
        batch has no more, close it)."""
        batch, reqs = self.drawing[0]
        req = next(reqs, None)
        if req is None:
            batch.drawing = False
            self.drawing.popleft()
            return
        result = GenResult()
        batch.results.append(result)
        ids = submit(self.engine, req, result)
        if not ids:
            return
        prompt = AdmittedPrompt(batch, result, [], req=req)
        self.register(prompt, ids)
        batch.outstanding += 1
        self.in_flight += 1

    def fill(self, llm_engine: Any) -> None:
        """Admit prompts while the engine has room, pulling the next batch when none is drawing."""
        while (llm_engine.get_num_unfinished_requests() < self.engine.refill_threshold
               and self.in_flight < self.engine.max_prompts):
            if not self.drawing and (self.exhausted or not self.pull()):
                self.exhausted = True
                break
            self.admit()

    def abort(self, llm_engine: Any) -> None:
        """Take this stream's requests out of the engine when it ends early (a request
        iterator or a sampling round that raised): a later stream on the same engine
        would otherwise share it with requests nobody reads."""
        try:
            if self.owner:
                llm_engine.abort_request(list(self.owner))
        except Exception:  # noqa: BLE001 -- the stream's own error is the one to report
            pass
        self.owner.clear()

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


def stream(engine: EngineState, batches: Iterable[Iterable[GenRequest]]) -> Iterator[list[GenResult]]:
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
            if not adm.pending and adm.exhausted and not adm.drawing:
                return
            if not llm_engine.has_unfinished_requests():
                if adm.drawing or not adm.exhausted:
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
    except GeneratorExit:  # the caller stopped early
        adm.abort(llm_engine)
        raise
    except Exception as e:
        raise_if_dead(e, llm_engine)
        adm.abort(llm_engine)
        raise
    finally:
        engine.stream_s += time.perf_counter() - t_stream
