"""``--restart`` clears the work folder but keeps the log the build is writing."""
from __future__ import annotations

import os

from pipeline.orchestrator import clear_work_dir


def test_restart_keeps_the_open_build_log_and_removes_everything_else(tmp_path):
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "generate" / "data").mkdir(parents=True)
    (work / "generate" / "data" / "part-00000.parquet").write_bytes(b"x")
    (work / "report.json").write_text("{}")
    (work / "logs" / "old.log").write_text("earlier build\n")
    with open(work / "logs" / "build.log", "a") as log:  # the build's own log, open while it runs
        log.write("before\n")
        log.flush()
        clear_work_dir(str(work))
        log.write("after\n")
    assert sorted(os.listdir(work)) == ["logs"]
    assert (work / "logs" / "build.log").read_text() == "before\nafter\n"


def test_restart_of_a_missing_work_folder_is_a_no_op(tmp_path):
    clear_work_dir(str(tmp_path / "never-made"))
    assert not (tmp_path / "never-made").exists()
