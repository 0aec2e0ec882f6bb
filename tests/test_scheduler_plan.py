"""The pipelined plan names every partition exactly as the stage-by-stage plan does.

``scheduler.plan_graph`` plans every stage from the source partitions alone
(before any upstream output exists); ``orchestrator.plan`` lists the upstream
folder once it is complete.  Resume and markers rely on both giving the same
Task for the same partition, whichever executor wrote the work folder.
"""
from __future__ import annotations

import pyarrow as pa
import pytest

from helpers import make_config
from pipeline.files import storage
from pipeline.core.graph import input_stages, stage_class
from pipeline.run.orchestrator import plan, stage_dir
from pipeline.run.scheduler import plan_graph

STAGES = ["ingest", "generate", "correctness", "dropout_ntp", "image_crop", "filter", "write"]


@pytest.mark.parametrize("stages", [STAGES, STAGES[:-2] + ["grounding", "filter", "write"]])
def test_plan_graph_equals_the_stage_by_stage_plan(tmp_path, stages):
    config = make_config(run={"stages": stages, "work_dir": str(tmp_path / "work"),
                              "output_dir": str(tmp_path / "out")})
    sources = {"ingest": ["part-00000", "part-00001", "part-00002"]}
    runs, deps = plan_graph(config, sources)
    assert [r.name for r in runs] == [s for s in stages if stage_class(s).kind in ("row", "engine")]

    def touch(stage: str, name: str) -> None:
        storage.write_table(storage.join(stage_dir(config, stage), "data", f"{name}.parquet"),
                            pa.table({"x": [1]}))

    for name in sources["ingest"]:
        touch("ingest", name)
    by_stage = {r.name: r for r in runs}
    for stage in [s for s in stages if s in by_stage]:  # as the barrier loop would: upstream complete first
        expected = plan(config, stage, [stage_dir(config, s) for s in input_stages(config, stage)],
                        stage_dir(config, stage))
        assert sorted(by_stage[stage].tasks, key=lambda t: t.name) == sorted(expected, key=lambda t: t.name)
        for t in expected:
            touch(stage, t.name)
            (up, up_name), = deps.get((stage, t.name), (("ingest", None),))
            assert t.inputs == (storage.join(stage_dir(config, up), "data", f"{up_name or t.name}.parquet"),)
    assert len(by_stage["filter"].tasks) == 9  # three inputs x three partitions, prefixed
    assert deps[("filter", "dropout_ntp-part-00001")] == (("dropout_ntp", "part-00001"),) or \
        deps[("filter", "dropout_ntp-part-00001")] == (("grounding", "dropout_ntp-part-00001"),)


def test_a_merging_stage_runs_before_the_graph_and_feeds_it_as_a_source(tmp_path):
    """dedup (RowStage.merges) is run with the source stages, so the graph does not plan it again and
    generate's partitions read its output with nothing to wait for."""
    config = make_config(run={"stages": ["ingest", "dedup", *STAGES[1:]], "work_dir": str(tmp_path / "work")})
    parts = ["part-00000", "part-00001"]
    runs, deps = plan_graph(config, {"ingest": parts, "dedup": parts})
    assert "dedup" not in [r.name for r in runs]
    generate = next(r for r in runs if r.name == "generate")
    assert [t.inputs for t in generate.tasks] == [(storage.join(stage_dir(config, "dedup"), "data", f"{p}.parquet"),)
                                                  for p in parts]
    assert not any(stage == "generate" for stage, _ in deps)


def test_a_merging_stage_may_not_read_a_graph_stage(tmp_path):
    from pipeline.config.settings import ConfigError
    from pipeline.core.graph import make_stage
    from pipeline.run.orchestrator import _before_graph

    config = make_config(run={"stages": ["ingest", "dedup", *STAGES[1:]]})
    _before_graph(config, make_stage("dedup", config), {"ingest", "dedup"})  # reads ingest: fine
    with pytest.raises(ConfigError, match="dedup merges across all its partitions"):
        _before_graph(config, make_stage("dedup", config), {"dedup"})
