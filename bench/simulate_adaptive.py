"""Adaptive sampling against fixed N: what a pair costs and how often pairs reuse a response (a simulation).

    python bench/simulate_adaptive.py [--simulated 4000] [--n 32] [--caps 2,3,4,8] [--all-wrong-after 16]
                                      [--tokens-per-sample 400] [--report build/report.json]

Per-prompt accuracy p is drawn from a distribution; each sample is right with
probability p (a response is right or wrong, every text distinct; format errors
and conflicting answers are left out).  Fixed N draws ``--n`` samples; adaptive
runs the project's stopping rule (``methods.adaptive.PromptSampler``, rounds
4, 8, 12, 16, 24, 32 capped at ``--n``, all_right_after 8) round by round.  Pairs
are chosen by the project's ``methods.pairs.select_pairs`` (15 per prompt), with
the per-response cap ``scoring.max_pairs_per_response`` where a row has one: the
adaptive rows use the same cap to stop and to select, as a build does.

The frontier, per distribution, relative to fixed N as MMPR builds it (no cap,
15 random right x wrong pairs): samples (= tokens, at a fixed length) per pair,
pairs per distinct chosen, pairs per distinct rejected, tokens per distinct
chosen used, prompts with a pair.  Rows: fixed N with no cap and with each cap;
adaptive before the shared cap ("stop 8, no cap": max_reuse 8 limited the stop
rule only); adaptive at each cap, and with ``all_wrong_after``.

Targets (issue 30, item 4), at the default (``scoring.max_pairs_per_response``
and configs/mmpr.yaml's all_wrong_after): at least 1.5x fewer tokens per
correctness pair on Beta(2, 2) and U(0.2, 0.8); pairs per distinct chosen within
1.3x of fixed N's there; at least 0.97x the prompts with a pair.  The default is
the cheapest cap that keeps the 1.3x.

A budget spread across prompts (Knapsack-RL style: the next 4 samples to the prompt
with the most expected new capped pairs per sample, Beta-Binomial posterior) was tried in a
research prototype (issue 30's notes: 4000 prompts per spread, cap 3, a levelled selection
like this one without the augmenting step) and gains nothing
measurable over a per-prompt cap plus an all-wrong give-up: Beta(2, 2) at cap 3's
spend (18.9 samples/prompt), 1.39 samples/pair and 2.04 pairs/distinct chosen
against cap 3's 1.41 and 2.07 (96.2% against 93.6% of prompts with a pair);
Beta(0.5, 3) (mean 0.14), its threshold form spends 19.6 samples/prompt for 2.81
samples/pair, 57.5% with a pair, where cap 3 + all_wrong_after 12 spends 19.5 for
2.81 and 57.4%: the gain is "stop spending on prompts with no right answer",
which all_wrong_after gives per prompt.  A global budget also makes a prompt's
samples depend on the other prompts of its partition, so it is not built.
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
from methods.pairs import Scored, select_pairs  # noqa: E402

DISTRIBUTIONS = {
    "centred Beta(2, 2)": lambda rng: rng.betavariate(2, 2),
    "MMPR-Tiny band U(0.2, 0.8)": lambda rng: rng.uniform(0.2, 0.8),
    "U-shaped Beta(0.4, 0.4)": lambda rng: rng.betavariate(0.4, 0.4),
    "low accuracy Beta(0.5, 3)": lambda rng: rng.betavariate(0.5, 3),
}
#: the spreads the targets are stated on
TARGET_SPREADS = ("centred Beta(2, 2)", "MMPR-Tiny band U(0.2, 0.8)")
TARGETS = {"saving": 1.5, "reuse": 1.3, "coverage": 0.97}
ROUNDS = (4, 8, 12, 16, 24, 32)
MAX_PAIRS = 15


@dataclass
class _Scored:
    usable_chosen: bool
    usable_rejected: bool
    answer: str = "x"


@dataclass
class _Sample:
    right: bool
    num_tokens: int = 1


def beta_from_histogram(hist: dict) -> tuple[float, float]:
    """Method-of-moments Beta(a, b) for a pass-rate histogram {decile: prompts}."""
    total = sum(hist.values())
    mids = {int(k): (int(k) + 0.5) / 10 for k in hist}
    mean = sum(mids[int(k)] * v for k, v in hist.items()) / total
    var = sum((mids[int(k)] - mean) ** 2 * v for k, v in hist.items()) / total
    common = mean * (1 - mean) / max(var, 1e-6) - 1
    return max(mean * common, 0.05), max((1 - mean) * common, 0.05)


def drawn_adaptive(outcomes: list[bool], rule: StopRule) -> int:
    """Samples the project's PromptSampler draws of a prompt whose i-th sample is ``outcomes[i]``."""
    sampler = PromptSampler(rule, True, score=lambda new: [_Scored(s.right, not s.right) for s in new])
    drawn, want = 0, sampler.first_count()
    while want:
        drawn += want
        want = sampler.next_count([_Sample(x) for x in outcomes[:drawn]])
    return drawn


def pair_metrics(prompts: list[list[bool]], drawn: list[int], cap: int | None, tokens: int) -> dict:
    """Pairs of each prompt's first ``drawn`` samples, selected as the correctness stage does."""
    samples = pairs = covered = chosen = rejected = 0
    for i, (outcomes, d) in enumerate(zip(prompts, drawn)):
        right = [Scored(j, f"right {j}", "R", 1.0, True) for j, ok in enumerate(outcomes[:d]) if ok]
        wrong = [Scored(j, f"wrong {j}", f"W{j}", 0.0, False) for j, ok in enumerate(outcomes[:d]) if not ok]
        sel = select_pairs(right, wrong, MAX_PAIRS, seed=i, max_per_response=cap)
        samples += d
        pairs += len(sel)
        covered += bool(sel)
        chosen += len({c.index for c, _ in sel})
        rejected += len({r.index for _, r in sel})
    n = len(prompts)
    return {"samples_per_prompt": samples / n, "covered": covered, "pairs_per_prompt": pairs / n,
            "samples_per_pair": samples / max(pairs, 1), "pairs_per_chosen": pairs / max(chosen, 1),
            "pairs_per_rejected": pairs / max(rejected, 1), "tokens_per_chosen": samples * tokens / max(chosen, 1)}


def frontier(draw_p, n: int, caps: list[int], all_wrong_after: int | None, prompts: int, tokens: int,
             seed: int) -> dict[str, dict]:
    """Every row of one distribution's table, keyed by its label."""
    rng = random.Random(seed)
    outcomes = []
    for _ in range(prompts):
        p = draw_p(rng)
        outcomes.append([rng.random() < p for _ in range(n)])
    rounds = tuple(r for r in ROUNDS if r < n) + (n,)

    def rule(cap: int | None, awa: int | None) -> StopRule:
        return StopRule(rounds=rounds, stop="pairs", max_pairs=MAX_PAIRS, max_reuse=cap, all_right_after=8,
                        all_wrong_after=awa)

    fixed = [n] * prompts
    rows = {"fixed N, no cap (MMPR)": pair_metrics(outcomes, fixed, None, tokens)}
    rows["adaptive, stop 8, no cap (before)"] = pair_metrics(
        outcomes, [drawn_adaptive(o, rule(8, None)) for o in outcomes], None, tokens)
    for cap in caps:
        rows[f"fixed N, cap {cap}"] = pair_metrics(outcomes, fixed, cap, tokens)
        for awa in (None, all_wrong_after) if all_wrong_after else (None,):
            label = f"adaptive, cap {cap}" + (f", all_wrong_after {awa}" if awa else "")
            rows[label] = pair_metrics(outcomes, [drawn_adaptive(o, rule(cap, awa)) for o in outcomes], cap, tokens)
    base = rows["fixed N, no cap (MMPR)"]
    for m in rows.values():  # relative to fixed N as MMPR builds it
        m["saving"] = base["samples_per_pair"] / max(m["samples_per_pair"], 1e-9)
        m["reuse"] = m["pairs_per_chosen"] / max(base["pairs_per_chosen"], 1e-9)
        m["coverage"] = m["covered"] / max(base["covered"], 1)
        m["chosen_saving"] = base["tokens_per_chosen"] / max(m["tokens_per_chosen"], 1e-9)
    return rows


def print_table(name: str, rows: dict[str, dict]) -> None:
    print(f"\n### {name}")
    print("| setting | samples/prompt | samples/pair | fewer per pair | pairs/distinct chosen | x fixed N "
          "| pairs/distinct rejected | fewer tokens/distinct chosen | prompts with a pair |")
    print("|---|" + "---:|" * 8)
    for label, m in rows.items():
        print(f"| {label} | {m['samples_per_prompt']:.1f} | {m['samples_per_pair']:.2f} | {m['saving']:.2f}x | "
              f"{m['pairs_per_chosen']:.2f} | {m['reuse']:.2f}x | {m['pairs_per_rejected']:.2f} | "
              f"{m['chosen_saving']:.2f}x | {m['coverage']:.3f}x |")


def cheapest_within(tables: dict[str, dict[str, dict]], caps: list[int], awa: int | None) -> int | None:
    """The cap with the most samples saved (on the target spreads, the worse of them) whose pairs
    per distinct chosen stay within the reuse target of fixed N's on every target spread."""
    ok = []
    for cap in caps:
        label = f"adaptive, cap {cap}" + (f", all_wrong_after {awa}" if awa else "")
        ms = [tables[s][label] for s in TARGET_SPREADS if s in tables]
        if ms and all(m["reuse"] <= TARGETS["reuse"] for m in ms):
            ok.append((min(m["saving"] for m in ms), cap))
    return max(ok)[1] if ok else None


def verdicts(tables: dict[str, dict[str, dict]], cap: int, awa: int | None) -> list[str]:
    """PASS/MISSED lines for the default setting on the target spreads."""
    verdict = lambda ok: "PASS" if ok else "MISSED"  # noqa: E731
    label = f"adaptive, cap {cap}" + (f", all_wrong_after {awa}" if awa else "")
    lines = []
    for spread in TARGET_SPREADS:
        m = tables[spread][label]
        lines += [
            f"simulated {spread}, {label}: {m['saving']:.2f}x fewer tokens per correctness pair "
            f"(target >= {TARGETS['saving']}x) {verdict(m['saving'] >= TARGETS['saving'])}",
            f"simulated {spread}, {label}: pairs per distinct chosen {m['reuse']:.2f}x fixed N's "
            f"(target <= {TARGETS['reuse']}x) {verdict(m['reuse'] <= TARGETS['reuse'])}",
            f"simulated {spread}, {label}: {m['coverage']:.3f}x the prompts with a pair "
            f"(target >= {TARGETS['coverage']}x) {verdict(m['coverage'] >= TARGETS['coverage'])}"]
    return lines


def main(argv: list[str] | None = None) -> None:
    from pipeline.config.shared import ScoringConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simulated", type=int, default=4000, help="prompts simulated per distribution")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--caps", default="2,3,4,8", help="per-response caps tried (stop rule and selection)")
    ap.add_argument("--cap", type=int, default=ScoringConfig().max_pairs_per_response,
                    help="the default checked against the targets (scoring.max_pairs_per_response)")
    ap.add_argument("--all-wrong-after", type=int, default=16, help="configs/mmpr.yaml's; 0: none")
    ap.add_argument("--tokens-per-sample", type=int, default=400)
    ap.add_argument("--report", help="a build's report.json: add a Beta fitted to its pass rates")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    caps = sorted({int(c) for c in args.caps.split(",")} | {args.cap})
    awa = args.all_wrong_after or None
    dists = dict(DISTRIBUTIONS)
    if args.report:
        hist = json.loads(Path(args.report).read_text())["summary"]["correctness"]["pass_rate_histogram"]
        a, b = beta_from_histogram(hist)
        dists[f"this build: Beta({a:.2f}, {b:.2f})"] = lambda rng: rng.betavariate(a, b)
    print(f"{args.simulated:,} prompts per spread, n={args.n}, {MAX_PAIRS} pairs/prompt, {args.tokens_per_sample} "
          f"tokens/sample; adaptive rounds {[r for r in ROUNDS if r < args.n] + [args.n]}, all_right_after 8; "
          f"ratios against fixed N with no cap (MMPR)")
    tables = {}
    for i, (name, draw) in enumerate(dists.items()):
        tables[name] = frontier(draw, args.n, caps, awa, args.simulated, args.tokens_per_sample, args.seed + i)
        print_table(name, tables[name])
    best = cheapest_within(tables, caps, awa)
    print(f"\ncheapest cap within {TARGETS['reuse']}x fixed N's pairs per distinct chosen on "
          f"{' and '.join(TARGET_SPREADS)}: {best} (default: {args.cap})")
    for line in verdicts(tables, args.cap, awa):
        print(line)


if __name__ == "__main__":
    main()
