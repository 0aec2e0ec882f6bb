"""Benchmark: the write stage on 1 vs 2 Ray workers, scatter held in the object store vs spilled to temp disk.

    python bench/bench_write_scaling.py [--rows 100000] [--keep DIR] [--paths held,disk] [--repeat 1]

The input is ``bench_write``'s (``--rows`` pair rows, one distinct 448x448 JPEG
each, 2,048 rows per part file); with ``--keep DIR`` it is made once and reused.
For each path (``held``: ``executor.write_memory_mb`` as large as it goes, scatter tasks
return their per-shard pieces as Ray objects; ``disk``: ``write_memory_mb: 0``,
they spill Arrow IPC files to temp disk as before) the write runs under Ray
with ``write_workers`` 1 then 2, each in its own process, the paths
interleaved so that a change of load hits both.

Wall-clock scaling on a shared machine says little, so each run also prints
where its tasks' time went, from ``/proc/self/task/*/schedstat`` summed over
the tasks: CPU seconds (all the task's threads), and of the task's own thread
the time waiting for a CPU (the run queue: other processes' load) and the
rest, blocked (disk, page faults, Arrow's helper threads); and the CPU seconds
of the driver and all its descendants (Ray's GCS, raylet with the object
store, workers) over the write, which counts Ray's own work on the held path.  The last lines
give the scaling those CPU seconds predict for a machine with 2 free cores
(``quiet_scaling``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_write import TARGET_SCALING, _verdict, child, make_inputs  # noqa: E402

STEPS = ("scatter", "gather")


def breakdown(res: dict) -> dict:
    """Per step: wall (phase), summed task wall and its parts, CPU (all threads), run-queue wait
    and blocked seconds of the tasks' threads, the costliest task's CPU."""
    t = res["tasks"]
    out = {}
    for step in STEPS:
        parts = {k.split(".", 2)[2]: v for k, v in t.items() if k.startswith(f"task_seconds.{step}.")}
        out[step] = {"wall": res["phases"].get(step, 0.0), "tasks": sum(parts.values()), "parts": parts,
                     **{p: t.get(f"task_{p}_seconds.{step}", 0.0) for p in ("cpu", "runq", "blocked", "max_cpu")}}
    return out


def quiet_scaling(one: dict) -> float:
    """The 1 -> 2 worker scaling that a machine with 2 free cores would give, from a 1-worker
    run's CPU seconds: (plan + rest + all tasks' CPU) over (plan + rest + per step
    max(CPU / 2, its costliest task's CPU)).  The driver's plan and rest (manifest, card) are
    taken at their wall time under load, which only lowers the estimate; blocked time is left out
    (say so when it is not small)."""
    b = breakdown(one)
    serial = one["secs"] - sum(b[s]["wall"] for s in STEPS)  # plan, the card, the manifest: the driver's
    parallel = serial
    for s in STEPS:
        serial += b[s]["cpu"]
        parallel += max(b[s]["cpu"] / 2, b[s]["max_cpu"])
    return serial / parallel if parallel else 0.0


def describe(label: str, rows: int, res: dict) -> str:
    b = breakdown(res)
    steps = "; ".join(
        f"{s} {b[s]['wall']:.1f} s wall, tasks {b[s]['tasks']:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in b[s]["parts"].items())
        + f"): cpu {b[s]['cpu']:.1f} (costliest task {b[s]['max_cpu']:.1f}), run queue {b[s]['runq']:.1f}, "
        f"blocked {b[s]['blocked']:.1f}" for s in STEPS)
    t = res["tasks"]
    peaks = ", ".join(f"{k} {v:,.0f} MB (shared {t.get(f'peak_task_shm_mb.{k}', 0):,.0f})" for k, v in res["task_peak_mb"].items()
                      if not k.startswith("peak_task_shm"))
    return (f"{label}: {res['secs']:.1f} s, {rows / res['secs']:,.0f} rows/s, CPU {res.get('cpu_s', 0):.1f} s "
            f"(driver + Ray + workers), plan {res['phases'].get('plan', 0):.1f} s; "
            f"{steps}; held {t.get('scatter_held_mb', 0):,.0f} MB, spill files {t.get('scatter_spill_files', 0):.0f}; "
            f"driver peak {res['peak_mb']:,.0f} MB, task peaks {peaks}; "
            f"load {res['load'][0]} -> {res['load'][1]} on {os.cpu_count()} cores")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--shard-rows", type=int, default=5000)
    ap.add_argument("--keep", help="make the input once in this folder and reuse it")
    ap.add_argument("--paths", default="held,disk", help="comma-separated: held, disk")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each (0: only make the input)")
    ap.add_argument("--held-mb", type=float, default=1e6,
                    help="executor.write_memory_mb of the held path (default: all the write may take, 80%% of the store)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    paths = {"held": args.held_mb, "disk": 0}
    chosen = [p for p in args.paths.split(",") if p]
    if not chosen or any(p not in paths for p in chosen):
        ap.error(f"--paths: comma-separated names from {sorted(paths)}, got {args.paths!r}")

    base = Path(args.keep or tempfile.mkdtemp(prefix="bench-write-scaling-"))
    ready = base / f"READY-{args.rows}"
    runs: dict[str, list] = {}
    try:
        if ready.exists():
            dirs, in_bytes = json.loads(ready.read_text())
        else:
            t0 = time.perf_counter()
            shutil.rmtree(base / "in", ignore_errors=True)
            dirs, in_bytes = make_inputs(base / "in", args.rows)
            ready.write_text(json.dumps([dirs, in_bytes]))
            print(f"input made in {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"input: {args.rows:,} rows, one 448x448 JPEG each, {in_bytes / 1e6:,.0f} MB", flush=True)
        for r in range(args.repeat):
            for workers in (1, 2):
                for path in chosen:
                    res = child("write", dirs=dirs, out=str(base / "out"), shard_rows=args.shard_rows, kind="ray",
                                workers=workers, memory_mb=paths[path])
                    runs.setdefault(f"{path} x{workers}", []).append(res)
                    print(describe(f"{path} ray x{workers} (run {r + 1})", args.rows, res), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    for path in chosen if args.repeat else ():
        one = min(runs[f"{path} x1"], key=lambda x: x["secs"])
        two = min(runs[f"{path} x2"], key=lambda x: x["secs"])
        scaling = one["secs"] / two["secs"]
        print(f"{path}: 2 Ray workers {args.rows / two['secs']:,.0f} rows/s = {scaling:.2f}x 1 worker "
              f"({args.rows / one['secs']:,.0f} rows/s), best of {args.repeat} (target >= {TARGET_SCALING}x) "
              f"{_verdict(scaling >= TARGET_SCALING)}; from the 1-worker run's CPU seconds, 2 free cores would give "
              f"{quiet_scaling(one):.2f}x; CPU (tasks / driver + Ray + workers) 1 worker "
              f"{sum(breakdown(one)[s]['cpu'] for s in STEPS):.1f} / {one.get('cpu_s', 0):.1f} s, 2 workers "
              f"{sum(breakdown(two)[s]['cpu'] for s in STEPS):.1f} / {two.get('cpu_s', 0):.1f} s")
    if args.json:
        print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
