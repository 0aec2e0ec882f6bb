"""Benchmark: near-duplicate keys (issue 29) -- hashing speed, the perturbation table, the build's added time.

    python bench/bench_dedup.py [--quick] [--no-build]

1. **Hashing, images/s per core** (process CPU time of this process, so other jobs on the
   machine do not count): ``methods.image_hash.image_keys`` (decode, grey 32x32 Lanczos, 8x8
   RGB thumbnail, one batched DCT) on the sample images, and on bicubic upscales to 448, 768
   and 1024 px saved as JPEG q90 and PNG (with JPEG draft decoding too).  Baseline in the same
   run: decoding alone (``Image.open(...).convert("RGB")``); the ratio is hashing/decoding.
   Target: >= 2,000 images/s/core on the sample images.
2. **Perturbation table** at the dedup defaults (k = 10, colour tolerance 50): recall per
   perturbation (JPEG q50, 50% resize, a 5%-of-area crop, brightness +-10%; a 5%-per-side crop
   is shown too but has no target), and the false positives among pairs of distinct sample
   images -- two images are the same drawing when the generator drew the same shape, word or
   colour at another size (parsed from their ``facts``).  Targets: recall >= 0.99, FP <= 0.1%.
3. **The driver's merge** on synthetic key files (``--merge-rows``, default 1M; ``--quick``
   200k; 1% of the prompts near-duplicates of their neighbour): CPU time and peak RSS of a
   process that only merges, against the same process's RSS before the merge.
4. **Added wall time of the sample build**: one sample build on Ray (configs/sample.yaml) with
   dedup on; dedup's wall time against the rest of the build.  Target: <= 5%.  ``--no-build``
   (and ``--quick``) skip it and time ingest and dedup alone.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MMPR_NO_PROGRESS", "1")
SAMPLE = ROOT / "data" / "sample"
TARGET_RATE, TARGET_RECALL, TARGET_FP, TARGET_ADDED = 2000, 0.99, 0.001, 0.05
SHAPES = ("circle", "square", "triangle", "diamond", "star")


def rows() -> list[dict]:
    return [json.loads(line) for name in ("gt.jsonl", "open.jsonl") for line in (SAMPLE / name).read_text().splitlines()]


def drawing(row: dict) -> tuple:
    """What the generator drew (demo/sample_questions.py): one centred shape, a word or a plain
    colour -- the same key at another size is the same drawing; scenes and charts are random."""
    f, pref = row["facts"], row["id"].split("-")[0]
    m = re.fullmatch(r"The image shows an? (\w+) (\w+)\.", f)
    if pref in ("mc", "word") and m and m.group(2) in SHAPES:
        return "single", m.group(2), m.group(1)
    m = re.search(r"It is an? (\w+) (\w+) in the centre", f)
    if m:
        return "single", m.group(2), m.group(1)
    m = re.fullmatch(r"The word (\w+) is written in (\w+) letters\.", f) or \
        re.search(r"The word is (\w+) and the letters are (\w+)\.", f)
    if m:
        return "word", m.group(1), m.group(2)
    m = re.search(r"single (\w+) colour", f)
    return ("plain", m.group(1)) if m else ("random", row["id"])


def encode(im, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def crop(im, f: float):
    w, h = im.size
    dx, dy = round(w * f), round(h * f)
    return im.crop((dx, dy, w - dx, h - dy))


def perturbations():
    from PIL import Image, ImageEnhance

    return {
        "jpeg_q50": lambda im: encode(im, "JPEG", quality=50),
        "resize_50": lambda im: encode(im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC)),
        "crop_5pc_area": lambda im: encode(crop(im, (1 - 0.95 ** 0.5) / 2)),
        "bright_+10": lambda im: encode(ImageEnhance.Brightness(im).enhance(1.1)),
        "bright_-10": lambda im: encode(ImageEnhance.Brightness(im).enhance(0.9)),
        "crop_5pc_each_side": lambda im: encode(crop(im, 0.05)),  # no target: moves the 8x8 colour grid
    }


def cpu_rate(fn, items, repeat: int) -> float:
    t0 = time.process_time()
    for _ in range(repeat):
        fn(items)
    return repeat * len(items) / max(time.process_time() - t0, 1e-9)


def speed(blobs: list[bytes], quick: bool) -> bool:
    from PIL import Image

    from methods.image_hash import image_keys

    def decode(items):
        for b in items:
            Image.open(io.BytesIO(b)).convert("RGB")
    ims = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    sets = {"sample PNG (96-160 px)": blobs}
    for size in (448, 768, 1024):
        big = [im.resize((size, size), Image.Resampling.BICUBIC) for im in ims[: 20 if quick else 60]]
        sets[f"{size} px JPEG q90"] = [encode(im, "JPEG", quality=90) for im in big]
        sets[f"{size} px PNG"] = [encode(im) for im in big]
    ok = True
    for name, items in sets.items():
        repeat = max(1, (1 if quick else 3) * 300 // len(items))
        base = cpu_rate(decode, items, repeat)
        rate = cpu_rate(image_keys, items, repeat)
        line = f"dedup hashing {name}: {rate:.0f} images/s/core (decode alone {base:.0f}/s: {rate / base:.2f}x)"
        if "JPEG" in name:
            line += f"; JPEG draft {cpu_rate(lambda x: image_keys(x, draft=True), items, repeat):.0f}/s"
        if name.startswith("sample"):
            passed = rate >= TARGET_RATE
            ok &= passed
            line += f" (target >= {TARGET_RATE}) {'PASS' if passed else 'MISSED'}"
        print(line, flush=True)
    return ok


def table(rs: list[dict]) -> bool:
    from PIL import Image

    from methods import image_hash as ih
    from stages.dedup import DedupConfig

    d = DedupConfig()
    k, tol = d.image_distance, d.colour_tolerance
    first = {}
    for r in rs:
        first.setdefault((SAMPLE / r["image"]).read_bytes(), r)
    blobs, keys = list(first), [drawing(r) for r in first.values()]
    h0, t0 = ih.image_keys(blobs)
    ok = True
    for name, fn in perturbations().items():
        h1, t1 = ih.image_keys([fn(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
        bits = ih.hamming(h0, h1)
        hits = [ih.images_match([a], [ta], [b], [tb], k, tol)[0] for a, ta, b, tb in zip(h0, t0, h1, t1)]
        recall = sum(hits) / len(hits)
        line = (f"dedup recall {name} at k={k}: {recall:.3f} (pHash bits median {int(sorted(bits)[len(bits) // 2])}, "
                f"max {int(bits.max())})")
        if name != "crop_5pc_each_side":
            ok &= recall >= TARGET_RECALL
            line += f" (target >= {TARGET_RECALL}) {'PASS' if recall >= TARGET_RECALL else 'MISSED'}"
        print(line, flush=True)
    pairs = [(i, j) for i, j in itertools.combinations(range(len(blobs)), 2) if keys[i] != keys[j] or keys[i][0] == "random"]
    close = [(i, j) for i, j in pairs if ih.hamming(h0[i], h0[j]) <= k]
    fp = sum(ih.colour_distance(t0[i], t0[j]) <= tol for i, j in close)
    rate = fp / len(pairs)
    print(f"dedup false positives among {len(pairs)} pairs of distinct sample images: {fp} ({rate:.4%}; pHash alone "
          f"{len(close)}, {len(close) / len(pairs):.2%}) (target <= {TARGET_FP:.1%}) {'PASS' if rate <= TARGET_FP else 'MISSED'}")
    return ok and rate <= TARGET_FP


def build(base: Path) -> None:
    env = dict(os.environ, MMPR_NO_PROGRESS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "pipeline", "run", "--config", "configs/sample.yaml",
           "--work-dir", str(base / "work"), "--output", str(base / "out")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    report = json.loads((base / "work" / "report.json").read_text())
    dedup = report["stages"]["dedup"]["wall_s_this_run"]
    ingest = report["stages"]["ingest"]["wall_s_this_run"]
    added = dedup / max(wall - dedup, 1e-9)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("[dedup]")), "")
    print(f"dedup in the sample build: {dedup:.1f} s of {wall:.1f} s wall (ingest {ingest:.1f} s): adds {added:.1%} "
          f"(target <= {TARGET_ADDED:.0%}) {'PASS' if added <= TARGET_ADDED else 'MISSED'}\n  {line}", flush=True)


def stages_alone(base: Path) -> None:
    from pipeline.config.loading import load_config
    from pipeline.run.orchestrator import run_stage

    cfg = load_config(ROOT / "configs" / "sample.yaml", {"executor.kind": "local", "run.work_dir": str(base / "w")})
    times = {}
    for name, src in (("ingest", ""), ("dedup", str(base / "ingest"))):
        t0 = time.perf_counter()
        run_stage(cfg, name, src, str(base / name))
        times[name] = time.perf_counter() - t0
    print(f"dedup alone (local executor, sample): {times['dedup']:.2f} s, {times['dedup'] / times['ingest']:.2f}x "
          f"ingest's {times['ingest']:.2f} s", flush=True)


def make_keys(base: Path, n: int, parts: int) -> list[tuple[str, str]]:
    """Key files of ``n`` synthetic one-image prompts in ``parts`` partitions."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.sources.prompt_keys import BAND_COLUMNS, KEYS_SCHEMA

    rng, per, out = np.random.default_rng(0), n // parts, []
    base.mkdir(parents=True, exist_ok=True)
    for p in range(parts):
        offsets = pa.array(np.arange(per + 1, dtype=np.int32))
        dup = np.r_[False, rng.random(per - 1) < 0.01]  # a copy of the row before
        cols = {}
        for name, hi in (("phash", 2 ** 63), ("answer_key", 50), ("question_key", 2 ** 62)):
            v = rng.integers(0, hi, per, dtype=np.int64)
            v[dup] = v[np.flatnonzero(dup) - 1]
            cols[name] = v
        t = pa.table({
            "prompt_id": pa.array([f"{p:05d}{i:027x}" for i in range(per)]),
            "position": pa.array(np.arange(per, dtype=np.int32)), "answer_key": pa.array(cols["answer_key"]),
            "n_images": pa.array(np.ones(per, np.int16)),
            "phash": pa.ListArray.from_arrays(offsets, pa.array(cols["phash"].astype(np.uint64))),
            "thumbs": pa.ListArray.from_arrays(offsets, pa.array([bytes(192)] * per, pa.binary(192))),
            "text": pa.array(["how many circles are there"] * per), "question_key": pa.array(cols["question_key"]),
            **{c: pa.array(rng.integers(-2 ** 63, 2 ** 63 - 1, per, dtype=np.int64)) for c in BAND_COLUMNS},
        }).cast(KEYS_SCHEMA)
        pq.write_table(t, base / f"p{p}.parquet")
        out.append((f"p{p}", str(base / f"p{p}.parquet")))
    return out


def merge_only(files: str) -> None:
    """(In a process of its own) the driver's merge of the key files listed in ``files``."""
    import resource

    from pipeline.sources.prompt_keys import KeyFiles, near_duplicates

    uris = json.loads(Path(files).read_text())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.process_time()
    found = near_duplicates(KeyFiles([tuple(u) for u in uris]), 10, 50.0, 0.9)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"found": len(found), "cpu_s": time.process_time() - t0, "before_mb": before, "peak_mb": peak}))


def merge(base: Path, n: int) -> None:
    uris = make_keys(base / "keys", n, max(1, n // 50_000))
    (base / "keys.json").write_text(json.dumps(uris))
    proc = subprocess.run([sys.executable, __file__, "--merge-only", str(base / "keys.json")], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    per = (r["peak_mb"] - r["before_mb"]) * 2 ** 20 / n
    print(f"dedup merge of {n} prompts' keys: {r['found']} near-duplicates, {r['cpu_s']:.1f} s CPU, peak RSS "
          f"{r['peak_mb']:.0f} MB ({r['peak_mb'] - r['before_mb']:.0f} MB over the process before it: {per:.0f} B a "
          f"prompt; 10M prompts: ~{per * 1e7 / 2 ** 30:.1f} GB, ~{r['cpu_s'] * 1e7 / n / 60:.0f} min CPU)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer large images, no sample build")
    ap.add_argument("--no-build", action="store_true", help="time the stages alone instead of a sample build")
    ap.add_argument("--merge-rows", type=int, default=1_000_000, help="synthetic prompts for the merge")
    ap.add_argument("--merge-only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.merge_only:
        merge_only(args.merge_only)
        return 0
    rs = rows()
    blobs = sorted({(SAMPLE / r["image"]).read_bytes() for r in rs})
    speed(blobs, args.quick)
    table(rs)
    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as tmp:
        merge(Path(tmp), 200_000 if args.quick else args.merge_rows)
        if args.quick or args.no_build:
            stages_alone(Path(tmp))
        else:
            build(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
