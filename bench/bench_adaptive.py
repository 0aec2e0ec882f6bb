"""Benchmark: adaptive sampling against fixed-N sampling on the sample prompts.

    python bench/bench_adaptive.py [--n 32] [--max-tokens 96] [--repeat 3] [--rounds 4,8,...] [--quick]

One process, one engine (the tiny model), both modes over the same ingested
sample prompts, each through the project's own code path: ``generate``
(``run_engine_tasks``, every partition streamed through the engine), then
``correctness`` and ``dropout_ntp``.  Fixed-N draws ``--n`` samples per
prompt; adaptive draws them in rounds (configs/mmpr.yaml's settings, capped
at ``--n``).  Printed per mode:

* ground truth: correctness pairs, prompts that yield a pair, generated tokens
  of ground-truth prompts, tokens per pair, pairs per distinct chosen response
  (how often adaptive reuses a response);
* no ground truth: tokens per DropoutNTP pair (generation + continuation);
* the engine's idle share during generate: 1 - the time-weighted share of the
  engine's batch (``max_num_seqs``) held by unfinished sequences, sampled at
  every engine step (``Engine.occupied_s``); and the share of generate's time
  spent scoring rounds (``Engine.rounds_s``), the work adaptive sampling adds
  between engine steps.

Targets (issue "Adaptive sampling"): >= 2x fewer tokens per correctness pair
with >= 0.95x the prompts covered; >= 5x fewer tokens per DropoutNTP pair;
idle share at most 5 points above fixed-N's.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from bench_generate import make_config, prepare_inputs  # noqa: E402  (sets the bench environment defaults)

#: adaptive settings of configs/mmpr.yaml
ADAPTIVE = {"enabled": True, "rounds": [4, 8, 12, 16, 24, 32], "stop": "pairs", "max_reuse": 8,
            "all_right_after": 8, "no_gt_max": 4}


def run_mode(config, prompts_dir: str, work: str, engine) -> dict:
    import pyarrow.parquet as pq

    from pipeline.files import storage
    from pipeline.core.graph import make_stage
    from pipeline.run.orchestrator import plan
    from pipeline.run.runner import Task, run_engine_tasks, run_task
    from pipeline.core.stage import StageStats

    def tasks(stage: str, in_dir: str) -> list[Task]:
        return plan(config, stage, [in_dir], os.path.join(work, stage))

    stream0, busy0, rounds0 = engine.stream_s, engine.occupied_s, engine.rounds_s
    gen = run_engine_tasks(make_stage("generate", config), tasks("generate", prompts_dir), engine)
    stream, busy = engine.stream_s - stream0, engine.occupied_s - busy0
    corr = StageStats()
    for t in tasks("correctness", os.path.join(work, "generate")):
        corr.merge(run_task(make_stage("correctness", config), t))
    dnt = run_engine_tasks(make_stage("dropout_ntp", config), tasks("dropout_ntp", os.path.join(work, "generate")),
                           engine)
    pairs = [r for u in storage.list_files(os.path.join(work, "correctness", "data"), ".parquet")
             for r in pq.read_table(u, columns=["method", "provenance"]).to_pylist()]
    corr_pairs = [p for p in pairs if p["method"] == "correctness"]
    g = gen.counters
    gt_tokens = g["tokens_generated"] - g.get("tokens_generated.no_gt", 0)
    no_gt_tokens = g.get("tokens_generated.no_gt", 0) + dnt.counters.get("dropout_ntp.continuation_tokens", 0)
    chosen = {(p["provenance"]["prompt_id"], p["provenance"]["chosen_index"]) for p in corr_pairs}
    dnt_pairs = dnt.counters.get("pairs.dropout_ntp", 0)
    return {
        "samples": g["responses"], "pairs": len(corr_pairs),
        "prompts_covered": len({p["provenance"]["prompt_id"] for p in corr_pairs}),
        "gt_tokens": gt_tokens, "tokens_per_pair": gt_tokens / max(len(corr_pairs), 1),
        "pairs_per_chosen": len(corr_pairs) / max(len(chosen), 1),
        "dnt_pairs": dnt_pairs, "dnt_tokens_per_pair": no_gt_tokens / max(dnt_pairs, 1),
        "idle_share": 1 - busy / max(stream, 1e-9), "generate_s": stream,
        "rounds_share": (engine.rounds_s - rounds0) / max(stream, 1e-9),
        "stops": {k.removeprefix("adaptive.stop."): v for k, v in sorted(g.items()) if k.startswith("adaptive.stop.")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--quick", action="store_true", help="n=16 (rounds capped at 16), the sample prompts once")
    ap.add_argument("--repeat", type=int, default=3,
                    help="the sample prompts this many times (new ids, so new samples): a longer stream, "
                         "whose start and end weigh less in the idle share")
    ap.add_argument("--rounds", help="adaptive rounds, comma-separated (default: configs/mmpr.yaml's)")
    args = ap.parse_args()
    n = 16 if args.quick else args.n
    args.repeat = 1 if args.quick else args.repeat
    adaptive = {**ADAPTIVE, **({"rounds": [int(r) for r in args.rounds.split(",")]} if args.rounds else {})}

    from pipeline.engine.engine import get_engine
    from pipeline.run.preflight import ensure_model

    work = tempfile.mkdtemp(prefix="bench-adaptive-")
    try:
        base = make_config(work, 64, n, args.max_tokens)
        ensure_model(base)
        prompts_dir, _ = prepare_inputs(base, work, None, 64, repeat=args.repeat)
        engine = get_engine(base)
        results = {}
        for mode in ("fixed", "adaptive"):
            cfg = make_config(os.path.join(work, mode), 64, n, args.max_tokens)
            cfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(
                update={"adaptive": type(cfg.generate.adaptive)(**(adaptive if mode == "adaptive" else {}))})})
            results[mode] = run_mode(cfg, prompts_dir, os.path.join(work, mode), engine)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    f, a = results["fixed"], results["adaptive"]
    print(f"\nsample prompts x{args.repeat}, tiny model, n={n}, max_tokens={args.max_tokens}, max_pairs_per_prompt="
          f"{base.scoring.max_pairs_per_prompt}")
    print(f"{'':28}{'fixed-N':>12}{'adaptive':>12}")
    for key, label, fmt in (("samples", "samples drawn", "{:,.0f}"), ("pairs", "correctness pairs", "{:,.0f}"),
                            ("prompts_covered", "prompts with a pair", "{:,.0f}"),
                            ("gt_tokens", "tokens (GT prompts)", "{:,.0f}"),
                            ("tokens_per_pair", "tokens per pair", "{:,.1f}"),
                            ("pairs_per_chosen", "pairs per distinct chosen", "{:.2f}"),
                            ("dnt_pairs", "dropout_ntp pairs", "{:,.0f}"),
                            ("dnt_tokens_per_pair", "tokens per dropout pair", "{:,.1f}"),
                            ("generate_s", "generate seconds", "{:.1f}"),
                            ("idle_share", "engine idle share", "{:.1%}"),
                            ("rounds_share", "time scoring rounds", "{:.1%}")):
        print(f"{label:28}{fmt.format(f[key]):>12}{fmt.format(a[key]):>12}")
    print(f"adaptive stopped: {a['stops']}")
    saving = f["tokens_per_pair"] / max(a["tokens_per_pair"], 1e-9)
    coverage = a["prompts_covered"] / max(f["prompts_covered"], 1)
    dnt = f["dnt_tokens_per_pair"] / max(a["dnt_tokens_per_pair"], 1e-9)
    idle = a["idle_share"] - f["idle_share"]
    verdict = lambda ok: "PASS" if ok else "MISSED"  # noqa: E731
    print(f"adaptive: {saving:.2f}x fewer tokens per correctness pair (target >= 2x) {verdict(saving >= 2)}")
    print(f"adaptive: {coverage:.2f}x the prompts with a pair (target >= 0.95x) {verdict(coverage >= 0.95)}")
    print(f"adaptive: {dnt:.1f}x fewer tokens per dropout_ntp pair (target >= 5x) {verdict(dnt >= 5)}")
    print(f"adaptive: engine idle share {idle * 100:+.1f} points vs fixed-N (target <= +5) {verdict(idle <= 0.05)}")


if __name__ == "__main__":
    main()
