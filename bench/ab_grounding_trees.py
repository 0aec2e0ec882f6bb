"""A/B of two code trees' grounding stage: two processes taking turns, so both see the same load.

    cd TREE_A && PYTHONPATH=$PWD .venv/bin/python bench/ab_grounding_trees.py a b 9 /tmp/ab &
    cd TREE_B && PYTHONPATH=$PWD .venv/bin/python TREE_A/bench/ab_grounding_trees.py b a 9 /tmp/ab

(the script is run from each tree's root with that tree on PYTHONPATH: it imports that tree's
code and its ``bench/`` helpers; the second tree may predate this file).  Each process starts
its engine and makes the pairs as ``bench_grounding.py`` does (128 prompts, n=8, partitions
of 64), then per round waits for its turn (a token file in the shared folder), times bare
vLLM (the stage's own requests in one ``llm.generate``) and the stage, and hands the turn
over.  A machine whose load moves by the minute (``bench_grounding.py``'s rounds within one
process cannot compare two versions of the code) still loads both sides alike.  Prints
per-round times and medians; ``<tag>.json`` in the folder keeps them.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
from bench_generate import make_config, prepare_inputs  # noqa: E402
from bench_grounding import bare_inputs  # noqa: E402


def main():
    tag, other, rounds, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    from pipeline.engine.engine import get_engine  # noqa: E402
    from pipeline.run.executors import LocalExecutor  # noqa: E402
    from pipeline.run.orchestrator import plan  # noqa: E402
    from bench_realsize import reset_caches  # noqa: E402

    work = os.path.join(shared, tag)
    os.makedirs(work, exist_ok=True)
    config = make_config(work, 64, 8, 96)
    config.run.stages = [*config.run.stages, "grounding"]
    in_dir, rows = prepare_inputs(config, work, 128, 64)
    executor = LocalExecutor(config)
    engine = get_engine(config)


    def timed(stage, inputs, out):
        reset_caches(engine.llm)
        t = time.perf_counter()
        executor.run(stage, plan(config, stage, inputs, os.path.join(work, out)))
        return time.perf_counter() - t


    config.generate.logprobs = True
    timed("generate", [in_dir], "gen")
    pair_dirs = []
    for stage in ("correctness", "dropout_ntp", "image_crop"):
        timed(stage, [os.path.join(work, "gen")], stage)
        pair_dirs.append(os.path.join(work, stage))
    _, prompts, params = bare_inputs(config, engine, pair_dirs)


    def bare():
        reset_caches(engine.llm)
        t = time.perf_counter()
        engine.llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t


    import shutil  # noqa: E402

    bare()
    timed("grounding", pair_dirs, "g-warm")
    token = os.path.join(shared, "turn")
    if not os.path.exists(token):
        open(token, "w").write(tag)
    res = {"bare": [], "stage": [], "load": []}
    for r in range(rounds):
        while open(token).read().strip() != tag:
            time.sleep(0.2)
        order = ("bare", "stage") if r % 2 == 0 else ("stage", "bare")
        for name in order:
            if name == "bare":
                res["bare"].append(bare())
            else:
                res["stage"].append(timed("grounding", pair_dirs, f"g{r}"))
                shutil.rmtree(os.path.join(work, f"g{r}"), ignore_errors=True)
        res["load"].append(os.getloadavg()[0])
        print(f"{tag} round {r + 1}: bare {res['bare'][-1]:.2f} s stage {res['stage'][-1]:.2f} s "
              f"ratio {res['stage'][-1] / res['bare'][-1]:.2f} load {res['load'][-1]:.1f}", flush=True)
        open(token, "w").write(other)
    json.dump(res, open(os.path.join(shared, f"{tag}.json"), "w"))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"{tag}: medians bare {med['bare']:.2f} s stage {med['stage']:.2f} s stage/bare {med['stage'] / med['bare']:.2f}x "
          f"(median of per-round ratios {statistics.median(s / b for s, b in zip(res['stage'], res['bare'])):.2f}x), "
          f"load {min(res['load']):.0f}-{max(res['load']):.0f}", flush=True)
    open(token, "w").write(other)


if __name__ == "__main__":
    main()
