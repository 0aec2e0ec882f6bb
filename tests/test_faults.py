"""The test machinery's ``hold`` fault (pipeline.run.faults): it stalls the chosen partition, and
ends early once the file ``MMPR_FAULT_RELEASE`` names exists (tests/test_signals.py starts its
builds held at their first partition and lets each go on when its test is ready to signal it)."""
from __future__ import annotations

import threading
import time

from pipeline.run import faults

HOLD_S = 120


def _held(monkeypatch, release) -> None:
    monkeypatch.setenv("MMPR_FAULT", "generate:part-00000:hold")
    monkeypatch.setenv("MMPR_FAULT_HOLD_S", str(HOLD_S))
    monkeypatch.setenv("MMPR_FAULT_RELEASE", str(release))
    monkeypatch.delenv("MMPR_FAULT_ONCE", raising=False)


def test_a_hold_lasts_until_its_release_file_exists(tmp_path, monkeypatch):
    release = tmp_path / "release"
    _held(monkeypatch, release)
    timer = threading.Timer(0.5, release.touch)
    timer.start()
    started = time.monotonic()
    try:
        faults.on_partition_start("generate", "part-00000")
    finally:
        timer.cancel()
    assert release.exists(), "the hold ended before its release"
    assert time.monotonic() - started < HOLD_S, "the hold ran its whole time: the release was not seen"


def test_only_the_chosen_partition_is_held(tmp_path, monkeypatch):
    release = tmp_path / "release"
    _held(monkeypatch, release)
    faults.on_partition_start("generate", "part-00001")  # returns at once, nothing released
    faults.on_partition_start("correctness", "part-00000")
    assert not release.exists()
