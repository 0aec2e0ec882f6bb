"""judge: prompt construction with facts, robust score parsing, threshold rules, real engine."""
from __future__ import annotations

import pytest

from helpers import make_config, run_stage_on
from methods.judge import build_judge_prompt, format_facts, parse_score
from schemas import PAIR_SCHEMA
from schemas.records import pair_row, provenance, turn_text
from stages.judge import threshold_verdict


@pytest.mark.parametrize("text, expected", [
    ("Score: 7", 7.0),
    ("The answer is accurate.\nScore: 9", 9.0),
    ("**Rating:** 8/10", 8.0),
    ("score = 6.5", 6.5),
    ("I would give it 7 out of 10.", 7.0),
    ("Score: 3/5", 6.4),              # 3/5 of the way from 1 to 10
    ("9", 9.0),
    ("**4**", 4.0),
    ("Score: 4. On reflection, final score: 6", 6.0),  # the last labelled score wins
    ("Score: 11", None),              # out of range: rejected, not clipped
    ("Score: -2", None),
    ("The answer is good.", None),
    ("", None),
    (None, None),
    ("Score: seven", None),
    ("There are 3 circles in the image.", None),  # a number that is not a score
])
def test_parse_score(text, expected):
    assert parse_score(text, (1, 10)) == expected


def test_prompt_includes_facts_only_when_configured():
    facts = format_facts(["3"], "Three blue circles.", ["ground_truth", "facts"])
    p = build_judge_prompt("How many circles?", "There are 4.", facts)
    assert "Reference answer: 3" in p and "Three blue circles." in p and "There are 4." in p
    assert "1 to 10" in p
    none = build_judge_prompt("How many circles?", "There are 4.", format_facts(["3"], "x", []))
    assert "Reference answer" not in none and "Facts" not in none


@pytest.mark.parametrize("c, r, min_c, margin, verdict", [
    (8, 3, 5, 2, None),
    (4, 3, 5, None, "min_chosen_score"),
    (8, 7, None, 2, "margin"),
    (8, 8, None, 0.5, "margin"),
    (None, 3, 5, 2, None),   # missing scores never remove a pair
    (8, None, 5, 2, None),
    (2, 9, None, None, None),
])
def test_threshold_rules(c, r, min_c, margin, verdict):
    assert threshold_verdict(c, r, min_c, margin) == verdict


def _pairs(png: bytes) -> list[dict]:
    rows = []
    for i, (chosen, rejected) in enumerate([("There are three circles.\nFinal answer: 3", "There are four circles.\nFinal answer: 4"),
                                            ("The square is red.\nFinal answer: red", "The square is blue.\nFinal answer: blue")]):
        rows.append(pair_row(pair_id=f"p{i}", method="correctness", source="s", question="How many circles?",
                             user_text="How many circles?", images=[{"bytes": png, "path": None}],
                             chosen=chosen, rejected=rejected,
                             prov=provenance(prompt_id=f"s{i}", ground_truth=["3"], facts="Three blue circles.")))
    return rows


def test_judge_stage_with_the_tiny_model(engine, tmp_path, sample_data):
    """Through vLLM: prompts carry the facts, unparseable scores are retried once then missing."""
    png = (sample_data / "images" / sorted(p.name for p in (sample_data / "images").iterdir())[0]).read_bytes()
    cfg = make_config(executor={"kind": "local"}, judge={"max_tokens": 24, "min_chosen_score": 5, "margin": 1})
    sent = []

    class Spy:
        def __getattr__(self, name):
            return getattr(engine, name)

        def generate(self, requests):
            res = engine.generate(requests)
            sent.extend(zip(requests, res))
            return res

    out, stats = run_stage_on("judge", cfg, _pairs(png), PAIR_SCHEMA, tmp_path, Spy())
    first_round = sent[:4]
    assert len(first_round) == 4  # chosen + rejected for two pairs
    for req, res in first_round:
        assert "Reference answer: 3" in res.prompt_text and "Three blue circles." in res.prompt_text
        assert "<image>" in res.prompt_text and len(req.images) == 1
    texts = [turn_text(r["chosen"]) for r in _pairs(png)] + [turn_text(r["rejected"]) for r in _pairs(png)]
    assert all(any(t in res.prompt_text for t in texts) for _, res in first_round)
    # what the tiny model says is no score: each one retried exactly once, then recorded missing
    unparsed = [res for _, res in first_round if parse_score(res.completions[0].text) is None]
    assert len(sent) == 4 + len(unparsed) and stats.counters["judge.retried"] == len(unparsed)
    for row in out:
        p = row["provenance"]
        for key in ("judge_chosen_score", "judge_rejected_score"):
            assert p[key] is None or 1 <= p[key] <= 10
    kept = len(out) + stats.counters.get("removed.judge.min_chosen_score", 0) + stats.counters.get("removed.judge.margin", 0)
    assert kept == 2
