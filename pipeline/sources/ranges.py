"""Read ranges of the configured sources, planned on the driver without opening an image.

A range is one partition of the source stage.  It travels as a JSON string in
the partition task's ``inputs`` (so the marker records it) and a worker reads
it with ``read_range``.  Planning is deterministic: the same config and the
same source files give the same ranges, in the same order, under the same
names, so a rerun's markers match.  About ``rows`` rows per range; ranges never
cross files or sources.

* jsonl / mmpr: one streaming pass over the file's bytes, looking only for
  line ends (no JSON parsing), gives the byte offset and line number where
  each range starts.  A worker seeks there and reads the range's bytes alone.
  (Line numbers are needed: a row without an id is keyed by its line.)
* parquet: footers only (rows per file and row group); a range is a row slice
  of one file and reads only the row groups overlapping it.  Row groups much
  larger than ``rows`` are then decoded by several ranges: write sources with
  row groups of a few hundred rows (``datasets`` does).
* hf: the dataset's length (memory-mapped, or the prepared cache); a range is
  a row slice.
* image_folder: the sorted listing; a range is a slice of it (the worker lists
  the folder again: a listing is cheap next to reading the images).

``limit`` counts rows from the start of the source, as ``iter_source`` does.
"""
from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Iterator

from pipeline.sources import readers as sources
from pipeline.files import storage

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.settings import PipelineConfig, SourceConfig


def plan_ranges(src: "SourceConfig", rows: int) -> list[dict]:
    """The read ranges of one source (dicts; ``encode`` makes the task input)."""
    planner = {"jsonl": _jsonl_ranges, "mmpr": _jsonl_ranges, "parquet": _parquet_ranges}.get(
        src.format, _counted_ranges)
    return [{"source": src.name, **r} for r in planner(src, rows)]


#: ``run.partition_rows: auto``: partitions per worker, rows bounds (see auto_partition_rows)
AUTO_TASKS_PER_WORKER, AUTO_MIN_ROWS, AUTO_MAX_ROWS = 32, 1, 1024


def auto_partition_rows(total_rows: int, workers: int) -> int:
    """``run.partition_rows: auto``: rows = clamp(pow2ceil(ceil(R / (T * W))), 1, 1024).

    R = the sources' rows (after ``limit``), W = workers (``plan_workers``), T = 32 partitions
    per worker: enough for the tail to balance and for a retry or a resume to redo little, few
    enough that the ~17 ms each partition costs the framework (a task, its files, a marker)
    stays small.  A power of two, so a slightly longer source keeps its size.  At most 1024
    rows: one engine partition of ~1024 prompts x ~12 samples x 400 tokens at ~20k tokens/s
    is ~250 s, the longest piece of work a retry should repeat.  1k rows on 1 worker -> 32
    rows (32 partitions); 1M on 8 -> 1024 (977); 10M on 64 -> 1024 (9,766)."""
    want = max(1, -(-total_rows // (AUTO_TASKS_PER_WORKER * max(1, workers))))
    return max(AUTO_MIN_ROWS, min(AUTO_MAX_ROWS, 1 << (want - 1).bit_length()))


def plan_workers(config: "PipelineConfig") -> int:
    """The parallelism partitions are cut for: engine replicas or CPU partitions at once, the larger."""
    return max(config.engine.replicas, config.executor.cpu_concurrency)


def count_rows(src: "SourceConfig") -> int:
    """Rows of one source (after ``limit``) without parsing a row: the cost of planning it
    (a JSONL file's line ends, Parquet footers, a dataset's length, a folder listing)."""
    if src.format in ("jsonl", "mmpr"):
        n = 0
        with storage.open_input(src.path) as stream, io.BufferedReader(stream, 1 << 20) as f:
            for raw in f:
                n += bool(raw.strip())  # blank lines are no rows (the reader skips them)
                if src.limit is not None and n >= src.limit:
                    break
        return n
    if src.format == "parquet":
        import pyarrow.parquet as pq

        n = 0
        for path in sources.parquet_files(src):
            with storage.open_input_file(path) as f:
                n += pq.ParquetFile(f).metadata.num_rows
        return n if src.limit is None else min(n, src.limit)
    return sum(r["stop"] - r["start"] for r in _counted_ranges(src, 1 << 62))


def resolved_partition_rows(config: "PipelineConfig", rows: int | str | None = None) -> int:
    """``rows`` (default ``run.partition_rows``), with ``auto`` resolved from the sources and workers."""
    rows = config.run.partition_rows if rows is None else rows
    if rows != "auto":
        return int(rows)
    return auto_partition_rows(sum(count_rows(src) for src in config.sources), plan_workers(config))


class Planned(list):
    """A source stage's plan, ``[(name, inputs), ...]``, with the rows per partition it was cut at."""

    def __init__(self, items=(), rows: int | None = None) -> None:
        super().__init__(items)
        self.rows = rows


def plan_partitions(config: "PipelineConfig", rows: int | str | None = None) -> Planned:
    """(partition name, task inputs) of every source, in source order.

    Names are ``part-<number>`` counted over all sources: they sort in file
    order and stay the same in every run of the same config (and downstream
    stages keep them).  The partition size never changes the data (docs/architecture.md,
    "Partitions"), so it is outside the config and stage hashes."""
    rows = resolved_partition_rows(config, rows)
    ranges = (r for src in config.sources for r in plan_ranges(src, rows))
    planned = Planned(((f"part-{k:05d}", (encode(r),)) for k, r in enumerate(ranges)), rows)
    logging.getLogger("pipeline").info(
        "partitions: %d of at most %d rows (run.partition_rows: %s, %d worker(s))",
        len(planned), rows, config.run.partition_rows, plan_workers(config))
    return planned


def encode(rng: dict) -> str:
    return json.dumps(rng, sort_keys=True, separators=(",", ":"))


def decode(inputs: tuple[str, ...] | list[str]) -> dict:
    if len(inputs) != 1:
        raise ValueError(f"a source partition has one read range, got {len(inputs)} inputs")
    return json.loads(inputs[0])


def read_range(config: "PipelineConfig", rng: dict) -> Iterator[dict]:
    """The raw rows of one planned range (``pipeline.sources.readers`` row dicts), in file order."""
    src = config.source(rng["source"])
    if src.format in ("jsonl", "mmpr"):
        with storage.open_input_file(rng["path"]) as f:
            f.seek(rng["start"])
            data = f.read(rng["stop"] - rng["start"])
        yield from sources.jsonl_rows(src, enumerate(io.BytesIO(data), rng["line"]))
    elif src.format == "parquet":
        yield from sources.parquet_rows(src, rng["path"], rng["first"], rng["start"], rng["stop"])
    elif src.format == "hf":
        yield from sources.hf_rows(src, rng["start"], rng["stop"])
    elif src.format == "image_folder":
        yield from sources.image_folder_rows(src, rng["start"], rng["stop"])
    else:  # pragma: no cover -- the config's Literal rules it out
        raise ValueError(f"source {src.name}: no range reader for format {src.format!r}")


def _jsonl_ranges(src: "SourceConfig", rows: int) -> Iterator[dict]:
    limit = src.limit
    offset = start = line = n = total = 0
    with storage.open_input(src.path) as stream, io.BufferedReader(stream, 1 << 20) as f:
        for index, raw in enumerate(f):
            if n == 0:
                start, line = offset, index
            offset += len(raw)
            if raw.strip():  # blank lines are no rows (the reader skips them)
                n += 1
                total += 1
            if n == rows or (limit is not None and total >= limit):
                yield {"path": src.path, "start": start, "stop": offset, "line": line}
                n = 0
                if limit is not None and total >= limit:
                    return
    if n:
        yield {"path": src.path, "start": start, "stop": offset, "line": line}


def _parquet_ranges(src: "SourceConfig", rows: int) -> Iterator[dict]:
    import pyarrow.parquet as pq

    first = total = 0
    for path in sources.parquet_files(src):
        with storage.open_input_file(path) as f:
            in_file = pq.ParquetFile(f).metadata.num_rows
        n = in_file if src.limit is None else min(in_file, src.limit - total)
        for a in range(0, n, rows):
            yield {"path": path, "first": first, "start": a, "stop": min(a + rows, n)}
        first += in_file
        total += n
        if src.limit is not None and total >= src.limit:
            return


def _counted_ranges(src: "SourceConfig", rows: int) -> Iterator[dict]:
    if src.format == "hf":
        n = len(sources.hf_dataset(src))
    else:
        n = sum(1 for f in storage.walk_files(src.path) if f.lower().endswith(sources.IMAGE_EXTENSIONS))
    if src.limit is not None:
        n = min(n, src.limit)
    for a in range(0, n, rows):
        yield {"start": a, "stop": min(a + rows, n)}
