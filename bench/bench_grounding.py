"""Benchmark: what the grounding stage costs, against generate and against bare vLLM.

    python bench/bench_grounding.py [--prompts 128] [--partition-rows 64] [--rounds 2] [--quick]

One process, one engine (the sample config: tiny model, bfloat16, local
executor), engine start-up excluded.  The sample data is ingested and
written as partitions (``bench_generate.prepare_inputs``), then:

* **generate**: ``LocalExecutor.run("generate", ...)`` over the partitions,
  timed -- the stage the grounding cost is compared with (target: grounding
  <= 15% of generate's time, issue 17) -- twice: as a run without
  grounding runs it, and with the sampled tokens' log-probs asked for (what a
  run with grounding does: the stage takes sampled texts' with-image scores
  from them); the difference is charged to grounding;
* the pair stages (correctness, dropout_ntp, image_crop) run once, untimed,
  to make the pairs;
* **grounding**: ``LocalExecutor.run("grounding", ...)`` over the pair
  partitions, timed as a whole (read Parquet, decode images, render,
  tokenise, score, derive, write);
* **bare vLLM**: the scoring prompts (rendered text + decoded images +
  ``SamplingParams(max_tokens=1, prompt_logprobs=0)``), built before the
  clock starts, then ONE ``llm.generate`` call: every distinct text of the
  pairs under every image condition (what a script without the stage sends;
  target: the stage scores the pairs at >= 0.9 of its pairs per second), and
  the stage's own requests alone (what the stage adds around vLLM; and the
  floor of the share of generate: no stage sends fewer requests, so none can
  cost less than they do in one bare call on this machine).

* **vLLM's defaults**: the scoring requests alone with ``skip_reading_prefix_cache``
  left at vLLM's default for prompt log-probs (no cache reads) and no prefix
  requests: what the prefix-cache sharing saves.

* **no reuse**: the stage with ``grounding.reuse_sampled_logprobs`` off (a
  request for every text, generation's log-probs ignored).

* **eager**: this code with each partition's requests all built before the first
  is sent (``prepare``'s iterator drawn into a list).  A diagnostic only: on a
  loaded 2-core machine it ran ~2x the stage's time, slower than the code before
  the overlap did in the same hour, so it does not stand for that code; compare
  two versions with ``bench/ab_grounding_trees.py``.

``--variants`` times only some of them (``stage`` and ``bare`` are always kept: the
ratios need them), ``--generate-rounds`` sets generate's rounds (default 3), and
``--breakdown`` prints, per variant, the median seconds the stage's own code spends
in each part (read, prepare, adding requests to vLLM, waiting in engine steps,
finish, commit): the parts are the driver's wall time, and the engine core's work
overlaps them.

Rounds alternate (the variants in this order, then reversed, ...) after an
untimed warm-up; the best round of each is compared.  Every timed run starts with vLLM's prefix,
multimodal and encoder caches empty (in a build, generate's cached prompts may
still be there; the cold cache is the conservative case).

``--model realsize``: the same on ``bench/realsize_model.py``'s ``cpu`` preset
(the Idefics3 architecture with the real 128k vocabulary and 169 image tokens
per image, random weights).  The tiny model answers in ~15 tokens, so its
generate stage is mostly prefill too: it cannot show what scoring costs next
to generation.
Random weights answer at random, so the pair stages would make no pairs; the
pairs are built from each prompt's responses instead, as a 50% pass rate
would pair them (even samples "right", odd "wrong", every right x wrong pair
up to 15) plus one image_crop pair per prompt: the request mix a real
correctness + image_crop build sends.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_generate import ROOT, make_config, prepare_inputs
from grounding_parts import Breakdown

TARGET_SHARE = 0.15
TARGET_BARE = 0.90
VARIANTS = ("bare", "stage", "default", "no_reuse", "bare_all", "eager")


def bare_inputs(config, engine, pair_dirs: list[str]):
    """The stage's own requests for every pair, as a plain script would submit them."""
    from pipeline.files import storage
    from pipeline.core.stage import StageContext
    from stages.grounding import GroundingStage

    rows = []
    for d in pair_dirs:
        for uri in storage.list_files(storage.join(d, "data"), ".parquet"):
            rows += storage.read_table(uri).to_pylist()
    ctx = StageContext("grounding", "bare", config, engine)
    _, requests = GroundingStage(config).prepare(rows, ctx)
    requests = list(requests)  # built as drawn (an iterator)
    prompts = []
    for req in requests:
        p = {"prompt": req.prompt}
        if req.images:
            p["multi_modal_data"] = {"image": req.images[0] if len(req.images) == 1 else req.images}
        prompts.append(p)
    return rows, prompts, [req.params for req in requests]


def synthetic_pairs(gen_dir: str, out_dir: str, max_pairs: int = 15) -> list[str]:
    """Pairs from generate's responses for a model without right answers (``--model realsize``)."""
    from methods.crop import corrupt_image
    from pipeline.files import storage
    from schemas import PAIR_SCHEMA
    from schemas.arrow import from_rows
    from schemas.records import pair_row, provenance

    for uri in storage.list_files(storage.join(gen_dir, "data"), ".parquet"):
        rows = []
        for r in storage.read_table(uri).to_pylist():
            texts = [x["text"] for x in r["responses"]]
            right, wrong = texts[0::2], texts[1::2]
            common = dict(source=r["source"], question=r["question"], user_text=r["question"], images=r["images"],
                          prov=provenance(prompt_id=r["prompt_id"]))
            combos = [(c, w) for c in right for w in wrong][:max_pairs]
            rows += [pair_row(pair_id=f"{r['prompt_id']}-{i}", method="correctness", chosen=c, rejected=w, **common)
                     for i, (c, w) in enumerate(combos)]
            if r["images"]:
                crop, _ = corrupt_image(r["images"][0]["bytes"], seed=0)
                rows.append(pair_row(pair_id=f"{r['prompt_id']}-crop", method="image_crop", chosen=texts[0],
                                     rejected=texts[0], rejected_images=[{"bytes": crop, "path": None}], **common))
        storage.write_table(storage.join(out_dir, "data", uri.rsplit("/", 1)[1]), from_rows(rows, PAIR_SCHEMA))
    return [out_dir]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=None, help="prompts (default 128; --quick 64)")
    ap.add_argument("--partition-rows", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds of each (default 2; --quick 1)")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (the sample config's n)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", choices=("tiny", "realsize"), default="tiny",
                    help="the sample config's tiny model, or the real-size architecture (cpu preset, random weights)")
    ap.add_argument("--profile", action="store_true", help="cProfile one stage round")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"variants timed (of {','.join(VARIANTS)})")
    ap.add_argument("--generate-rounds", type=int, default=3, help="timed rounds of generate (with/without log-probs)")
    ap.add_argument("--breakdown", action="store_true", help="time the stage's parts per variant (medians)")
    args = ap.parse_args()
    n_prompts = args.prompts or (64 if args.quick else 128)
    rounds = args.rounds or (1 if args.quick else 2)

    from pipeline.engine.engine import get_engine
    from pipeline.run.executors import LocalExecutor
    from pipeline.run.orchestrator import plan

    if not (ROOT / "models" / "tiny-idefics3" / "model.safetensors").exists():
        raise SystemExit("models/tiny-idefics3 is missing: run `make tiny-model` first")
    work = tempfile.mkdtemp(prefix="bench-grounding-")
    if args.model == "realsize":
        from bench_realsize import realsize_config
        from realsize_model import write_model

        args.engine_kwargs, args.tp = {}, 1
        config = realsize_config(work, write_model("cpu", Path(work) / "model-cpu"), "cpu", args)
    else:
        config = make_config(work, args.partition_rows, args.n, args.max_tokens)
    config.run.stages = [*config.run.stages, "grounding"]
    in_dir, rows = prepare_inputs(config, work, n_prompts, args.partition_rows)
    executor = LocalExecutor(config)
    t0 = time.perf_counter()
    engine = get_engine(config)
    print(f"grounding benchmark: {len(rows)} prompts, n={args.n}; engine start-up "
          f"{time.perf_counter() - t0:.1f} s (not counted)", flush=True)

    from bench_realsize import reset_caches

    def timed(stage: str, inputs: list[str], out: str):
        reset_caches(engine.llm)
        t = time.perf_counter()
        stats = executor.run(stage, plan(config, stage, inputs, os.path.join(work, out)))
        return time.perf_counter() - t, stats

    # generate as a run without grounding runs it, and as a run with grounding runs it (the sampled
    # tokens' log-probs asked for: grounding scores sampled texts with their image from them); the
    # difference is grounding's cost too
    gen_plain, gen_lp = [], []
    for r in range(max(args.generate_rounds, 1)):
        for lp in ((False, True) if r % 2 == 0 else (True, False)):
            config.generate.logprobs = lp
            dt, st = timed("generate", [in_dir], f"generate-{r}-{int(lp)}")
            (gen_lp if lp else gen_plain).append(dt)
            if lp:
                gstats = st
    config.generate.logprobs = None
    gen_s, gen_extra = min(gen_plain), max(min(gen_lp) - min(gen_plain), 0.0)
    gen_dir = os.path.join(work, "generate-0-1")
    pair_dirs = []
    if args.model == "realsize":
        pair_dirs = synthetic_pairs(gen_dir, os.path.join(work, "pairs"))
    else:
        for stage in ("correctness", "dropout_ntp", "image_crop"):
            timed(stage, [gen_dir], stage)
            pair_dirs.append(os.path.join(work, stage))
    pairs, prompts, params = bare_inputs(config, engine, pair_dirs)
    # what a script without the stage sends for the same pairs: every distinct text under every
    # image condition, generation's log-probs unused
    config.grounding.reuse_sampled_logprobs = False
    _, all_prompts, all_params = bare_inputs(config, engine, pair_dirs)
    config.grounding.reuse_sampled_logprobs = True
    print(f"generate: {gen_s:.2f} s for {int(gstats.counters['tokens_generated'])} tokens; with the sampled "
          f"tokens' log-probs {min(gen_lp):.2f} s (+{gen_extra:.2f} s, charged to grounding); "
          f"{len(pairs)} pairs -> {len(prompts)} requests", flush=True)

    def run_bare(prompts=prompts, params=params):
        reset_caches(engine.llm)
        t = time.perf_counter()
        outs = engine.llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t, sum(len(o.prompt_token_ids) for o in outs)

    # what the same scoring costs with vLLM's defaults: no prefix-cache reads for prompt log-probs,
    # so every text computes its prompt (and image) again, log-probs included
    scoring = [(p, sp) for p, sp in zip(prompts, params) if sp.prompt_logprobs is not None]
    default_params = scoring[0][1].clone()
    default_params.skip_reading_prefix_cache = True
    default_prompts = [p for p, _ in scoring]

    def run_stage(tag: str):
        dt, stats = timed("grounding", pair_dirs, f"grounding-{tag}")
        shutil.rmtree(os.path.join(work, f"grounding-{tag}"), ignore_errors=True)
        return dt, stats

    run_bare()
    _, wstats = run_stage("warmup")
    print(f"warm-up done; stage rows out {wstats.rows_out}, failed "
          f"{ {k: v for k, v in wstats.counters.items() if 'failed' in k} or 0}", flush=True)
    tokens = run_bare()[1]

    def run_without_reuse(tag: str):
        config.grounding.reuse_sampled_logprobs = False
        try:
            return run_stage(tag)
        finally:
            config.grounding.reuse_sampled_logprobs = True

    def run_eager(tag: str):
        from stages.grounding import GroundingStage

        lazy = GroundingStage.prepare
        GroundingStage.prepare = lambda self, rows, ctx: (lambda state, reqs: (state, list(reqs)))(*lazy(self, rows, ctx))
        try:
            return run_stage(tag)
        finally:
            GroundingStage.prepare = lazy

    # each variant: one timed run (its seconds), given the round number
    variants = {
        "bare": lambda r: run_bare()[0],
        "stage": lambda r: run_stage(f"r{r}")[0],
        "default": lambda r: run_bare(default_prompts, [default_params] * len(default_prompts))[0],
        "no_reuse": lambda r: run_without_reuse(f"n{r}")[0],
        "bare_all": lambda r: run_bare(all_prompts, all_params)[0],
        "eager": lambda r: run_eager(f"e{r}")[0],
    }
    chosen = {"bare", "stage", *args.variants.split(",")}
    variants = {name: fn for name, fn in variants.items() if name in chosen}
    parts = Breakdown(engine) if args.breakdown else None
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            if parts:
                parts.start(name)
            times[name].append(variants[name](r))
            print(f"  round {r + 1} {name}: {times[name][-1]:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    if parts:
        parts.report(times)
    print("medians: " + ", ".join(f"{n} {statistics.median(t):.2f} s" for n, t in times.items()))
    if "eager" in times:
        print(f"grounding: overlap: the stage {statistics.median(times['stage']):.2f} s against "
              f"{statistics.median(times['eager']):.2f} s with each partition's requests built before any is sent "
              f"(medians); stage/bare {statistics.median(times['stage']) / statistics.median(times['bare']):.2f}x, "
              f"eager/bare {statistics.median(times['eager']) / statistics.median(times['bare']):.2f}x")
    best = {name: min(t) for name, t in times.items()}
    bare, stage = best["bare"], best["stage"]
    uncached, no_reuse, bare_all = (best.get(n, float("nan")) for n in ("default", "no_reuse", "bare_all"))
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        run_stage("profile")
        prof.disable()
        pstats.Stats(prof).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(40)
    shutil.rmtree(work, ignore_errors=True)

    cached_share = wstats.counters["grounding.cached_tokens"] / max(wstats.counters["grounding.prompt_tokens"], 1)
    share = (stage + gen_extra) / gen_s
    from_gen = int(wstats.counters.get("grounding.from_generation", 0))
    vs_bare = bare_all / stage
    print(f"grounding: {len(prompts)} requests, {tokens} prompt tokens; stage {stage:.2f} s "
          f"({tokens / stage:,.0f} tok/s), bare vLLM {bare:.2f} s ({tokens / bare:,.0f} tok/s), "
          f"generate {gen_s:.2f} s")
    print(f"grounding: prefix reuse: the same scoring with vLLM's defaults (no cache reads for prompt log-probs, "
          f"no prefix requests) {uncached:.2f} s = {uncached / bare:.2f}x the time with the stage's "
          f"requests; the stage read {cached_share:.0%} of its scored prompt tokens from the cache")
    print(f"grounding: sampled texts scored from generation's log-probs: {from_gen} (no request each); "
          f"the stage without that {no_reuse:.2f} s = {no_reuse / stage:.2f}x the stage's time")
    print(f"grounding: (stage time + generate's extra for log-probs) / generate time = {share:.3f} "
          f"(target <= {TARGET_SHARE}) "
          f"{'PASS' if share <= TARGET_SHARE else 'MISSED'}")
    print(f"grounding: bare vLLM scoring every text of the same pairs (no generation log-probs): "
          f"{len(all_prompts)} requests, {bare_all:.2f} s; the stage's own {len(prompts)} requests "
          f"alone: {bare:.2f} s (the stage's overhead over them: {stage / bare:.2f}x)")
    # what is left after reuse is one prefill per distinct text without the image (and with the
    # crop): those requests in one bare call are the least any stage sends, so this share is the
    # floor on this machine -- vLLM's prefill against its decode, with no stage code at all
    # (generate's extra for log-probs left out: it is within this machine's noise)
    floor = bare / gen_s
    print(f"grounding: floor: the stage's own requests in bare vLLM / generate time = "
          f"{floor:.3f} ({'below' if floor <= TARGET_SHARE else 'above'} the target: "
          f"{'a stage could meet it here' if floor <= TARGET_SHARE else 'no stage can meet it on this machine'})")
    print(f"grounding: stage pairs/s / bare vLLM's for the same pairs = {vs_bare:.3f} (target >= {TARGET_BARE}) "
          f"{'PASS' if vs_bare >= TARGET_BARE else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
