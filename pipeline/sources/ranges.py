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


def plan_partitions(config: "PipelineConfig") -> list[tuple[str, tuple[str, ...]]]:
    """(partition name, task inputs) of every source, in source order.

    Names are ``part-<number>`` counted over all sources: they sort in file
    order and stay the same in every run of the same config (and downstream
    stages keep them)."""
    ranges = (r for src in config.sources for r in plan_ranges(src, config.run.partition_rows))
    return [(f"part-{k:05d}", (encode(r),)) for k, r in enumerate(ranges)]


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
