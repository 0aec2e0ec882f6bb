"""Parquet encoding of a shard: deterministic bytes, images stored as they are."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: target uncompressed size of one Parquet row group in a shard
ROW_GROUP_BYTES = 64 << 20


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


def parquet_bytes(table: pa.Table) -> pa.Buffer:
    """A Parquet file in memory: zstd, no timestamps (the same rows always give the same bytes).

    Image bytes are neither dictionary-encoded (images barely repeat inside a shuffled shard, and
    trying costs time and a dictionary page as large as a thousand images) nor recompressed when
    they are all JPEG/PNG/GIF/WebP (zstd gains ~1% on them at 3x the write time).
    """
    paths = _parquet_leaf_paths(table.schema)
    image_paths = {p for p in paths if p.endswith(_IMAGE_BYTES_SUFFIX) and p.split(".")[0] in table.column_names}
    image_columns = sorted({p.split(".")[0] for p in image_paths})
    compress_images = not _images_precompressed(table, image_columns)
    sink = pa.BufferOutputStream()
    pq.write_table(
        table, sink, row_group_size=_row_group_rows(table),
        compression={p: "zstd" if compress_images or p not in image_paths else "none" for p in paths},
        use_dictionary=[p for p in paths if p not in image_paths],
    )
    return sink.getvalue()
