"""What the run report and the HTML report say about sampling, from the stages' counters."""
from __future__ import annotations

import re

from pipeline.run.report import derived
from publish.sampling_report import sampling_html

#: counters of an adaptive generate over 10 prompts (budget 8): 6 stopped after round 1 (4 samples),
#: 3 after round 2 (8), 1 after round 3 (the budget); 40 tokens per sample
GENERATE = {
    "responses": 6 * 4 + 3 * 8 + 8, "tokens_generated": 40 * (6 * 4 + 3 * 8 + 8),
    "adaptive.prompts": 10, "adaptive.budget_samples": 80,
    "adaptive.round.1.open": 10, "adaptive.round.1.samples": 40, "adaptive.round.1.tokens": 1600,
    "adaptive.round.2.open": 4, "adaptive.round.2.samples": 16, "adaptive.round.2.tokens": 640,
    "adaptive.round.10.open": 0,  # a key sorted after "2" as text: rounds are ordered as numbers
    "adaptive.stop.enough_pairs": 8, "adaptive.stop.all_right": 1, "adaptive.stop.budget": 1,
}
CORRECTNESS = {"responses": 56, "accuracy.s.number.correct": 20, "accuracy.s.number.total": 56,
               "pass_rate.0": 2, "pass_rate.5": 6, "pass_rate.10": 0, "pass_rate.9": 2,
               # 24 correctness pairs over 8 distinct chosen and 12 distinct rejected responses
               "pairs.correctness": 24, "distinct.correctness.chosen": 8, "distinct.correctness.rejected": 12,
               "sampled_tokens": 2240}


def _summary() -> dict:
    return derived({"generate": {"counters": GENERATE}, "correctness": {"counters": CORRECTNESS}})


def test_generate_summary_counts_rounds_stops_and_savings():
    s = _summary()["generate"]
    assert s["samples_drawn"] == 56 and s["fixed_n_samples"] == 80 and s["samples_per_prompt"] == 5.6
    assert s["tokens_saved_estimate"] == (80 - 56) * 40
    assert [r["round"] for r in s["rounds"]] == [1, 2, 10]
    assert s["rounds"][1] == {"round": 2, "open": 4, "samples": 16, "tokens": 640}
    assert s["stopped"] == {"all_right": 1, "budget": 1, "enough_pairs": 8}


def test_fixed_n_has_no_adaptive_summary_but_keeps_the_pass_rate_histogram():
    s = derived({"generate": {"counters": {"responses": 80, "tokens_generated": 3200}},
                 "correctness": {"counters": CORRECTNESS}})
    assert "generate" not in s
    assert s["correctness"]["pass_rate_histogram"] == {0: 2, 5: 6, 9: 2, 10: 0}
    html = sampling_html(s)
    assert "Fixed-N sampling" in html and html.count("<rect") >= 3
    assert html.count("<table") == 1 and "Response reuse" in html  # no rounds, but the reuse of both modes


def test_html_section_shows_rounds_stop_reasons_and_histogram():
    html = sampling_html(_summary())
    rows = re.findall(r"<tr><td>(\d+)</td><td class=num>([\d,]+)</td><td class=num>([\d,]+)</td>", html)
    assert rows == [("1", "10", "40"), ("2", "4", "16"), ("10", "0", "0")]
    assert "enough pairs" in html and "all right (too easy)" in html and "budget spent" in html
    assert "960 generated tokens saved" in html
    assert "<td>correctness</td><td class=num>8</td><td class=num>3.00</td><td class=num>12</td>" in html
    assert "280 generated tokens per distinct chosen" in html
    assert sampling_html({}) == ""


def test_a_prior_rebuild_says_what_it_skipped_by_which_rule_and_carried():
    prior = {"prior.skipped.too_hard": 86, "prior.skipped.too_easy": 2, "prior.skipped_tokens": 10259,
             "prior.skipped_samples": 704, "prior.sampled": 142, "prior.rule.point": 228, "prior.rule.interval": 2,
             "prior.carried": 88}
    summary = derived({"generate": {"counters": {"responses": 1136, "tokens_generated": 17000, **prior}}})
    p = summary["generate"]["prior"]
    assert p["skipped"] == 88 and p["judged_by"] == {"point": 228, "interval": 2} and p["carried"] == 88
    text = re.sub(r"<[^>]+>", " ", sampling_html(summary))
    assert "88 prompts skipped before sampling as outside rl_prompts.band" in text
    assert "carried into the prompt table: 88" in text
    assert "Judged by the prior pass rate (sampled there exactly as here): 228; by the whole 95% interval: 2" in text
