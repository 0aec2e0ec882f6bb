"""How compact a dataset folder's shards are: their size against "each distinct image once
plus the text columns" (the floor any layout that keeps every column can reach)."""
from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

IMAGE_COLUMNS = ("images", "rejected_images")


def compactness(files: list[str]) -> dict:
    """``data_bytes``: the shards on disk; ``floor_bytes``: every distinct image's bytes
    once (by SHA-256) plus the other columns as zstd Parquet; ``ratio``: the two divided."""
    seen: set[bytes] = set()
    image_bytes = text_bytes = 0
    for f in files:
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups):
            table = pf.read_row_group(rg)
            for name in IMAGE_COLUMNS:
                flat = pc.list_flatten(table.column(name))
                for b in pc.struct_field(flat, "bytes").to_pylist() if len(flat) else []:
                    if b and (h := hashlib.sha256(b).digest()) not in seen:
                        seen.add(h)
                        image_bytes += len(b)
            sink = pa.BufferOutputStream()
            pq.write_table(table.drop_columns(list(IMAGE_COLUMNS)), sink, compression="zstd")
            text_bytes += sink.getvalue().size
    data = sum(os.path.getsize(f) for f in files)
    floor = image_bytes + text_bytes
    return {"data_bytes": data, "distinct_image_bytes": image_bytes, "text_bytes": text_bytes,
            "floor_bytes": floor, "ratio": data / floor if floor else None}
