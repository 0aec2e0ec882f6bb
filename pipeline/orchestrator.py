"""Whole-pipeline and single-stage runs: planning, resume, summaries, report.

The stage graph is data: ``INPUTS`` says whose output each stage reads.  For
every stage the orchestrator lists the input partitions, skips those whose
marker carries the current config hash, hands the rest to the executor, and
prints a summary built from *all* markers (so a resumed run reports the whole
stage, not just what it redid).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

from pipeline import storage
from pipeline.config import PipelineConfig
from pipeline.preflight import check_model
from pipeline.runner import Task, completed, invalidate_if_changed, run_rows_task, stage_totals
from pipeline.stage import StageStats
from pipeline.terminal import echo

log = logging.getLogger("pipeline")

#: which upstream stages' outputs each stage reads (the nearest enabled ones)
INPUTS: dict[str, tuple[str, ...]] = {
    "generate": ("ingest",),
    "correctness": ("generate",),
    "dropout_ntp": ("generate",),
    "image_crop": ("generate",),
    "grounding": ("correctness", "dropout_ntp", "image_crop"),
    "filter": ("grounding",),
    "judge": ("filter",),
    "write": ("judge",),
}
#: when an input stage is disabled, read what it would have read instead
PASSTHROUGH = {"judge": ("filter",), "filter": ("grounding",),
               "grounding": ("correctness", "dropout_ntp", "image_crop")}


def stage_dir(config: PipelineConfig, stage: str) -> str:
    return storage.join(config.run.work_dir, stage)


def input_stages(config: PipelineConfig, stage: str) -> list[str]:
    enabled = set(config.run.stages)
    out: list[str] = []

    def visit(s: str) -> None:
        if s in enabled:
            out.append(s)
        else:
            for up in PASSTHROUGH.get(s, ()):
                visit(up)
    for up in INPUTS[stage]:
        visit(up)
    return out


def plan(config: PipelineConfig, stage: str, input_dirs: list[str], out_dir: str) -> list[Task]:
    """One task per input partition; names are prefixed when several stages feed one."""
    h = config.stage_hash(stage)
    tasks = []
    for in_dir in input_dirs:
        prefix = f"{os.path.basename(in_dir.rstrip('/'))}-" if len(input_dirs) > 1 else ""
        for uri in storage.list_files(storage.join(in_dir, "data"), ".parquet"):
            name = prefix + os.path.basename(uri)[: -len(".parquet")]
            tasks.append(Task(stage, name, (uri,), out_dir, h))
    return tasks


# -- ingest: driver-side, reads sources lazily --------------------------------
def _ingest_chunks(config: PipelineConfig) -> Iterator[list[dict]]:
    from pipeline.sources import iter_source

    chunk: list[dict] = []
    for src in config.sources:
        seen: set[str] = set()
        for raw in iter_source(src):
            if raw["error"] is None:
                raw["duplicate"] = raw["row_key"] in seen
                seen.add(raw["row_key"])
            chunk.append(raw)
            if len(chunk) == config.run.partition_rows:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def run_ingest(config: PipelineConfig, out_dir: str) -> tuple[StageStats, int, int]:
    """Ingest every source into partitions; returns (stats of this run, partitions, skipped)."""
    from stages import make_stage

    stage = make_stage("ingest", config)
    h = config.stage_hash("ingest")
    total, n, skipped = StageStats(), 0, 0
    for i, chunk in enumerate(_ingest_chunks(config)):
        n += 1
        task = Task("ingest", f"part-{i:05d}", (), out_dir, h)
        if completed(task):
            skipped += 1
            continue
        total.merge(run_rows_task(stage, task, chunk, None, config.executor.max_retries))
    return total, n, skipped


def ensure_sample_data(config: PipelineConfig) -> None:
    """Generate the shipped sample data when a source reads it and it is not there yet."""
    sample = os.path.abspath(config.model.tiny_model_data)
    wanted = [s for s in config.sources if os.path.abspath(s.path).startswith(sample + os.sep)]
    if wanted and not all(os.path.exists(s.path) for s in wanted):
        from pipeline.sample_data import build_sample_data

        log.info("generating the sample data in %s", sample)
        build_sample_data(Path(sample))


def check_sources(config: PipelineConfig) -> None:
    from pipeline.config import ConfigError

    ensure_sample_data(config)
    if not config.sources:
        raise ConfigError("sources: no sources configured; add at least one")
    for i, src in enumerate(config.sources):
        if src.format == "hf" and not os.path.exists(src.path):
            continue  # a hub dataset id
        try:
            found = storage.exists(src.path)
        except OSError as e:  # unreachable store, bad credentials, unknown scheme
            raise ConfigError(f"sources.{i}.path: cannot read {src.path} ({e})") from None
        if not found:
            raise ConfigError(f"sources.{i}.path: {src.path} does not exist (source {src.name!r})")


def check_storage(config: PipelineConfig) -> None:
    """Fail before any work when the work or output folder cannot be written
    (a missing bucket, no credentials, a read-only mount).  On a store a probe
    object is written and removed; a local folder is checked without creating
    anything (its nearest existing parent must be a writable folder)."""
    from pipeline.config import ConfigError

    for key, uri in (("run.work_dir", config.run.work_dir), ("run.output_dir", config.run.output_dir)):
        if not storage.is_uri(uri):
            parent = os.path.abspath(uri)
            while not os.path.exists(parent):
                parent = os.path.dirname(parent)
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{key}: cannot write to {uri} ({parent} is not a writable folder)")
            continue
        probe = storage.join(uri, f".mmpr-probe-{os.getpid()}")
        try:
            storage.write_bytes(probe, b"")
            storage.remove(probe)
        except OSError as e:
            raise ConfigError(f"{key}: cannot write to {uri} ({str(e).splitlines()[0][:300]})") from None


def check_ray_address(config: PipelineConfig) -> None:
    """Fail in seconds, not minutes, when a configured Ray address cannot be reached."""
    import socket

    from pipeline.config import ConfigError

    address = config.executor.address or os.environ.get("RAY_ADDRESS")
    if config.executor.kind != "ray" or not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"executor.address: {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"executor.address: cannot reach Ray at {address} ({e})") from None


def ensure_model(config: PipelineConfig) -> None:
    """Build the tiny model when the config names it; check a local model path exists."""
    from pipeline.config import ConfigError

    m = config.model
    if m.is_tiny:
        from pipeline.tiny_model import build_tiny_model

        # builds the sample data it trains on first when that is missing
        build_tiny_model(Path(m.tiny_model_dir), Path(m.tiny_model_data))
        publish_tiny_model(config)
    elif (m.path.startswith((".", "/")) or os.sep in m.path and not _looks_like_hub_id(m.path)) \
            and not os.path.exists(m.path):
        raise ConfigError(f"model.path: {m.path} does not exist")


def publish_tiny_model(config: PipelineConfig) -> None:
    """Put the tiny model where every worker can read it.

    The tiny model is built on the driver's disk.  When the work folder is on
    a store (``s3://...``), cluster nodes may not see that disk, so the model
    goes to ``<work_dir>/models/`` and engine workers load it from there
    (``pipeline.engine.model_location``).  A marker written last makes the
    upload all-or-nothing for readers.
    """
    from pipeline.engine import model_location

    uri = model_location(config)
    if not storage.is_uri(uri):
        return
    local = config.model.tiny_model_dir
    stamp = hashlib.sha256(b"".join(
        p.read_bytes() for p in sorted(Path(local).rglob("*")) if p.is_file())).hexdigest().encode()
    done = storage.join(uri, ".published")
    if storage.exists(done) and storage.read_bytes(done) == stamp:
        return
    log.info("publishing the tiny model to %s", uri)
    storage.remove_tree(uri)
    storage.upload_dir(local, uri)
    storage.write_bytes(done, stamp)


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(parts[0])


def summarize(stage: str, total: StageStats, ran: StageStats, n_tasks: int, n_skipped: int,
              wall_s: float) -> str:
    c = ran.counters
    q = ", ".join(f"{k}: {v}" for k, v in sorted(total.quarantined.items())) or "none"
    unit = "shards" if stage == "write" else "partitions"
    parts = [f"[{stage}] {unit} {n_tasks} ({n_skipped} already done)",
             f"rows in {total.rows_in} out {total.rows_out}",
             f"quarantined {sum(total.quarantined.values())} ({q})"]
    tokens = c.get("tokens_generated", 0)
    if tokens:
        parts.append(f"tokens generated {int(tokens)} ({tokens / max(wall_s, 1e-9):.0f} tok/s this run)")
    pairs = {k.removeprefix("pairs."): v for k, v in total.counters.items() if k.startswith("pairs.")}
    if pairs:
        parts.append("pairs " + ", ".join(f"{k}: {v}" for k, v in sorted(pairs.items())))
    parts.append(f"{ran.rows_in / max(wall_s, 1e-9):.1f} rows/s, {wall_s:.1f} s")
    return " | ".join(parts)


def run_pipeline(config: PipelineConfig, restart: bool = False) -> dict:
    """Run every enabled stage in order; returns the run report."""
    from pipeline.executors import make_executor
    from pipeline.report import write_report

    check_sources(config)
    check_storage(config)
    check_ray_address(config)
    ensure_model(config)
    check_model(config)
    if restart:
        storage.remove_tree(config.run.work_dir)
    executor = None
    timings: dict[str, float] = {}
    for stage in config.run.stages:
        t0 = time.perf_counter()
        out_dir = stage_dir(config, stage)
        invalidate_if_changed(out_dir, config.stage_hash(stage))
        if stage == "ingest":
            ran, n_tasks, n_skipped = run_ingest(config, out_dir)
        elif stage == "write":
            from stages.write import write_dataset

            ran = write_dataset(config, [stage_dir(config, s) for s in input_stages(config, "write")])
            n_tasks, n_skipped = int(ran.counters.get("shards", 0)), 0
        else:
            tasks = plan(config, stage, [stage_dir(config, s) for s in input_stages(config, stage)], out_dir)
            pending = [t for t in tasks if not completed(t)]
            n_tasks, n_skipped = len(tasks), len(tasks) - len(pending)
            if pending:
                executor = executor or make_executor(config)
                ran = executor.run(stage, pending)
            else:
                ran = StageStats()
        timings[stage] = time.perf_counter() - t0
        total = stage_totals(out_dir) if stage != "write" else ran
        echo(summarize(stage, total, ran, n_tasks, n_skipped, timings[stage]))
    return write_report(config, timings)


def run_stage(config: PipelineConfig, stage: str, input_path: str, output_dir: str) -> StageStats:
    """Run one stage alone on any Parquet input (a file or a folder of files)."""
    from pipeline.executors import make_executor

    if stage == "ingest":
        return run_ingest(config, output_dir)[0]
    if stage == "write":
        from stages.write import write_dataset
        return write_dataset(config, [input_path], output_dir=output_dir)
    if os.path.isdir(input_path) or "://" in input_path:
        data = storage.join(input_path, "data")
        files = storage.list_files(data if storage.exists(data) else input_path, ".parquet")
    else:
        files = [input_path]
    if not files:
        from pipeline.config import ConfigError
        raise ConfigError(f"--input: no .parquet files found at {input_path}")
    h = config.stage_hash(stage)
    invalidate_if_changed(output_dir, h)
    tasks = [Task(stage, os.path.basename(f)[: -len(".parquet")], (f,), output_dir, h) for f in files]
    pending = [t for t in tasks if not completed(t)]
    t0 = time.perf_counter()
    ran = make_executor(config).run(stage, pending) if pending else StageStats()
    echo(summarize(stage, stage_totals(output_dir), ran, len(tasks), len(tasks) - len(pending),
                   time.perf_counter() - t0))
    return ran
