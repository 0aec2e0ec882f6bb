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

This module holds the ``Engine`` and the process's engines (one per model
configuration, shut down at exit); the work is done in modules of their own:

* ``pipeline.engine.requests``    the request and result types, one request per sample;
* ``pipeline.engine.submission``  rendering, the length check, enqueueing one prompt;
* ``pipeline.engine.admission``   the admission loop behind ``generate_stream``;
* ``pipeline.engine.rounds``      adaptive sampling's later rounds;
* ``pipeline.engine.rescoring``   scoring requests sent again without the prefix cache;
* ``pipeline.engine.private_tmp`` the engine's own temporary folder, for vLLM's sockets and rendezvous file.
"""
from __future__ import annotations

import atexit
import logging
import os
from typing import TYPE_CHECKING, Iterable, Iterator

from pipeline.files import storage
from pipeline.engine.admission import refill_threshold, stream
from pipeline.engine.death import core_died, wake_on_death
from pipeline.engine.private_tmp import PrivateTmp
from pipeline.engine.requests import (  # noqa: F401 -- re-exported: callers import them from here
    Completion, GenRequest, GenResult, sample_params)
from pipeline.engine.setup import (  # noqa: F401 -- re-exported: callers import them from here
    _as_string_content, engine_kwargs, has_cuda, model_location, on_cpu, render_chat, resolve_token_ids,
    stop_kwargs)

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.settings import PipelineConfig

log = logging.getLogger("pipeline.engine.engine")


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
        #: the folder of vLLM's sockets and rendezvous file, removed by ``drop_engine``
        self.tmp = PrivateTmp()
        try:
            with self.tmp.spawning():
                self.llm = LLM(**self.kwargs)
        except BaseException:
            self.tmp.remove()  # vLLM ended the processes of the engine it could not start
            raise
        self.tokenizer = self.llm.get_tokenizer()
        self.model_name = config.model.path
        self.revision = config.model.revision or ""
        self.max_model_len = config.model.max_model_len
        vllm_config = self.llm.llm_engine.vllm_config
        self.max_num_seqs = vllm_config.scheduler_config.max_num_seqs
        #: tokens per KV-cache block: the prefix cache shares whole blocks only
        self.kv_block_size = vllm_config.cache_config.block_size if vllm_config.cache_config.enable_prefix_caching else 0
        #: unfinished sequences below which the next prompts are admitted
        self.refill_threshold = refill_threshold(vllm_config)
        #: prompts (with their images) admitted into the engine at once
        self.max_prompts = prompts_in_flight(config, self.refill_threshold)
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
    def generate(self, requests: Iterable[GenRequest]) -> list[GenResult]:
        """Results for one batch of requests (a list, or an iterator building them), in order."""
        return next(iter(self.generate_stream([requests])))

    def generate_stream(self, batches: Iterable[Iterable[GenRequest]]) -> Iterator[list[GenResult]]:
        """Results batch by batch, in order, with the engine fed across batch boundaries.

        Prompts are admitted one at a time while the engine has fewer unfinished
        sequences than it schedules at once (``refill_threshold``) and fewer than
        ``max_prompts`` prompts in flight, so the long tail of one partition
        overlaps the start of the next without queueing a partition's images.
        A batch may be an iterator: its requests are built as they are drawn, so
        the engine computes the first while the rest are built.  Each prompt is added on its own: one that vLLM refuses (too long for
        the context, a bad image) fails alone with a reason.  A dead engine
        raises ``EngineDead``.  (``pipeline.engine.admission``)
        """
        return stream(self, batches)

    def dead(self) -> bool:
        """Whether vLLM has seen its engine core process die."""
        return core_died(self.llm.llm_engine)


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
    exception", exit 134) after all its work succeeded.  So the thread is waited for.

    Last, the engine's temporary folder goes (``pipeline.engine.private_tmp``): vLLM's sockets
    and rendezvous file in it would otherwise stay, even after a clean exit."""
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
    engine.tmp.remove()
