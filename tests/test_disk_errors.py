"""A full disk and a read-only work folder, for real: the message names the file or folder,
no ``*.tmp-*`` file is left, and the terminal never points to a log that does not exist.

The full disk is a 64 KiB tmpfs (root can mount one) or, failing that, a file size limit
(``RLIMIT_FSIZE``: a write past it fails with EFBIG, the way a quota does).  The read-only
folder is a tmpfs remounted read-only (root ignores file modes) or, as another user, a
folder without write permission.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, SAMPLE_CONFIG, cli_env, run_cli

#: a write into the full folder, in a process of its own (the size limit must not reach pytest)
WRITE = """
import json, resource, signal, sys
from pipeline.files import storage
if sys.argv[2] != "0":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    storage.write_bytes(sys.argv[1], b"x" * (1 << 20))
    print(json.dumps({"errno": None}))
except OSError as e:
    print(json.dumps({"errno": e.errno, "message": str(e)}))
storage.write_bytes(sys.argv[1] + ".small", b"x" * 4096)  # what fits still fits: nothing was left behind
"""


def _mount_tmpfs(path: Path, size: str, read_only: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    if ok and read_only:
        ok = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True).returncode == 0
        if not ok:
            _umount(path)
    return ok


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def full_folder(base: Path, how: str):
    """A folder whose next 1 MiB write fails: yields it and the file size limit to apply."""
    folder = base / "full"
    if how == "tmpfs":
        if not _mount_tmpfs(folder, "64k"):
            pytest.skip("cannot mount a tmpfs here (not root)")
        try:
            yield folder, 0
        finally:
            _umount(folder)
    else:
        folder.mkdir()
        yield folder, 64 * 1024


@pytest.mark.parametrize("how", ["tmpfs", "fsize"])
def test_a_full_disk_names_the_file_and_leaves_no_temp_file(tmp_path, how):
    with full_folder(tmp_path, how) as (folder, limit):
        target = folder / "stage" / "data" / "part-00000.parquet"
        proc = subprocess.run([sys.executable, "-c", WRITE, str(target), str(limit)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.splitlines()[0])
        assert got["errno"] == (errno.ENOSPC if how == "tmpfs" else errno.EFBIG), got
        assert str(target) in got["message"], got
        assert not target.exists()
        assert not [p.name for p in folder.rglob("*.tmp-*")]
        assert (target.parent / (target.name + ".small")).stat().st_size == 4096


def test_a_run_on_a_full_disk_says_which_file(tiny_model, tmp_path):
    """``stage ingest`` whose output fills a 64 KiB disk: the terminal names the file that could
    not be written (pyarrow's own message names none), and no temp file is left."""
    out = tmp_path / "full"
    if not _mount_tmpfs(out, "64k"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        proc = run_cli("stage", "ingest", "--config", SAMPLE_CONFIG, "--executor", "local", "--output", out / "ingest",
                       "--work-dir", tmp_path / "work", "--set", "sources.0.limit=24", "--set", "sources.1.limit=8",
                       "--set", "run.partition_rows=8", env=cli_env())
        terminal = proc.stdout + proc.stderr
        assert proc.returncode == 1, terminal[-3000:]
        named = re.search(rf"error: OSError: \[Errno {errno.ENOSPC}\] cannot write ({re.escape(str(out))}/\S+): "
                          r"No space left on device", terminal)
        assert named, terminal[-3000:]
        assert not Path(named.group(1)).exists()
        assert not [str(p) for p in out.rglob("*.tmp-*")]
        _log_named_exists(terminal)
    finally:
        _umount(out)


@contextlib.contextmanager
def read_only_folder(path: Path):
    """``path`` as a folder no write into succeeds, for this process and its children."""
    if os.geteuid() == 0:
        if not _mount_tmpfs(path, "1m", read_only=True):
            pytest.skip("cannot mount a read-only tmpfs here")
        try:
            yield path
        finally:
            _umount(path)
    else:
        path.mkdir(parents=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


def _log_named_exists(terminal: str) -> None:
    """The terminal sends the user to a log only if it named one that exists."""
    logs = re.findall(r"^log: (\S+)", terminal, flags=re.M)
    if "log named above" in terminal:
        assert logs and all(Path(p).is_file() for p in logs), terminal[-3000:]


@pytest.mark.parametrize("where", ["work", "logs"])
def test_a_read_only_work_folder_is_named_and_no_missing_log_is_pointed_to(sample_data, tmp_path, where):
    """The work folder itself read-only, or only its ``logs`` folder: the error names the folder
    and the terminal points to no log that could not be written."""
    work = tmp_path / "work"
    ro = work if where == "work" else work / "logs"
    env = cli_env()
    if where == "logs":  # a work folder of the pipeline's own (one cheap stage wrote its logs/ there)
        made = run_cli("stage", "ingest", "--config", SAMPLE_CONFIG, "--executor", "local", "--work-dir", work,
                       "--output", tmp_path / "ingest", "--set", "sources.0.limit=2", "--set", "sources.1.limit=2",
                       env=env)
        assert made.returncode == 0 and ro.is_dir(), made.stderr[-3000:]
        for log in ro.iterdir():
            log.unlink()  # the mount hides them anyway; the folder is what stays
    with read_only_folder(ro):
        proc = run_cli("run", "--config", SAMPLE_CONFIG, "--executor", "local", "--work-dir", work,
                       "--output", tmp_path / "out", env=env)
    terminal = proc.stdout + proc.stderr
    assert proc.returncode == 1, terminal[-3000:]
    errors = [ln for ln in terminal.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(ro) in errors[0], terminal[-3000:]
    assert "Read-only file system" in errors[0] or "Permission denied" in errors[0], errors
    # no log could be written: none is named, none is pointed to
    assert not re.search(r"^log: ", terminal, flags=re.M) and "log named above" not in terminal, terminal
