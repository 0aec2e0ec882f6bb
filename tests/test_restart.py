"""``--restart`` clears what the pipeline wrote in the work folder, keeps the log the build is
writing, and never touches a file it did not write."""
from __future__ import annotations

import json
import os

import pytest

from helpers import users_folder
from pipeline.run.orchestrator import clear_work_dir
from pipeline.files.ownership import RECORD, Folder, NotOwned


def _build_files(work) -> None:
    (work / "generate" / "data").mkdir(parents=True)
    (work / "generate" / "data" / "part-00000.parquet").write_bytes(b"x")
    (work / "generate" / "markers").mkdir()
    (work / "generate" / "markers" / "part-00000.json").write_text(json.dumps({"stage_hash": "h"}))
    (work / "report.json").write_text("{}")


def test_restart_keeps_the_open_build_log_and_removes_what_the_pipeline_wrote(tmp_path):
    work = tmp_path / "work"
    Folder.claim(str(work), "work").reserve("logs/", "report.json", "generate/")  # as the CLI does
    (work / "logs").mkdir()
    _build_files(work)
    (work / "logs" / "old.log").write_text("earlier build\n")
    with open(work / "logs" / "build.log", "a") as log:  # the build's own log, open while it runs
        log.write("before\n")
        log.flush()
        clear_work_dir(str(work))
        log.write("after\n")
    assert sorted(os.listdir(work)) == [RECORD, "logs"]
    assert (work / "logs" / "build.log").read_text() == "before\nafter\n"


def test_restart_keeps_a_users_files_in_an_adopted_work_folder(tmp_path):
    """``--work-dir .`` with ``--adopt``: the user's own files and folders survive ``--restart``."""
    work = users_folder(tmp_path / "project")
    Folder.claim(str(work), "work", adopt=True).reserve("logs/", "report.json", "generate/")
    _build_files(work)
    clear_work_dir(str(work))
    assert sorted(os.listdir(work)) == [RECORD, "notes.txt", "src"]
    assert (work / "src" / "train.py").read_text() == "print('mine')\n"


def test_restart_of_a_folder_the_pipeline_does_not_own_is_refused(tmp_path):
    """Today's ``--work-dir .`` would have wiped the folder: now nothing is removed."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "notes.txt").write_text("mine\n")
    with pytest.raises(NotOwned, match=r"is not empty \(notes.txt\) and was not written by mmpr-forge"):
        clear_work_dir(str(work))
    assert sorted(os.listdir(work)) == ["notes.txt"]


def test_restart_of_a_work_folder_an_earlier_version_wrote(tmp_path):
    """No record yet, but stage markers: the folder is the pipeline's own, and clearing it works."""
    work = tmp_path / "work"
    work.mkdir()
    _build_files(work)
    (work / "logs").mkdir()
    (work / "logs" / "build-20261201-000000.log").write_text("old\n")
    clear_work_dir(str(work))
    assert sorted(os.listdir(work)) == [RECORD, "logs"]


def test_restart_of_a_missing_work_folder_is_a_no_op(tmp_path):
    clear_work_dir(str(tmp_path / "never-made"))
    assert not (tmp_path / "never-made").exists()
