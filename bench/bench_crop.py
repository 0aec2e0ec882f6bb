"""Benchmark: mDPO crop corruption throughput on one core.

    python bench/bench_crop.py [--seconds 4] [--json]

Times :func:`methods.crop.corrupt_image` (decode, sample the box, crop,
bicubic resize back, encode in the source format) on two shapes of input:

* a 224x224 PNG, the size of the sample data / a single ViT tile;
* a 1024x1024 JPEG (quality 95), a typical photo / document page.

Baseline measured in the same run on the same bytes: decode + encode with the
same encoder parameters and no crop -- the floor any re-encoding corruption
has to pay.  The ratio ``crop / baseline`` (throughputs) says how much the
crop and resize add on top.  PIL's codecs and resampler are single-threaded,
so one process is one core.  Each measurement runs for ``--seconds`` seconds
(default 4; the whole run stays under ~30 s).

The design target is "image crops are never the bottleneck": generation
produces a few samples per second per GPU, so hundreds of crops per second
per core are plenty.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.crop import PNG_PARAMS, corrupt_image  # noqa: E402
from pipeline.core.seeds import derive_seed  # noqa: E402


def natural_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients, shapes and mild noise: compresses like a photo, unlike
    pure noise (which would make PNG timings meaningless)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / width * 6.0) * np.cos(y / height * 4.0)
    g = 255 * (x + y) / (width + height)
    b = 128 + 90 * np.sin(np.hypot(x - width / 3, y - height / 2) / 18.0)
    arr = np.stack([r, g, b], axis=-1) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=95)
    else:
        img.save(buf, "PNG")  # the source file: plain default PNG
    return buf.getvalue()


def baseline(data: bytes) -> bytes:
    """Decode + re-encode with corrupt_image's encoder parameters, no crop."""
    img = Image.open(io.BytesIO(data))
    img.load()
    buf = io.BytesIO()
    if img.format == "JPEG":
        img.save(buf, "JPEG", quality=95, optimize=False, progressive=False)
    else:
        img.save(buf, "PNG", **PNG_PARAMS)
    return buf.getvalue()


def rate(fn: Callable[[int], object], seconds: float) -> tuple[float, int]:
    """Calls per second of fn(i) over about ``seconds`` (after one warm-up)."""
    fn(0)
    n, start = 0, time.perf_counter()
    while True:
        fn(n)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()

    cases = [("224x224 PNG", encode(natural_image(224, 224), "PNG")),
             ("1024x1024 JPEG q95", encode(natural_image(1024, 1024, seed=1), "JPEG"))]
    seeds = [derive_seed("bench", i, "image_crop") for i in range(100_000)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"crop benchmark: 1 process (1 core of {cores} visible), {args.seconds:g} s per measurement")
    print(f"{'input':<20} {'bytes':>9} {'baseline/s':>11} {'crop/s':>9} {'crop/baseline':>14}")
    results = []
    for name, data in cases:
        base_rate, _ = rate(lambda i: baseline(data), args.seconds)
        crop_rate, n = rate(lambda i: corrupt_image(data, seeds[i % len(seeds)]), args.seconds)
        ratio = crop_rate / base_rate
        print(f"{name:<20} {len(data):>9} {base_rate:>11.1f} {crop_rate:>9.1f} {ratio:>14.2f}")
        results.append({"input": name, "bytes": len(data), "baseline_per_s": round(base_rate, 1),
                        "crops_per_s": round(crop_rate, 1), "ratio": round(ratio, 3), "crops": n})
    if args.json:
        print(json.dumps({"bench": "crop", "results": results}))


if __name__ == "__main__":
    main()
