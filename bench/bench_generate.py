"""Benchmark: the generate stage's throughput against a bare ``vllm.LLM`` script.

    python bench/bench_generate.py [--prompts 256] [--partition-rows 64] [--rounds 3]
                                   [--n 8] [--max-tokens 96] [--ray] [--profile] [--quick]

One process, one engine, one run.  The sample data (data/sample) is ingested
with the project's own ``run_source`` into a temporary folder (the sample
config, configs/sample.yaml, with absolute paths and the local executor), and
its first ``--prompts`` prompts are written as partitions of
``--partition-rows`` rows (cycled with new sample ids when more prompts are
asked for than the sample has).

* **bare vLLM**: a plain script's view of the same work -- the same chat
  template rendering, the same decoded images, the same ``SamplingParams``
  (``n``, temperature, top-k, max_tokens and the per-prompt seed the stage
  derives from each ``prompt_id``), built before the clock starts, then ONE
  ``llm.generate`` call over all prompts.  Only that call is timed.
* **pipeline**: ``LocalExecutor.run("generate", tasks)`` over the partitions
  -- the project's code path (``run_task``: read Parquet, decode images,
  render, ``Engine.generate``, build rows, write Parquet + quarantine +
  marker), timed as a whole.
* diagnostic, **bare vLLM, one call per partition**: the bare requests
  submitted partition by partition.  It separates what partitioning costs
  the engine (each call drains its batch before the next one starts) from
  what the project's own code costs.

Both use the SAME already-started engine (``pipeline.engine.engine.get_engine``),
so engine start-up is excluded: the target (docs/architecture.md) is "at least 0.9 of
bare vLLM once the engine is warm".  One untimed warm-up pass over all
prompts runs first (so vLLM's multimodal and prefix caches are equally warm
for every timed round), then the rounds alternate (bare, per-partition,
pipeline / pipeline, per-partition, bare, ...); the best round of each is
compared.  Throughput = generated tokens /
seconds (both sides generate the same tokens: same seeds; the share of
identical responses is printed as a check).

``--ray`` additionally runs the stage end to end through ``RayExecutor``
(Ray start-up + a fresh engine in the actor + the partitions), reported on
its own line, not as the ratio.  ``--profile`` prints a cProfile of one
pipeline round with the time inside the engine (``engine.step``) separated out.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from bench_env import ROOT  # first: the repository on sys.path, the engine env defaults

TARGET = 0.90


def make_config(work_dir: str, partition_rows: int, n: int, max_tokens: int, kind: str = "local"):
    """configs/sample.yaml with absolute paths (as tests/conftest.py's make_config does)."""
    import yaml

    from pipeline.config.settings import PipelineConfig

    data = yaml.safe_load((ROOT / "configs" / "sample.yaml").read_text())
    for src in data["sources"]:
        if not os.path.isabs(src["path"]):
            src["path"] = str(ROOT / src["path"])
    data["model"]["tiny_model_dir"] = str(ROOT / "models" / "tiny-idefics3")
    data["model"]["tiny_model_data"] = str(ROOT / "data" / "sample")
    data["run"].update(work_dir=work_dir, output_dir=os.path.join(work_dir, "out"),
                       partition_rows=partition_rows)
    data["executor"]["kind"] = kind
    data["generate"].update(n=n, max_tokens=max_tokens)
    return PipelineConfig.model_validate(data)


def prepare_inputs(config, work: str, n_prompts: int | None, partition_rows: int,
                   repeat: int = 1) -> tuple[str, list[dict]]:
    """Ingest the sample data; write ``n_prompts`` prompt rows (None: every sample prompt ``repeat``
    times) as partitions. Returns (dir, rows)."""
    from pipeline.files import storage
    from pipeline.core.graph import make_stage
    from pipeline.run.orchestrator import run_source
    from schemas import PROMPT_SCHEMA
    import pyarrow as pa

    ingest_dir = os.path.join(work, "ingest")
    run_source(make_stage("ingest", config), ingest_dir)
    base: list[dict] = []
    for uri in storage.list_files(storage.join(ingest_dir, "data"), ".parquet"):
        base += storage.read_table(uri).to_pylist()
    if not base:
        raise SystemExit("ingest produced no prompts: is data/sample there?")
    rows = []
    for i in range(len(base) * repeat if n_prompts is None else n_prompts):
        r = dict(base[i % len(base)])
        if i >= len(base):  # a second pass over the sample: new ids, so new seeds
            r["prompt_id"] = f"{r['prompt_id']}#{i // len(base)}"
            r["row_key"] = f"{r['row_key']}#{i // len(base)}"
        rows.append(r)
    in_dir = os.path.join(work, "prompts")
    for p in range(0, len(rows), partition_rows):
        storage.write_table(storage.join(in_dir, "data", f"part-{p // partition_rows:05d}.parquet"),
                            pa.Table.from_pylist(rows[p:p + partition_rows], schema=PROMPT_SCHEMA))
    return in_dir, rows


def bare_requests(config, tokenizer, rows: list[dict]):
    """What a plain vLLM script would build: rendered prompts, decoded images, seeded params."""
    import io

    from PIL import Image
    from vllm import SamplingParams

    from pipeline.core.seeds import derive_seed
    from pipeline.config.templates import render_question

    g = config.generate
    prompts, params = [], []
    for row in rows:
        images = [Image.open(io.BytesIO(im["bytes"])).convert("RGB") for im in row["images"] or []]
        has_gt = bool(row["answer"])
        text = render_question(row["question"], row["choices"], g.template, has_gt)
        messages = [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]}]
        prompt = {"prompt": tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)}
        if images:
            prompt["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
        prompts.append(prompt)
        params.append(SamplingParams(n=g.n, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                                     max_tokens=g.max_tokens,
                                     seed=derive_seed(config.run.seed, row["prompt_id"], "generate")))
    return prompts, params


def read_responses(out_dir: str) -> tuple[dict[str, list[str]], int]:
    from pipeline.files import storage

    texts: dict[str, list[str]] = {}
    tokens = 0
    for uri in storage.list_files(storage.join(out_dir, "data"), ".parquet"):
        for row in storage.read_table(uri, columns=["prompt_id", "responses"]).to_pylist():
            texts[row["prompt_id"]] = [r["text"] for r in row["responses"]]
            tokens += sum(r["num_tokens"] for r in row["responses"])
    return texts, tokens


class GenerateTimer:
    """Wraps ``llm.llm_engine.step`` on the instance to time the engine's share of
    a pipeline round (the stage streams requests and steps the engine itself)."""

    def __init__(self, llm) -> None:
        engine = llm.llm_engine
        self.original = engine.step
        self.seconds = 0.0
        self.calls = 0

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
        engine.step = timed

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=None, help="prompts (default 256; --quick 128)")
    ap.add_argument("--partition-rows", type=int, default=64, help="prompts per partition (sample config: 64)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds of each (default 3; --quick 1)")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--ray", action="store_true", help="also run the stage end to end through RayExecutor")
    ap.add_argument("--profile", action="store_true", help="cProfile one pipeline round")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--quick", action="store_true", help="128 prompts, 1 round")
    args = ap.parse_args()
    n_prompts = args.prompts or (128 if args.quick else 256)
    rounds = args.rounds or (1 if args.quick else 3)

    from pipeline.engine.engine import get_engine
    from pipeline.run.executors import LocalExecutor
    from pipeline.run.orchestrator import plan

    model_dir = ROOT / "models" / "tiny-idefics3"
    if not (model_dir / "model.safetensors").exists():
        raise SystemExit(f"{model_dir} is missing: run `make tiny-model` first")

    work = tempfile.mkdtemp(prefix="bench-generate-")
    config = make_config(work, args.partition_rows, args.n, args.max_tokens)
    in_dir, rows = prepare_inputs(config, work, n_prompts, args.partition_rows)

    def tasks_for(out_dir: str):
        return plan(config, "generate", [in_dir], out_dir)

    n_parts = len(tasks_for(os.path.join(work, "x")))
    print(f"generate benchmark: {len(rows)} prompts x n={args.n}, max_tokens={args.max_tokens}, "
          f"{n_parts} partitions of {args.partition_rows}; model {model_dir.name}; {rounds} round(s) each",
          flush=True)

    t0 = time.perf_counter()
    engine = get_engine(config)
    print(f"engine start-up: {time.perf_counter() - t0:.1f} s (not counted)", flush=True)
    llm = engine.llm
    try:
        max_num_seqs = llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    except AttributeError:  # pragma: no cover -- another vLLM layout
        max_num_seqs = "?"
    bare_generate = llm.generate           # the real method, for the bare rounds
    prompts, params = bare_requests(config, engine.tokenizer, rows)
    timer = GenerateTimer(llm)             # the pipeline's calls go through the timer
    executor = LocalExecutor(config)

    def run_bare():
        t = time.perf_counter()
        outs = bare_generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        texts = {row["prompt_id"]: [c.text.strip() for c in o.outputs] for row, o in zip(rows, outs)}
        return dt, tokens, texts

    part_slices = [slice(p, p + args.partition_rows) for p in range(0, len(rows), args.partition_rows)]

    def run_bare_chunked():
        """Diagnostic: bare vLLM with one generate call per partition (what partitioning costs)."""
        t = time.perf_counter()
        outs = []
        for sl in part_slices:
            outs += bare_generate(prompts[sl], params[sl], use_tqdm=False)
        dt = time.perf_counter() - t
        return dt, sum(len(c.token_ids) for o in outs for c in o.outputs)

    def run_pipeline(tag: str):
        out_dir = os.path.join(work, f"generate-{tag}")
        tasks = tasks_for(out_dir)
        timer.reset()
        t = time.perf_counter()
        stats = executor.run("generate", tasks)
        dt = time.perf_counter() - t
        return dt, int(stats.counters["tokens_generated"]), timer.seconds, out_dir, stats

    # warm-up: every prompt once through each path (untimed)
    t = time.perf_counter()
    run_bare()
    _, _, _, warm_dir, wstats = run_pipeline("warmup")
    print(f"warm-up: {time.perf_counter() - t:.1f} s (not counted); pipeline rows out {wstats.rows_out}, "
          f"quarantined {dict(wstats.quarantined) or 0}", flush=True)
    shutil.rmtree(warm_dir, ignore_errors=True)

    bare_runs, pipe_runs, chunked_runs = [], [], []
    bare_texts = pipe_dir = None
    order = []
    for r in range(rounds):
        order += ["bare", "chunked", "pipe"] if r % 2 == 0 else ["pipe", "chunked", "bare"]
    if len(part_slices) == 1:
        order = [w for w in order if w != "chunked"]
    for i, which in enumerate(order):
        if which == "chunked":
            dt, tokens = run_bare_chunked()
            chunked_runs.append((tokens / dt, dt, tokens))
            print(f"  round {i + 1} bare vLLM, one call per partition (diagnostic): {tokens} tokens in "
                  f"{dt:.2f} s = {tokens / dt:,.0f} tok/s", flush=True)
        elif which == "bare":
            dt, tokens, bare_texts = run_bare()
            bare_runs.append((tokens / dt, dt, tokens))
            print(f"  round {i + 1} bare vLLM : {tokens} tokens in {dt:.2f} s = {tokens / dt:,.0f} tok/s", flush=True)
        else:
            dt, tokens, t_gen, out_dir, _ = run_pipeline(f"r{i}")
            pipe_runs.append((tokens / dt, dt, tokens, t_gen))
            print(f"  round {i + 1} pipeline  : {tokens} tokens in {dt:.2f} s = {tokens / dt:,.0f} tok/s "
                  f"(engine.step {t_gen:.2f} s in {timer.calls} calls, outside it {dt - t_gen:.2f} s "
                  f"= {(dt - t_gen) / dt:.1%})", flush=True)
            if pipe_dir:
                shutil.rmtree(pipe_dir, ignore_errors=True)
            pipe_dir = out_dir

    pipe_texts, _ = read_responses(pipe_dir)
    same = sum(pipe_texts.get(sid) == texts for sid, texts in bare_texts.items())
    print(f"check: {same}/{len(bare_texts)} prompts got identical responses from both paths "
          f"(same seeds; bf16 batch effects can change a few)")

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        dt, _, t_gen, out_dir, _ = run_pipeline("profile")
        prof.disable()
        print(f"profile: pipeline round {dt:.2f} s, engine.step {t_gen:.2f} s, outside {dt - t_gen:.2f} s")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)

    if args.ray:
        from pipeline.run.executors import RayExecutor

        rconfig = make_config(work, args.partition_rows, args.n, args.max_tokens, kind="ray")
        out_dir = os.path.join(work, "generate-ray")
        t = time.perf_counter()
        ray_ex = RayExecutor(rconfig)
        stats = ray_ex.run("generate", plan(rconfig, "generate", [in_dir], out_dir))
        dt = time.perf_counter() - t
        tokens = int(stats.counters["tokens_generated"])
        print(f"generate via RayExecutor end to end (Ray start-up + engine start-up in the actor + "
              f"{n_parts} partitions): {tokens} tokens in {dt:.1f} s = {tokens / dt:,.0f} tok/s "
              f"(includes start-up; not the ratio); the partitions themselves took {stats.wall_s:.1f} s "
              f"= {tokens / max(stats.wall_s, 1e-9):,.0f} tok/s", flush=True)
        import ray
        ray.shutdown()

    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")

    bare_best = max(bare_runs)
    pipe_best = max(pipe_runs)
    ratio = pipe_best[0] / bare_best[0]
    print(f"generate: all rounds tok/s: bare {[round(b[0]) for b in bare_runs]}, "
          f"pipeline {[round(p[0]) for p in pipe_runs]} (the pipeline streams partitions through "
          f"one engine, so its time is all stage time: {pipe_best[1]:.2f} s best round)")
    if chunked_runs:
        ch = max(chunked_runs)[0]
        print(f"generate: where the gap is: bare vLLM with one call per partition {ch:,.0f} tok/s = "
              f"{ch / bare_best[0]:.2f} of one call (engine tail per call: max_num_seqs {max_num_seqs}, "
              f"{args.partition_rows * args.n} sequences per partition); the streamed pipeline vs that = "
              f"{pipe_best[0] / ch:.2f}")
    print(f"generate: pipeline {pipe_best[0]:,.0f} tok/s vs bare vLLM {bare_best[0]:,.0f} tok/s = {ratio:.2f} "
          f"(target >= {TARGET:.2f}): {'PASS' if ratio >= TARGET else 'MISSED'}", flush=True)
    return 0


def shutdown_engines() -> None:
    """Stop the engine-core processes explicitly (an orphaned one keeps the output pipe open)."""
    from pipeline.engine import engine as engine_mod

    for eng in list(engine_mod._ENGINES.values()):
        try:
            eng.llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # noqa: BLE001 -- best effort; interpreter exit finalizes it too
            print(f"warning: engine shutdown: {e}", file=sys.stderr)
    engine_mod._ENGINES.clear()


if __name__ == "__main__":
    try:
        code = main()
    finally:
        if "pipeline.engine.engine" in sys.modules:
            shutdown_engines()
    sys.exit(code)
