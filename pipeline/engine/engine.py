"""A thin wrapper around one ``vllm.LLM``: chat rendering, batching, isolation.

Stages build ``GenRequest`` objects; the engine renders them through the
model's own chat template (so the exact prompt text is known and recorded),
keeps the engine busy by feeding it prompt after prompt (``generate_stream``:
the next partition's prompts go in while the last one's tail finishes), and
isolates failures: a request vLLM refuses (e.g. longer than the context) is
reported on its own ``GenResult`` instead of failing its batch.

A prompt's N samples go in as N requests with ``n=1`` and seeds seed+i, not as
one ``n=N`` request: vLLM fans an n-request out into children that each carry
their own copy of the processed image into the engine process (measured:
``bench/bench_engine_memory.py``), while separate requests for the same image
hit vLLM's multimodal cache and share one.  vLLM gives child i of an
n-request the seed ``seed + i`` (``v1/engine/parallel_sampling.py``), so the
responses are the same.  Prompts enter the engine only while it has fewer
unfinished sequences than it can schedule (``max_num_seqs`` x pipeline
stages) and fewer than ``engine.max_prompts_in_flight`` prompts
(``pipeline.engine.image_budget``): queued images never pile up in memory.

A dead engine is raised as ``EngineDead`` (``pipeline.engine.death``), never
turned into quarantined rows.
"""
from __future__ import annotations

import atexit
import logging
import os
import time
from collections import deque
from copy import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from pipeline.files import storage
from pipeline.engine.death import EngineDead, engine_dead_cause, wake_on_death
from pipeline.engine.setup import (  # noqa: F401 -- re-exported: callers import them from here
    _as_string_content, engine_kwargs, has_cuda, model_location, on_cpu, render_chat, resolve_token_ids,
    stop_kwargs)

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from pipeline.config.settings import PipelineConfig

log = logging.getLogger("pipeline.engine.engine")


def refill_threshold(vllm_config: Any) -> int:
    """Sequences the engine runs at once: ``max_num_seqs`` per batch, and with pipeline
    parallelism every stage holds a batch of its own in flight."""
    return vllm_config.scheduler_config.max_num_seqs * vllm_config.parallel_config.pipeline_parallel_size


def sample_params(params: Any, start: int = 0, count: int | None = None) -> list:
    """The n=1 requests that replace one ``SamplingParams(n=N)``: child i gets the
    seed ``seed + i``, exactly as vLLM's own fan-out does (ParentRequest
    ``_get_child_sampling_params``), so the responses are the same.  ``start`` and
    ``count`` select samples start..start+count-1 (a later sampling round): sample i
    gets the same seed whichever round draws it."""
    count = params.n if count is None else count
    if params.n == 1 and start == 0 and count == 1:
        return [params]
    out = []
    for i in range(start, start + count):
        child = copy(params)
        child.n = 1
        if params.seed is not None:
            child.seed = params.seed + i
        out.append(child)
    return out


@dataclass
class GenRequest:
    messages: list[dict]
    images: list["Image.Image"]
    params: Any  # vllm.SamplingParams
    #: render with continue_final_message (the last message is a partial assistant turn)
    continue_final: bool = False
    #: multimodal processor arguments for this request only (a source's override);
    #: vLLM merges them over the engine's model.mm_processor_kwargs
    mm_processor_kwargs: dict[str, Any] | None = None
    #: an already rendered prompt (scoring a given text): sent as is, messages unused
    prompt: str | None = None
    #: ``prompt``'s token ids when the caller has them already (scoring requests): sent as
    #: vLLM token input, so neither the length check nor vLLM tokenises the text again
    prompt_token_ids: list[int] | None = None
    #: adaptive sampling: called with every completion so far each time the samples asked
    #: for are done; returns how many more to draw (0: the prompt is complete).  Sample i
    #: always gets the seed ``params.seed + i`` (``methods.adaptive``)
    more: Callable[[list["Completion"]], int] | None = None
    #: scoring: how many trailing prompt tokens' log-probs the caller reads.  vLLM computes
    #: prompt log-probs only for the positions it computes, so a prefix-cache hit reaching
    #: into them (another request with the same prompt and the same first answer tokens)
    #: is redone once without reading the cache
    logprob_tail: int = 0
    #: vLLM's cache salt: requests share prefix-cache blocks only with requests of the same salt
    cache_salt: str | None = None
    #: a content id per image (``pipeline.sources.images.image_uuid``): vLLM's multimodal caches use it
    #: instead of hashing the pixels of every request again
    image_uuids: list[str] | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str
    num_tokens: int
    #: the sampled token ids, and vLLM's log-probs of them when the request asked for them
    #: (``logprobs=0``: raw log-probs, before temperature and top-k/top-p; one position per
    #: token, read with ``methods.grounding.position_logprob``)
    token_ids: Sequence[int] = ()
    logprobs: Any = None


@dataclass
class GenResult:
    prompt_text: str = ""
    prompt_tokens: int = 0
    #: the prompt's text token ids as sent (the engine tokenises a rendered prompt once, without
    #: adding special tokens: the chat template has them), before images are expanded
    input_ids: list[int] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    #: short reason code when the request failed (e.g. "prompt_too_long")
    error: str | None = None
    detail: str = ""
    #: the prompt as vLLM tokenised it, and its log-probs when the request asked for them
    prompt_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: Any = None
    #: prompt tokens vLLM took from its prefix cache (not computed again)
    cached_tokens: int = 0
    #: the prefix cache reached into the log-probs asked for: scored again without it
    rescored: bool = False


class Engine:
    """One vLLM engine plus its tokenizer."""

    def __init__(self, config: "PipelineConfig") -> None:
        from vllm import LLM

        from pipeline.engine.image_budget import prompts_in_flight

        self.config = config
        self.kwargs = engine_kwargs(config)
        # a model on a store (s3://...) is copied to this node's disk once
        self.kwargs["model"] = storage.localize_dir(model_location(config))
        if config.engine.batch_invariant:
            # read by vLLM (envs.VLLM_BATCH_INVARIANT) here and in its workers
            os.environ["VLLM_BATCH_INVARIANT"] = "1"
        log.info("starting vLLM engine for %s", self.kwargs["model"])
        self.llm = LLM(**self.kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_name = config.model.path
        self.revision = config.model.revision or ""
        self.max_model_len = config.model.max_model_len
        vllm_config = self.llm.llm_engine.vllm_config
        self.max_num_seqs = vllm_config.scheduler_config.max_num_seqs
        #: tokens per KV-cache block: the prefix cache shares whole blocks only
        self.kv_block_size = vllm_config.cache_config.block_size if vllm_config.cache_config.enable_prefix_caching else 0
        #: unfinished sequences below which the next prompts are admitted
        self.low_water = refill_threshold(vllm_config)
        #: prompts (with their images) admitted into the engine at once
        self.max_prompts = prompts_in_flight(config, self.low_water)
        #: the model's configured stops, for every SamplingParams built for this engine
        self.stop_kwargs = stop_kwargs(config, self.tokenizer)
        wake_on_death(self.llm.llm_engine)
        #: time accounting of ``generate_stream`` (``bench/bench_adaptive.py``): seconds streaming;
        #: seconds x the share of the engine's batch held by unfinished sequences (1 - this /
        #: stream_s is the engine's idle share); seconds spent deciding sampling rounds
        self.stream_s = 0.0
        self.occupied_s = 0.0
        self.rounds_s = 0.0

    # -- prompts ---------------------------------------------------------------
    def render(self, messages: list[dict], continue_final: bool = False) -> str:
        return render_chat(self.tokenizer, messages, self.config.model.image_placeholder, continue_final)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation --------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Results for one batch of requests, in order."""
        return next(iter(self.generate_stream([requests])))

    def generate_stream(self, batches: Iterable[Sequence[GenRequest]]) -> Iterator[list[GenResult]]:
        """Results batch by batch, in order, with the engine fed across batch boundaries.

        Prompts are admitted one at a time while the engine has fewer unfinished
        sequences than it schedules at once (``low_water``) and fewer than
        ``max_prompts`` prompts in flight, so the long tail of one partition
        overlaps the start of the next without queueing a partition's images.
        Each prompt is added on its own: one that vLLM refuses (too long for
        the context, a bad image) fails alone with a reason.  A dead engine
        raises ``EngineDead``.
        """
        engine = self.llm.llm_engine
        feed = iter(batches)
        pending: deque[_Batch] = deque()  # batches not yet returned, in order
        queued: deque[tuple[_Batch, int, GenRequest]] = deque()  # prompts not yet admitted
        owner: dict[str, tuple[_Prompt, int, tuple[str, ...]]] = {}
        in_flight = [0]
        exhausted = False

        def pull() -> bool:
            reqs = next(feed, None)
            if reqs is None:
                return False
            batch = _Batch([GenResult() for _ in reqs], unsubmitted=len(reqs))
            pending.append(batch)
            queued.extend((batch, i, r) for i, r in enumerate(reqs))
            return True

        def register(prompt: _Prompt, ids: list[str]) -> None:
            """Expect samples len(prompt.samples).. under ``ids``."""
            first = len(prompt.samples)
            prompt.samples.extend([None] * len(ids))
            for k, req_id in enumerate(ids, start=first):
                keys = _output_keys(req_id)
                for key in keys:
                    owner[key] = (prompt, k, keys)
            prompt.left = len(ids)

        def admit() -> None:
            batch, i, req = queued.popleft()
            batch.unsubmitted -= 1
            ids = self._add(req, batch.results[i])
            if not ids:
                return
            prompt = _Prompt(batch, batch.results[i], [], req=req)
            register(prompt, ids)
            batch.outstanding += 1
            in_flight[0] += 1

        t_stream = last = time.perf_counter()
        try:
            while True:
                while (engine.get_num_unfinished_requests() < self.low_water
                       and in_flight[0] < self.max_prompts):
                    if not queued and (exhausted or not pull()):
                        exhausted = True
                        break
                    if queued:
                        admit()
                while pending and pending[0].done:
                    yield pending.popleft().results
                if not pending and exhausted and not queued:
                    return
                if not engine.has_unfinished_requests():
                    if queued or not exhausted:
                        continue  # nothing running: admit more (the loop above ran dry only on a full cap)
                    raise RuntimeError("vLLM has no unfinished requests but results are missing")
                running = engine.get_num_unfinished_requests()
                outputs = engine.step()
                now = time.perf_counter()
                # the engine core works on what it holds until the next step: count that as busy
                self.occupied_s += min(running, self.low_water) / self.low_water * (now - last)
                last = now
                for out in outputs:
                    if out.finished and out.request_id in owner:
                        prompt, k, keys = owner.pop(out.request_id)
                        for key in keys:
                            owner.pop(key, None)
                        redo = self._rescore_uncached(prompt, out)
                        if redo:
                            keys = _output_keys(redo)
                            owner.update({key: (prompt, k, keys) for key in keys})
                            continue
                        if not self._collect(prompt, k, out):
                            continue
                        extra = self._next_round(prompt)
                        if extra:
                            register(prompt, extra)
                        else:
                            self._complete(prompt)
                            in_flight[0] -= 1
        except Exception as e:
            if engine_dead_cause(e) or self.dead():
                raise EngineDead(f"vLLM engine died: {e}") from e
            raise
        finally:
            self.stream_s += time.perf_counter() - t_stream

    @staticmethod
    def _collect(prompt: "_Prompt", k: int, out: Any) -> bool:
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

    def _rescore_uncached(self, prompt: "_Prompt", out: Any) -> str | None:
        """The id of a scoring request sent again without reading the prefix cache, when the
        cache covered positions whose log-probs it asked for (``GenRequest.logprob_tail``)."""
        req = prompt.req
        if req is None or not req.logprob_tail or prompt.result.rescored:
            return None
        first_needed = len(out.prompt_token_ids or []) - req.logprob_tail  # its log-prob comes from the state before it
        if (out.num_cached_tokens or 0) <= first_needed - 1:
            return None
        params = req.params.clone()
        params.skip_reading_prefix_cache = True
        prompt.result.rescored = True
        return self.llm.enqueue([self._engine_prompt(req, prompt.result.input_ids)], [params], use_tqdm=False)[0]

    @staticmethod
    def _complete(prompt: "_Prompt") -> None:
        prompt.result.completions = [c for sample in prompt.samples for c in sample]
        prompt.batch.outstanding -= 1

    def _next_round(self, prompt: "_Prompt") -> list[str]:
        """The request ids of a prompt's next sampling round (``GenRequest.more``), or none.

        Runs between engine steps while the engine core goes on with every other
        prompt in flight: a round's scoring never stops generation."""
        req = prompt.req
        if req is None or req.more is None:
            return []
        so_far = [c for sample in prompt.samples for c in sample]
        t0 = time.perf_counter()
        count = req.more(so_far)
        self.rounds_s += time.perf_counter() - t0
        if count <= 0:
            return []
        engine_prompt = self._engine_prompt(req, prompt.result.input_ids)
        ids: list[str] = []
        try:
            for params in sample_params(req.params, start=len(prompt.samples), count=count):
                ids += self.llm.enqueue([engine_prompt], [params], use_tqdm=False)
        except Exception as e:  # noqa: BLE001 -- accepted once, so only a dead engine refuses now
            if engine_dead_cause(e) or self.dead():
                raise EngineDead(f"vLLM engine died: {e}") from e
            if ids:
                self.llm.llm_engine.abort_request(ids)
            log.warning("a later sampling round was refused (%s); keeping the samples drawn", e)
            return []
        return ids

    def dead(self) -> bool:
        """Whether vLLM has seen its engine core process die."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        return bool(getattr(getattr(core, "resources", None), "engine_dead", False))

    @staticmethod
    def _engine_prompt(req: GenRequest, ids: list[int]) -> dict[str, Any]:
        """The prompt as ``LLM.enqueue`` takes it: its token ids, images, per-request processor
        arguments.  Token ids, not text: vLLM would tokenise a text prompt again, adding the
        tokenizer's special tokens (a second BOS after the template's), and the ids sent are
        what a later scoring request must match (``stages/grounding.py``)."""
        prompt: dict[str, Any] = {"prompt_token_ids": list(ids)}
        if req.cache_salt is not None:
            prompt["cache_salt"] = req.cache_salt
        if req.images:
            prompt["multi_modal_data"] = {"image": req.images if len(req.images) > 1 else req.images[0]}
            if req.mm_processor_kwargs:
                prompt["mm_processor_kwargs"] = dict(req.mm_processor_kwargs)
            if req.image_uuids:
                prompt["multi_modal_uuids"] = {"image": list(req.image_uuids)}
        return prompt

    def _add(self, req: GenRequest, result: GenResult) -> list[str]:
        """Render, check and enqueue one prompt as one n=1 request per sample (``sample_params``);
        on refusal fill ``result.error`` and return no ids."""
        try:
            text = req.prompt if req.prompt is not None else self.render(req.messages, req.continue_final)
        except Exception as e:  # noqa: BLE001 -- a template that rejects a row
            result.error, result.detail = "chat_template_error", str(e)[:2000]
            return []
        result.prompt_text = text
        token_ids = req.prompt_token_ids
        if token_ids is None:
            token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        result.input_ids = list(token_ids)
        n_text = len(token_ids)
        if n_text >= self.max_model_len:
            result.error = "prompt_too_long"
            result.detail = f"{n_text} text tokens >= max_model_len {self.max_model_len}"
            return []
        prompt = self._engine_prompt(req, result.input_ids)
        ids: list[str] = []
        try:
            for params in sample_params(req.params):
                ids += self.llm.enqueue([prompt], [params], use_tqdm=False)
            return ids
        except Exception as e:  # noqa: BLE001 -- vLLM validates at add time, before any decoding
            if engine_dead_cause(e) or self.dead():
                raise EngineDead(f"vLLM engine died: {e}") from e
            if ids:
                self.llm.llm_engine.abort_request(ids)
            msg = str(e)
            too_long = "longer than" in msg or "max_model_len" in msg or "too long" in msg
            result.error = "prompt_too_long" if too_long else "engine_error"
            result.detail = msg[:2000]
            return []


def _output_keys(req_id: str) -> tuple[str, ...]:
    """The ids a request's outputs may carry: the one we were given, or its external part
    (vLLM appends "-<random>" internally)."""
    return tuple({req_id, req_id.rsplit("-", 1)[0]})


@dataclass
class _Batch:
    results: list[GenResult]
    #: prompts not yet admitted into the engine, and admitted ones not yet complete
    unsubmitted: int = 0
    outstanding: int = 0

    @property
    def done(self) -> bool:
        return self.unsubmitted == 0 and self.outstanding == 0


@dataclass
class _Prompt:
    """One admitted prompt: its samples' completions arrive one request at a time."""
    batch: _Batch
    result: GenResult
    samples: list
    left: int = 0
    req: GenRequest | None = None


_ENGINES: dict[str, Engine] = {}


def get_engine(config: "PipelineConfig") -> Engine:
    """One engine per process and model configuration (tests share it per session)."""
    key = repr(sorted(engine_kwargs(config).items(), key=lambda kv: kv[0]))
    if key not in _ENGINES:
        if not _ENGINES:
            atexit.register(drop_engines)
        _ENGINES[key] = Engine(config)
    return _ENGINES[key]


def drop_engines() -> None:
    """Shut every engine of this process down, at exit (registered by ``get_engine``).

    The work is done by then, so there is no grace period: vLLM's graceful teardown takes
    ~5 s on CPU (its worker tears torch down) before it force-kills anyway, and every
    process with an engine -- a CLI stage, a test run -- paid that at exit.  vLLM's
    shutdown log lines are kept off the terminal: they came after the run's summary."""
    logging.getLogger("vllm").setLevel(logging.ERROR)
    for engine in list(_ENGINES.values()):
        drop_engine(engine, grace_s=0.0)


#: how long ``drop_engine`` waits for vLLM's output thread to finish after the shutdown signal
OUTPUT_THREAD_JOIN_S = 10.0


def drop_engine(engine: Engine, grace_s: float | None = None) -> None:
    """Forget a (dead) engine so ``get_engine`` builds a new one, and release what is left of it
    (``grace_s``: how long its processes may take to exit before they are killed; None: vLLM's 5 s).

    vLLM's client reads the engine core's outputs on a daemon thread that the shutdown only
    signals.  The thread then still frees its last outputs; with log-probs those hold torch
    tensors.  If the interpreter is finalising meanwhile, Python ends the thread inside the
    tensor's C++ destructor and the process aborts ("terminate called without an active
    exception", exit 134) after all its work succeeded.  So the thread is waited for."""
    for key in [k for k, v in _ENGINES.items() if v is engine]:
        del _ENGINES[key]
    core = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
    try:
        core.shutdown(timeout=grace_s)
    except Exception:  # noqa: BLE001 -- it is dead already; nothing more to free
        pass
    thread = getattr(core, "output_queue_thread", None)  # SyncMPClient's; in-process cores have none
    if thread is not None and thread.is_alive():
        thread.join(OUTPUT_THREAD_JOIN_S)
