"""filter stage: chosen failures remove the pair, rejected-only failures may keep it, verdicts recorded."""
from __future__ import annotations

import pytest

from helpers import make_config, run_stage_on
from schemas import PAIR_SCHEMA
from schemas.records import pair_row, provenance

HEALTHY = ("The image shows three blue circles arranged in a row on a white background, "
           "and no other shapes are visible.\nFinal answer: 3")
HEALTHY_WRONG = ("The image shows four blue circles arranged in a row on a white background, "
                 "with one partly hidden.\nFinal answer: 4")
LOOP = "I think the answer is three. " * 30
NO_ANSWER = ("The image shows three blue circles arranged in a row on a white background, "
             "and no other shapes are visible at all.")


def _row(pid, chosen, rejected, method="correctness", finish=("stop", "stop")):
    return pair_row(pair_id=pid, method=method, source="s", question="How many circles are there?",
                    user_text="How many circles are there?", images=[], chosen=chosen, rejected=rejected,
                    prov=provenance(prompt_id=pid, template_id="mmpr_final_answer",
                                    chosen_finish_reason=finish[0], rejected_finish_reason=finish[1]))


CASES = [
    # id, row, kept?, failed (target, rule)
    ("healthy", _row("a", HEALTHY, HEALTHY_WRONG), True, []),
    ("chosen-loops", _row("b", LOOP + "\nFinal answer: 3", HEALTHY_WRONG), False,
     [("chosen", "longest_repeated_substring")]),
    ("rejected-loops-kept", _row("c", HEALTHY, LOOP + "\nFinal answer: 3"), False, [("pair", "length_ratio")]),
    ("chosen-cut-off", _row("d", HEALTHY, HEALTHY_WRONG, finish=("length", "stop")), False,
     [("chosen", "never_ends")]),
    ("rejected-cut-off-kept", _row("e", HEALTHY, HEALTHY_WRONG, finish=("stop", "length")), True,
     [("rejected", "never_ends")]),
    ("chosen-without-final-answer", _row("f", NO_ANSWER, HEALTHY_WRONG), False,
     [("chosen", "missing_final_answer")]),
    ("identical", _row("g", HEALTHY, HEALTHY + " "), False, [("pair", "identical")]),
    # every text-contrast method: same text after whitespace/case normalisation goes
    ("identical-format", _row("g2", HEALTHY, HEALTHY.replace("\n", "\n\n"), method="format"), False,
     [("pair", "identical")]),
    ("identical-dropout", _row("g3", HEALTHY, HEALTHY.upper(), method="dropout_ntp"), False,
     [("pair", "identical")]),
    # image-contrast pairs share their text by design, whitespace included
    ("crop-same-text-up-to-whitespace", _row("g4", HEALTHY, HEALTHY + "\t", method="image_crop"), True, []),
    ("rejected-empty", _row("h", HEALTHY, "   "), False, [("rejected", "empty")]),
    ("crop-same-text", _row("i", HEALTHY, HEALTHY, method="image_crop"), True, []),
]


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    rows, stats = run_stage_on("filter", make_config(), [c[1] for c in CASES], PAIR_SCHEMA,
                               tmp_path_factory.mktemp("filter"))
    return {r["id"]: r for r in rows}, stats


@pytest.mark.parametrize("case_id, row, kept, failed", CASES, ids=[c[0] for c in CASES])
def test_filter_rules(filtered, case_id, row, kept, failed):
    out, stats = filtered
    assert (row["id"] in out) == kept
    for target, rule in failed:
        assert stats.counters[f"filter.{target}.{rule}"] >= 1, (target, rule, dict(stats.counters))
    if kept:
        verdicts = out[row["id"]]["provenance"]["filters"]
        got = {(v["target"], v["rule"]) for v in verdicts if not v["passed"]}
        assert got == set(failed)


def test_length_ratio_distribution_is_reported(filtered):
    _, stats = filtered
    before = sum(v for k, v in stats.counters.items() if k.startswith("length_ratio.before."))
    after = sum(v for k, v in stats.counters.items() if k.startswith("length_ratio.after."))
    assert before == len(CASES) and after == sum(c[2] for c in CASES)
