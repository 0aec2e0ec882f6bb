"""Several final answers in one response (issue 13, point 4): never a chosen when they
conflict, never a rejected when one of them is the ground truth.

The first rows of each table quote responses of the sample build."""
from __future__ import annotations

import pytest

from helpers import make_config, run_stage_on
from methods.consistency import conflicting, states_any
from methods.extract import extract_answer, extract_answers
from methods.pairs import Scored, select_pairs
from schemas import RESPONSE_SCHEMA

SAMPLE_CHOSEN = "Bar A reaches 80%.\nFinal answer: 80%.\nFinal answer: 95Final answer: 40%"
SAMPLE_REJECTED = "The dot is near the middle.\nFinal answer: in the centre.\nFinal answer: yes"


@pytest.mark.parametrize("text, style, expected", [
    (SAMPLE_CHOSEN, "final_answer", ["80%", "95", "40%"]),
    (SAMPLE_REJECTED, "final_answer", ["in the centre", "yes"]),
    ("Three circles.\nFinal answer: 3", "final_answer", ["3"]),
    ("Final answer: 3\nLet me check.\nFinal answer: 3.", "final_answer", ["3", "3"]),
    ("**Final Answer:** 3\n### Final Answer\n4", "final_answer", ["3", "4"]),
    ("The answer is: 2\nAnswer: 3", "final_answer", ["2", "3"]),
    # a mid-sentence "answer:" is part of the reasoning, not a statement
    ("To find the answer: count the bars.\nFinal answer: 3", "final_answer", ["3"]),
    ("No label here, 3 circles.", "final_answer", []),
    # boxed: earlier boxes are intermediate results; labels and the last box are statements
    ("First \\boxed{2}, then \\boxed{3}", "boxed", ["3"]),
    ("Answer: 5\nSo \\boxed{3}", "boxed", ["5", "3"]),
    ("Answer: \\boxed{3}", "boxed", ["3"]),
    # think: only what follows </think> counts
    ("<think>Answer: 5? no.</think>Final answer: 3", "think", ["3"]),
    ("<think>hmm</think>Final answer: 5\n\\boxed{3}", "think", ["5", "3"]),
    ("<think>hmm</think> 3", "think", ["3"]),
    ("so the answer is 7.", "any", ["7"]),
], ids=lambda v: v if isinstance(v, str) and len(v) < 12 else None)
def test_extract_answers(text, style, expected):
    assert extract_answers(text, style) == expected
    if expected:
        assert expected[-1] == extract_answer(text, style), "the last statement is the extracted answer"


@pytest.mark.parametrize("answers, answer_type, choices, expected", [
    (["80%", "95", "40%"], "number", None, True),            # the sample build's chosen
    (["in the centre", "yes"], "text", None, True),          # the sample build's rejected
    (["3", "3"], "integer", None, False),                    # a repeat is fine
    (["80%", "80 %"], "number", None, False),
    (["2", "x = 2"], "integer", None, False),                # one value, two spellings
    (["two", "2"], "integer", None, False),
    (["B", "B. red"], "multiple_choice", ["blue", "red"], False),
    (["A", "B"], "multiple_choice", ["blue", "red"], True),
    (["Yes", "yes, it is"], "yes_no", None, False),
    (["yes", "no"], "yes_no", None, True),
    (["3", "4"], "integer", None, True),
    (["A cat.", "a cat"], "open", None, False),               # no rules: case/period-insensitive equality
    (["3"], "integer", None, False),
])
def test_conflicting(answers, answer_type, choices, expected):
    assert conflicting(answers, answer_type, choices) is expected


@pytest.mark.parametrize("answers, truths, answer_type, expected", [
    (["in the centre"], ["in the centre"], "text", True),
    (["80%", "95"], ["40%"], "number", False),
    (["40%", "95"], ["40%"], "number", True),
    (["x = 2"], ["2"], "integer", True),
])
def test_states_any(answers, truths, answer_type, expected):
    assert states_any(answers, truths, answer_type) is expected


def _scored(i, text, answer, correct, answers=None, **kw):
    return Scored(i, text, answer, float(correct), correct, answers=tuple(answers or (answer,)), **kw)


def test_chosen_answer_in_any_rejected_statement_drops_the_pair():
    chosen = [_scored(0, "The cup is in the centre.\nFinal answer: centre", "centre", True)]
    last_only = _scored(1, "Final answer: left", "left", False)
    earlier = _scored(2, "Final answer: in the centre.\nFinal answer: yes", "yes", False,
                      answers=["in the centre", "yes"])
    pairs = select_pairs(chosen, [last_only, earlier], 15, seed=1)
    assert [r.index for _, r in pairs] == [1]


def _response_row(prompt_id, answer, answer_type, texts, choices=None):
    return {
        "prompt_id": prompt_id, "source": "sample_gt", "row_key": prompt_id, "question": "Q?", "images": [],
        "answer": answer, "answer_type": answer_type, "choices": choices or [], "facts": None,
        "template_id": "mmpr_final_answer", "prompt_text": "Q?", "prompt_tokens": 3, "model": "m",
        "model_revision": "r", "sampling": None,
        "responses": [{"index": i, "text": t, "finish_reason": "stop", "num_tokens": 10, "seed": i}
                      for i, t in enumerate(texts)],
    }


CLEAN_RIGHT_40 = "Bar A reaches 40%.\nFinal answer: 40%"
WRONG_95 = "Bar A reaches 95%.\nFinal answer: 95%"
ROWS = [
    # the sample build's chosen: right by its last statement, but it also says 80% and 95
    _response_row("bars", ["40%"], "number", [SAMPLE_CHOSEN, CLEAN_RIGHT_40, WRONG_95]),
    # the sample build's rejected: wrong by its last statement, but it first says the truth
    _response_row("where", ["in the centre"], "text",
                  ["The cup sits in the middle.\nFinal answer: in the centre", SAMPLE_REJECTED,
                   "The cup is at the edge.\nFinal answer: on the left"]),
    # only a conflicting right answer: no usable chosen at all
    _response_row("only", ["40%"], "number", [SAMPLE_CHOSEN, WRONG_95]),
]


@pytest.fixture(scope="module")
def correctness_run(tmp_path_factory):
    return run_stage_on("correctness", make_config(), ROWS, RESPONSE_SCHEMA, tmp_path_factory.mktemp("correctness"))


def test_correctness_stage_sets_aside_unclean_responses(correctness_run):
    pairs, stats = correctness_run
    text = {p["provenance"]["prompt_id"]: [] for p in pairs}
    for p in pairs:
        text[p["provenance"]["prompt_id"]].append((p["chosen"][-1]["content"][0]["text"],
                                                   p["rejected"][-1]["content"][0]["text"], p["method"]))
    # the conflicting response is never chosen; the clean right answer takes its place
    assert [(c, r) for c, r, m in text["bars"] if m == "correctness"] == [(CLEAN_RIGHT_40, WRONG_95)]
    # the rejected stating the truth first is never used; the clean wrong one is
    assert [r for _, r, m in text["where"] if m == "correctness"] == \
        ["The cup is at the edge.\nFinal answer: on the left"]
    assert "only" not in text
    assert stats.counters["responses.conflicting_answers"] == 2
    assert stats.counters["responses.wrong_states_truth"] == 1
    assert stats.counters["responses.correct"] == 4, "accuracy still scores the last statement"


def test_report_summary_shows_what_was_set_aside(correctness_run):
    from pipeline.run.report import derived

    _, stats = correctness_run
    crop = {"pairs.image_crop": 46, "dropped.near_identical_crop": 7, "crops.retried": 14}
    summary = derived({"correctness": stats.to_dict(), "image_crop": {"counters": crop}})
    assert summary["correctness"]["set_aside"] == {"conflicting_answers": 2, "wrong_states_truth": 1}
    assert summary["image_crop"] == {"pairs": 46, "dropped": {"near_identical_crop": 7}, "crops_retried": 14}
