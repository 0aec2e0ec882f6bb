"""Readers that turn every supported source into a stream of raw rows.

A raw row is ``{"source", "row_key", "root", "data"}`` where ``data`` is the
source's own dict, or ``{"error": (reason, detail)}`` when the row could not
even be read (bad UTF-8, bad JSON).  Validation is the ingest stage's job;
readers only read, lazily, so a source never has to fit in memory.

Paths may be local or URIs on any filesystem ``pipeline.storage`` reads
(``s3://bucket/prompts.jsonl``); relative image paths then resolve against the
same store.
"""
from __future__ import annotations

import io
import json
import os
from typing import Iterator

from pipeline import storage
from pipeline.config import SourceConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _row(src: SourceConfig, key: str, root: str | None, data=None, error=None) -> dict:
    return {"source": src.name, "row_key": key, "root": root, "data": data, "error": error}


def _root(src: SourceConfig) -> str:
    if src.image_root:
        return src.image_root
    return src.path if storage.is_dir(src.path) else storage.parent(src.path)


def _key(src: SourceConfig, data: dict, index: int) -> str:
    """The row's stable key: its id field when it has one, else its position in the file."""
    value = data.get(src.fields.get("id", "id")) if isinstance(data, dict) else None
    return str(value) if value not in (None, "") else f"#{index}"


def read_jsonl(src: SourceConfig) -> Iterator[dict]:
    root = _root(src)
    with storage.open_input(src.path) as stream, io.BufferedReader(stream) as f:
        for index, raw in enumerate(f):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield _row(src, f"#{index}", root, error=("invalid_utf8", str(e)))
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                yield _row(src, f"#{index}", root, error=("invalid_json", str(e)))
                continue
            if not isinstance(data, dict):
                yield _row(src, f"#{index}", root, error=("malformed_row", f"a JSON {type(data).__name__}, not an object"))
                continue
            yield _row(src, _key(src, data, index), root, data)


def read_parquet(src: SourceConfig) -> Iterator[dict]:
    import pyarrow.parquet as pq

    root = _root(src)
    files = storage.list_files(src.path, ".parquet") if storage.is_dir(src.path) else [src.path]
    index = 0
    for path in files:
        with storage.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
                for data in batch.to_pylist():
                    yield _row(src, _key(src, data, index), root, data)
                    index += 1


def read_hf(src: SourceConfig) -> Iterator[dict]:
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
    root = src.image_root or (src.path if os.path.isdir(src.path) else None)
    for index, data in enumerate(ds):
        yield _row(src, _key(src, data, index), root, data)


def read_image_folder(src: SourceConfig) -> Iterator[dict]:
    root = src.path
    files = storage.walk_files(root)
    present = set(files)
    for rel in (f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)):
        caption = os.path.splitext(rel)[0] + ".txt"
        facts = (storage.read_bytes(storage.join(root, caption)).decode("utf-8").strip()
                 if caption in present else None)
        data = {"id": rel, "image": rel, "question": src.default_question, "facts": facts}
        yield _row(src, rel, root, data)


READERS = {"jsonl": read_jsonl, "mmpr": read_jsonl, "parquet": read_parquet,
           "hf": read_hf, "image_folder": read_image_folder}


def iter_source(src: SourceConfig) -> Iterator[dict]:
    n = 0
    for row in READERS[src.format](src):
        if src.limit is not None and n >= src.limit:
            return
        n += 1
        yield row
