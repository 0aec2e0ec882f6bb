"""Readers that turn every supported source into a stream of raw rows.

A raw row is ``{"source", "row_key", "position", "root", "data", "error"}``
where ``data`` is the source's own dict and ``error`` a (reason, detail) pair
when the row could not even be read (bad UTF-8, bad JSON).  ``position`` is
the row's place in the source (line number, row number, file number): it
orders rows in file order across read ranges.  Validation is the ingest
stage's job; readers only read, lazily, so a source never has to fit in
memory.  Each reader reads a whole source or one planned range of it
(``pipeline.source_ranges``) through the same code.

Paths may be local or URIs on any filesystem ``pipeline.storage`` reads
(``s3://bucket/prompts.jsonl``); relative image paths then resolve against the
same store.
"""
from __future__ import annotations

import io
import json
import os
from typing import Iterable, Iterator

from pipeline import storage
from pipeline.config import SourceConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _row(src: SourceConfig, key: str, root: str | None, data=None, error=None, position: int = 0) -> dict:
    return {"source": src.name, "row_key": key, "position": position, "root": root, "data": data, "error": error}


def _root(src: SourceConfig) -> str:
    if src.image_root:
        return src.image_root
    return src.path if storage.is_dir(src.path) else storage.parent(src.path)


def _key(src: SourceConfig, data: dict, index: int) -> str:
    """The row's stable key: its id field when it has one, else its position in the file."""
    value = data.get(src.fields.get("id", "id")) if isinstance(data, dict) else None
    return str(value) if value not in (None, "") else f"#{index}"


def jsonl_rows(src: SourceConfig, lines: Iterable[tuple[int, bytes]]) -> Iterator[dict]:
    """Raw rows of (line number, line bytes) pairs; blank lines are skipped."""
    root = _root(src)
    for index, raw in lines:
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield _row(src, f"#{index}", root, error=("invalid_utf8", str(e)), position=index)
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            yield _row(src, f"#{index}", root, error=("invalid_json", str(e)), position=index)
            continue
        if not isinstance(data, dict):
            yield _row(src, f"#{index}", root, error=("malformed_row", f"a JSON {type(data).__name__}, not an object"),
                       position=index)
            continue
        yield _row(src, _key(src, data, index), root, data, position=index)


def read_jsonl(src: SourceConfig) -> Iterator[dict]:
    with storage.open_input(src.path) as stream, io.BufferedReader(stream) as f:
        yield from jsonl_rows(src, enumerate(f))


def parquet_files(src: SourceConfig) -> list[str]:
    return storage.list_files(src.path, ".parquet") if storage.is_dir(src.path) else [src.path]


def parquet_rows(src: SourceConfig, path: str, first: int, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Rows ``start:stop`` of one Parquet file whose row 0 is the source's row ``first``;
    only the row groups overlapping the slice are read."""
    import pyarrow.parquet as pq

    root = _root(src)
    with storage.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        stop = pf.metadata.num_rows if stop is None else stop
        groups, offsets, at = [], [], 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if at < stop and at + n > start:
                groups.append(g)
                offsets.append(at)
            at += n
        if not groups:
            return
        at = offsets[0]
        for batch in pf.iter_batches(batch_size=256, row_groups=groups):
            for data in batch.to_pylist():
                if at >= stop:
                    return
                if at >= start:
                    yield _row(src, _key(src, data, first + at), root, data, position=first + at)
                at += 1


def read_parquet(src: SourceConfig) -> Iterator[dict]:
    import pyarrow.parquet as pq

    first = 0
    for path in parquet_files(src):
        yield from parquet_rows(src, path, first)
        with storage.open_input_file(path) as f:
            first += pq.ParquetFile(f).metadata.num_rows


def hf_dataset(src: SourceConfig):
    """The source as a ``datasets.Dataset`` (memory-mapped) with image columns left encoded."""
    import datasets

    if os.path.isdir(src.path) and os.path.exists(os.path.join(src.path, "dataset_info.json")):
        ds = datasets.load_from_disk(src.path)
    elif os.path.isdir(src.path) and os.path.exists(os.path.join(src.path, "state.json")):
        ds = datasets.load_from_disk(src.path)
    else:
        ds = datasets.load_dataset(src.path, split=src.split)
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[src.split]
    for col, feat in ds.features.items():  # keep encoded bytes: ingest validates them itself
        if isinstance(feat, datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds


def hf_rows(src: SourceConfig, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    ds = hf_dataset(src)
    stop = len(ds) if stop is None else min(stop, len(ds))
    root = src.image_root or (src.path if os.path.isdir(src.path) else None)
    for index, data in enumerate(ds.select(range(start, stop)) if (start, stop) != (0, len(ds)) else ds, start):
        yield _row(src, _key(src, data, index), root, data, position=index)


def read_hf(src: SourceConfig) -> Iterator[dict]:
    yield from hf_rows(src)


def image_folder_rows(src: SourceConfig, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """One row per image file (sorted listing), files ``start:stop``; a ``.txt`` beside one is its facts."""
    root = src.path
    files = storage.walk_files(root)
    present = set(files)
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    for index, rel in enumerate(images[start:stop], start):
        caption = os.path.splitext(rel)[0] + ".txt"
        facts = (storage.read_bytes(storage.join(root, caption)).decode("utf-8").strip()
                 if caption in present else None)
        data = {"id": rel, "image": rel, "question": src.default_question, "facts": facts}
        yield _row(src, rel, root, data, position=index)


def read_image_folder(src: SourceConfig) -> Iterator[dict]:
    yield from image_folder_rows(src)


READERS = {"jsonl": read_jsonl, "mmpr": read_jsonl, "parquet": read_parquet,
           "hf": read_hf, "image_folder": read_image_folder}


def iter_source(src: SourceConfig) -> Iterator[dict]:
    n = 0
    for row in READERS[src.format](src):
        if src.limit is not None and n >= src.limit:
            return
        n += 1
        yield row
