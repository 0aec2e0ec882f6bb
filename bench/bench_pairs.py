"""Benchmark: correctness pair construction over 1,000,000 responses, streamed.

    python bench/bench_pairs.py [--responses 1000000] [--samples 32] [--partition-rows 256]
                                [--image-kb 0] [--keep] [--seed 0] [--quick]

Synthetic response rows in the exact ``RESPONSE_SCHEMA`` shape (31,250 prompts
x 32 samples by default: short chain-of-thought texts ending in a
"Final answer: X" line, some unparseable, over multiple-choice, yes/no, count,
ChartQA-style relaxed numbers, VQA words and DocVQA ANLS answers; a
deterministic RNG per partition) are generated lazily, one partition at a
time, and handed to the stage the way the runner does it:
``pipeline.run.runner.run_rows_task(CorrectnessStage, task, rows)`` -- the stage's
``run``, ``pa.Table.from_pylist`` on its output, Parquet writes (data, side
output ``all_wrong``, marker) into a temporary folder.  Each partition's files
are deleted once written (``--keep`` keeps them), so the disk stays small.

Images: every row shares one tiny PNG (the stage only copies image records
into pairs); ``--image-kb N`` gives every prompt its own N-KiB blob instead,
to see what real images cost in memory.

Reported:

* extract + match alone (``methods.scoring.score_responses`` on the first
  ~50,000 of the same responses, cold caches): responses/s per core -- the
  target (docs/architecture.md) is 20,000+;
* the whole stage (scoring, pair selection, pair rows, Arrow, Parquet):
  responses/s per core, pairs produced, Parquet bytes, and its ratio to
  extract + match alone (how much everything around the matcher costs);
* peak RSS of the process (``ru_maxrss``) -- target under 2 GB.

The process is pinned to one CPU, so every rate is per core.  Generating the
synthetic rows is timed separately and not counted.
"""
from __future__ import annotations

import argparse
import gc
import io
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_MATCH = 20_000           # responses/s/core
TARGET_RSS_MB = 2048            # MiB
DEFAULT_RESPONSES = 1_000_000
QUICK_RESPONSES = 100_000

from bench_matching import FILLER  # noqa: E402  (the same realistic CoT sentences)
WORDS = ("red", "blue", "green", "dog", "cat", "kitchen", "tennis", "pizza", "wood",
         "left", "right", "bus", "umbrella", "surfing", "white", "black", "frisbee")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten", "eleven", "twelve")
DOC_ANSWERS = ("Invoice No. 4521-A", "John A. Smith", "12/03/1998", "ACME Corporation",
               "Total amount due", "Research and Development", "Room 204, Building C",
               "$1,245.00", "Philip Morris USA", "Quarterly Sales Report")
OPTIONS = (("mitochondria", "nucleus", "ribosome", "chloroplast"),
           ("producer", "consumer", "decomposer"),
           ("Asia", "Europe", "Africa", "North America", "South America"),
           ("increase", "decrease", "stay the same"))
#: per-prompt probability that a sample is right: some prompts all wrong, some all right
ACCURACY = (0.0, 0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0)
FORMAT_ERROR_RATE = 0.06


def _question(rng: random.Random) -> dict:
    """One prompt: source, question, ground truths, type, choices, right and wrong answer variants."""
    kind = rng.choice(("mc", "yes_no", "count", "chart", "word", "doc"))
    if kind == "mc":
        choices = list(rng.choice(OPTIONS))
        k = rng.randrange(len(choices))
        letter, other = "ABCDE"[k], "ABCDE"[(k + 1) % len(choices)]
        return dict(source="bench_mc", question="Which option is shown in the diagram?",
                    answer=[letter], answer_type="multiple_choice", choices=choices,
                    right=[letter, f"({letter})", f"{letter}. {choices[k]}", choices[k]],
                    wrong=[other, f"{other}. {choices[(k + 1) % len(choices)]}"])
    if kind == "yes_no":
        gt = rng.choice(("yes", "no"))
        opp = "no" if gt == "yes" else "yes"
        return dict(source="bench_vqa", question="Is there a dog in the picture?", answer=[gt],
                    answer_type="yes_no", choices=None,
                    right=[gt.capitalize(), f"{gt.capitalize()}, there is."], wrong=[opp.capitalize()])
    if kind == "count":
        n = rng.randint(0, 11)
        return dict(source="bench_vqa", question="How many people are there?",
                    answer=[str(n), NUMBER_WORDS[n]], answer_type="integer", choices=None,
                    right=[str(n), NUMBER_WORDS[n], f"{n} people"], wrong=[str(n + 1), str(n + 2 + rng.randint(0, 3))])
    if kind == "chart":
        v = round(rng.uniform(1, 5000), rng.choice((0, 1, 2)))
        unit = rng.choice(("", "%", " million"))
        gt = (f"{v:,}" if v >= 1000 and rng.random() < 0.5 else f"{v:g}") + unit
        return dict(source="bench_chart", question="What is the value of the highest bar?",
                    answer=[gt], answer_type="number", choices=None,
                    right=[gt, f"{v * 1.02:.2f}{unit}", f"approximately {v:g}{unit}"],
                    wrong=[f"{v * 1.3:.1f}{unit}", f"{v * 0.8:g}"])
    if kind == "word":
        gt = rng.choice(WORDS)
        other = rng.choice([w for w in WORDS if w != gt])
        return dict(source="bench_vqa", question="What is the man holding?", answer=[gt],
                    answer_type="auto", choices=None,
                    right=[gt, gt.capitalize() + ".", f"the {gt}"], wrong=[other, f"a {other}"])
    gt = rng.choice(DOC_ANSWERS)
    other = rng.choice([d for d in DOC_ANSWERS if d != gt])
    return dict(source="bench_doc", question="What is written in the header?", answer=[gt],
                answer_type="anls", choices=None,
                right=[gt, gt.upper(), gt[:-2] + gt[-1]], wrong=[other, "N/A"])


def _response_text(rng: random.Random, answer: str | None) -> str:
    reasoning = " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 6)))
    if answer is None:  # a format negative: no parseable final line
        return reasoning + " So that is my conclusion."
    label = rng.choice(("Final answer:", "Final answer:", "Final Answer:", "**Final answer:**"))
    return f"{reasoning}\n{label} {answer}"


def _image_record(rng: random.Random, image_kb: int, shared: dict) -> dict:
    if image_kb <= 0:
        return shared
    return {"bytes": rng.randbytes(image_kb * 1024), "path": "image.jpg"}


def make_partition(index: int, n_prompts: int, samples: int, seed: int, image_kb: int,
                   shared_image: dict) -> list[dict]:
    """``n_prompts`` rows of RESPONSE_SCHEMA shape, deterministic per (seed, index)."""
    rng = random.Random(seed * 1_000_003 + index)
    rows = []
    for j in range(n_prompts):
        q = _question(rng)
        acc = rng.choice(ACCURACY)
        sid = f"p{index:06d}-{j:04d}"
        responses = []
        for k in range(samples):
            r = rng.random()
            if r < FORMAT_ERROR_RATE:
                ans = None
            elif rng.random() < acc:
                ans = rng.choice(q["right"])
            else:
                ans = rng.choice(q["wrong"])
            text = _response_text(rng, ans)
            responses.append({"index": k, "text": text, "finish_reason": "stop",
                              "num_tokens": len(text) // 4, "seed": 1000 + k})
        rows.append({
            "prompt_id": sid, "source": q["source"], "row_key": sid, "question": q["question"],
            "images": [_image_record(rng, image_kb, shared_image)], "answer": q["answer"],
            "answer_type": q["answer_type"], "choices": q["choices"], "facts": None,
            "template_id": "mmpr_final_answer",
            "prompt_text": f"User:<image>{q['question']}\nThink step by step...<end_of_utterance>\nAssistant:",
            "prompt_tokens": 96, "model": "bench-model", "model_revision": "",
            "sampling": {"n": samples, "temperature": 1.0, "top_p": 1.0, "top_k": 50,
                         "max_tokens": 1024, "seed": 12345},
            "responses": responses,
        })
    return rows


def make_config(work_dir: str, partition_rows: int):
    from pipeline.config.settings import PipelineConfig

    src = lambda name, **kw: {"name": name, "format": "jsonl", "path": f"/nonexistent/{name}.jsonl", **kw}  # noqa: E731
    return PipelineConfig.model_validate({
        "run": {"name": "bench-pairs", "work_dir": work_dir, "partition_rows": partition_rows,
                "seed": 1234, "stages": ["correctness"]},
        "executor": {"kind": "local"},
        "sources": [src("bench_vqa"), src("bench_mc"), src("bench_chart", relaxed_numeric=True),
                    src("bench_doc")],
        "scoring": {"threshold": 0.9, "max_pairs_per_prompt": 15},
    })


def tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def clear_caches() -> None:
    from methods import extract as extract_mod
    from methods import match as match_mod
    from methods import match_rules, multiple_choice, vqa_eval

    for mod in (extract_mod, match_mod, match_rules, multiple_choice, vqa_eval):
        for obj in vars(mod).values():
            if hasattr(obj, "cache_clear"):
                obj.cache_clear()


def peak_rss_mb() -> float:
    # Linux: ru_maxrss is in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--responses", type=int, default=None,
                    help=f"total responses (default {DEFAULT_RESPONSES:,}; --quick: {QUICK_RESPONSES:,})")
    ap.add_argument("--samples", type=int, default=32, help="responses per prompt")
    ap.add_argument("--partition-rows", type=int, default=256, help="prompts per partition")
    ap.add_argument("--match-responses", type=int, default=50_000,
                    help="responses timed for extract + match alone")
    ap.add_argument("--image-kb", type=int, default=0, help="per-prompt image blob size (0 = one tiny shared PNG)")
    ap.add_argument("--keep", action="store_true", help="keep the Parquet output (printed path)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RESPONSES:,} responses")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    args = ap.parse_args()
    n_total = args.responses or (QUICK_RESPONSES if args.quick else DEFAULT_RESPONSES)
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # "per core": one CPU

    import pyarrow as pa  # noqa: F401  (import cost outside the timings)

    from pipeline.files import storage
    from pipeline.run.runner import Task, run_rows_task
    from pipeline.core.stage import StageStats
    from methods.scoring import score_responses
    from pipeline.config.templates import EXTRACTION_STYLE
    from stages.correctness import CorrectnessStage

    n_prompts = max(1, n_total // args.samples)
    n_parts = -(-n_prompts // args.partition_rows)
    shared_image = {"bytes": tiny_png(), "path": "tiny.png"}
    work = tempfile.mkdtemp(prefix="bench-pairs-")
    config = make_config(work, args.partition_rows)
    stage = CorrectnessStage(config)
    out_dir = os.path.join(work, "correctness")
    stage_hash = config.stage_hash("correctness")
    rss_start = peak_rss_mb()
    print(f"pairs benchmark: {n_prompts:,} prompts x {args.samples} samples = "
          f"{n_prompts * args.samples:,} responses in {n_parts} partitions of {args.partition_rows} prompts; "
          f"images: {'tiny shared PNG' if args.image_kb <= 0 else f'{args.image_kb} KiB per prompt'}; "
          f"1 CPU; output {out_dir}", flush=True)

    # -- extract + match alone, on the first partitions' responses (cold caches) --
    match_rows: list[dict] = []
    i = 0
    while sum(len(r["responses"]) for r in match_rows) < min(args.match_responses, n_prompts * args.samples):
        match_rows += make_partition(i, min(args.partition_rows, n_prompts - len(match_rows)),
                                     args.samples, args.seed, 0, shared_image)
        i += 1
    n_match = sum(len(r["responses"]) for r in match_rows)
    clear_caches()
    gc.collect()
    t0 = time.perf_counter()
    n_scored = sum(len(score_responses(r, config.scoring, config.source(r["source"]), EXTRACTION_STYLE))
                   for r in match_rows)
    t_match = time.perf_counter() - t0
    assert n_scored == n_match
    match_rate = n_match / t_match
    del match_rows
    clear_caches()
    gc.collect()

    # -- the stage, streamed partition by partition --------------------------------
    total = StageStats()
    t_gen = t_stage = 0.0
    out_bytes = 0
    done_prompts = 0
    t_wall0 = time.perf_counter()
    for p in range(n_parts):
        k = min(args.partition_rows, n_prompts - done_prompts)
        tg = time.perf_counter()
        rows = make_partition(p, k, args.samples, args.seed, args.image_kb, shared_image)
        ts = time.perf_counter()
        t_gen += ts - tg
        task = Task("correctness", f"part-{p:05d}", (), out_dir, stage_hash)
        total.merge(run_rows_task(stage, task, rows, None, 0))
        t_stage += time.perf_counter() - ts
        del rows
        done_prompts += k
        for sub in ("data", "side/all_wrong", "quarantine"):
            d = os.path.join(out_dir, sub)
            for f in (os.listdir(d) if os.path.isdir(d) else []):
                out_bytes += os.path.getsize(os.path.join(d, f))
                if not args.keep:
                    os.remove(os.path.join(d, f))
        if (p + 1) % max(1, n_parts // 5) == 0 or p + 1 == n_parts:
            print(f"  {p + 1}/{n_parts} partitions, {total.counters['responses']:,} responses, "
                  f"{total.rows_out:,} pairs, {total.counters['responses'] / max(t_stage, 1e-9):,.0f} "
                  f"responses/s, peak RSS {peak_rss_mb():,.0f} MiB", flush=True)
    t_wall = time.perf_counter() - t_wall0
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    assert not storage.exists(work) or args.keep

    c = total.counters
    n_resp = int(c["responses"])
    stage_rate = n_resp / t_stage
    rss = peak_rss_mb()
    pairs_by = ", ".join(f"{k[6:]} {int(v):,}" for k, v in sorted(c.items()) if k.startswith("pairs."))
    print(f"prompts {int(c['prompts']):,}: all wrong {int(c['prompts.all_wrong']):,}, "
          f"all correct {int(c['prompts.all_correct']):,}; responses correct {int(c['responses.correct']):,}, "
          f"format errors {int(c['responses.format_error']):,}")
    print(f"pairs produced: {total.rows_out:,} ({pairs_by}); Parquet written {out_bytes / 2**20:,.1f} MiB"
          + (f" (kept in {work})" if args.keep else " (deleted per partition)"))
    print(f"time: stage {t_stage:.1f} s, synthetic row generation {t_gen:.1f} s (not counted), wall {t_wall:.1f} s")
    print(f"extract + match alone (score_responses, {n_match:,} responses): {match_rate:,.0f} responses/s/core "
          f"(target {TARGET_MATCH:,}): {'PASS' if match_rate >= TARGET_MATCH else 'MISSED'}")
    print(f"pairs stage: {stage_rate:,.0f} responses/s/core vs extract + match alone {match_rate:,.0f} "
          f"= {stage_rate / match_rate:.2f} (stage overhead {(1 / stage_rate - 1 / match_rate) * 1e6:.1f} us/response)")
    print(f"pairs memory: peak RSS {rss:,.0f} MiB over {n_resp:,} responses (at start {rss_start:,.0f} MiB) "
          f"(target < {TARGET_RSS_MB:,} MiB): {'PASS' if rss < TARGET_RSS_MB else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
