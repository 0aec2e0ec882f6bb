"""Benchmark: the HTML report (``python -m pipeline report --input DIR``) of a 1,000,000-row dataset.

    python bench/bench_report.py [--rows 1000000] [--quick] [--shard-rows 5000] [--keep DIR]

Input: a dataset folder in the write stage's layout, synthesized cheaply:
``--rows`` pair rows (default 1,000,000; ``--quick`` uses 100,000), 95% text
pairs in ``data/train-*.parquet`` (correctness 70%, dropout_ntp 25%, format
5%) and 5% image-crop pairs in ``data/image_crop/``, ``--shard-rows`` rows per
shard (the write stage's default 5,000), written with the write stage's own
Parquet settings (``stages.write.parquet_bytes``: row-group size, encodings).
Every row carries the full provenance (19 filter verdicts, sampling params,
answers...), answers of 40-900 characters and one small PNG (24x24, a few
hundred bytes); one row in 500 has a 1024x768 JPEG instead, so the thumbnail
path is exercised.  About six pairs share a prompt.  ``manifest.json`` comes
from ``stages.write.Stats`` over the shards, as the write stage makes it, and
``report.json`` is a plausible run report.

Measured: the wall time of the CLI in a child process (imports included),
and its peak memory.  Target: under 60 s on 2 cores.
"""
from __future__ import annotations

import argparse
import io
import json
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

TARGET_S = 60.0
TEMPLATE_ROWS = 2500
WORDS = ("the image shows a red circle next to blue square and the chart bar value is larger than "
         "left right top bottom three four seven because first then count every object carefully "
         "answer final colour text written letters background").split()
RULES = ("empty", "never_ends", "length_bounds", "bad_characters", "repeated_ngram_fraction",
         "longest_repeated_substring", "repeated_lines", "language_mismatch", "missing_final_answer")


def _png(seed: int, size: int = 24) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    c = ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)
    d.ellipse((seed % 8, seed % 5, size - 1 - seed % 3, size - 1 - seed % 7), fill=c)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _big_jpeg(seed: int) -> bytes:
    from bench_crop import natural_image

    buf = io.BytesIO()
    natural_image(1024, 768, seed=seed).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _text(rng, lo: int, hi: int) -> str:
    n = int(rng.integers(lo, hi))
    return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), n)).capitalize() + "."


def templates(image_crop: bool):
    """TEMPLATE_ROWS pair rows (a PAIR_SCHEMA table) to tile the shards from."""
    import numpy as np

    from schemas import PAIR_SCHEMA
    from schemas.arrow import from_rows
    from schemas.records import pair_row, provenance

    rng = np.random.default_rng(1 if image_crop else 0)
    pngs = [_png(s) for s in range(64)]
    bigs = [_big_jpeg(s) for s in range(4)]
    rows = []
    for k in range(TEMPLATE_ROWS):
        method = "image_crop" if image_crop else ("correctness", "correctness", "dropout_ntp", "correctness",
                                                  "format", "correctness", "dropout_ntp", "correctness")[k % 8]
        img = bigs[k % 4] if k % 500 == 7 else pngs[k % 64]
        chosen = _text(rng, 8, 150) + f"\nFinal answer: {k % 7}"
        rejected = chosen if method == "image_crop" else _text(rng, 8, 150) + (
            "" if method == "format" else f"\nFinal answer: {k % 7 + 1}")
        if method == "dropout_ntp":
            cut = len(chosen) // 2
            rejected = chosen[:cut] + _text(rng, 5, 80)
        filters = [{"rule": r, "target": t, "passed": True, "reason": ""} for t in ("chosen", "rejected")
                   for r in RULES] + [{"rule": "length_ratio", "target": "pair", "passed": True, "reason": ""}]
        q = f"Question {k}: how many objects of each colour are there in the image?"
        rows.append(pair_row(
            pair_id=f"t{k}", method=method, source=("src_a", "src_b", "src_c")[k % 3], question=q,
            user_text=q + "\nThink step by step, then end your response with 'Final answer: <answer>'.",
            images=[{"bytes": img, "path": None}], chosen=chosen, rejected=rejected,
            rejected_images=[{"bytes": pngs[(k + 1) % 64], "path": None}] if image_crop else [],
            prov=provenance(
                prompt_id=f"s{k}", row_key=f"row-{k}", model="bench-model", model_revision="main",
                template_id="mmpr_final_answer",
                sampling={"n": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_tokens": 1024, "seed": k},
                chosen_index=k % 16, rejected_index=(k + 3) % 16, chosen_seed=k, rejected_seed=k + 3,
                chosen_tokens=len(chosen) // 4, rejected_tokens=len(rejected) // 4,
                chosen_finish_reason="stop", rejected_finish_reason="stop", answer_type="integer",
                ground_truth=[str(k % 7)], chosen_answer=str(k % 7),
                rejected_answer=None if method == "format" else str(k % 7 + 1),
                chosen_score=1.0, rejected_score=0.0, match_rule="number",
                cut_chars=len(chosen) // 2 if method == "dropout_ntp" else None,
                crop_boxes=[[3, 4, 12, 14]] if image_crop else None,
                filters=filters, pipeline_version="bench", config_hash="bench"),
        ))
    return from_rows(rows, PAIR_SCHEMA)


def make_dataset(out: Path, rows: int, shard_rows: int) -> tuple[int, int]:
    """The dataset folder; returns (shards, bytes)."""
    import numpy as np
    import pyarrow as pa

    from schemas import PAIR_SCHEMA, with_hf_metadata
    from stages.write import Shard, Stats, parquet_bytes

    schema = with_hf_metadata(PAIR_SCHEMA)
    n_crop = rows // 20
    plan = [("default", "data", rows - n_crop), ("image_crop", "data/image_crop", n_crop)]
    stats, entries, total, offset = Stats(), [], 0, 0
    rng = np.random.default_rng(7)
    prompts = max(rows // 6, 1)
    for config, folder, n in plan:
        template = templates(config == "image_crop")
        prov_type = template.schema.field("provenance").type
        sid_at = prov_type.get_field_index("prompt_id")
        count = -(-n // shard_rows)
        for i in range(count):
            m = min(shard_rows, n - i * shard_rows)
            t = template.take(pa.array(rng.integers(0, TEMPLATE_ROWS, m)))
            g = np.arange(offset, offset + m)
            offset += m
            prov = t.column("provenance").combine_chunks()
            children = [prov.field(j) for j in range(prov_type.num_fields)]
            children[sid_at] = pa.array([f"{(x * 2654435761) % prompts:010d}" for x in g.tolist()], pa.string())
            t = t.set_column(t.schema.get_field_index("provenance"), PAIR_SCHEMA.field("provenance"),
                             pa.StructArray.from_arrays(children, fields=list(prov_type)))
            t = t.set_column(0, PAIR_SCHEMA.field("id"), pa.array([f"{x:032x}" for x in g.tolist()], pa.string()))
            t = pa.Table.from_arrays(t.columns, schema=schema)
            shard = Shard(config, "train", i, count, m, folder)
            data = parquet_bytes(t)
            (out / folder).mkdir(parents=True, exist_ok=True)
            (out / shard.relpath).write_bytes(data)
            stats.add(shard, t)
            total += data.size
            entries.append({"path": shard.relpath, "config": config, "split": "train", "index": i, "count": count,
                            "rows": m, "bytes": data.size, "arrow_bytes": t.nbytes, "sha256": ""})
    manifest = {"name": "bench-report", "pipeline_version": "bench", "config_hash": "bench", "rows": rows,
                "rows_in": rows, "duplicates_dropped": 0, "splits": stats.splits(),
                "totals": {"method": stats.totals(3), "source": stats.totals(2),
                           "source_method": stats.source_method()},
                "lengths": stats.lengths(), "shards": entries, "exports": [], "config": {}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    (out / "report.json").write_text(json.dumps(run_report(rows, manifest), indent=2))
    return len(entries), total


def run_report(rows: int, manifest: dict) -> dict:
    """A plausible ``report.json`` for the synthetic dataset (the HTML report shows it as is)."""
    prompts = rows // 6
    m = manifest["totals"]["method"]
    responses = prompts * 16
    counters = {"responses": responses, "responses.format_error": prompts // 4, "prompts.all_wrong": prompts // 10}
    for s in ("src_a", "src_b", "src_c"):
        for i, t in enumerate(("integer", "multiple_choice", "yes_no")):
            counters[f"accuracy.{s}.{t}.total"] = responses // 9
            counters[f"accuracy.{s}.{t}.correct"] = responses // 9 * (3 + i) // 10
    counters.update({f"pairs_per_prompt.{k}": prompts // (k + 2) for k in range(1, 9)})

    def stage(rows_in: int, rows_out: int, wall: float, worker: float, quarantined=None, **c) -> dict:
        return {"rows_in": rows_in, "rows_out": rows_out, "quarantined": quarantined or {}, "retries": 0,
                "counters": c, "wall_s": worker, "wall_s_this_run": wall}

    pairs = {k: v + v // 50 for k, v in m.items()}
    return {
        "pipeline_version": "bench", "config_hash": "bench", "finished_at": "2026-01-01T00:00:00Z",
        "pairs_by_method": pairs, "tokens_generated": rows * 400,
        "stages": {
            "ingest": stage(prompts + 37, prompts, 60.0, 120.0, {"image_decode_error": 30, "prompt_too_long": 7}),
            "generate": stage(prompts, prompts - 3, 7200.0, 86400.0, {"engine_error": 3},
                              tokens_generated=rows * 380),
            "correctness": stage(prompts, pairs.get("correctness", 0) + pairs.get("format", 0), 100.0, 300.0,
                                 **counters),
            "dropout_ntp": {**stage(prompts, pairs.get("dropout_ntp", 0), 400.0, 900.0),
                            "counters": {"pairs.dropout_ntp": pairs.get("dropout_ntp", 0),
                                         "tokens_generated": rows * 20, "dropout_ntp.chosen_tokens": rows * 50,
                                         "dropout_ntp.continuation_tokens": rows * 20}},
            "filter": {**stage(sum(pairs.values()), rows, 80.0, 200.0),
                       "counters": {"filter.pair.length_ratio": rows // 100,
                                    "filter.rejected.repeated_lines": rows // 150,
                                    **{f"removed.{k}": pairs[k] - m[k] for k in m if pairs[k] > m[k]}}},
            "write": {"wall_s_this_run": 90.0},
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 rows")
    ap.add_argument("--shard-rows", type=int, default=5000)
    ap.add_argument("--keep", help="make (or reuse) the dataset in this folder and keep it")
    args = ap.parse_args()
    rows = 100_000 if args.quick else args.rows

    base = Path(args.keep or tempfile.mkdtemp(prefix="bench-report-"))
    ds = base / "dataset"
    try:
        t0 = time.perf_counter()
        if (ds / "manifest.json").exists() and json.loads((ds / "manifest.json").read_text())["rows"] == rows:
            print(f"input: reusing {ds}", flush=True)
        else:
            shutil.rmtree(ds, ignore_errors=True)
            ds.mkdir(parents=True)
            n_shards, size = make_dataset(ds, rows, args.shard_rows)
            print(f"input: {rows:,} rows in {n_shards} shards, {size / 1e6:,.0f} MB "
                  f"({time.perf_counter() - t0:.1f} s to make)", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pipeline", "report", "--input", str(ds)],
                              cwd=ROOT, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"report failed (exit {proc.returncode})")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        size = (ds / "report.html").stat().st_size
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    verdict = "PASS" if secs < TARGET_S else "MISSED"
    print(f"report: {rows:,} rows -> report.html ({size / 1e6:.1f} MB) in {secs:.1f} s, "
          f"peak {peak:,.0f} MB (target < {TARGET_S:.0f} s) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
