"""The partition runner: markers, resume, config invalidation, bounded retries."""
from __future__ import annotations

import json
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import make_config
from pipeline.files import storage
from pipeline.run.orchestrator import plan
from pipeline.run.runner import Task, completed, invalidate_if_changed, run_task, stage_totals
from pipeline.core.stage import RowStage, StageContext

SCHEMA = pa.schema([("prompt_id", pa.string()), ("x", pa.int64())])


class Doubler(RowStage, register=False):
    """A tiny CPU stage: doubles x, quarantines negatives, fails on demand."""
    name = "doubler"
    input_schema = SCHEMA
    output_schema = SCHEMA

    def __init__(self, config, fail_times: int = 0):
        super().__init__(config)
        self.fail_times = fail_times
        self.calls = 0

    def run(self, rows, ctx: StageContext) -> Iterator[dict]:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise RuntimeError("engine died")
        for r in rows:
            if r["x"] < 0:
                ctx.quarantine(r, "negative", f"x={r['x']}")
                continue
            ctx.stats.inc("doubled")
            yield {"prompt_id": r["prompt_id"], "x": 2 * r["x"]}


def _input(tmp_path, name="part-00000", xs=(1, 2, -3, 4)):
    uri = tmp_path / "in" / "data" / f"{name}.parquet"
    uri.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{"prompt_id": f"s{i}", "x": x} for i, x in enumerate(xs)],
                                        schema=SCHEMA), uri)
    return str(uri)


def test_partition_writes_output_quarantine_and_marker_last(tmp_path):
    cfg = make_config()
    task = Task("doubler", "part-00000", (_input(tmp_path),), str(tmp_path / "out"), "h1")
    assert not completed(task)
    stats = run_task(Doubler(cfg), task)
    assert pq.read_table(task.data_uri()).column("x").to_pylist() == [2, 4, 8]
    q = pq.read_table(task.quarantine_uri()).to_pylist()
    assert [(r["prompt_id"], r["reason"]) for r in q] == [("s2", "negative")]
    marker = json.loads(open(task.marker_uri()).read())
    assert marker["stage_hash"] == "h1" and marker["stats"]["rows_in"] == 4 and marker["stats"]["rows_out"] == 3
    # taken before its input was read: started_at - the input's marker is the scheduling delay
    assert marker["finished_at"] - marker["stats"]["wall_s"] >= marker["started_at"] > marker["finished_at"] - 60
    assert completed(task) and stats.counters["doubled"] == 3
    # no temp files are left behind
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]


def test_a_marker_with_another_hash_is_not_done_and_invalidates(tmp_path):
    cfg = make_config()
    out = str(tmp_path / "out")
    run_task(Doubler(cfg), Task("doubler", "part-00000", (_input(tmp_path),), out, "old"))
    assert not completed(Task("doubler", "part-00000", (), out, "new"))
    assert invalidate_if_changed(out, "new") is True
    assert storage.list_files(storage.join(out, "data")) == []
    assert invalidate_if_changed(out, "new") is False


def test_failures_are_retried_then_quarantined(tmp_path):
    cfg = make_config()
    out = str(tmp_path / "out")
    flaky = Doubler(cfg, fail_times=2)
    stats = run_task(flaky, Task("doubler", "p", (_input(tmp_path),), out, "h"), max_retries=2)
    assert stats.retries == 2 and stats.rows_out == 3 and flaky.calls == 3
    broken = Doubler(cfg, fail_times=99)
    task = Task("doubler", "q", (_input(tmp_path, "q"),), out, "h")
    stats = run_task(broken, task, max_retries=1)
    assert broken.calls == 2 and stats.rows_out == 0
    q = pq.read_table(task.quarantine_uri()).to_pylist()
    assert len(q) == 4 and {r["reason"] for r in q} == {"stage_error"} and "engine died" in q[0]["detail"]
    assert completed(task), "a poisoned partition is finished (quarantined), not retried forever"
    marker = json.loads(open(task.marker_uri()).read())
    assert "Traceback" in marker["error"] and "engine died" in marker["error"]  # kept, not just counted


def test_an_input_partition_is_checked_against_the_stage_input_schema(tmp_path):
    from pipeline.run.runner import InputSchemaError

    src = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"prompt_id": ["a"], "y": [1]}), src)
    task = Task("doubler", "w", (str(src),), str(tmp_path / "out"), "h")
    with pytest.raises(InputSchemaError, match=r"wrong.parquet: missing column\(s\) \['x'\]"):
        run_task(Doubler(make_config()), task)
    assert not completed(task)


def test_stage_totals_sum_every_completed_partition(tmp_path):
    cfg = make_config()
    out = str(tmp_path / "out")
    for name in ("a", "b"):
        run_task(Doubler(cfg), Task("doubler", name, (_input(tmp_path, name),), out, "h"))
    total = stage_totals(out)
    assert (total.rows_in, total.rows_out, total.quarantined["negative"]) == (8, 6, 2)


def test_plan_names_partitions_after_inputs_and_prefixes_multiple_inputs(tmp_path):
    cfg = make_config()
    for stage in ("correctness", "dropout_ntp"):
        d = tmp_path / stage / "data"
        d.mkdir(parents=True)
        for i in range(2):
            pq.write_table(pa.table({"x": [i]}), d / f"part-{i:05d}.parquet")
    tasks = plan(cfg, "filter", [str(tmp_path / "correctness"), str(tmp_path / "dropout_ntp")], str(tmp_path / "f"))
    assert [t.name for t in tasks] == ["correctness-part-00000", "correctness-part-00001",
                                       "dropout_ntp-part-00000", "dropout_ntp-part-00001"]
    assert len({t.stage_hash for t in tasks}) == 1


@pytest.mark.parametrize("change, affected, unaffected", [
    ({"generate": {"n": 16}}, ["generate", "correctness", "filter"], ["ingest"]),
    ({"scoring": {"max_pairs_per_prompt": 3}}, ["correctness", "filter"], ["ingest", "generate"]),
    ({"image_crop": {"fraction": 0.9}}, ["image_crop", "filter"], ["generate", "correctness", "dropout_ntp"]),
    ({"executor": {"cpu_concurrency": 2}, "engine": {"replicas": 4}}, [], ["ingest", "generate", "filter"]),
    ({"run": {"work_dir": "elsewhere", "output_dir": "x"}}, [], ["ingest", "generate", "filter"]),
])
def test_stage_hash_follows_what_changes_a_stages_output(change, affected, unaffected):
    base, changed = make_config(), make_config(**change)
    for stage in affected:
        assert base.stage_hash(stage) != changed.stage_hash(stage), stage
    for stage in unaffected:
        assert base.stage_hash(stage) == changed.stage_hash(stage), stage
    # the provenance config hash ignores paths and scheduling
    scheduling_only = set(change) <= {"executor", "engine", "run"} and "seed" not in change.get("run", {})
    assert (base.config_hash() == changed.config_hash()) == scheduling_only
