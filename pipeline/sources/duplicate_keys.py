"""Duplicate row keys across read ranges, found from small key files instead of the rows.

Within a source, the first row with a given ``row_key`` (in file order) is
kept and every later one is a duplicate.  Rows are read in ranges by
different workers, so no reader sees the whole source.  The rule is kept in
two steps:

1. Each range marks the repeats *inside* itself while it reads, and writes
   the ``(row_key, position)`` of every row it could read to a key file
   (``side/keys/<partition>.parquet``): tens of bytes a row, no images.
2. Once every range of a source is done, ``cross_range_duplicates`` reads the
   source's key files (two columns, one source at a time, in Arrow) and
   finds the rows that are the first of their key in their range but not in
   the source: an earlier range holds the key.  Those ranges run again with
   these positions marked as duplicates (``source_ranges`` ``dups``), so their
   outputs, quarantine rows and counters come from the ordinary code path,
   exactly as if one reader had seen the whole source.

Real sources rarely repeat an id across far-apart lines, so step 2 usually
finds nothing and redoes nothing.  Its memory is the keys of one source, not
its rows (a few hundred MB for ten million keys).
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.files import storage

KEYS_SCHEMA = pa.schema([("row_key", pa.string()), ("position", pa.int64())])
SIDE = "keys"


def keys_uri(out_dir: str, partition: str) -> str:
    return storage.join(out_dir, "side", SIDE, f"{partition}.parquet")


def cross_range_duplicates(out_dir: str, partitions: list[tuple[str, str]]) -> dict[str, list[int]]:
    """Partition name -> positions of its rows whose key an earlier range of the same source holds.

    ``partitions``: (name, source) of every range, in plan (file) order."""
    by_source: dict[str, list[str]] = {}
    for name, source in partitions:
        by_source.setdefault(source, []).append(name)
    found: dict[str, list[int]] = {}
    for names in by_source.values():
        if len(names) < 2:
            continue
        tables = []
        for rng, name in enumerate(names):
            uri = keys_uri(out_dir, name)
            if storage.exists(uri):
                t = storage.read_table(uri).select(["row_key", "position"])
                tables.append(t.append_column("range", pa.array([rng] * t.num_rows, pa.int32())))
        if not tables:
            continue
        keys = pa.concat_tables(tables)
        first = _min_position(keys, ["row_key"], "first")
        local = _min_position(keys, ["row_key", "range"], "local_first")
        late = local.join(first, "row_key")
        late = late.filter(pc.not_equal(late["local_first"], late["first"]))
        for rng, pos in sorted(zip(late["range"].to_pylist(), late["local_first"].to_pylist())):
            found.setdefault(names[rng], []).append(pos)
    return found


def _min_position(keys: pa.Table, by: list[str], name: str) -> pa.Table:
    """The smallest ``position`` per group of ``by``, as column ``name``."""
    t = keys.group_by(by).aggregate([("position", "min")])
    return t.rename_columns([name if c == "position_min" else c for c in t.column_names])
