"""Benchmark: answer extraction + matching throughput on one core.

    python bench/bench_matching.py [--n 50000] [--seed 0]

Builds ~50,000 synthetic chain-of-thought responses shaped like the MMPR
sampling output (16 samples per question, the three prompt templates, right,
wrong and unparsable answers over the non-maths answer types: VQAv2 words,
counts and yes/no, ScienceQA/AI2D multiple choice, ChartQA relaxed numbers,
DocVQA ANLS), then times ``extract_answer`` + ``match_answer`` on them with
cold caches.  Baselines measured in the same run: a bare ``str.lower() ==``
loop over the same responses' final lines, and extraction alone.  Maths
throughput (symbolic checking through math_verify) is timed separately; it is
far slower by nature and only reported.

The target (docs/architecture.md): 20,000+ responses/s/core for the non-maths types.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods import extract as extract_mod  # noqa: E402
from methods import match as match_mod  # noqa: E402
from methods import match_rules, multiple_choice, vqa_eval  # noqa: E402
from methods.extract import extract_answer  # noqa: E402
from methods.match import match_answer  # noqa: E402

TARGET = 20_000
SAMPLES_PER_QUESTION = 16

FILLER = [
    "Let me look at the image carefully.",
    "The image shows a kitchen with a wooden table and two chairs near the window.",
    "First, I need to identify the relevant region of the chart.",
    "The bar for 2015 is slightly taller than the one for 2014.",
    "Counting the objects from left to right gives the total.",
    "The question asks about the color of the largest object in the scene.",
    "According to the legend, the blue line represents exports.",
    "The document header contains the invoice number and the date.",
    "We can rule out the options that contradict the diagram.",
    "Looking at the food web, the arrows point from prey to predator.",
    "Step 2: compare the values of the two categories.",
    "This means the answer should be consistent with the caption on the sign.",
    "There is some text in the upper right corner, partially occluded.",
    "Therefore, considering all the evidence above, I can conclude.",
]
WORDS = ["red", "blue", "green", "dog", "cat", "kitchen", "tennis", "pizza", "wood",
         "left", "right", "bus", "umbrella", "surfing", "white", "black", "frisbee"]
DOC_ANSWERS = ["Invoice No. 4521-A", "John A. Smith", "12/03/1998", "ACME Corporation",
               "Total amount due", "Research and Development", "Room 204, Building C",
               "$1,245.00", "Philip Morris USA", "Quarterly Sales Report"]
OPTIONS = [["mitochondria", "nucleus", "ribosome", "chloroplast"],
           ["producer", "consumer", "decomposer"],
           ["Asia", "Europe", "Africa", "North America", "South America"],
           ["increase", "decrease", "stay the same"]]


def _cot(rng: random.Random) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 9)))


def _wrap(rng: random.Random, reasoning: str, answer: str | None) -> str:
    """A response in one of the three template styles; answer None = format negative."""
    style = rng.choice(("final_answer", "final_answer", "boxed", "think"))
    if answer is None:
        return reasoning + " So that is my conclusion."
    if style == "final_answer":
        label = rng.choice(("Final answer:", "Final Answer:", "**Final answer:**"))
        return f"{reasoning}\n\n{label} {answer}"
    if style == "boxed":
        return f"{reasoning}\nAnswer: \\boxed{{{answer}}}"
    return f"<think>\n{reasoning}\n</think>\n\nThe final answer is: {answer}."


def _question(rng: random.Random) -> tuple[list[str], str, list[str] | None, bool, list[str]]:
    """(ground truths, answer type, choices, relaxed, answer variants: right ones first then wrong)."""
    kind = rng.choice(("mc", "yes_no", "count", "chart", "word", "doc"))
    if kind == "mc":
        choices = rng.choice(OPTIONS)
        k = rng.randrange(len(choices))
        letter = "ABCDE"[k]
        other = "ABCDE"[(k + 1) % len(choices)]
        right = [letter, f"({letter})", f"{letter}. {choices[k]}", choices[k], f"The answer is {letter}"]
        wrong = [other, f"{other}. {choices[(k + 1) % len(choices)]}", f"{letter} or {other}"]
        return [letter], "multiple_choice", choices, False, right + ["|"] + wrong
    if kind == "yes_no":
        gt = rng.choice(("yes", "no"))
        opp = "no" if gt == "yes" else "yes"
        return [gt], "yes_no", None, False, [gt.capitalize(), f"{gt.capitalize()}, it is.", "|", opp.capitalize()]
    if kind == "count":
        n = rng.randint(0, 12)
        words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine", "ten", "eleven", "twelve"]
        return ([str(n)] * 3 + [words[n]], "integer", None, False,
                [str(n), words[n], f"{n} people", "|", str(n + 1), str(n + 2)])
    if kind == "chart":
        v = round(rng.uniform(1, 5000), rng.choice((0, 1, 2)))
        gt = f"{v:,}" if v >= 1000 and rng.random() < 0.5 else f"{v:g}"
        unit = rng.choice(("", "%", " million", " kg"))
        return ([gt + unit], "number", None, True,
                [gt + unit, f"{v * 1.02:.2f}{unit}", f"approximately {v:g}{unit}", "|",
                 f"{v * 1.3:.1f}{unit}", f"{v * 0.9:g}"])
    if kind == "word":
        gt = rng.choice(WORDS)
        other, extra = rng.sample([w for w in WORDS if w != gt], 2)
        return ([gt] * 8 + [extra], "word", None, False,
                [gt, gt.capitalize() + ".", f"the {gt}", "|", other, f"{other} and {gt}"])
    gt = rng.choice(DOC_ANSWERS)
    typo = gt[:-2] + gt[-1] if len(gt) > 12 else gt
    other = rng.choice([d for d in DOC_ANSWERS if d != gt])
    return ([gt], "anls", None, False, [gt, gt.upper(), typo, "|", other, "N/A"])


def build_cases(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        gts, atype, choices, relaxed, variants = _question(rng)
        sep = variants.index("|")
        right, wrong = variants[:sep], variants[sep + 1:]
        for _ in range(SAMPLES_PER_QUESTION):
            r = rng.random()
            ans = rng.choice(right) if r < 0.6 else (rng.choice(wrong) if r < 0.92 else None)
            cases.append((_wrap(rng, _cot(rng), ans), gts, atype, choices, relaxed))
    return cases[:n]


def build_math_cases(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    pairs = [("\\frac{1}{2}", ["0.5", "\\frac{2}{4}", "1/2", "\\frac{1}{3}"]),
             ("\\frac{\\sqrt{2}}{2}", ["\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}", "\\sqrt{2}"]),
             ("2\\sqrt{3}", ["\\sqrt{12}", "2\\sqrt{3}", "3\\sqrt{2}"]),
             ("x^2+2x+1", ["(x+1)^2", "x^2+1", "(x-1)^2"]),
             ("\\pi/4", ["\\frac{\\pi}{4}", "0.785", "\\pi/2"]),
             ("12", ["12", "12.0", "13"])]
    cases = []
    while len(cases) < n:
        gt, variants = rng.choice(pairs)
        for _ in range(SAMPLES_PER_QUESTION):
            text = f"{_cot(rng)}\nAnswer: \\boxed{{{rng.choice(variants)}}}"
            cases.append((text, [gt], "math", None, False))
    return cases[:n]


def _clear_caches() -> None:
    for mod in (extract_mod, match_mod, match_rules, multiple_choice, vqa_eval):
        for obj in vars(mod).values():
            if hasattr(obj, "cache_clear"):
                obj.cache_clear()


def _time(fn, *args) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0
    finally:
        gc.enable()


def run_baseline(cases) -> None:
    for text, gts, *_ in cases:
        last = text[text.rfind("\n") + 1:].lower()
        any(last == g.lower() for g in gts)


def run_extract(cases) -> None:
    for text, *_ in cases:
        extract_answer(text, "any")


def run_full(cases) -> int:
    correct = 0
    for text, gts, atype, choices, relaxed in cases:
        pred = extract_answer(text, "any")
        correct += match_answer(pred, gts, atype, choices, relaxed=relaxed).correct
    return correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--math-n", type=int, default=640)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # "per core": pin to one CPU

    cases = build_cases(args.n, args.seed)
    n = len(cases)
    t_base = _time(run_baseline, cases)
    _clear_caches()
    t_extract = _time(run_extract, cases)
    _clear_caches()
    t0 = time.perf_counter()
    correct = run_full(cases)
    t_full = time.perf_counter() - t0
    t_auto0 = time.perf_counter()
    _clear_caches()
    for text, gts, _atype, choices, relaxed in cases:  # answer_type="auto" (inference per row)
        match_answer(extract_answer(text, "any"), gts, "auto", choices, relaxed=relaxed)
    t_auto = time.perf_counter() - t_auto0

    rate = n / t_full
    print(f"responses: {n} (non-math; {correct} judged correct = {correct / n:.1%})")
    print(f"baseline  str.lower() == on last line : {n / t_base:12,.0f} responses/s")
    print(f"extract_answer alone                  : {n / t_extract:12,.0f} responses/s")
    print(f"extract + match (declared types)      : {rate:12,.0f} responses/s "
          f"({t_full / n * 1e6:.1f} us each; {t_full / t_base:.1f}x the bare baseline's time)")
    print(f"extract + match (answer_type='auto')  : {n / t_auto:12,.0f} responses/s")

    _clear_caches()
    mcases = build_math_cases(args.math_n, args.seed + 1)
    t0 = time.perf_counter()
    mcorrect = run_full(mcases)
    t_math = time.perf_counter() - t0
    print(f"math (math_verify, {len(mcases)} responses, {mcorrect} correct): "
          f"{len(mcases) / t_math:,.0f} responses/s")
    verdict = "PASS" if rate >= TARGET else "BELOW"
    print(f"matching: {rate:,.0f} responses/s/core (target {TARGET}): {verdict}")


if __name__ == "__main__":
    main()
