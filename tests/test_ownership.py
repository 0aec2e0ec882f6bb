"""The pipeline removes or replaces only what it wrote, refuses folders that would feed
themselves, and allows one run per folder -- tried as a user would: real folders holding
someone's files, real processes, a real killed run."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, SAMPLE_CONFIG, cli, config_file, markers, users_folder
from pair_data import write_inputs
from pipeline.cli import main
from pipeline.files.ownership import LOCK, RECORD

REFUSED = "and was not written by mmpr-forge; give a new or empty folder, or pass --adopt"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> SHA-256), bookkeeping left out."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (RECORD, LOCK)}


def hf_dataset_folder(path: Path) -> Path:
    """A Hugging Face dataset folder of someone else's: ``data/train-…parquet`` like ours, a card."""
    (path / "data").mkdir(parents=True)
    (path / "data" / "mine.parquet").write_bytes(b"PAR1 someone's shard PAR1")
    (path / "data" / "train-00000-of-00002.parquet").write_bytes(b"PAR1 someone's train shard PAR1")
    (path / "README.md").write_text("---\nlicense: mit\n---\n# My dataset\n")
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> str:
    """A pair stage's output folder (no model needed)."""
    dirs, _ = write_inputs(tmp_path_factory.mktemp("pairs"))
    return dirs[0]


@pytest.fixture
def write_cfg(tmp_path) -> Path:
    return config_file(tmp_path, {"run": {"seed": 7, "work_dir": str(tmp_path / "work"),
                                          "output_dir": str(tmp_path / "unused")},
                                  "executor": {"kind": "local"}, "write": {"shard_rows": 7}}, "cfg.yaml")


def write_stage(cfg: Path, pairs: str, out: Path, *extra: str) -> int:
    return main(["stage", "write", "--config", str(cfg), "--input", pairs, "--output", str(out), *extra])


# -- 1. only what the pipeline wrote is removed or replaced --------------------------------------
def test_write_refuses_a_hugging_face_dataset_folder_and_touches_nothing(pairs, write_cfg, tmp_path, capsys):
    """Before: the write stage deleted data/mine.parquet and data/train-00000-of-00002.parquet,
    replaced README.md and exited 0."""
    out = hf_dataset_folder(tmp_path / "their-dataset")
    before = snapshot(out)
    assert write_stage(write_cfg, pairs, out) == 2
    err = capsys.readouterr().err
    assert f"error: --output: {out} is not empty (README.md, data) {REFUSED}" in err
    assert snapshot(out) == before
    assert sorted(os.listdir(out)) == ["README.md", "data"]  # not even a record or a lock


def test_adopting_a_folder_never_replaces_its_card(pairs, write_cfg, tmp_path, capsys):
    out = hf_dataset_folder(tmp_path / "their-dataset")
    before = snapshot(out)
    assert write_stage(write_cfg, pairs, out, "--adopt") == 2
    assert (f"error: --output: {out / 'README.md'} exists and was not written by mmpr-forge, so the pipeline "
            "will not replace it: move it away or choose another folder") in capsys.readouterr().err
    assert snapshot(out) == before
    assert sorted(os.listdir(out)) == ["README.md", "data"]


def test_adopted_folder_keeps_its_files_across_rewrites(pairs, write_cfg, tmp_path):
    """With --adopt the pipeline's files go beside the user's; a rewrite with another shard count
    removes the pipeline's stale shards and none of the user's."""
    out = tmp_path / "shared"
    (out / "data").mkdir(parents=True)
    (out / "data" / "mine.parquet").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine\n")
    theirs = snapshot(out)
    assert write_stage(write_cfg, pairs, out, "--adopt") == 0
    first = json.loads((out / "manifest.json").read_text())["shards"]
    assert len(first) > 1
    cfg = yaml.safe_load(write_cfg.read_text())
    cfg["write"]["shard_rows"] = 1000
    write_cfg.write_text(yaml.safe_dump(cfg))
    assert write_stage(write_cfg, pairs, out) == 0  # adopted once: the folder is the pipeline's to write
    second = [s["path"] for s in json.loads((out / "manifest.json").read_text())["shards"]]
    now = snapshot(out)
    assert {k: now[k] for k in theirs} == theirs
    written = {k for k in now if k.startswith("data/")} - set(theirs)
    assert written == set(second)  # the first write's shards are gone, the user's are not


def test_adopted_folder_with_a_file_where_a_shard_goes_is_refused(pairs, write_cfg, tmp_path, capsys):
    assert write_stage(write_cfg, pairs, tmp_path / "probe") == 0
    first = json.loads((tmp_path / "probe" / "manifest.json").read_text())["shards"][0]["path"]
    out = tmp_path / "shared"
    theirs = out / first  # someone's file under the very name the write plans
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"mine")
    assert write_stage(write_cfg, pairs, out, "--adopt") == 2
    assert f"{theirs} exists and was not written by mmpr-forge" in capsys.readouterr().err
    assert theirs.read_bytes() == b"mine"
    assert not (out / "manifest.json").exists()


def test_a_dataset_folder_written_before_ownership_records_is_still_the_pipelines(pairs, write_cfg, tmp_path):
    """Folders written by earlier versions (no record) keep working: their manifest names their
    shards, and a rewrite removes exactly those."""
    out = tmp_path / "old"
    assert write_stage(write_cfg, pairs, out) == 0
    (out / RECORD).unlink()  # as an earlier version left it
    old = {s["path"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    cfg = yaml.safe_load(write_cfg.read_text())
    cfg["write"]["shard_rows"] = 1000
    write_cfg.write_text(yaml.safe_dump(cfg))
    assert write_stage(write_cfg, pairs, out) == 0
    new = {s["path"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    assert old - new and not any((out / p).exists() for p in old - new)
    assert json.loads((out / RECORD).read_text())["role"] == "dataset"


def test_run_with_restart_in_a_users_folder_is_refused_before_anything(tmp_path, capsys):
    """Before: ``--work-dir . --restart`` removed every entry of the folder but logs/."""
    project = users_folder(tmp_path / "project")
    before = snapshot(project)
    rc = main(["run", "--config", str(ROOT / SAMPLE_CONFIG), "--work-dir", str(project),
               "--output", str(tmp_path / "out"), "--restart", "--executor", "local"])
    assert rc == 2
    assert f"error: run.work_dir: {project} is not empty (notes.txt, src) {REFUSED}" in capsys.readouterr().err
    assert snapshot(project) == before and sorted(os.listdir(project)) == ["notes.txt", "src"]
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_users_folder(pairs, write_cfg, tmp_path, capsys):
    out = tmp_path / "ds"
    assert write_stage(write_cfg, pairs, out) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("mine\n")
    assert main(["export", "--format", "swift", "--input", str(out), "--output", str(mine)]) == 2
    assert f"error: --output: {mine} is not empty (README.md) {REFUSED}" in capsys.readouterr().err
    assert main(["export", "--format", "swift", "--input", str(out), "--output", str(mine), "--adopt"]) == 2
    assert f"{mine / 'README.md'} exists and was not written by mmpr-forge" in capsys.readouterr().err
    assert snapshot(mine) == {"README.md": hashlib.sha256(b"mine\n").hexdigest()}


@pytest.mark.parametrize("command", ["sample-data", "tiny-model"])
def test_demo_builders_refuse_a_users_folder(command, tmp_path, capsys):
    """Before: sample-data replaced DIR/images and DIR/README.md; tiny-model removed DIR whole."""
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "images" / "cat.png").write_bytes(b"not really a png")
    (mine / "README.md").write_text("mine\n")
    before = snapshot(mine)
    assert main([command, "--out", str(mine)]) == 2
    assert f"error: --out: {mine} is not empty" in capsys.readouterr().err
    assert snapshot(mine) == before


# -- 2. no folder feeds itself ---------------------------------------------------------------------
def test_output_inside_an_image_folder_source_is_refused(tmp_path, capsys):
    """Before: a second build read its own exports/*/images/*.png back as prompts (195 rows, not 3)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"png")
    cfg = config_file(tmp_path, {"sources": [{"name": "photos", "format": "image_folder", "path": str(photos),
                                              "default_question": "Describe the image."}],
                                 "executor": {"kind": "local"}})
    out = photos / "dataset"
    rc = main(["run", "--config", str(cfg), "--work-dir", str(tmp_path / "work"), "--output", str(out)])
    assert rc == 2
    assert (f"config error: run.output_dir: {out} is inside sources.0.path {photos} (source 'photos'), which is "
            "read whole: a later build would read this one's output back as prompts; choose a folder outside "
            f"{photos}") in capsys.readouterr().err
    assert sorted(os.listdir(photos)) == ["a.png"] and not (tmp_path / "work").exists()


def test_source_inside_the_work_folder_is_refused(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "prompts.jsonl").write_text('{"question": "q", "image": "a.png"}\n')
    cfg = config_file(tmp_path, {"sources": [{"name": "p", "format": "jsonl", "path": str(work / "prompts.jsonl")}],
                                 "executor": {"kind": "local"}})
    assert main(["stage", "ingest", "--config", str(cfg), "--work-dir", str(work),
                 "--output", str(tmp_path / "ingest")]) == 2
    assert (f"config error: sources.0.path: {work / 'prompts.jsonl'} (source 'p') is inside run.work_dir {work}, "
            "which the pipeline writes: keep sources and outputs in separate folders") in capsys.readouterr().err


# -- 3. one run per folder ---------------------------------------------------------------------------
def ingest_cmd(cfg: Path, out: Path) -> list[str]:
    return cli("stage", "ingest", "--config", cfg, "--output", out)


def test_a_second_run_on_a_folder_is_refused_and_a_killed_ones_lock_does_not_block(tmp_path):
    """Two real runs on one folder: the second is refused at once, naming the first (host, pid,
    start time); once the first is SIGKILLed, the rerun goes through."""
    src = tmp_path / "gt.jsonl"
    lines = (ROOT / "data" / "sample" / "gt.jsonl").read_text().splitlines()[:4]
    src.write_text("".join(line + "\n" for line in lines))
    cfg = config_file(tmp_path, {"run": {"work_dir": str(tmp_path / "work")}, "executor": {"kind": "local"},
                                 "sources": [{"name": "s", "format": "jsonl", "path": str(src),
                                              "image_root": str(ROOT / "data" / "sample")}]})
    out = tmp_path / "ingest"
    env = {**os.environ, "MMPR_FAULT": "ingest:part-00000:hold", "MMPR_FAULT_HOLD_S": "120"}
    first = subprocess.Popen(ingest_cmd(cfg, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (out / "plan.json").exists():  # the first run is past its claim and holds the lock
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.2)
        t0 = time.monotonic()
        second = subprocess.run(ingest_cmd(cfg, out), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert time.monotonic() - t0 < 30  # refused at once, not after doing the work
        assert second.returncode == 2
        assert (f"error: --output: {out} is in use by another run (pid {first.pid} on {socket.gethostname()}, "
                "started ") in second.stderr
        assert "stage ingest" in second.stderr  # the running command
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    third = subprocess.run(ingest_cmd(cfg, out), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert len(markers(out)) == len(json.loads((out / "plan.json").read_text())["partitions"]) > 0


def test_one_run_per_work_folder_on_an_object_store(s3_server, monkeypatch):
    """No flock on S3: a lease the holder refreshes.  A second run is refused while the lease is
    fresh; a killed run's lease expires (LEASE_S is shortened for the test, on both sides)."""
    from pipeline.files import folder_lock
    from pipeline.files.folder_lock import FolderBusy, FolderLock

    s3_server.create_bucket(Bucket="mmpr-lease")
    uri = "s3://mmpr-lease/work"
    monkeypatch.setattr(folder_lock, "LEASE_S", 2.0)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pipeline.files import folder_lock\n"
        "folder_lock.LEASE_S = 2.0\n"
        f"folder_lock.FolderLock({uri!r}, 'run.work_dir').acquire('holder')\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(3)  # longer than the lease: only the holder's refreshes keep it
        with pytest.raises(FolderBusy, match=rf"run.work_dir: {uri} is in use by another run \(pid {holder.pid} "):
            FolderLock(uri, "run.work_dir").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    time.sleep(2.5)  # the killed holder's lease expires
    lock = FolderLock(uri, "run.work_dir").acquire()
    lock.release()
