"""Paths that may be local folders or remote object stores.

Everything the runner writes goes through here, via ``pyarrow.fs`` (local,
S3, GCS, HDFS; any fsspec filesystem through ``PyFileSystem``), so the same
code writes to a laptop folder or to ``s3://bucket/run``.  Writes are atomic
where the filesystem allows it: a temp name then a rename on local disks; on
object stores a single PUT is already all-or-nothing.
"""
from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def _atomic_write(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if _is_local(fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)  # atomic on POSIX
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def write_bytes(uri: str, data: bytes) -> None:
    _atomic_write(uri, data)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_json(uri: str, obj: Any) -> None:
    _atomic_write(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_table(uri: str, table: pa.Table, row_group_size: int | None = None) -> None:
    """Write a Parquet file atomically (never a half-written file under its final name)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=row_group_size)
    _atomic_write(uri, buf.getvalue())


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def parquet_num_rows(uri: str) -> int:
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Sorted files directly under ``uri`` (not recursive); [] when it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return [join(uri, n) for n in names if n.endswith(suffix) and ".tmp-" not in n]


def remove_tree(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
