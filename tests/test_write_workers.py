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


def _write(tmp_path: Path, dirs, name: str, kind: str, memory_mb: float | str):
    cfg = _config(tmp_path / name, kind, 2)
    cfg.executor.write_memory_mb = memory_mb
    stats = write_dataset(cfg, dirs)
    return _digests(tmp_path / name), stats.counters


@pytest.mark.parametrize("kind", ["ray", "local"])
def test_held_pieces_write_the_bytes_that_disk_spills_write(ray_session, tmp_path, monkeypatch, kind):
    """Scatter pieces held in memory (the object store under Ray) and pieces spilled to temp disk
    give byte-identical shards; each path really was the one taken (no spill file when held,
    nothing held when write_memory_mb is 0)."""
    import stages.write as w

    monkeypatch.setattr(w, "READ_BATCH_ROWS", 4)
    dirs, rows = write_inputs(tmp_path / "in")
    disk, disk_c = _write(tmp_path, dirs, "disk", kind, 0)
    held, held_c = _write(tmp_path, dirs, "held", kind, 64)
    assert disk_c["scatter_spill_files"] > 0 and disk_c["scatter_held_mb"] == 0
    assert held_c["scatter_spill_files"] == 0 and held_c["scatter_held_mb"] > 0
    assert len(disk) > 4 and held == disk
    assert not glob.glob(str(tmp_path / "*" / ".write-tmp-*"))


def test_scatter_spills_to_disk_past_its_share_of_the_memory_budget(ray_session, tmp_path, monkeypatch):
    """A budget smaller than the rows: every scatter task spills (nothing held); a budget that
    only the first input file fits: that task holds, the rest spill, and a shard gathers pieces
    of both kinds.  The bytes are the same in every case."""
    import stages.write as w

    monkeypatch.setattr(w, "READ_BATCH_ROWS", 4)
    dirs, rows = write_inputs(tmp_path / "in")
    held, held_c = _write(tmp_path, dirs, "held", "ray", 64)
    tight, tight_c = _write(tmp_path, dirs, "tight", "ray", 1 / 1024)  # 1 KiB for all tasks together
    assert tight_c["scatter_held_mb"] == 0 and tight_c["scatter_spill_files"] > 0
    assert tight == held

    shares = w.task_shares
    monkeypatch.setattr(w, "task_shares", lambda budget, plan: [budget] + [0] * (len(plan.file_rows) - 1))
    mixed, mixed_c = _write(tmp_path, dirs, "mixed", "ray", 64)
    assert mixed_c["scatter_held_mb"] > 0 and mixed_c["scatter_spill_files"] > 0
    assert mixed == held
    assert shares(1000, w.Plan([], None, 10, 0, [3, 7])) == [300, 700]  # a task's share goes by its rows


def test_the_held_budget_never_passes_the_object_store(ray_session, tmp_path):
    """Past the object store's capacity Ray would spill the held pieces to its own disk (measured:
    2.8 GB spilled, more CPU than the write's own spill), so a budget is capped at 80% of it."""
    import ray

    from stages.write import held_budget

    cfg = _config(tmp_path, "ray", 1)
    cfg.executor.write_memory_mb = 10**7  # 10 TiB
    cap = held_budget(cfg)
    store = ray.cluster_resources()["object_store_memory"]
    assert cap == int(store * 0.8) > 0
    cfg.executor.write_memory_mb = 1
    assert held_budget(cfg) == 1 << 20
    cfg.executor.write_memory_mb = 0
    assert held_budget(cfg) == 0
