"""Benchmark: the framework's own cost at scale -- a soak of the whole pipeline (issue 30).

    python bench/bench_scale.py [--prompts 200000] [--quick] [--no-kill] [--max-tokens 8] [--keep DIR]

Input (made here, nothing downloaded): ``--prompts`` rows of one Parquet source (row
groups of 256) with the image bytes inline, every image distinct (``bench_write.JpegMixer``,
so neither vLLM's multimodal cache nor Parquet can flatter it): 96x96 (70%), 160x160
(20%) and 224x224 (10%) JPEGs; the sample's questions (the tiny model answers them
parseably), 70% with ground truth, 30% open (DropoutNTP only).  ``--quick``: 20,000 prompts.

The build: ``python -m pipeline run`` of the sample config's stages on a local Ray (2 CPUs),
the tiny model, ``generate.n`` 2 and ``--max-tokens`` (default 48: enough for a final answer) so the engine is not the
bottleneck and the framework's own overhead shows; ``run.partition_rows: auto``.

Run A goes through uninterrupted; it is measured:

* the driver's peak RSS (the CLI process, sampled every 0.5 s);
* the scheduler's delay per partition: a task's marker ``started_at`` less the latest
  ``finished_at`` of its input partitions' markers (engine stages apart, where a partition
  queues behind its actor's call by design); for row stages also the framework overhead,
  the same from when a row-task slot (``executor.cpu_concurrency``) was free too, since on
  this 2-CPU build one slot serves three row stages and the wait for it is capacity, not
  overhead (``scheduling_delays``);
* the engine's busy share: ``occupied_s`` over ready -> last call end, summed over the
  engine actors' records (``<stage>/engine/<pid>.json``; every stage on the model);
* the object store's peak: report.json's ``object_store``, sampled by the driver every 1 s
  (``pipeline.run.store_watch``: Ray's memory-info request, which token authentication refuses
  from outside the run);
* the run's wall time over the generate stage's (report.json ``timing``).

Run B is the same command in other folders, SIGKILLed (its whole process tree) once half
of the run's partition markers are written, then run again: its shards must be
byte-identical to run A's.

Targets (issue 30): driver RSS <= 1 GB; engine busy >= 90% of the generate stage's time;
framework overhead per partition <= 50 ms (median over row-stage partitions, from inputs
done and a slot free); the rerun
identical.  Prints PASS or MISSED per target.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

QUICK_PROMPTS = 20_000
SIZES = ((96, 0.7), (160, 0.2), (224, 0.1))
STAGES = ["ingest", "generate", "correctness", "dropout_ntp", "image_crop", "filter", "write"]
ENGINE_STAGES = ("generate", "dropout_ntp")
TARGET_RSS_MB, TARGET_BUSY, TARGET_OVERHEAD_MS = 1024, 0.90, 50.0


# -- input ----------------------------------------------------------------------------------
def make_source(path: Path, prompts: int) -> int:
    """One Parquet file of ``prompts`` rows; returns its bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench_write import JpegMixer, jpeg_pool

    mixers = [JpegMixer(jpeg_pool(32, size, quality=80)) for size, _ in SIZES]
    cuts = np.cumsum([share for _, share in SIZES])
    # the sample's questions (the tiny model was trained on them: it answers them parseably),
    # 7 with ground truth to 3 open, on new images
    sample = ROOT / "data" / "sample"
    gt, open_ = ([json.loads(line) for line in (sample / f).read_text().splitlines()] for f in ("gt.jsonl", "open.jsonl"))
    schema = pa.schema([("id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("question", pa.string()), ("answer", pa.string()), ("answer_type", pa.string()),
                        ("choices", pa.list_(pa.string()))])
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, prompts, 256):
            rows = []
            for i in range(start, min(start + 256, prompts)):
                u = (i * 2654435761 % 1000) / 1000  # a fixed spread of sizes over the rows
                mixer = mixers[int(np.searchsorted(cuts, u, side="right"))]
                q = gt[i % len(gt)] if i % 10 < 7 else open_[i % len(open_)]
                rows.append({"id": f"p{i:07d}", "image": {"bytes": mixer.image(i), "path": None},
                             "question": q["question"], "answer": q.get("answer"),
                             "answer_type": q.get("answer_type"), "choices": q.get("choices")})
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return path.stat().st_size


def write_config(base: Path, source: Path, max_tokens: int) -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "configs" / "sample.yaml").read_text())
    data["run"].update(name="bench-scale", partition_rows="auto", stages=STAGES)
    data["executor"].update(kind="ray", num_cpus=2, address=None)
    data["model"].update(tiny_model_dir=str(ROOT / "models" / "tiny-idefics3"),
                         tiny_model_data=str(ROOT / "data" / "sample"))
    data["sources"] = [{"name": "scale", "format": "parquet", "path": str(source)}]
    data.setdefault("generate", {}).update(n=2, max_tokens=max_tokens)
    data.setdefault("generate", {}).pop("adaptive", None)
    data.setdefault("dropout_ntp", {})["max_tokens"] = max_tokens
    data.setdefault("scoring", {})["max_pairs_per_prompt"] = 2
    data["export"] = {"formats": []}
    path = base / "scale.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# -- watching a run ---------------------------------------------------------------------------
class Watch(threading.Thread):
    """Samples the CLI's RSS; kills the run's process tree when ``kill_at`` of its partition
    markers are written (``kill_at`` None: never)."""

    def __init__(self, proc: subprocess.Popen, work: Path, kill_at: float | None) -> None:
        super().__init__(daemon=True)
        self.proc, self.work, self.kill_at = proc, work, kill_at
        self.rss_mb = 0.0
        self.killed_at: tuple[int, int] | None = None

    def _tree(self):
        import psutil

        try:
            me = psutil.Process(self.proc.pid)
            return [me, *me.children(recursive=True)]
        except psutil.Error:
            return []

    def _markers(self) -> tuple[int, int]:
        plan = self.work / "ingest" / "plan.json"
        try:
            parts = len(json.loads(plan.read_text())["partitions"])
        except (OSError, ValueError, KeyError):
            return 0, 0
        done = sum(len(os.listdir(d)) for d in self.work.glob("*/markers"))
        return done, parts * (len(STAGES) - 2 + 3)  # every stage's partitions but write; filter gets 3 per

    def run(self) -> None:
        while self.proc.poll() is None:
            tree = self._tree()
            try:
                self.rss_mb = max(self.rss_mb, tree[0].memory_info().rss / 2**20) if tree else self.rss_mb
            except Exception:  # noqa: BLE001 -- it just ended
                pass
            if self.kill_at is not None and self.killed_at is None:
                done, total = self._markers()
                if total and done >= self.kill_at * total:
                    self.killed_at = (done, total)
                    for p in reversed(tree):  # its Ray (gcs, raylet, workers) may sit outside its group
                        try:
                            p.send_signal(signal.SIGKILL)
                        except Exception:  # noqa: BLE001 -- already gone
                            pass
            time.sleep(0.5)


def run_build(cfg: Path, base: Path, kill_at: float | None = None) -> tuple[int, Watch, float]:
    cmd = [sys.executable, "-m", "pipeline", "run", "--config", str(cfg), "--work-dir", str(base / "work"),
           "--output", str(base / "out")]
    env = {**os.environ, "MMPR_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    with open(base / "run.log", "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        watch = Watch(proc, base / "work", kill_at)
        watch.start()
        rc = proc.wait()
        watch.join(5)
    return rc, watch, time.perf_counter() - t0


# -- what the markers say ---------------------------------------------------------------------
def _markers(work: Path, stage: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (work / stage / "markers").glob("*.json")}


def scheduling_delays(work: Path, slots: int) -> dict[str, list[tuple[float, float]]]:
    """Per stage, per partition: (delay, overhead) in seconds.

    delay: ``started_at`` less the latest ``finished_at`` of its input partitions.
    overhead: the same from when it could have started, its inputs done *and* one of the
    ``slots`` (``executor.cpu_concurrency``) row-task slots free -- the framework's own cost,
    without the wait for capacity (row stages share the slots; engine stages have none)."""
    finished = {}
    for stage in STAGES[:-1]:
        for name, m in _markers(work, stage).items():
            finished[os.path.normpath(f"{work}/{stage}/data/{name}.parquet")] = m["finished_at"]
    rows = [(stage, m) for stage in STAGES[1:-1] if stage not in ENGINE_STAGES
            for m in _markers(work, stage).values() if "started_at" in m]
    out: dict[str, list[tuple[float, float]]] = {}
    for stage in STAGES[1:-1]:
        for m in _markers(work, stage).values():
            ends = [finished.get(os.path.normpath(u)) for u in m["inputs"]]
            if "started_at" not in m or not ends or None in ends:
                continue
            ready = max(ends)
            if stage not in ENGINE_STAGES:
                ready = max(ready, _slot_free(m, [o for _, o in rows if o is not m], slots))
            out.setdefault(stage, []).append((m["started_at"] - max(ends), m["started_at"] - ready))
    return out


def _slot_free(m: dict, others: list[dict], slots: int) -> float:
    """The start of the last stretch before ``m`` started in which fewer than ``slots`` other row
    partitions were running (-inf if that held all along)."""
    s = m["started_at"]
    events = sorted([(o["started_at"], 1) for o in others if o["started_at"] < s]
                    + [(o["finished_at"], -1) for o in others if o["started_at"] < s and o["finished_at"] < s])
    running, free_since = 0, float("-inf")
    for t, step in events:
        running += step
        if step > 0 and running >= slots:
            free_since = None  # all slots taken
        elif step < 0 and running < slots and free_since is None:
            free_since = t
    return s if free_since is None else free_since


def engine_busy(work: Path) -> dict:
    """Occupied and in-flight shares of the engines' lives (ready -> last call end), all stages."""
    actors: dict[int, list[dict]] = {}
    for f in work.glob("*/engine/*.json"):
        rec = json.loads(f.read_text())
        actors.setdefault(rec["pid"], []).append(rec)
    life = sum(max(r["last_end"] for r in recs) - recs[0]["ready_at"] for recs in actors.values())
    occupied = sum(r["occupied_s"] for recs in actors.values() for r in recs)
    stream = sum(r["stream_s"] for recs in actors.values() for r in recs)
    return {"actors": len(actors), "life_s": life, "busy": occupied / life if life else 0.0,
            "in_flight": stream / life if life else 0.0}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISSED"


def _shards(out: Path) -> list[tuple[str, str]]:
    return [(s["path"], s["sha256"]) for s in json.loads((out / "manifest.json").read_text())["shards"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_PROMPTS:,} prompts")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--no-kill", action="store_true", help="only run A (no kill and rerun)")
    ap.add_argument("--keep", help="keep the input and the builds in this folder")
    args = ap.parse_args()
    import yaml

    prompts = QUICK_PROMPTS if args.quick else args.prompts
    base = Path(args.keep or tempfile.mkdtemp(prefix="bench-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        source = base / "src" / "prompts.parquet"
        size = make_source(source, prompts)
        cfg = write_config(base, source, args.max_tokens)
        print(f"input: {prompts:,} prompts, {size / 1e6:,.1f} MB Parquet, images "
              + ", ".join(f"{s}px {int(p * 100)}%" for s, p in SIZES)
              + f" ({time.perf_counter() - t0:.1f} s to make); load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores", flush=True)
        (base / "a").mkdir(exist_ok=True)
        load0 = os.getloadavg()[0]
        rc, watch, wall = run_build(cfg, base / "a")
        if rc != 0:
            print((base / "a" / "run.log").read_text()[-4000:])
            raise SystemExit(f"run A failed (exit {rc})")
        work = base / "a" / "work"
        plan = json.loads((work / "ingest" / "plan.json").read_text())
        report = json.loads((work / "report.json").read_text())
        parts = len(plan["partitions"])
        print(f"run A: {wall:.1f} s, {parts} partitions of {plan['rows']} rows (run.partition_rows: auto); "
              f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
        slots = yaml.safe_load(cfg.read_text())["executor"].get("cpu_concurrency") or 2
        delays = scheduling_delays(work, slots)
        for stage, ds in delays.items():
            d, o = [x for x, _ in ds], [y for _, y in ds]
            print(f"  scheduler delay {stage:<12} p50 {_pct(d, .5) * 1e3:6.0f} ms  p95 {_pct(d, .95) * 1e3:6.0f} ms"
                  f"  max {max(d) * 1e3:6.0f} ms" + ("" if stage in ENGINE_STAGES else
                  f" | with a CPU slot free p50 {_pct(o, .5) * 1e3:5.0f} ms  p95 {_pct(o, .95) * 1e3:5.0f} ms")
                  + f"  ({len(ds)} partitions)")
        row = [d for s, ds in delays.items() if s not in ENGINE_STAGES for d, _ in ds]
        over = [o for s, ds in delays.items() if s not in ENGINE_STAGES for _, o in ds]
        busy = engine_busy(work)
        timing = report.get("timing", {})
        w = report["stages"].get("write", {}).get("counters", {})
        print("  write: " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(w.items()) if "seconds" in k))
        st = report.get("object_store", {})
        store = (f"{st['peak_used_mb']:,.1f} MB in use (fallback to disk {st['peak_fallback_mb']:,.1f} MB, spilled "
                 f"{st['spilled_mb']:,.1f} MB; {st['samples']} samples every {st['every_s']} s)"
                 if st.get("samples") else f"n/a ({st.get('error', 'not sampled')})")
        print(f"scale: object store peak {store}")
        print(f"scale: wall {timing.get('wall_s', 0):.1f} s = {timing.get('wall_over_stage', float('nan')):.2f}x "
              f"the generate stage ({timing.get('stage_s', 0):.1f} s from its engine start)")
        print(f"scale: driver peak RSS {watch.rss_mb:,.0f} MB at {prompts:,} prompts "
              f"(target <= {TARGET_RSS_MB} MB) {_verdict(watch.rss_mb <= TARGET_RSS_MB)}")
        print(f"scale: engine busy {busy['busy']:.1%} of its life (requests in flight {busy['in_flight']:.1%}; "
              f"{busy['actors']} actor(s), {busy['life_s']:.0f} s) (target >= {TARGET_BUSY:.0%}) "
              f"{_verdict(busy['busy'] >= TARGET_BUSY)}")
        p50 = _pct(over, .5) * 1e3
        print(f"scale: framework overhead per partition {p50:.0f} ms median over {len(over)} row-stage partitions "
              f"(p95 {_pct(over, .95) * 1e3:.0f} ms; from inputs done and a CPU slot free; with the wait for a "
              f"slot: median {_pct(row, .5) * 1e3:.0f} ms, p95 {_pct(row, .95) * 1e3:.0f} ms) "
              f"(target <= {TARGET_OVERHEAD_MS:.0f} ms) {_verdict(p50 <= TARGET_OVERHEAD_MS)}")
        if not args.no_kill:
            (base / "b").mkdir(exist_ok=True)
            rc1, watch_b, wall1 = run_build(cfg, base / "b", kill_at=0.5)
            rc2, _, wall2 = run_build(cfg, base / "b")
            done, total = watch_b.killed_at or (0, 0)
            same = rc2 == 0 and _shards(base / "b" / "out") == _shards(base / "a" / "out")
            print(f"scale: killed at {done}/{total} partition markers ({wall1:.0f} s, exit {rc1}), rerun "
                  f"{wall2:.0f} s (exit {rc2}): shards identical to run A (target: identical) {_verdict(same)}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
