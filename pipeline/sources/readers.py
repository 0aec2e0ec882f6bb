"""Readers that turn every supported source into a stream of raw rows.

A raw row is ``{"source", "row_key", "position", "root", "where", "data", "error"}``
where ``data`` is the source's own dict and ``error`` a (reason, detail) pair
when the row could not even be read (bad UTF-8, bad JSON, a caption linked out
of the source's root, anything the reading raised).  ``position`` is the row's
place in the source (line number, row number, file number): it orders rows in
file order across read ranges.  ``where`` names it for people: ``<file> line
<n>`` (counted from 1, as editors do) for JSONL, ``<file> row <n>`` (counted
from 0, as Arrow and ``datasets`` index) for tables, the image's path for
image folders.  Validation is the ingest stage's job; readers only read,
lazily, so a source never has to fit in memory.  Each reader reads a whole
source or one planned range of it (``pipeline.sources.ranges``) through the
same code.

A reader never raises for one row: it is a generator, so an exception would
end the whole range -- and on Ray fail the partition on every retry and once
more in the driver's quarantine pass, which re-reads it.  Whatever reading one
row raises becomes that row's ``error`` instead (``_read_error``).

Paths may be local or URIs on any filesystem ``pipeline.files.storage`` reads
(``s3://bucket/prompts.jsonl``); relative image paths then resolve against the
same store.
"""
from __future__ import annotations

import io
import json
import os
import re
from typing import Callable, Iterable, Iterator

from pipeline.files import storage
from pipeline.config.settings import SourceConfig
from pipeline.files.image_refs import ImageError, allowed_roots, resolve_image_ref

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: rows converted from Arrow at once (Parquet batches, ``datasets`` slices)
BATCH_ROWS = 256
#: a JSON escape of a UTF-16 surrogate (paired ones are text, a lone one is not)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class UnreadableRow(ValueError):
    """A row a reader refuses; ``reason`` is its quarantine reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


#: specific reasons for what reading a row raises most; anything else is ``unreadable_row``
_READ_REASONS = ((json.JSONDecodeError, "invalid_json"), (UnicodeError, "invalid_utf8"))


def _read_error(e: Exception, where: str) -> tuple[str, str]:
    """The (reason, detail) of a row whose reading raised ``e``: the detail names the file
    and line or entry, so a user finds the row in a source of millions."""
    if isinstance(e, UnreadableRow):
        return e.reason, f"{where}: {e}"
    reason = next((r for kind, r in _READ_REASONS if isinstance(e, kind)), None)
    return (reason, f"{where}: {e}") if reason else ("unreadable_row", f"{where}: {type(e).__name__}: {e}")


def _row(src: SourceConfig, key: str, root: str | None, data=None, error=None, position: int = 0,
         where: str = "") -> dict:
    return {"source": src.name, "row_key": key, "position": position, "root": root, "where": where,
            "data": data, "error": error}


def _root(src: SourceConfig) -> str:
    if src.image_root:
        return src.image_root
    return src.path if storage.is_dir(src.path) else storage.parent(src.path)


def _key(src: SourceConfig, data: dict, index: int) -> str:
    """The row's stable key: its id field when it has one, else its position in the file."""
    value = data.get(src.fields.get("id", "id")) if isinstance(data, dict) else None
    return str(value) if value not in (None, "") else f"#{index}"


def _json_object(raw: bytes) -> dict:
    """One JSONL line as a dict, or the exception that says why not."""
    line = raw.decode("utf-8")
    data = json.loads(line)
    if not isinstance(data, dict):
        raise UnreadableRow("malformed_row", f"a JSON {type(data).__name__}, not an object")
    if _SURROGATE_ESCAPE.search(line):  # Python's json decodes a lone \ud800 into a str no file can hold
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise UnreadableRow("invalid_utf8", f"\\u{ord(e.object[e.start]):04x} is half of a UTF-16 "
                                                "surrogate pair, not a character") from None
    return data


def jsonl_rows(src: SourceConfig, lines: Iterable[tuple[int, bytes]]) -> Iterator[dict]:
    """Raw rows of (line number, line bytes) pairs; blank lines are skipped."""
    root = _root(src)
    for index, raw in lines:
        if not raw.strip():
            continue
        where = f"{src.path} line {index + 1}"
        try:
            data = _json_object(raw)
        except Exception as e:  # noqa: BLE001 -- one line's problem (even a RecursionError) is that row's
            yield _row(src, f"#{index}", root, error=_read_error(e, where), position=index, where=where)
            continue
        yield _row(src, _key(src, data, index), root, data, position=index, where=where)


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
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups):
            for data in _each_row(batch.num_rows, batch.to_pylist, lambda i: batch.slice(i, 1).to_pylist()[0]):
                if at >= stop:
                    return
                if at >= start:
                    yield _table_row(src, root, data, first + at, f"{path} row {at}")
                at += 1


def _each_row(n: int, all_rows: Callable[[], list], one_row: Callable[[int], dict]) -> list:
    """``all_rows()``, or when converting them raises, each of the ``n`` rows alone, a row
    that raises standing as its exception: one value Python cannot hold (a timestamp past
    year 9999) fails its own row, not its batch."""
    try:
        return all_rows()
    except Exception:  # noqa: BLE001 -- found row by row below
        out = []
        for i in range(n):
            try:
                out.append(one_row(i))
            except Exception as e:  # noqa: BLE001 -- that row's problem alone
                out.append(e)
        return out


def _table_row(src: SourceConfig, root: str | None, data: dict | Exception, position: int, where: str) -> dict:
    """The raw row of one Parquet or ``datasets`` row (``data`` may be what converting it raised)."""
    if isinstance(data, Exception):
        return _row(src, f"#{position}", root, error=_read_error(data, where), position=position, where=where)
    return _row(src, _key(src, data, position), root, data, position=position, where=where)


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
    """Rows ``start:stop`` of the dataset, converted a slice at a time (``_each_row``)."""
    ds = hf_dataset(src)
    stop = len(ds) if stop is None else min(stop, len(ds))
    root = src.image_root or (src.path if os.path.isdir(src.path) else None)
    for a in range(start, stop, BATCH_ROWS):
        b = min(a + BATCH_ROWS, stop)
        rows = _each_row(b - a, lambda: list(ds.select(range(a, b))), lambda i: ds[a + i])
        for index, data in enumerate(rows, a):
            yield _table_row(src, root, data, index, f"{src.path} row {index}")


def read_hf(src: SourceConfig) -> Iterator[dict]:
    yield from hf_rows(src)


def _caption(root: str, roots: tuple[str, ...], rel: str) -> str:
    """The text of the caption ``rel``, read only if it lies under the source's ``roots``, the
    check every image passes: a caption linked to ``/etc/passwd`` would otherwise end up
    in ``facts``, the exports and the HTML report."""
    try:
        path = resolve_image_ref(rel, root, roots)
    except ImageError:
        raise UnreadableRow("caption_path_escapes_root",
                            "resolves outside the source's root and allowed_image_roots; not read") from None
    return storage.read_bytes(path).decode("utf-8").strip()


def image_folder_rows(src: SourceConfig, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """One row per image file (sorted listing), files ``start:stop``; a ``.txt`` beside one is its facts."""
    root = src.path
    files = storage.walk_files(root)
    present = set(files)
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    roots = allowed_roots(root, src.allowed_image_roots)  # where its images may come from, too
    for index, rel in enumerate(images[start:stop], start):
        where = storage.join(root, rel)
        caption = os.path.splitext(rel)[0] + ".txt"
        try:
            facts = _caption(root, roots, caption) if caption in present else None
        except Exception as e:  # noqa: BLE001 -- one caption's problem is its image's row alone
            yield _row(src, rel, root, error=_read_error(e, storage.join(root, caption)), position=index,
                       where=where)
            continue
        data = {"id": rel, "image": rel, "question": src.default_question, "facts": facts}
        yield _row(src, rel, root, data, position=index, where=where)


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
