"""What adaptive sampling saves at MMPR scale, before paying for it (a simulation, no engine).

    python bench/simulate_adaptive.py [--prompts 300000] [--simulated 20000] [--n 32]
                                      [--tokens-per-sample 400] [--report build/report.json]

Per-prompt accuracy p is drawn from a distribution; each sample is right with
probability p (a response is right or wrong; format errors and conflicting
answers are left out).  Fixed-N draws ``--n`` samples; adaptive runs the
project's own stopping rule (``methods.adaptive.PromptSampler`` with
configs/mmpr.yaml's settings) round by round.  Both then make up to
``max_pairs`` right x wrong pairs per prompt, as the correctness stage does.
``--simulated`` prompts are drawn and the totals scaled to ``--prompts``.

Distributions: Beta fits to pass-rate shapes seen in practice -- U-shaped
(many prompts all right or all wrong, as raw MMPR sources), centred, easy
(a strong policy), MMPR-Tiny's kept band (uniform 0.2-0.8) -- and, with
``--report``, a Beta fitted (method of moments) to a build's own pass-rate
histogram (``summary.correctness.pass_rate_histogram`` of its report.json).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.adaptive import PromptSampler, StopRule  # noqa: E402

DISTRIBUTIONS = {
    "U-shaped Beta(0.4, 0.4)": lambda rng: rng.betavariate(0.4, 0.4),
    "centred Beta(2, 2)": lambda rng: rng.betavariate(2, 2),
    "easy Beta(4, 1.5)": lambda rng: rng.betavariate(4, 1.5),
    "MMPR-Tiny band U(0.2, 0.8)": lambda rng: rng.uniform(0.2, 0.8),
}


@dataclass
class _Scored:
    usable_chosen: bool
    usable_rejected: bool
    answer: str = "x"


@dataclass
class _Sample:
    right: bool
    num_tokens: int


def beta_from_histogram(hist: dict) -> tuple[float, float]:
    """Method-of-moments Beta(a, b) for a pass-rate histogram {decile: prompts}."""
    total = sum(hist.values())
    mids = {int(k): (int(k) + 0.5) / 10 for k in hist}
    mean = sum(mids[int(k)] * v for k, v in hist.items()) / total
    var = sum((mids[int(k)] - mean) ** 2 * v for k, v in hist.items()) / total
    common = mean * (1 - mean) / max(var, 1e-6) - 1
    return max(mean * common, 0.05), max((1 - mean) * common, 0.05)


def simulate(draw_p, rule: StopRule, prompts: int, tokens: int, seed: int) -> dict:
    rng = random.Random(seed)
    out = {"fixed": [0, 0, 0], "adaptive": [0, 0, 0]}  # samples, pairs, prompts with a pair

    def pairs(samples) -> int:
        r = sum(s.right for s in samples)
        return min(rule.max_pairs, r * (len(samples) - r))

    score = lambda new: [_Scored(s.right, not s.right) for s in new]  # noqa: E731
    for _ in range(prompts):
        p = draw_p(rng)
        samples = [_Sample(rng.random() < p, tokens) for _ in range(rule.budget)]
        sampler = PromptSampler(rule, True, score=score)
        drawn, want = 0, sampler.first_count()
        while want:
            drawn += want
            want = sampler.next_count(samples[:drawn])
        for mode, used in (("fixed", samples), ("adaptive", samples[:drawn])):
            k = pairs(used)
            out[mode][0] += len(used)
            out[mode][1] += k
            out[mode][2] += k > 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=300_000, help="prompts the totals are scaled to")
    ap.add_argument("--simulated", type=int, default=20_000, help="prompts actually simulated")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-pairs", type=int, default=15)
    ap.add_argument("--tokens-per-sample", type=int, default=400)
    ap.add_argument("--report", help="a build's report.json: add a Beta fitted to its pass rates")
    ap.add_argument("--max-reuse", type=int, default=8)
    ap.add_argument("--all-right-after", type=int, default=8, help="0: never give up on all-right prompts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rule = StopRule(rounds=tuple(r for r in (4, 8, 12, 16, 24, 32) if r < args.n) + (args.n,), stop="pairs",
                    max_pairs=args.max_pairs, max_reuse=args.max_reuse,
                    all_right_after=args.all_right_after or None)
    dists = dict(DISTRIBUTIONS)
    if args.report:
        hist = json.loads(Path(args.report).read_text())["summary"]["correctness"]["pass_rate_histogram"]
        a, b = beta_from_histogram(hist)
        dists[f"this build: Beta({a:.2f}, {b:.2f})"] = lambda rng: rng.betavariate(a, b)
    scale = args.prompts / args.simulated
    print(f"{args.prompts:,} prompts, n={args.n}, max {args.max_pairs} pairs/prompt, "
          f"{args.tokens_per_sample} tokens/sample; adaptive: rounds {list(rule.rounds)}, stop when "
          f"{args.max_pairs} pairs with each response in <= {rule.max_reuse}, give up all-right after "
          f"{rule.all_right_after}")
    print(f"| {'pass-rate distribution':30} | samples/prompt fixed | adaptive | tokens/pair fixed | adaptive "
          f"| saving | prompts with a pair fixed | adaptive | GPU tokens fixed | adaptive |")
    print("|" + "---|" * 11)
    for i, (name, draw) in enumerate(dists.items()):
        r = simulate(draw, rule, args.simulated, args.tokens_per_sample, args.seed + i)
        (fs, fp, fc), (as_, ap_, ac) = r["fixed"], r["adaptive"]
        tpp_f, tpp_a = fs * args.tokens_per_sample / max(fp, 1), as_ * args.tokens_per_sample / max(ap_, 1)
        print(f"| {name:30} | {fs / args.simulated:.1f} | {as_ / args.simulated:.1f} | {tpp_f:,.0f} | "
              f"{tpp_a:,.0f} | {tpp_f / max(tpp_a, 1e-9):.2f}x | {fc * scale:,.0f} | {ac * scale:,.0f} | "
              f"{fs * scale * args.tokens_per_sample / 1e9:.2f} B | "
              f"{as_ * scale * args.tokens_per_sample / 1e9:.2f} B |")


if __name__ == "__main__":
    main()
