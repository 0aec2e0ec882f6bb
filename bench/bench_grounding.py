"""Benchmark: what the grounding stage costs, against generate and against bare vLLM.

    python bench/bench_grounding.py [--prompts 128] [--partition-rows 64] [--rounds 2] [--quick]

One process, one engine (the sample config: tiny model, bfloat16, local
executor), engine start-up excluded.  The sample data is ingested and
written as partitions (``bench_generate.prepare_inputs``), then:

* **generate**: ``LocalExecutor.run("generate", ...)`` over the partitions,
  timed -- the stage the grounding cost is compared with (target: grounding
  <= 15% of generate's time, DESIGN.md / issue 17);
* the pair stages (correctness, dropout_ntp, image_crop) run once, untimed,
  to make the pairs;
* **grounding**: ``LocalExecutor.run("grounding", ...)`` over the pair
  partitions, timed as a whole (read Parquet, decode images, render,
  tokenise, score, derive, write);
* **bare vLLM**: the same scoring prompts (rendered text + decoded images +
  ``SamplingParams(max_tokens=1, prompt_logprobs=0)``), built before the
  clock starts, then ONE ``llm.generate`` call.  Throughput = prompt tokens
  scored per second; target: the stage >= 0.9 of bare.

Rounds alternate (bare, stage / stage, bare, ...) after an untimed warm-up;
the best round of each is compared.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from bench_generate import ROOT, make_config, prepare_inputs

TARGET_SHARE = 0.15
TARGET_BARE = 0.90


def bare_inputs(config, engine, pair_dirs: list[str]):
    """The stage's own requests for every pair, as a plain script would submit them."""
    from pipeline import storage
    from pipeline.stage import StageContext
    from stages.grounding import GroundingStage

    rows = []
    for d in pair_dirs:
        for uri in storage.list_files(storage.join(d, "data"), ".parquet"):
            rows += storage.read_table(uri).to_pylist()
    ctx = StageContext("grounding", "bare", config, engine)
    _, requests = GroundingStage(config).prepare(rows, ctx)
    prompts = []
    for req in requests:
        p = {"prompt": req.prompt}
        if req.images:
            p["multi_modal_data"] = {"image": req.images[0] if len(req.images) == 1 else req.images}
        prompts.append(p)
    return rows, prompts, [req.params for req in requests]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=None, help="prompts (default 128; --quick 64)")
    ap.add_argument("--partition-rows", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds of each (default 2; --quick 1)")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (the sample config's n)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile one stage round")
    args = ap.parse_args()
    n_prompts = args.prompts or (64 if args.quick else 128)
    rounds = args.rounds or (1 if args.quick else 2)

    from pipeline.engine import get_engine
    from pipeline.executors import LocalExecutor
    from pipeline.orchestrator import plan

    if not (ROOT / "models" / "tiny-idefics3" / "model.safetensors").exists():
        raise SystemExit("models/tiny-idefics3 is missing: run `make tiny-model` first")
    work = tempfile.mkdtemp(prefix="bench-grounding-")
    config = make_config(work, args.partition_rows, args.n, args.max_tokens)
    config.run.stages = [*config.run.stages, "grounding"]
    in_dir, rows = prepare_inputs(config, work, n_prompts, args.partition_rows)
    executor = LocalExecutor(config)
    t0 = time.perf_counter()
    engine = get_engine(config)
    print(f"grounding benchmark: {len(rows)} prompts, n={args.n}; engine start-up "
          f"{time.perf_counter() - t0:.1f} s (not counted)", flush=True)

    def timed(stage: str, inputs: list[str], out: str):
        t = time.perf_counter()
        stats = executor.run(stage, plan(config, stage, inputs, os.path.join(work, out)))
        return time.perf_counter() - t, stats

    gen_s, gstats = timed("generate", [in_dir], "generate")
    gen_dir = os.path.join(work, "generate")
    pair_dirs = []
    for stage in ("correctness", "dropout_ntp", "image_crop"):
        timed(stage, [gen_dir], stage)
        pair_dirs.append(os.path.join(work, stage))
    pairs, prompts, params = bare_inputs(config, engine, pair_dirs)
    print(f"generate: {gen_s:.2f} s for {int(gstats.counters['tokens_generated'])} tokens; "
          f"{len(pairs)} pairs -> {len(prompts)} scoring requests", flush=True)

    def run_bare():
        t = time.perf_counter()
        outs = engine.llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t, sum(len(o.prompt_token_ids) for o in outs)

    def run_stage(tag: str):
        dt, stats = timed("grounding", pair_dirs, f"grounding-{tag}")
        shutil.rmtree(os.path.join(work, f"grounding-{tag}"), ignore_errors=True)
        return dt, stats

    run_bare()
    _, wstats = run_stage("warmup")
    print(f"warm-up done; stage rows out {wstats.rows_out}, failed "
          f"{ {k: v for k, v in wstats.counters.items() if 'failed' in k} or 0}", flush=True)
    tokens = run_bare()[1]
    bare, stage = [], []
    for r in range(rounds):
        for which in (("bare", "stage") if r % 2 == 0 else ("stage", "bare")):
            if which == "bare":
                bare.append(run_bare()[0])
            else:
                stage.append(run_stage(f"r{r}")[0])
            print(f"  round {r + 1} {which}: {(bare if which == 'bare' else stage)[-1]:.2f} s", flush=True)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        run_stage("profile")
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    shutil.rmtree(work, ignore_errors=True)

    share = min(stage) / gen_s
    vs_bare = min(bare) / min(stage)
    print(f"grounding: {len(prompts)} requests, {tokens} prompt tokens; stage {min(stage):.2f} s "
          f"({tokens / min(stage):,.0f} tok/s), bare vLLM {min(bare):.2f} s ({tokens / min(bare):,.0f} tok/s), "
          f"generate {gen_s:.2f} s")
    print(f"grounding: stage time / generate time = {share:.3f} (target <= {TARGET_SHARE}) "
          f"{'PASS' if share <= TARGET_SHARE else 'MISSED'}")
    print(f"grounding: stage throughput / bare vLLM = {vs_bare:.3f} (target >= {TARGET_BARE}) "
          f"{'PASS' if vs_bare >= TARGET_BARE else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
