"""Benchmark: a rebuild of the sample with ``generate.prior`` against the build it reads.

    python bench/bench_prior.py [--n 8] [--quick] [--keep DIR] [--skip auto|point|interval]

Two sample builds (configs/sample.yaml, ``--executor local``, stages ingest, generate,
correctness, write: what the prompt table needs), each a real ``python -m pipeline run``:

1. plain: ``--set generate.n=N``;
2. rebuild: the same, plus ``--set generate.prior=<build 1's dataset folder>`` and
   ``generate.prior_skip`` (``--skip``, default auto).

Printed: generated tokens of each (the generate stage's ``tokens_generated``), over all
prompts and over the ground-truth prompts alone (the prompts without ground truth have no
pass rate and are never skipped); the prompts the rebuild skipped, why, and by which rule;
the rows carried into the rebuild's prompt table; and whether the rebuild's in-band prompts
(pass rate in ``rl_prompts.band``, at least ``rl_prompts.min_samples`` samples: what the RL
exports keep) are the first build's, with the same pass rates.

Target (issue "Prompt sets for RL"): the rebuild spends at least 30% fewer generated tokens
for the same in-band prompts.  The rebuild samples exactly as the plain build (same model,
templates, sampling, seeds, scoring), so with ``auto`` the prior's point rate judges each
prompt.  With ``--skip interval`` a prompt is skipped only when its prior 95% Wilson interval
lies wholly outside the band; at the sample's n = 8 no interval does (0/8 gives [0, 0.32],
8/8 [0.68, 1]).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench_env import ROOT  # first: the repository on sys.path, the engine env defaults

TARGET = 0.30
STAGES = "[ingest,generate,correctness,write]"


def build(name: str, base: str, n: int, quick: bool, prior: str | None = None, skip: str = "auto") -> dict:
    work, out = os.path.join(base, f"{name}-work"), os.path.join(base, f"{name}-out")
    sets = {"run.stages": STAGES, "export.formats": "[]", "generate.n": str(n)}
    if quick:
        sets.update({"sources.0.limit": "64", "sources.1.limit": "16"})
    if prior:
        sets["generate.prior"] = prior
        sets["generate.prior_skip"] = skip
    cmd = [sys.executable, "-m", "pipeline", "run", "--config", "configs/sample.yaml", "--executor", "local",
           "--work-dir", work, "--output", out]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = dict(os.environ, MMPR_NO_PROGRESS="1", PYTHONPATH=str(ROOT))
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name} build failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(("[generate]", "prior:")):
            print("   ", line.strip())
    with open(os.path.join(work, "report.json")) as f:
        report = json.load(f)
    return {"out": out, "report": report, "seconds": time.perf_counter() - t0}


def in_band(out: str) -> dict[str, float]:
    """The prompts the RL exports would keep from a dataset folder: prompt id -> pass rate."""
    from publish.prompt_table import read_prompt_table

    with open(os.path.join(out, "manifest.json")) as f:
        rl = json.load(f)["config"]["rl_prompts"]
    lo, hi = rl["band"]
    rows = read_prompt_table(out, ["prompt_id", "pass_rate", "samples_drawn"]).to_pylist()
    return {r["prompt_id"]: r["pass_rate"] for r in rows if r["pass_rate"] is not None
            and lo <= r["pass_rate"] <= hi and r["samples_drawn"] >= rl["min_samples"]}


def carried_rows(out: str) -> int:
    """Rows of a rebuild's prompt table carried from its prior (stop reason ``skipped_by_prior``)."""
    from publish.prompt_table import read_prompt_table

    reasons = read_prompt_table(out, ["stop_reason"]).column("stop_reason").to_pylist()
    return sum(r == "skipped_by_prior" for r in reasons)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="samples per prompt of both builds (the sample's: 8)")
    ap.add_argument("--quick", action="store_true", help="80 of the sample's 294 prompts")
    ap.add_argument("--skip", default="auto", choices=("auto", "point", "interval"),
                    help="the rebuild's generate.prior_skip (default auto)")
    ap.add_argument("--keep", help="build into this folder and keep it (default: a temporary one, removed)")
    args = ap.parse_args()
    base = args.keep or tempfile.mkdtemp(prefix="bench-prior-")
    os.makedirs(base, exist_ok=True)
    try:
        plain = build("plain", base, args.n, args.quick)
        rebuild = build("prior", base, args.n, args.quick, prior=plain["out"], skip=args.skip)
        band_plain, band_prior = in_band(plain["out"]), in_band(rebuild["out"])
        carried = carried_rows(rebuild["out"])
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    gp, gr = (b["report"]["stages"]["generate"]["counters"] for b in (plain, rebuild))
    tp, tr = gp["tokens_generated"], gr["tokens_generated"]
    prior = (rebuild["report"].get("summary", {}).get("generate") or {}).get("prior") or {}
    saving = 1 - tr / max(tp, 1)
    gt_p, gt_r = tp - gp.get("tokens_generated.no_gt", 0), tr - gr.get("tokens_generated.no_gt", 0)
    gt_saving = 1 - gt_r / max(gt_p, 1)
    same = band_plain == band_prior
    print(f"\nsample prompts{' (quick: 80)' if args.quick else ''}, tiny model, n={args.n}; "
          f"builds {plain['seconds']:.0f} s and {rebuild['seconds']:.0f} s")
    print(f"prior: tokens generated plain {tp:,}, rebuild {tr:,}; responses {gp['responses']:,} -> {gr['responses']:,}")
    print(f"prior: ground-truth prompts only: tokens plain {gt_p:,}, rebuild {gt_r:,}: {gt_saving:.1%} fewer; "
          f"prompts without ground truth (never skipped) {tp - gt_p:,} and {tr - gt_r:,} tokens")
    print(f"prior: skipped {prior.get('skipped', 0)} prompts {prior.get('skipped_by_reason', {})}, "
          f"sampled again {prior.get('sampled', 0)}, not in the prior {prior.get('unseen', 0)}; judged by "
          f"{prior.get('judged_by', {})} (generate.prior_skip={args.skip}); rows carried into the rebuild's "
          f"prompt table {carried}")
    print(f"prior: in-band prompts plain {len(band_plain)}, rebuild {len(band_prior)}, "
          f"{'the same, with the same pass rates' if same else 'DIFFERENT'}")
    verdict = "PASS" if saving >= TARGET and same else "MISSED"
    print(f"prior: rebuild spends {saving:.1%} fewer generated tokens (whole build) for the same in-band prompts "
          f"(target >= {TARGET:.0%}) {verdict}; {gt_saving:.1%} on the ground-truth prompts alone")


if __name__ == "__main__":
    main()
