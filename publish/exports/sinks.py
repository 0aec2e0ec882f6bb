"""The files an export writes bit by bit (JSON lines, streamed Parquet): under a temp name until
closed, so a failed export leaves no half-written file under a final name, and never whole in memory.
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.files import storage
from publish.parquet import ParquetStream


class _Staged:
    """A file written bit by bit under a temp name, under its final name only when closed (a
    remote one is written locally, then uploaded in chunks), so no export file is whole in memory."""

    suffix = ""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        fs, path = storage.resolve(uri)
        self.local = isinstance(fs, pafs.LocalFileSystem)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.final = path
            self.tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        else:
            fd, self.tmp = tempfile.mkstemp(suffix=self.suffix)
            os.close(fd)

    def _commit(self) -> None:
        if self.local:
            os.replace(self.tmp, self.final)
        else:
            storage.upload_file(self.tmp, self.uri)
            os.remove(self.tmp)

    def _remove(self) -> None:
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


class Sink(_Staged):
    """A text file written line by line."""

    suffix = ".jsonl"

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.f = open(self.tmp, "w", encoding="utf-8")
        self.lines = 0

    def write_json(self, obj: Any) -> None:
        self.f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.lines += 1

    def close(self) -> None:
        self.f.close()
        self._commit()

    def discard(self) -> None:
        self.f.close()
        self._remove()


class ParquetSink(_Staged):
    """A Parquet file written a table at a time (``publish.parquet.ParquetStream``: the bytes of
    ``parquet_bytes`` of the whole table while it is under a row group)."""

    suffix = ".parquet"

    def __init__(self, uri: str, schema: pa.Schema) -> None:
        super().__init__(uri)
        self.stream = ParquetStream(self.tmp, schema)

    def write(self, table: pa.Table) -> None:
        self.stream.write(table)

    def close(self) -> None:
        self.stream.close()
        self._commit()

    def discard(self) -> None:
        self.stream.abort()
        self._remove()
