"""Parquet encoding of a shard: deterministic bytes, each distinct image about once per row group."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: target uncompressed size of one Parquet row group in a shard (a prompt's image counted once)
ROW_GROUP_BYTES = 64 << 20
#: a dictionary page may hold every distinct image of a row group; past this the column
#: chunk falls back to plain encoding (still correct, no longer compact)
DICTIONARY_PAGE_BYTES = 4 * ROW_GROUP_BYTES


def _row_group_rows(table: pa.Table) -> int:
    if table.num_rows == 0:
        return 1
    per_row = max(1, table.nbytes // table.num_rows)
    return int(max(1, min(table.num_rows, ROW_GROUP_BYTES // per_row)))


_IMAGE_BYTES_SUFFIX = ".element.bytes"  # leaf path of the bytes in a list<struct<bytes, path>> image column
_COMPRESSED_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF")  # JPEG, PNG, GIF, WebP
_leaf_paths: dict[str, list[str]] = {}


def _parquet_leaf_paths(schema: pa.Schema) -> list[str]:
    key = schema.remove_metadata().to_string()
    if key not in _leaf_paths:
        sink = pa.BufferOutputStream()
        pq.write_table(schema.empty_table(), sink)
        ps = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
        _leaf_paths[key] = [ps.column(i).path for i in range(len(ps))]
    return _leaf_paths[key]


def _images_precompressed(table: pa.Table, columns: list[str]) -> bool:
    """Every image is JPEG/PNG/GIF/WebP: zstd would only spend time on them."""
    for name in columns:
        flat = pc.list_flatten(table.column(name))
        heads = pc.unique(pc.binary_slice(pc.struct_field(flat, "bytes"), 0, 4)).to_pylist()
        if any(h is not None and not h.startswith(_COMPRESSED_IMAGE_MAGIC) for h in heads):
            return False
    return True


def parquet_bytes(table: pa.Table, row_groups: list[int] | None = None, dictionary_images: bool = True) -> pa.Buffer:
    """A Parquet file in memory: zstd, no timestamps (the same rows always give the same bytes).

    ``row_groups``: the rows of each row group in order (``publish.shard_order``
    packs a prompt's pairs into one); default: row groups of about ``ROW_GROUP_BYTES``.
    Image bytes are dictionary-encoded with a raised dictionary page limit, so
    a row group holding a prompt's 15 pairs stores its image once (readers get
    the plain bytes back); ``dictionary_images=False`` (one pair per prompt:
    nothing repeats) saves the dictionary's time and memory.  Images are not
    recompressed when they are all JPEG/PNG/GIF/WebP (zstd gains ~1% on them
    at 3x the write time).
    """
    if row_groups is None:
        step = _row_group_rows(table)
        row_groups = [min(step, table.num_rows - lo) for lo in range(0, table.num_rows, step)] or [0]
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **_writer_options(table, dictionary_images)) as writer:
        lo = 0
        for rows in row_groups:
            writer.write_table(table.slice(lo, rows), row_group_size=max(rows, 1))
            lo += rows
    return sink.getvalue()


def _writer_options(table: pa.Table, dictionary_images: bool) -> dict:
    """The ParquetWriter settings of ``parquet_bytes`` for rows like ``table``'s."""
    paths = _parquet_leaf_paths(table.schema)
    image_paths = {p for p in paths if p.endswith(_IMAGE_BYTES_SUFFIX) and p.split(".")[0] in table.column_names}
    image_columns = sorted({p.split(".")[0] for p in image_paths})
    compress_images = not _images_precompressed(table, image_columns)
    return {"use_dictionary": True if dictionary_images else [p for p in paths if p not in image_paths],
            "dictionary_pagesize_limit": DICTIONARY_PAGE_BYTES,
            "compression": {p: "zstd" if compress_images or p not in image_paths else "none" for p in paths}}


class ParquetStream:
    """``parquet_bytes``'s file written a table at a time into ``where`` (a local path), so a file
    larger than memory is never whole in it: the rows wait until about ``ROW_GROUP_BYTES`` have
    come, then go out as row groups of ``parquet_bytes``'s size.  Output under ``ROW_GROUP_BYTES``
    is one row group with ``parquet_bytes``' settings, so its bytes are ``parquet_bytes``'s of the
    whole table; a larger file holds the same rows in the same order, its row groups sized from the
    rows buffered so far, and whether images are compressed is decided by the first row group's."""

    def __init__(self, where: str, schema: pa.Schema, dictionary_images: bool = True) -> None:
        self.where, self.schema, self.dictionary_images = where, schema, dictionary_images
        self.pending: list[pa.Table] = []
        self.pending_bytes = 0
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self.pending_bytes >= ROW_GROUP_BYTES:
            self._flush(last=False)

    def _flush(self, last: bool) -> None:
        # the batches' chunks as they are (no copy): the writer's pages do not depend on them
        table = pa.concat_tables(self.pending) if self.pending else self.schema.empty_table()
        self.pending = []
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.where, self.schema, **_writer_options(table, self.dictionary_images))
        step, lo = _row_group_rows(table), 0
        while table.num_rows - lo >= step or (last and lo < table.num_rows):
            rows = min(step, table.num_rows - lo)
            self.writer.write_table(table.slice(lo, rows), row_group_size=rows)
            lo += rows
        if last and table.num_rows == 0:  # no rows: one empty row group, as parquet_bytes writes
            self.writer.write_table(table, row_group_size=1)
        rest = table.slice(lo)
        self.pending = [rest] if rest.num_rows else []
        self.pending_bytes = rest.nbytes if rest.num_rows else 0

    def close(self) -> None:
        """Write the rows still waiting and the footer."""
        self._flush(last=True)
        self.writer.close()

    def abort(self) -> None:
        """Stop without writing the rest (the caller removes the file)."""
        if self.writer is not None:
            self.writer.close()
