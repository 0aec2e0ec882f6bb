"""Benchmark: engine-process memory of image prompts waiting in vLLM's queue, by how samples are sent.

    python bench/bench_engine_memory.py [--prompts 200] [--n 32] [--quick]

One tiny-model engine (``pipeline.engine.engine.Engine``, CPU) with ``max_num_seqs=1``,
so what is added stays queued.  For each mode, ``--prompts`` prompts with
distinct random images (distinct, so vLLM's multimodal cache cannot share
between modes) are added without stepping the engine; the growth of the
EngineCore process's USS over its level before the mode is the memory the
queued prompts hold.  Then the requests are aborted.

* ``n=1``: one sample per prompt (the floor: one image copy per prompt).
* ``n=N fan-out``: one ``SamplingParams(n=N)`` request per prompt straight into
  vLLM -- what the engine did before: vLLM fans it out into N children, each
  carrying its own copy of the processed image to the engine process.
* ``per-sample``: the project's ``pipeline.engine.submission.submit`` -- N requests with ``n=1`` and
  seeds seed+i (the same responses); repeats of a prompt's image hit vLLM's
  multimodal cache and share one copy.

Target: per-sample stays within 8x of n=1 (the fan-out is ~N x; measured 3.8x).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench_env import ROOT  # first: the repository on sys.path, the engine env defaults

MIB = 2**20
TARGET_RATIO = 8.0


def _engine_core():
    import psutil

    for child in psutil.Process().children(recursive=True):
        if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
            return child
    raise RuntimeError("no EngineCore process found (is VLLM_ENABLE_V1_MULTIPROCESSING off?)")


def _settle(proc, seconds: float = 3.0) -> int:
    """USS after the engine process has taken in what was sent (stable for a second)."""
    import gc

    gc.collect()
    time.sleep(seconds)
    return proc.memory_full_info().uss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="60 prompts")
    args = ap.parse_args()
    if args.quick:
        args.prompts = 60

    import numpy as np
    from PIL import Image
    from vllm import SamplingParams

    from pipeline.config.loading import load_config
    from pipeline.engine.engine import Engine, GenRequest, GenResult
    from pipeline.engine.submission import submit
    from demo.tiny_model import build_tiny_model
    from stages.generate import request_user_turn

    cfg = load_config(ROOT / "configs" / "sample.yaml", {
        "executor.kind": "local", "model.tiny_model_dir": str(ROOT / "models" / "tiny-idefics3"),
        "model.tiny_model_data": str(ROOT / "data" / "sample"),
        # one sequence at a time: everything added stays queued in the engine
        "model.engine_kwargs": {"max_num_seqs": 1}})
    build_tiny_model(Path(cfg.model.tiny_model_dir), Path(cfg.model.tiny_model_data))
    engine = Engine(cfg)
    core = _engine_core()
    rng = np.random.default_rng(0)

    def requests(n: int) -> list[GenRequest]:
        return [GenRequest([request_user_turn("Describe the image.", 1)],
                           [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))],
                           SamplingParams(n=n, max_tokens=2048, seed=1000 + i, temperature=1.0))
                for i in range(args.prompts)]

    def fanout(req: GenRequest) -> list[str]:
        prompt = {"prompt": engine.render(req.messages), "multi_modal_data": {"image": req.images[0]}}
        return engine.llm.enqueue([prompt], [req.params], use_tqdm=False)

    def per_sample(req: GenRequest) -> list[str]:
        return submit(engine, req, GenResult())

    modes = [("n=1", 1, per_sample), (f"n={args.n} fan-out (before)", args.n, fanout),
             (f"{args.n} x n=1 per-sample (after)", args.n, per_sample)]
    results = {}
    for name, n, add in modes:
        reqs = requests(n)
        before = _settle(core)
        ids = [i for r in reqs for i in add(r)]
        grown = _settle(core) - before
        results[name] = grown
        print(f"engine_memory {name}: {args.prompts} prompts queued ({len(ids)} requests): "
              f"+{grown / MIB:.0f} MiB in the engine process", flush=True)
        engine.llm.llm_engine.abort_request(ids)
        engine.llm.llm_engine.step()
    base = max(results["n=1"], MIB)
    after = results[f"{args.n} x n=1 per-sample (after)"]
    ratio = after / base
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISSED"
    print(f"engine_memory per-sample / n=1 = {ratio:.1f}x (target <= {TARGET_RATIO:.0f}x; the fan-out is "
          f"{results[modes[1][0]] / base:.1f}x): {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
