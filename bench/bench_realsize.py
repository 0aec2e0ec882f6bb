"""Benchmark: the generate stage against bare vLLM on a real-size VLM with random weights.

    python bench/bench_realsize.py [--preset cpu|full] [--prompts N] [--n 8] [--max-tokens M]
                                   [--tp 1] [--partition-rows R] [--rounds K] [--quick]

No checkpoint needed: ``bench/realsize_model.py`` writes a model folder (config,
tokenizer, processor) of the Idefics3 architecture, and vLLM builds the model
with random weights (``load_format="dummy"``, passed through the project's own
``model.engine_kwargs``).  ``--preset full`` is the Idefics3-8B-Llama3 shape
(8.46B parameters, bfloat16, the real processor's image splitting: ~2,900
image tokens per sample image) and needs a CUDA GPU; ``--preset cpu`` is the
same architecture scaled down (0.15B parameters, most of them the real
128k-token embedding and LM head) for a 2-core CPU.  Default: ``full`` when
CUDA is available, else ``cpu``.

Otherwise it measures what bench_generate.py measures, with its functions: the
sample data ingested by the project's ``run_source``, ``--prompts`` prompt rows
written as partitions; one engine (``pipeline.engine.engine.get_engine``) shared by

* **bare vLLM**: the same rendered prompts, images and seeded
  ``SamplingParams`` built before the clock starts, then ONE ``llm.generate``;
* **pipeline**: ``LocalExecutor.run("generate", ...)`` over the partitions
  (read Parquet, decode images, render, stream through the engine, write
  Parquet + markers), timed as a whole.

Unlike bench_generate.py, every timed run starts with cold caches (vLLM's
prefix cache, multimodal processor cache and encoder cache are reset), as in
a real build where every prompt is new: prefill and the vision tower are part
of what is measured, not only decoding.  A short warm-up (4 prompts each way)
runs first; rounds alternate (bare, pipeline / pipeline, bare, ...) and
the best round of each is compared.  Random weights sample nearly uniformly
over the vocabulary, so responses practically always run to ``--max-tokens``
on both sides (no ``ignore_eos`` anywhere; the token counts are printed).
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

from bench_generate import (  # noqa: E402 -- also sets the environment (offline hub, no progress bars)
    ROOT, TARGET, GenerateTimer, bare_requests, make_config, prepare_inputs, read_responses, shutdown_engines)
from realsize_model import PRESETS, count_parameters, image_seq_len, write_model  # noqa: E402

#: per preset: prompts, max_tokens, partition_rows, rounds; (--quick prompts, --quick rounds)
DEFAULTS = {
    "cpu": dict(prompts=16, max_tokens=64, partition_rows=8, rounds=2, quick_prompts=16, quick_rounds=1),
    "full": dict(prompts=128, max_tokens=512, partition_rows=32, rounds=2, quick_prompts=64, quick_rounds=1),
}
#: prompts of the untimed warm-up, each way
WARMUP_PROMPTS = 4


def has_cuda() -> bool:
    from pipeline.engine.engine import has_cuda as _has_cuda

    return _has_cuda()


def realsize_config(work: str, model_dir: Path, preset: str, args):
    """bench_generate's sample config with the model swapped for the weightless real-size one."""
    from pipeline.config.settings import PipelineConfig

    try:  # vllm.LLM arguments that have a typed config key (newer configs refuse them in engine_kwargs)
        from pipeline.config.settings import TYPED_ENGINE_KWARGS
    except ImportError:
        TYPED_ENGINE_KWARGS = {}

    base = make_config(work, args.partition_rows, args.n, args.max_tokens)
    data = base.model_dump()
    engine_kwargs = {"load_format": "dummy", **args.engine_kwargs}
    for key in [k for k in engine_kwargs if k in TYPED_ENGINE_KWARGS]:
        section, field = TYPED_ENGINE_KWARGS[key]
        data[section][field] = engine_kwargs.pop(key)
    if args.tp > 1:
        # one process per GPU without a Ray cluster (the project's default for TP>1 is "ray")
        engine_kwargs.setdefault("distributed_executor_backend", "mp")
    data["model"].update(path=str(model_dir), dtype=PRESETS[preset]["dtype"],
                         max_model_len=PRESETS[preset]["max_model_len"], engine_kwargs=engine_kwargs)
    data["engine"].update(tensor_parallel_size=args.tp,
                          gpus_per_replica=float(args.tp) if has_cuda() else 0.0)
    return PipelineConfig.model_validate(data)


def reset_caches(llm) -> None:
    """Forget every cached prompt and image: the next run pays prefill and the vision tower again."""
    llm.reset_prefix_cache()
    llm.reset_mm_cache()
    reset_encoder = getattr(llm.llm_engine, "reset_encoder_cache", None)
    if reset_encoder is not None:
        reset_encoder()


def memory_note() -> str:
    """Resident memory of this process tree (CPU) or the GPU's used memory."""
    parts = []
    try:
        import psutil

        me = psutil.Process()
        rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
        parts.append(f"host RSS of this process tree {rss / 2**30:.1f} GiB")
    except Exception:  # noqa: BLE001 -- psutil missing or a child gone
        pass
    if has_cuda():
        import subprocess

        try:
            used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total",
                                   "--format=csv,noheader"], capture_output=True, text=True,
                                  timeout=10).stdout.strip().replace("\n", "; ")
            parts.append(f"GPU memory used/total {used}")
        except Exception:  # noqa: BLE001
            pass
    return ", ".join(parts) or "unknown"


def parse_kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--engine-kwarg {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="model size (default: full with CUDA, else cpu)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts (cpu 16, full 128; --quick: full 64)")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=None, help="new tokens per sample (cpu 64, full 512)")
    ap.add_argument("--tp", type=int, default=1, help="tensor parallel size (GPUs)")
    ap.add_argument("--partition-rows", type=int, default=None, help="prompts per partition (cpu 8, full 32)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds of each (default 2; --quick 1)")
    ap.add_argument("--engine-kwarg", dest="engine_kwargs", action="append", default=[], metavar="KEY=VALUE",
                    help="extra vllm.LLM argument, value parsed as JSON (e.g. enforce_eager=true, "
                         "gpu_memory_utilization=0.85); repeatable")
    ap.add_argument("--model-dir", type=Path, default=None, help="write the model folder here (default: temporary)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--quick", action="store_true", help="1 round (and 64 prompts for the full preset)")
    args = ap.parse_args()
    args.engine_kwargs = parse_kv(args.engine_kwargs)

    cuda = has_cuda()
    preset = args.preset or ("full" if cuda else "cpu")
    if preset == "full" and not cuda:
        raise SystemExit("--preset full builds an 8.5B-parameter model in bfloat16 and needs a CUDA GPU; "
                         "use --preset cpu on this machine")
    if args.tp > 1 and not cuda:
        raise SystemExit("--tp > 1 needs that many CUDA GPUs")
    d = DEFAULTS[preset]
    n_prompts = args.prompts or (d["quick_prompts"] if args.quick else d["prompts"])
    rounds = args.rounds or (d["quick_rounds"] if args.quick else d["rounds"])
    args.max_tokens = args.max_tokens or d["max_tokens"]
    args.partition_rows = args.partition_rows or d["partition_rows"]

    from pipeline.engine.engine import get_engine
    from pipeline.run.executors import LocalExecutor
    from pipeline.run.orchestrator import plan

    if not (ROOT / "models" / "tiny-idefics3" / "tokenizer.json").exists():
        # its tokenizer and chat template are reused (a fresh checkout: builds the sample data too, ~1 min)
        from demo.tiny_model import build_tiny_model

        build_tiny_model(ROOT / "models" / "tiny-idefics3", ROOT / "data" / "sample",
                         log=lambda m: print(m, file=sys.stderr, flush=True))
    work = tempfile.mkdtemp(prefix="bench-realsize-")
    model_dir = write_model(preset, args.model_dir or Path(work) / f"model-{preset}")
    params_by_part = count_parameters(PRESETS[preset])
    n_params = params_by_part["total"]
    print(f"realsize model: preset {preset} = {PRESETS[preset]['desc']}; {n_params / 1e9:.2f}B parameters "
          f"(text {params_by_part['text'] / 1e9:.2f}B + LM head {params_by_part['lm_head'] / 1e9:.2f}B + "
          f"vision {params_by_part['vision'] / 1e9:.3f}B + connector {params_by_part['connector'] / 1e6:.1f}M), "
          f"random weights (load_format=dummy), {PRESETS[preset]['dtype']}, "
          f"{image_seq_len(PRESETS[preset])} tokens per image tile, "
          f"image splitting {'on' if PRESETS[preset]['image_splitting'] else 'off'}; folder {model_dir}",
          flush=True)

    config = realsize_config(work, model_dir, preset, args)
    in_dir, rows = prepare_inputs(config, work, n_prompts, args.partition_rows)
    # warm-up input: the first WARMUP_PROMPTS prompts, one partition
    from pipeline.files import storage

    warm_in = os.path.join(work, "warm-prompts")
    first = storage.read_table(storage.join(in_dir, "data", "part-00000.parquet"))
    storage.write_table(storage.join(warm_in, "data", "part-00000.parquet"),
                        first.slice(0, WARMUP_PROMPTS))
    n_parts = len(plan(config, "generate", [in_dir], os.path.join(work, "x")))
    print(f"realsize benchmark: {len(rows)} prompts x n={args.n}, max_tokens={args.max_tokens}, "
          f"{n_parts} partitions of {args.partition_rows}, tp={args.tp}; {rounds} round(s) each, "
          f"caches reset before every timed run", flush=True)

    t0 = time.perf_counter()
    engine = get_engine(config)
    print(f"engine start-up: {time.perf_counter() - t0:.1f} s (not counted); "
          f"vllm.LLM kwargs: { {k: v for k, v in engine.kwargs.items() if k != 'model'} }", flush=True)
    llm = engine.llm
    max_num_seqs = engine.max_num_seqs
    prompts, params = bare_requests(config, engine.tokenizer, rows)
    n_prompt_tokens = None
    step_timer = GenerateTimer(llm)  # times llm_engine.step, which both paths drive
    executor = LocalExecutor(config)

    def run_bare(k: int | None = None):
        nonlocal n_prompt_tokens
        step_timer.reset()
        t = time.perf_counter()
        outs = llm.generate(prompts[:k], params[:k], use_tqdm=False)
        dt = time.perf_counter() - t
        n_prompt_tokens = sum(len(o.prompt_token_ids or []) for o in outs)
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        resp = {row["prompt_id"]: [(c.text.strip(), len(c.token_ids)) for c in o.outputs]
                for row, o in zip(rows, outs)}
        return dt, tokens, resp, step_timer.seconds

    def run_pipeline(tag: str, src: str = in_dir):
        out_dir = os.path.join(work, f"generate-{tag}")
        tasks = plan(config, "generate", [src], out_dir)
        step_timer.reset()
        t = time.perf_counter()
        stats = executor.run("generate", tasks)
        dt = time.perf_counter() - t
        return dt, int(stats.counters["tokens_generated"]), out_dir, stats, step_timer.seconds

    t = time.perf_counter()
    run_bare(WARMUP_PROMPTS)
    _, _, warm_dir, wstats, _ = run_pipeline("warmup", warm_in)
    print(f"warm-up ({WARMUP_PROMPTS} prompts each way): {time.perf_counter() - t:.1f} s (not counted); pipeline rows "
          f"out {wstats.rows_out}, quarantined {dict(wstats.quarantined) or 0}", flush=True)
    if wstats.quarantined:
        print(f"warning: the pipeline quarantined rows in the warm-up: {dict(wstats.quarantined)}", flush=True)
    shutil.rmtree(warm_dir, ignore_errors=True)

    bare_runs, pipe_runs = [], []
    bare_resp = pipe_dir = None
    finish_length = 0
    order: list[str] = []
    for r in range(rounds):
        order += ["bare", "pipe"] if r % 2 == 0 else ["pipe", "bare"]
    for i, which in enumerate(order):
        reset_caches(llm)
        if which == "bare":
            dt, tokens, bare_resp, in_step = run_bare()
            bare_runs.append((tokens / dt, dt, tokens))
            print(f"  round {i + 1} bare vLLM : {tokens} tokens in {dt:.2f} s = {tokens / dt:,.1f} tok/s "
                  f"(engine.step {in_step:.2f} s)", flush=True)
        else:
            dt, tokens, out_dir, stats, in_step = run_pipeline(f"r{i}")
            pipe_runs.append((tokens / dt, dt, tokens))
            finish_length = int(stats.counters["finish_length"])
            print(f"  round {i + 1} pipeline  : {tokens} tokens in {dt:.2f} s = {tokens / dt:,.1f} tok/s "
                  f"(engine.step {in_step:.2f} s, outside it {dt - in_step:.2f} s = {(dt - in_step) / dt:.1%}; "
                  f"rows out {stats.rows_out}, quarantined {sum(stats.quarantined.values())})", flush=True)
            if pipe_dir:
                shutil.rmtree(pipe_dir, ignore_errors=True)
            pipe_dir = out_dir
    mem = memory_note()

    pipe_texts, _ = read_responses(pipe_dir)
    same = sum(pipe_texts.get(sid) == [t for t, _ in resp] for sid, resp in bare_resp.items())
    n_resp = sum(len(r) for r in bare_resp.values())
    print(f"check: {same}/{len(bare_resp)} prompts got identical responses from both paths (same seeds; bf16 "
          f"batch effects can change a few); "
          f"{finish_length}/{n_resp} pipeline responses ran to max_tokens; "
          f"{n_prompt_tokens / len(rows):,.0f} prompt tokens per prompt (text + image)")
    print(f"memory after the rounds: {mem}")

    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")

    bare_best, pipe_best = max(bare_runs), max(pipe_runs)
    ratio = pipe_best[0] / bare_best[0]
    header = ("preset", "parameters", "prompts", "samples", "tokens", "bare tok/s", "pipeline tok/s", "ratio")
    cells = (preset, f"{n_params / 1e9:.2f}B", str(len(rows)), str(len(rows) * args.n), str(pipe_best[2]),
             f"{bare_best[0]:,.1f}", f"{pipe_best[0]:,.1f}", f"{ratio:.2f}")
    widths = [max(len(h), len(c)) for h, c in zip(header, cells)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))
    print()
    print(f"realsize: all rounds tok/s: bare {[round(b[0], 1) for b in bare_runs]}, "
          f"pipeline {[round(p[0], 1) for p in pipe_runs]}; max_num_seqs {max_num_seqs}, "
          f"{len(rows) * args.n} sequences, max_tokens {args.max_tokens}")
    print(f"realsize ({preset}, {n_params / 1e9:.2f}B parameters): pipeline {pipe_best[0]:,.1f} tok/s vs "
          f"bare vLLM {bare_best[0]:,.1f} tok/s = {ratio:.2f} (target >= {TARGET:.2f}): "
          f"{'PASS' if ratio >= TARGET else 'MISSED'}", flush=True)
    return 0


if __name__ == "__main__":
    code = 1
    try:
        code = main()
    finally:
        if "pipeline.engine.engine" in sys.modules:
            shutdown_engines()
    sys.exit(code)
