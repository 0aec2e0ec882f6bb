"""The write stage on Ray workers: scatter/gather tasks write the same bytes whatever their number.

Starts a local Ray: run it under ``/work/bin/heavy`` on a shared machine.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import pytest

from pair_data import SOURCES, write_inputs
from pipeline.config.settings import PipelineConfig
from stages.write import write_dataset


def _config(out: Path, kind: str, workers: int) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "run": {"name": "write-workers", "seed": 11, "output_dir": str(out)},
        # several spill files per scatter task (write_buffer_mb: 30,000 bytes)
        "executor": {"kind": kind, "num_cpus": 2, "cpu_concurrency": 1, "write_workers": workers,
                     "write_buffer_mb": 30_000 / 2**20},
        "sources": [{"name": s, "format": "jsonl", "path": f"{s}.jsonl"} for s in SOURCES],
        "write": {"shard_rows": 6, "test_fraction": 0.25},
    })


def _digests(out: Path) -> dict[str, str]:
    files = glob.glob(str(out / "data" / "**" / "*.parquet"), recursive=True)
    return {os.path.relpath(f, out): hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


def test_one_or_two_ray_workers_or_in_process_write_identical_bytes(ray_session, tmp_path, monkeypatch):
    import ray

    import stages.write as w

    monkeypatch.setattr(w, "READ_BATCH_ROWS", 4)
    dirs, rows = write_inputs(tmp_path / "in")
    runs = {}
    for kind, workers in (("ray", 1), ("ray", 2), ("local", 1)):
        out = tmp_path / f"{kind}-{workers}"
        stats = write_dataset(_config(out, kind, workers), dirs)
        manifest = json.loads((out / "manifest.json").read_text())
        runs[(kind, workers)] = (_digests(out), manifest["shards"], manifest["totals"], manifest["lengths"])
        assert stats.rows_out == len(rows)
        assert stats.counters["peak_task_mb.scatter"] > 0 and stats.counters["peak_task_mb.gather"] > 0
        if kind == "ray":
            assert ray.is_initialized()  # the tasks ran on Ray (started by the stage when needed)
    one, two, local = runs[("ray", 1)], runs[("ray", 2)], runs[("local", 1)]
    assert len(one[0]) > 4  # several shards per split, so tasks really ran side by side
    assert one[0] == two[0] == local[0]
    assert one[1] == two[1] == local[1]  # manifest shard list: paths, rows, bytes, SHA-256
    assert one[2:] == two[2:] == local[2:]
    assert {s["sha256"] for s in one[1]} == set(one[0].values())
    assert not glob.glob(str(tmp_path / "*" / ".write-tmp-*"))
