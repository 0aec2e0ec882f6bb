"""``python -m pipeline stage NAME`` run alone, as a user sees it: every stage ends with its
summary line (source and dataset stages too), and a run whose every row was quarantined says
so in its last line and exits 1.  Real CLI runs on tiny inputs; no model is loaded."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import config_file, png, run_cli
from pair_data import write_inputs


def _config(tmp_path: Path, sources: list[dict] | None = None) -> Path:
    return config_file(tmp_path, {"run": {"name": "one-stage", "seed": 3}, "executor": {"kind": "local"},
                                  "write": {"shard_rows": 10}, **({"sources": sources} if sources else {})})


def _stage(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """Exit status and the lines a user sees (stdout and stderr, in order)."""
    proc = run_cli("stage", *args, "--work-dir", tmp_path / "work", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc.returncode, proc.stdout.splitlines()


def _source(tmp_path: Path, lines: list[str]) -> list[dict]:
    (tmp_path / "rows.jsonl").write_text("".join(ln + "\n" for ln in lines))
    return [{"name": "rows", "format": "jsonl", "path": str(tmp_path / "rows.jsonl")}]


def _fields(line: str) -> list[str]:
    """A summary line without its timing field (rows/s and seconds vary)."""
    return line.split(" | ")[:-1]


def test_ingest_whose_every_row_is_quarantined_says_so_last_and_fails(tmp_path):
    config = _config(tmp_path, _source(tmp_path, ["{bad", "not json", '{"question":']))
    code, lines = _stage(tmp_path, "ingest", "--config", str(config), "--output", str(tmp_path / "ingest"))
    assert code == 1, lines
    assert lines[-1] == "ingest: all 3 rows quarantined (invalid_json: 3); nothing to pass on", lines
    summaries = [ln for ln in lines if ln.startswith("[ingest] ")]
    assert [_fields(ln) for ln in summaries] == [
        # run.partition_rows auto: 3 rows on 2 workers are 3 partitions of 1 row
        ["[ingest] partitions 3 (0 already done)", "rows in 3 out 0", "quarantined 3 (invalid_json: 3)"]], lines


def test_ingest_ends_with_its_summary_line(tmp_path):
    (tmp_path / "red.png").write_bytes(png((200, 30, 30), (16, 16)))
    good = json.dumps({"question": "What colour is the square?", "answer": "red", "image": "red.png"})
    config = _config(tmp_path, _source(tmp_path, [good, "{bad"]))
    code, lines = _stage(tmp_path, "ingest", "--config", str(config), "--output", str(tmp_path / "ingest"))
    assert code == 0, lines
    summaries = [ln for ln in lines if ln.startswith("[ingest] ")]
    assert [_fields(ln) for ln in summaries] == [
        ["[ingest] partitions 2 (0 already done)", "rows in 2 out 1", "quarantined 1 (invalid_json: 1)"]], lines


def test_write_ends_with_its_summary_line(tmp_path):
    dirs, _ = write_inputs(tmp_path / "in")
    correctness = dirs[0]  # 32 pairs and one of them again in a third file: 4 shards of at most 10
    code, lines = _stage(tmp_path, "write", "--config", str(_config(tmp_path)), "--input", correctness,
                         "--output", str(tmp_path / "dataset"))
    assert code == 0, lines
    summaries = [ln for ln in lines if ln.startswith("[write] ")]
    assert [_fields(ln) for ln in summaries] == [
        ["[write] shards 4 (0 already done)", "rows in 33 out 32", "quarantined 0 (none)"]], lines
