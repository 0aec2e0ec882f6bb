"""Paths that may be local folders or remote object stores.

Everything the pipeline reads and writes goes through here, via ``pyarrow.fs``
(local, S3, GCS, HDFS), so the same code reads sources from and writes to a
laptop folder, a shared NFS mount or ``s3://bucket/run``.  S3 settings come
from the usual AWS environment (``AWS_ENDPOINT_URL`` for MinIO or any
S3-compatible server, ``AWS_REGION``, credentials), on the driver and on
every worker node.

Writes are atomic where the filesystem allows it: a temp name then a rename on
local disks; on object stores, where there is no rename, a single PUT is
already all-or-nothing, and completeness is published by writing a marker
*after* the data (stage markers, the dataset's ``manifest.json``): readers
trust only what a marker names.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import urllib.parse
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` paths (object stores, HDFS, file://)."""
    return "://" in path


@functools.lru_cache(maxsize=64)
def _filesystem(bucket_uri: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(bucket_uri)[0]


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path on it.  One filesystem object per S3/GCS
    bucket is made and reused: building a client costs a round trip, and a run
    touches thousands of paths."""
    if not is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("s3", "gs", "gcs") and parts.netloc and not parts.query:
        fs = _filesystem(f"{parts.scheme}://{parts.netloc}")
        key = parts.path.strip("/")
        return fs, f"{parts.netloc}/{key}" if key else parts.netloc
    return pafs.FileSystem.from_uri(uri)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _atomic_write(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` whole or not at all.

    A failed write (a full disk, a read-only folder, a quota) raises ``OSError`` naming
    ``uri``: pyarrow's own message names no file ("Error writing bytes to file").  A local
    write's temp file is removed on any failure, an interruption included, so a full disk
    is not left fuller and nothing half-written stays behind."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if _is_local(fs) else None
    try:
        fs.create_dir(parent, recursive=True)
        if tmp is None:
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            os.replace(tmp, path)  # atomic on POSIX
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    except OSError as e:
        raise _naming(e, uri) from e


def _naming(e: OSError, uri: str) -> OSError:
    """``e`` as an error that names ``uri``: the same errno (so the same subclass:
    ``PermissionError``...), and the errno's text rather than pyarrow's wording around it;
    an error without errno (an object store's) keeps its own text."""
    if e.errno:
        return OSError(e.errno, f"cannot write {uri}: {os.strerror(e.errno)}")
    return OSError(f"cannot write {uri}: {e}")


def write_bytes(uri: str, data: bytes) -> None:
    _atomic_write(uri, data)


def open_input(uri: str):
    """A readable binary stream (a context manager), local or remote."""
    fs, path = resolve(uri)
    return fs.open_input_stream(path)


def open_input_file(uri: str):
    """A seekable binary file (for Parquet footers), local or remote."""
    fs, path = resolve(uri)
    return fs.open_input_file(path)


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def is_file(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def parent(uri: str) -> str:
    """The folder holding ``uri`` (an absolute path for local files)."""
    if not is_uri(uri):
        return os.path.dirname(os.path.abspath(uri))
    return uri.rstrip("/").rsplit("/", 1)[0]


def _walk(uri: str) -> tuple[pafs.FileSystem, list[tuple[str, pafs.FileInfo]]]:
    """The filesystem and (path relative to ``uri``, info) of every file under it, sorted."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return fs, []
    base = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return fs, sorted((i.path[len(base):], i) for i in infos if i.type == pafs.FileType.File)


def walk_files(uri: str) -> list[str]:
    """Every file under ``uri``, recursively, as paths relative to it, sorted."""
    return [rel for rel, _ in _walk(uri)[1]]


def localize_dir(uri: str, cache_root: str | None = None) -> str:
    """A local copy of a remote folder (a model on ``s3://``), made once per node.

    vLLM loads weights from a local folder or a hub id, so a worker node that
    is given ``s3://bucket/models/x`` copies it to ``cache_root`` first.  The
    copy lands under a temp name and is renamed into place when complete, so
    concurrent workers on one node never load a half-copied model; a complete
    copy is reused.  Local paths are returned unchanged.
    """
    if not is_uri(uri):
        return uri
    cache_root = cache_root or os.environ.get(
        "MMPR_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "mmpr-forge"))
    fs, files = _walk(uri)
    if not files:
        raise FileNotFoundError(f"{uri} is not a folder or is empty")
    # the copy is keyed on the folder's listing: a changed model is a new copy
    listing = [(rel, i.size, i.mtime_ns) for rel, i in files]
    key = hashlib.sha256(json.dumps([uri.rstrip("/"), listing]).encode()).hexdigest()[:16]
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "model"
    final = os.path.join(cache_root, "models", f"{name}-{key}")
    if os.path.isdir(final):
        return final
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    for rel, info in files:
        dst = os.path.join(tmp, *rel.split("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(dst, "wb") as out:
            while chunk := src.read(1 << 24):
                out.write(chunk)
    try:
        os.rename(tmp, final)
    except OSError:  # another worker finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def upload_file(local: str, uri: str) -> None:
    """Copy one local file to ``uri`` in chunks (a file larger than memory is never whole in it)."""
    fs, path = resolve(uri)
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with open(local, "rb") as src, fs.open_output_stream(path) as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    except OSError as e:
        raise _naming(e, uri) from e


def upload_dir(local: str, uri: str) -> None:
    """Copy a local folder to ``uri`` (file by file, each write atomic)."""
    for dirpath, _, names in os.walk(local):
        for n in sorted(names):
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, local).replace(os.sep, "/")
            with open(full, "rb") as f:
                write_bytes(join(uri, rel), f.read())


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


def parquet_file(uri: str) -> pq.ParquetFile:
    """A Parquet file opened for reading (footer first, row groups on demand)."""
    fs, path = resolve(uri)
    return pq.ParquetFile(fs.open_input_file(path))


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Sorted files directly under ``uri`` (not recursive); [] when it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return [join(uri, n) for n in names if n.endswith(suffix) and ".tmp-" not in n]


def remove(uri: str) -> None:
    """Delete one file; a missing file is not an error."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def remove_tree(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
