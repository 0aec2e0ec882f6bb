"""Benchmark: the write stage (global shuffle + dedup + shards + manifest + card) on image rows.

    python bench/bench_write.py [--rows 100000] [--quick] [--shard-rows 5000] [--keep DIR]

Input: ``--rows`` pair rows (default 100,000; ``MMPR_BENCH_WRITE_ROWS`` also
sets it, ``--quick`` uses 10,000), each with one 448x448 JPEG (quality 85, a
photo-like image, ~40 KB), in PAIR_SCHEMA Parquet part files of 2,048 rows
spread over three stage folders the way the pair stages write them, sorted by
source, with 0.5% duplicated ids.  Every row's JPEG is distinct (spliced from
restart-marker segments of 1,024 encoded images, see ``JpegMixer``), so image
bytes never repeat and compress like real photos.

Measured, each in its own subprocess (so ``ru_maxrss`` is that step's peak):

* ``write``: ``stages.write.write_dataset`` -- plan, scatter to buckets,
  gather + sort per shard, zstd Parquet shards with SHA-256, manifest, card.
* ``baseline``: the floor for moving the same bytes -- read the same input
  files and write them with ``pyarrow.parquet.ParquetWriter`` (zstd, same
  rows, input order) into one file, batch by batch.  Writing all rows "in one
  go" with ``pq.write_table`` would need the whole dataset (GBs of JPEG bytes)
  in memory, so the baseline streams; no shuffle, no dedup, no split.

Reported: rows/s and MB/s (input Parquet bytes per second) of both, their
ratio, and peak memory.  The design target is "shard writing is never the
bottleneck": generation makes a few pairs per second per GPU, so thousands of
rows per second on two cores is far more than enough.  The default run takes
~2-3 minutes on 2 cores (most of it moving ~4 GB of JPEG bytes three times).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PART_ROWS = 2048
POOL = 1024
DUP_FRACTION = 0.005


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- input ------------------------------------------------------------------------
def jpeg_pool(n: int, size: int = 448, quality: int = 85) -> list[bytes]:
    """``n`` distinct photo-like JPEGs with a restart marker after every MCU row (same tables)."""
    import io

    import numpy as np
    from PIL import Image

    from bench_crop import natural_image

    bases = [np.asarray(natural_image(size, size, seed=s)) for s in range(8)]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = np.roll(bases[i % 8], shift=((i * 7) % size, (i * 13) % size), axis=(1, 0))
        arr = np.clip(arr.astype(np.int16) + rng.integers(-12, 13, size=3, dtype=np.int16), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8), "RGB").save(buf, "JPEG", quality=quality, restart_marker_rows=1)
        out.append(buf.getvalue())
    return out


class JpegMixer:
    """Unique, valid JPEGs at the cost of a byte join: each row's image takes every MCU-row
    segment (between restart markers) from a different pool image.  Rows never share image
    bytes, so neither Parquet's dictionary encoding nor zstd can shrink repeated images (which a
    small pool of whole images would let them do, flattering the shuffled write)."""

    def __init__(self, pool: list[bytes]) -> None:
        import re

        self.head, self.segments = None, []
        for data in pool:
            sos = data.index(b"\xff\xda")
            head_end = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
            self.head = self.head or data[:head_end]
            self.segments.append(re.split(rb"\xff[\xd0-\xd7]", data[head_end:-2]))
        self.n_seg = min(len(s) for s in self.segments)

    def image(self, row: int) -> bytes:
        from pipeline.seeds import derive_seed

        parts = [self.head]
        h = derive_seed("bench-jpeg", row)
        for p in range(self.n_seg):
            src = (h + p * 2654435761 + (row >> (p % 16))) % len(self.segments)
            if p:
                parts.append(bytes((0xFF, 0xD0 + (p - 1) % 8)))
            parts.append(self.segments[src][p])
        parts.append(b"\xff\xd9")
        return b"".join(parts)


def make_inputs(base: Path, rows: int) -> tuple[list[str], int]:
    """Stage folders of PAIR_SCHEMA part files; returns (dirs, input bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.seeds import stable_hash
    from schemas import IMAGES_TYPE, PAIR_SCHEMA
    from schemas.arrow import from_rows
    from schemas.records import pair_row, provenance

    mixer = JpegMixer(jpeg_pool(POOL))
    methods = ["correctness"] * 7 + ["format"] + ["dropout_ntp"] * 2
    template = from_rows([pair_row(
        pair_id="x", method="correctness", source="s", question=f"How many objects are in image {k}?",
        user_text=f"How many objects are in image {k}?\nThink step by step, then end with 'Final answer: <n>'.",
        images=[{"bytes": b"", "path": None}],
        chosen=f"I count the objects carefully, one by one, row by row. There are {k % 9}.\nFinal answer: {k % 9}",
        rejected=f"Looking at the image there seem to be {k % 9 + 2} objects.\nFinal answer: {k % 9 + 2}",
        prov=provenance(sample_id=stable_hash("p", k), model="bench", chosen_tokens=30, rejected_tokens=20),
    ) for k in range(PART_ROWS)], PAIR_SCHEMA)

    n_dups = int(rows * DUP_FRACTION)
    unique = rows - n_dups
    dirs = [base / "correctness", base / "dropout_ntp", base / "judge"]
    total_bytes, part = 0, 0
    for start in range(0, rows, PART_ROWS):
        n = min(PART_ROWS, rows - start)
        idx = [i if i < unique else (i * 7919) % unique for i in range(start, start + n)]  # tail = duplicates
        ids = pa.array([stable_hash("pair", i) for i in idx], pa.string())
        source = pa.array(["src_a" if i < unique // 2 else "src_b" for i in idx], pa.string())
        method = pa.array([methods[i % len(methods)] for i in idx], pa.string())
        images = pa.array([[{"bytes": mixer.image(i), "path": None}] for i in idx], IMAGES_TYPE)
        t = template.slice(0, n)
        for name, col in (("id", ids), ("source", source), ("method", method), ("images", images)):
            t = t.set_column(t.schema.get_field_index(name), PAIR_SCHEMA.field(name), col)
        out = dirs[part % len(dirs)] / "data" / f"part-{part:05d}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out, compression="zstd")
        total_bytes += out.stat().st_size
        part += 1
    return [str(d) for d in dirs], total_bytes


# -- measured steps (each in a child process) ---------------------------------------
def step_write(dirs: list[str], out: str, shard_rows: int) -> dict:
    from pipeline.config import PipelineConfig
    from stages.write import write_dataset

    cfg = PipelineConfig.model_validate({"run": {"name": "bench-write", "seed": 0, "output_dir": out},
                                         "write": {"shard_rows": shard_rows}})
    t0 = time.perf_counter()
    stats = write_dataset(cfg, dirs)
    secs = time.perf_counter() - t0
    return {"secs": secs, "rows_in": stats.rows_in, "rows_out": stats.rows_out,
            "bytes_out": int(stats.counters["bytes_written"]), "shards": int(stats.counters["shards"]),
            "dups": int(stats.counters["duplicates_dropped"]), "peak_mb": _peak_mb(),
            "phases": {k.removeprefix("seconds."): v for k, v in stats.counters.items() if k.startswith("seconds.")}}


def step_baseline(dirs: list[str], out: str) -> dict:
    import pyarrow.parquet as pq

    from stages.write import input_files

    t0 = time.perf_counter()
    rows = 0
    files = input_files(dirs)
    writer = None
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
            if writer is None:
                writer = pq.ParquetWriter(out, batch.schema, compression="zstd")
            writer.write_batch(batch)
            rows += batch.num_rows
    writer.close()
    secs = time.perf_counter() - t0
    return {"secs": secs, "rows_in": rows, "bytes_out": os.path.getsize(out), "peak_mb": _peak_mb()}


def child(step: str, args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", step, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{step} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=int(os.environ.get("MMPR_BENCH_WRITE_ROWS", 100_000)))
    ap.add_argument("--quick", action="store_true", help="10,000 rows")
    ap.add_argument("--shard-rows", type=int, default=5000)
    ap.add_argument("--keep", help="keep the inputs and outputs in this folder")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        step, *rest = args.child
        if step == "write":
            res = step_write(rest[:-2], rest[-2], int(rest[-1]))
        else:
            res = step_baseline(rest[:-1], rest[-1])
        print(json.dumps(res))
        return 0

    rows = 10_000 if args.quick else args.rows
    base = Path(args.keep or tempfile.mkdtemp(prefix="bench-write-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        dirs, in_bytes = make_inputs(base / "in", rows)
        print(f"input: {rows} rows, one 448x448 JPEG each, {in_bytes / 1e6:.0f} MB in "
              f"{len(list((base / 'in').rglob('*.parquet')))} files ({time.perf_counter() - t0:.1f} s to make)",
              flush=True)
        base_res = child("baseline", [*dirs, str(base / "baseline.parquet")])
        (base / "baseline.parquet").unlink()
        write_res = child("write", [*dirs, str(base / "out"), str(args.shard_rows)])
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    mb = in_bytes / 1e6
    w_rows, b_rows = rows / write_res["secs"], rows / base_res["secs"]
    w_mbs, b_mbs = mb / write_res["secs"], mb / base_res["secs"]
    print(f"baseline (ParquetWriter copy, no shuffle): {base_res['secs']:.1f} s, {b_rows:,.0f} rows/s, "
          f"{b_mbs:,.0f} MB/s, peak {base_res['peak_mb']:,.0f} MB")
    print(f"write_dataset: {write_res['secs']:.1f} s, {w_rows:,.0f} rows/s, {w_mbs:,.0f} MB/s, "
          f"peak {write_res['peak_mb']:,.0f} MB; {write_res['rows_out']} rows out "
          f"({write_res['dups']} duplicates dropped) in {write_res['shards']} shards, "
          f"{write_res['bytes_out'] / 1e6:,.0f} MB; phases "
          + ", ".join(f"{k} {v:.1f} s" for k, v in write_res["phases"].items()))
    if args.json:
        print(json.dumps({"rows": rows, "input_mb": mb, "write": write_res, "baseline": base_res}))
    print(f"write: {w_rows:,.0f} rows/s, {w_mbs:,.0f} MB/s at {rows} rows (peak {write_res['peak_mb']:,.0f} MB); "
          f"ratio to the plain-copy baseline {write_res['secs'] / base_res['secs']:.2f}x the time "
          f"({w_rows / b_rows:.2f} of its throughput)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
