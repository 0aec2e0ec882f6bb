"""The RL reward (methods/reward.py) gives the correctness stage's own verdict."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from methods.reward import DEFAULT_SCORING, compute_score, reward, verdict


def test_defaults_are_the_scoring_sections():
    from pipeline.config.shared import ScoringConfig
    from pipeline.config.templates import BUILTIN_TEMPLATES

    s = ScoringConfig()
    assert {k: getattr(s, k) for k in ("threshold", "numeric_rel_tol", "anls_cutoff")} == \
        {k: DEFAULT_SCORING[k] for k in ("threshold", "numeric_rel_tol", "anls_cutoff")}
    assert DEFAULT_SCORING["extraction"] == BUILTIN_TEMPLATES["mmpr_final_answer"].extraction


@pytest.mark.parametrize("text, answers, answer_type, choices, scoring, expected", [
    ("It is red.\nFinal answer: A", ["A"], "multiple_choice", ["red", "black"], None, True),
    ("Final answer: red", ["A"], "multiple_choice", ["red", "black"], None, True),   # the option's text
    ("Final answer: B", ["A"], "multiple_choice", ["red", "black"], None, False),
    ("I count them.", ["3"], "integer", None, None, False),                          # unparseable
    ("Final answer: three", ["3"], "integer", None, None, True),
    ("Final answer: 4\nFinal answer: 3", ["3"], "integer", None, None, True),        # the last one counts
    ("The answer is \\boxed{3}.", ["3"], "integer", None, None, False),              # not this template's style
    ("The answer is \\boxed{3}.", ["3"], "integer", None, {"extraction": "boxed"}, True),
    ("Final answer: 3.1", ["3"], "number", None, None, False),
    ("Final answer: 3.1", ["3"], "number", None, {"numeric_rel_tol": 0.05}, True),
    ("Final answer: True", ["yes"], "yes_no", None, None, False),
    ("Final answer: True", ["yes"], "yes_no", None, {"true_false": True}, True),
])
def test_verdict(text, answers, answer_type, choices, scoring, expected):
    assert verdict(text, answers, answer_type, choices, scoring) is expected


def test_the_trainer_shapes():
    # TRL: conversational completions, dataset columns as lists (one per completion), extra kwargs
    completions = [[{"role": "assistant", "content": " Final answer: 3 "}], [{"role": "assistant", "content": "4"}]]
    assert reward(completions, ["3", "3"], ["integer", "integer"], trainer_state=None, prompt_id=["a", "a"]) \
        == [1.0, 0.0]
    # ms-swift: plain strings; `answers` (every ground truth) wins over `solution`
    assert reward(["Final answer: 7", "Final answer: 3"], ["3", "3"], ["integer"] * 2,
                  answers=[["3", "7"], ["3", "7"]]) == [1.0, 1.0]
    # verl: ground truth + the row's extra_info
    info = {"answers": ["A"], "answer_type": "multiple_choice", "choices": ["red", "black"],
            "scoring": {"extraction": "final_answer", "threshold": 0.9}}
    assert compute_score("mmpr/sample", "Final answer: red", "A", info) == 1.0
    assert compute_score("mmpr/sample", "Final answer: black", "A", info) == 0.0


def test_parity_with_the_correctness_stage_on_hard_cases(tmp_path):
    """The stage's published counts (its prompt table) equal the reward's sums, prompt by prompt."""
    from helpers import make_config, run_stage_on
    from test_prompt_table import ROWS, response_row
    from schemas import RESPONSE_SCHEMA

    rows = ROWS + [
        response_row("mc", ["B"], ["Final answer: black", "Final answer: (B)", "Final answer: A", "b"]),
        response_row("num", ["0.5"], ["Final answer: 1/2", "Final answer: 50%", "Final answer: .5", "0.5"]),
    ]
    rows[-2]["choices"], rows[-2]["answer_type"] = ["red", "black"], "multiple_choice"
    rows[-1]["answer_type"] = "auto"
    run_stage_on("correctness", make_config(), rows, RESPONSE_SCHEMA, tmp_path)
    table = pq.read_table(tmp_path / "out" / "side" / "prompts" / "p.parquet").to_pylist()
    by_id = {r["prompt_id"]: r for r in rows}
    checked = 0
    for p in table:
        if p["pass_rate"] is None:
            continue
        texts = [r["text"] for r in by_id[p["prompt_id"]]["responses"]]
        n = len(texts)
        got = reward(texts, [p["answer"][0]] * n, [p["answer_type"]] * n, answers=[p["answer"]] * n,
                     choices=[p["choices"]] * n, scoring=[p["scoring"]] * n)
        assert sum(got) == p["correct"], p["prompt_id"]
        checked += n
    assert checked == 17


def _sample_parity(work: Path) -> tuple[int, int]:
    """(responses checked, right ones): every generated response of the sample build, scored by the
    reward from the prompt table's fields, against the correctness stage's own verdicts."""
    from methods.scoring import score_responses
    from pipeline.config.loading import load_config
    from pipeline.config.templates import extraction_styles
    from helpers import ROOT, SAMPLE_CONFIG

    cfg = load_config(ROOT / SAMPLE_CONFIG)
    table = {r["prompt_id"]: r for f in sorted((work.parent / "out" / "prompts").glob("*.parquet"))
             for r in pq.read_table(f).to_pylist()}
    responses = right = 0
    for f in sorted((work / "generate" / "data").glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            p = table[row["prompt_id"]]  # every generated prompt has its row
            if not row["answer"]:
                assert p["pass_rate"] is None
                continue
            stage = score_responses(row, cfg.scoring, cfg.source(row["source"]), extraction_styles(cfg))
            texts = [r["text"] for r in row["responses"]]
            n = len(texts)
            got = reward([[{"role": "assistant", "content": t}] for t in texts], [p["answer"][0]] * n,
                         [p["answer_type"]] * n, answers=[p["answer"]] * n, choices=[p["choices"]] * n,
                         scoring=[p["scoring"]] * n)
            assert got == [float(s.correct) for s in stage], row["prompt_id"]
            assert sum(got) == p["correct"] and n == p["samples_drawn"], row["prompt_id"]
            responses += n
            right += int(sum(got))
    return responses, right


def test_reward_parity_over_every_response_of_the_sample_build(sample_build, capsys):
    responses, right = _sample_parity(Path(sample_build).parent / "work")
    with capsys.disabled():
        print(f"\nreward parity: {responses} responses of the sample build ({right} right) agree with "
              "the correctness stage")
    assert responses >= 100
