"""Benchmark: the write stage (global shuffle + dedup + shards + manifest + card) on image rows.

    python bench/bench_write.py [--rows 100000] [--quick] [--shard-rows 5000] [--keep DIR] [--million]

Input: ``--rows`` pair rows (default 100,000; ``MMPR_BENCH_WRITE_ROWS`` also
sets it, ``--quick`` uses 10,000), each with one 448x448 JPEG (quality 85, a
photo-like image, ~40 KB), in PAIR_SCHEMA Parquet part files of 2,048 rows
spread over three stage folders the way the pair stages write them, sorted by
source, with 0.5% duplicated ids.  Every row's JPEG is distinct (spliced from
restart-marker segments of 1,024 encoded images, see ``JpegMixer``), so image
bytes never repeat and compress like real photos.

Measured, each in its own subprocess (its VmHWM is that step's driver peak):

* ``baseline``: the floor for moving the same bytes -- read the same input
  files and write them with ``pyarrow.parquet.ParquetWriter`` (zstd, same
  rows, input order) into one file, batch by batch (no shuffle, dedup, split).
* ``write``: ``stages.write.write_dataset`` in process (the local executor).
* ``ray x1`` / ``ray x2``: the same under the Ray executor with
  ``executor.write_workers`` 1 and 2 (Ray started before the clock, as in a
  build): the scatter/gather tasks' scaling on this machine's cores, and the
  driver's peak RSS (target: 2 workers >= 1.6x the rows/s of 1, driver < 1 GB).
* ``15 pairs/image``: a second input where every 15 rows (one prompt) share
  one JPEG; the shards' size over "each distinct image once plus the text
  columns" (``publish.shard_size``; target <= 1.3x).

``--million``: only a 1,000,000-pair write (15 pairs per 224x224 JPEG, Ray,
2 workers), printing rows/s, the driver's peak RSS and each task kind's peak
RSS (~10 minutes on 2 cores and ~3 GB of disk; not in ``make bench``).  The
same run measures the RL side of the write (target: the prompt table and the
RL exports take at most 10% of the write stage's time): a prompt table of one
row per prompt (1M pairs less the 0.5% duplicates / 15 = 66,334 prompts, the pairs' own ids and JPEGs;
8 samples each, pass rates spread over 0/8 .. 8/8) is put where correctness
leaves it (``<work>/correctness/side/prompts/``, 1,024 prompts per partition
file), so the write stage publishes it (its ``seconds.prompts``), and then the
RL exports (trl_grpo, swift_grpo, verl, band [0.2, 0.8], min_samples 8) are
written from the dataset folder, timed.  ``--pairs N`` runs it at N pairs
instead of 1M (stated in the output).
"""
from __future__ import annotations

import argparse
import json
import os
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
PAIRS_PER_IMAGE = 15
MILLION = 1_000_000
TARGET_SCALING, TARGET_DRIVER_MB, TARGET_SIZE_RATIO = 1.6, 1024, 1.3


def _peak_mb() -> float:
    from publish.shard_tasks import peak_rss_mb

    return peak_rss_mb()


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
        from pipeline.core.seeds import derive_seed

        parts = [self.head]
        h = derive_seed("bench-jpeg", row)
        for p in range(self.n_seg):
            src = (h + p * 2654435761 + (row >> (p % 16))) % len(self.segments)
            if p:
                parts.append(bytes((0xFF, 0xD0 + (p - 1) % 8)))
            parts.append(self.segments[src][p])
        parts.append(b"\xff\xd9")
        return b"".join(parts)


def _with_prompt_ids(table, prompt_ids):
    """``table`` with ``provenance.prompt_id`` replaced (one prompt per PAIRS_PER_IMAGE rows)."""
    import pyarrow as pa

    prov = table.column("provenance").combine_chunks()
    fields = list(prov.type)
    arrays = [prompt_ids if f.name == "prompt_id" else prov.field(i) for i, f in enumerate(fields)]
    i = table.schema.get_field_index("provenance")
    return table.set_column(i, table.schema.field(i), pa.StructArray.from_arrays(arrays, fields=fields))


def make_inputs(base: Path, rows: int, pairs_per_image: int = 1, image_size: int = 448) -> tuple[list[str], int]:
    """Stage folders of PAIR_SCHEMA part files; returns (dirs, input bytes).  Rows ``i`` and ``j``
    share a prompt (``prompt_id``) and its JPEG when ``i // pairs_per_image == j // pairs_per_image``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.core.seeds import stable_hash
    from schemas import IMAGES_TYPE, PAIR_SCHEMA
    from schemas.arrow import from_rows
    from schemas.records import pair_row, provenance

    mixer = JpegMixer(jpeg_pool(POOL, image_size))
    methods = ["correctness"] * 7 + ["format"] + ["dropout_ntp"] * 2
    template = from_rows([pair_row(
        pair_id="x", method="correctness", source="s", question=f"How many objects are in image {k}?",
        user_text=f"How many objects are in image {k}?\nThink step by step, then end with 'Final answer: <n>'.",
        images=[{"bytes": b"", "path": None}],
        chosen=f"I count the objects carefully, one by one, row by row. There are {k % 9}.\nFinal answer: {k % 9}",
        rejected=f"Looking at the image there seem to be {k % 9 + 2} objects.\nFinal answer: {k % 9 + 2}",
        prov=provenance(prompt_id="p", model="bench", chosen_tokens=30, rejected_tokens=20),
    ) for k in range(PART_ROWS)], PAIR_SCHEMA)

    n_dups = int(rows * DUP_FRACTION)
    unique = rows - n_dups
    dirs = [base / "correctness", base / "dropout_ntp", base / "judge"]
    total_bytes, part, cache = 0, 0, {}
    for start in range(0, rows, PART_ROWS):
        n = min(PART_ROWS, rows - start)
        idx = [i if i < unique else (i * 7919) % unique for i in range(start, start + n)]  # tail = duplicates
        prompt = [i // pairs_per_image for i in idx]
        if len(cache) > 4 * PART_ROWS:
            cache.clear()
        images = [[{"bytes": cache.get(p) or cache.setdefault(p, mixer.image(p)), "path": None}] for p in prompt]
        columns = {
            "id": pa.array([stable_hash("pair", i) for i in idx], pa.string()),
            "source": pa.array(["src_a" if i < unique // 2 else "src_b" for i in idx], pa.string()),
            "method": pa.array([methods[i % len(methods)] for i in idx], pa.string()),
            "images": pa.array(images, IMAGES_TYPE),
        }
        t = template.slice(0, n)
        for name, col in columns.items():
            t = t.set_column(t.schema.get_field_index(name), PAIR_SCHEMA.field(name), col)
        t = _with_prompt_ids(t, pa.array([stable_hash("p", p) for p in prompt], pa.string()))
        out = dirs[part % len(dirs)] / "data" / f"part-{part:05d}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out, compression="zstd", dictionary_pagesize_limit=256 << 20)  # a stage's file:
        total_bytes += out.stat().st_size  # a prompt's pairs are written together, its image once
        part += 1
    return [str(d) for d in dirs], total_bytes


# -- measured steps (each in a child process) ---------------------------------------
RL_FORMATS = ["trl_grpo", "swift_grpo", "verl"]
RL_SAMPLES = 8
PROMPTS_PER_SIDE_FILE = 1024
TARGET_RL_SHARE = 0.10


def make_prompt_sides(work: Path, pairs: int, pairs_per_prompt: int, image_size: int) -> int:
    """The correctness stage's ``prompts`` side files for the prompts of ``make_inputs(base, pairs,
    pairs_per_prompt)``: the same prompt ids and JPEGs, one row per prompt (PROMPT_TABLE_SCHEMA),
    ``RL_SAMPLES`` samples each with ``k % (RL_SAMPLES + 1)`` right; returns the prompt count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from methods.prompt_stats import wilson
    from pipeline.core.seeds import derive_seed, stable_hash
    from schemas import PROMPT_TABLE_SCHEMA
    from schemas.records import user_turn

    mixer = JpegMixer(jpeg_pool(POOL, image_size))
    unique = pairs - int(pairs * DUP_FRACTION)
    n_prompts = (unique + pairs_per_prompt - 1) // pairs_per_prompt
    folder = work / "correctness" / "side" / "prompts"
    folder.mkdir(parents=True, exist_ok=True)
    scoring = {"extraction": "final_answer", "threshold": 0.9, "numeric_rel_tol": 1e-3, "anls_cutoff": 0.5,
               "relaxed_numeric": False, "true_false": False}
    for f, start in enumerate(range(0, n_prompts, PROMPTS_PER_SIDE_FILE)):
        rows = []
        for p in range(start, min(start + PROMPTS_PER_SIDE_FILE, n_prompts)):
            k = p % 9
            question = f"How many objects are in image {k}?"
            text = f"{question}\nThink step by step, then end with 'Final answer: <n>'."
            right = derive_seed("bench-rate", p) % (RL_SAMPLES + 1)
            low, high = wilson(right, RL_SAMPLES)
            seed = derive_seed(0, stable_hash("p", p), "generate")
            rows.append({
                "prompt_id": stable_hash("p", p), "source": "src_a" if p * pairs_per_prompt < unique // 2 else "src_b",
                "row_key": f"row-{p}", "question": question, "prompt": [user_turn(text, 1)],
                "template_id": "mmpr_final_answer", "template_hash": "0" * 16,
                "images": [{"bytes": mixer.image(p), "path": None}], "answer": [str(k % 9)], "answer_type": "number",
                "choices": [], "samples_drawn": RL_SAMPLES, "tokens_generated": 120 * RL_SAMPLES, "correct": right,
                "right": right, "wrong": RL_SAMPLES - right, "unparseable": 0, "conflicting": 0,
                "wrong_states_truth": 0, "finish_length": 0, "pass_rate": right / RL_SAMPLES,
                "pass_rate_low": low, "pass_rate_high": high, "stop_reason": "fixed_n", "model": "bench",
                "model_revision": "", "seeds": [seed + i for i in range(RL_SAMPLES)], "scoring": scoring,
                "sampling": {"n": RL_SAMPLES, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_tokens": 1024,
                             "seed": seed, "rounds": None, "stop_reason": None}})
        pq.write_table(pa.Table.from_pylist(rows, schema=PROMPT_TABLE_SCHEMA), folder / f"part-{f:05d}.parquet",
                       compression="zstd")
    return n_prompts


def step_rl_exports(out: str) -> dict:
    """The RL exports of the dataset folder ``out`` (as the export stage writes them), timed."""
    from publish.exports import export_dataset
    from publish.exports.rl import Curriculum

    t0 = time.perf_counter()
    index = export_dataset(out, RL_FORMATS, out, name="bench-write",
                           curriculum=Curriculum((0.2, 0.8), RL_SAMPLES, 0.0, 0))
    secs = time.perf_counter() - t0
    kept = next(s["selection"]["kept"] for s in index["formats"].values() if "selection" in s)
    return {"secs": secs, "kept": kept, "peak_mb": _peak_mb()}


def tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and its descendants alive now:
    under a local Ray, its GCS, raylet (with the object store) and workers, so a write's cost
    includes Ray's own work (putting task returns into the store, resolving arguments)."""
    procs = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            procs[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    mine, total, grew = {os.getpid()}, 0.0, True
    while grew:
        new = {p for p, (ppid, _) in procs.items() if ppid in mine and p not in mine}
        mine |= new
        grew = bool(new)
    return sum(procs[p][1] for p in mine if p in procs)


def step_write(dirs: list[str], out: str, shard_rows: int, kind: str = "local", workers: int = 1,
               size: bool = False, work: str | None = None, memory_mb: float = 0) -> dict:
    from pipeline.config.settings import PipelineConfig
    from stages.write import input_files, write_dataset

    cfg = PipelineConfig.model_validate({
        "run": {"name": "bench-write", "seed": 0, "output_dir": out, **({"work_dir": work} if work else {})},
        "executor": {"kind": kind, "num_cpus": max(2, workers), "cpu_concurrency": workers,
                     "write_memory_mb": memory_mb},  # 0: scatter spills through temp disk
        "write": {"shard_rows": shard_rows}})
    if kind == "ray":
        from pipeline.run.executors import RayExecutor

        RayExecutor(cfg)  # Ray is up before the clock starts, as in a build
    load0, t0, cpu0 = os.getloadavg()[0], time.perf_counter(), tree_cpu_s()
    stats = write_dataset(cfg, dirs)
    secs = time.perf_counter() - t0
    cpu = tree_cpu_s() - cpu0
    res = {"secs": secs, "cpu_s": cpu, "rows_in": stats.rows_in, "rows_out": stats.rows_out,
           "bytes_out": int(stats.counters["bytes_written"]), "shards": int(stats.counters["shards"]),
           "dups": int(stats.counters["duplicates_dropped"]), "peak_mb": _peak_mb(),
           "load": [round(load0, 1), round(os.getloadavg()[0], 1)],  # others' processes on the same cores
           "task_peak_mb": {k.removeprefix("peak_task_mb."): v for k, v in stats.counters.items()
                            if k.startswith("peak_task_mb.")},
           "prompt_rows": int(stats.counters.get("prompt_table_rows", 0)),
           "phases": {k.removeprefix("seconds."): v for k, v in stats.counters.items() if k.startswith("seconds.")},
           # inside the tasks: seconds per part (summed over tasks), CPU seconds, the longest task
           "tasks": {k: v for k, v in stats.counters.items() if k.startswith(("task_", "scatter_", "peak_task_shm"))}}
    if size:
        from publish.shard_size import compactness

        res["size"] = compactness(input_files([out]))
    return res


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


def child(step: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps({"step": step, **kw})]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{step} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISSED"


def _describe(label: str, rows: int, res: dict) -> str:
    tasks = ", ".join(f"{k} task {v:,.0f} MB" for k, v in res["task_peak_mb"].items())
    return (f"{label}: {res['secs']:.1f} s, {rows / res['secs']:,.0f} rows/s, driver peak {res['peak_mb']:,.0f} MB"
            f" (peak RSS per task: {tasks}); load average {res['load'][0]} -> {res['load'][1]} on {os.cpu_count()} cores;"
            f" {res['rows_out']:,} rows out in {res['shards']} shards, "
            f"{res['bytes_out'] / 1e6:,.0f} MB; phases " + ", ".join(f"{k} {v:.1f} s" for k, v in res["phases"].items())
            + "; tasks " + ", ".join(f"{k.removeprefix('task_')} {v:.1f} s" for k, v in sorted(res.get("tasks", {}).items())))


def million(base: Path, shard_rows: int, pairs: int = MILLION) -> dict:
    """1M pairs, 15 per 224x224 JPEG (~12 KB; 448 px would make the run 3x longer for the same
    code paths), with the prompt table of their prompts, then the RL exports.  With ``--keep DIR``
    the inputs are made once and reused.  ``pairs``: another scale (``--pairs``)."""
    t0 = time.perf_counter()
    label = f"{pairs / 1e6:g}M" if pairs >= MILLION else f"{pairs:,}"
    ready = base / "in" / f"READY-{pairs}"
    if ready.exists():
        dirs, in_bytes, n_prompts = json.loads(ready.read_text())
    else:
        dirs, in_bytes = make_inputs(base / "in", pairs, PAIRS_PER_IMAGE, image_size=224)
        n_prompts = make_prompt_sides(base / "work", pairs, PAIRS_PER_IMAGE, 224)
        ready.write_text(json.dumps([dirs, in_bytes, n_prompts]))
    print(f"input: {pairs:,} rows, {PAIRS_PER_IMAGE} per 224x224 JPEG, {in_bytes / 1e6:,.0f} MB; prompt table "
          f"side files: {n_prompts:,} prompts ({time.perf_counter() - t0:.0f} s to make or find)", flush=True)
    res = child("write", dirs=dirs, out=str(base / "out"), shard_rows=shard_rows, kind="ray", workers=2, size=True,
                work=str(base / "work"))
    print(_describe(f"write {label} pairs, ray x2", pairs, res))
    print(f"write {label} pairs: {pairs / res['secs']:,.0f} rows/s, driver peak {res['peak_mb']:,.0f} MB, "
          + ", ".join(f"{k} task peak {v:,.0f} MB" for k, v in res["task_peak_mb"].items())
          + f"; shards {res['size']['ratio']:.2f}x distinct images + text")
    rl = child("rl_exports", out=str(base / "out"))
    table = res["phases"].get("prompts", 0.0)
    pair_write = res["secs"] - table
    share = (table + rl["secs"]) / res["secs"]
    print(f"write {label} pairs: prompt table {res['prompt_rows']:,} rows {table:.1f} s (inside write's "
          f"{res['secs']:.1f} s), RL exports {RL_FORMATS} {rl['kept']:,} prompts each {rl['secs']:.1f} s "
          f"(peak {rl['peak_mb']:,.0f} MB); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"write {label} pairs: prompt table + RL exports = {share:.1%} of the write stage's time "
          f"({(table + rl['secs']) / pair_write:.1%} of the write without the prompt table) "
          f"(target <= {TARGET_RL_SHARE:.0%}) {_verdict(share <= TARGET_RL_SHARE)}")
    return {**res, "rl_exports": rl, "rl_share": share}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=int(os.environ.get("MMPR_BENCH_WRITE_ROWS", 100_000)))
    ap.add_argument("--quick", action="store_true", help="10,000 rows")
    ap.add_argument("--shard-rows", type=int, default=5000)
    ap.add_argument("--keep", help="keep the inputs and outputs in this folder")
    ap.add_argument("--million", action="store_true", help="only the 1,000,000-pair write")
    ap.add_argument("--pairs", type=int, default=MILLION, help="with --million: this many pairs instead of 1M")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        kw = json.loads(args.child)
        step = kw.pop("step")
        steps = {"write": step_write, "baseline": step_baseline, "rl_exports": step_rl_exports}
        print(json.dumps(steps[step](**kw)))
        return 0

    rows = 10_000 if args.quick else args.rows
    base = Path(args.keep or tempfile.mkdtemp(prefix="bench-write-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        if args.million:
            res = million(base, args.shard_rows, args.pairs)
            if args.json:
                print(json.dumps({"million": res}))
            return 0
        t0 = time.perf_counter()
        dirs, in_bytes = make_inputs(base / "in", rows)
        print(f"input: {rows} rows, one 448x448 JPEG each, {in_bytes / 1e6:.0f} MB in "
              f"{len(list((base / 'in').rglob('*.parquet')))} files ({time.perf_counter() - t0:.1f} s to make)",
              flush=True)
        base_res = child("baseline", dirs=dirs, out=str(base / "baseline.parquet"))
        (base / "baseline.parquet").unlink()
        runs = {}
        for label, kind, workers in (("write", "local", 1), ("ray x1", "ray", 1), ("ray x2", "ray", 2)):
            runs[label] = child("write", dirs=dirs, out=str(base / "out"), shard_rows=args.shard_rows,
                                kind=kind, workers=workers)
            print(_describe(label, rows, runs[label]), flush=True)
        shutil.rmtree(base / "in")
        rows15 = min(rows, 30_000)
        dirs15, _ = make_inputs(base / "in15", rows15, PAIRS_PER_IMAGE)
        size_res = child("write", dirs=dirs15, out=str(base / "out15"), shard_rows=args.shard_rows, size=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    mb = in_bytes / 1e6
    write_res = runs["write"]
    w_rows, b_rows = rows / write_res["secs"], rows / base_res["secs"]
    print(f"baseline (ParquetWriter copy, no shuffle): {base_res['secs']:.1f} s, {b_rows:,.0f} rows/s, "
          f"{mb / base_res['secs']:,.0f} MB/s, peak {base_res['peak_mb']:,.0f} MB")
    if args.json:
        print(json.dumps({"rows": rows, "input_mb": mb, "runs": runs, "baseline": base_res, "size15": size_res}))
    print(f"write: {w_rows:,.0f} rows/s, {mb / write_res['secs']:,.0f} MB/s at {rows} rows "
          f"(peak {write_res['peak_mb']:,.0f} MB); ratio to the plain-copy baseline "
          f"{write_res['secs'] / base_res['secs']:.2f}x the time ({w_rows / b_rows:.2f} of its throughput)")
    one, two = runs["ray x1"], runs["ray x2"]
    scaling = one["secs"] / two["secs"]
    driver = max(one["peak_mb"], two["peak_mb"])
    print(f"write: 2 Ray workers {rows / two['secs']:,.0f} rows/s = {scaling:.2f}x 1 worker "
          f"({rows / one['secs']:,.0f} rows/s) at {rows} rows (target >= {TARGET_SCALING}x) {_verdict(scaling >= TARGET_SCALING)}")
    print(f"write: driver peak RSS {driver:,.0f} MB with Ray workers (target < {TARGET_DRIVER_MB} MB) "
          f"{_verdict(driver < TARGET_DRIVER_MB)}")
    size = size_res["size"]
    print(f"write: {PAIRS_PER_IMAGE} pairs per image, {rows15} rows: shards {size['data_bytes'] / 1e6:,.1f} MB = "
          f"{size['ratio']:.2f}x distinct images once ({size['distinct_image_bytes'] / 1e6:,.1f} MB) + text "
          f"columns ({size['text_bytes'] / 1e6:,.1f} MB) (target <= {TARGET_SIZE_RATIO}x) "
          f"{_verdict(size['ratio'] <= TARGET_SIZE_RATIO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
