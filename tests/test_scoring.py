"""methods.scoring: one scoring function for every method, and scoring errors that are counted.

math_verify raising (a parser bug, sympy on odd input, a timeout) scores the
response as not matching -- it must not pass silently for a wrong answer:
the exception is counted per kind and reaches the correctness summary.
"""
from __future__ import annotations

import math_verify
import pytest

from helpers import make_config
from methods.scoring import score_responses
from pipeline.core.graph import make_stage, stage_class
from pipeline.core.stage import StageContext
from pipeline.config.templates import EXTRACTION_STYLE


def _row(answer: str, texts: list[str], answer_type: str = "math") -> dict:
    return {
        "prompt_id": "s", "source": "sample_gt", "row_key": "k", "question": "Simplify.", "images": [],
        "answer": [answer], "answer_type": answer_type, "choices": [], "facts": None,
        "template_id": "mmpr_final_answer", "prompt_text": "", "prompt_tokens": 0, "model": "m",
        "model_revision": None, "sampling": None,
        "responses": [{"index": i, "text": t, "finish_reason": "stop", "num_tokens": 3, "seed": i}
                      for i, t in enumerate(texts)],
    }


def test_scoring_matches_like_the_correctness_stage():
    cfg = make_config()
    row = _row("\\frac{1}{2}", ["so\nFinal answer: 0.5", "so\nFinal answer: 1/3", "no final line"])
    scored = score_responses(row, cfg.scoring, cfg.source("sample_gt"), EXTRACTION_STYLE)
    assert [(s.answer, s.correct) for s in scored] == [("0.5", True), ("1/3", False), (None, False)]


def test_math_verify_exceptions_are_counted_not_silent(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("sympy blew up")

    monkeypatch.setattr(math_verify, "verify", broken)
    cfg = make_config()
    # unique answers: the parser cache must not hide the call
    row = _row("\\sqrt{7}+\\frac{3}{11}", ["so\nFinal answer: \\frac{3}{11}+\\sqrt{7}", "Final answer: 9"])
    counters: dict = {}
    scored = score_responses(row, cfg.scoring, cfg.source("sample_gt"), EXTRACTION_STYLE, counters)
    assert not any(s.correct for s in scored)
    assert counters.get("scoring_errors.math_verify.RuntimeError", 0) >= 1
    ctx = StageContext("correctness", "p", cfg)
    list(make_stage("correctness", cfg).run(iter([row]), ctx))
    summary = stage_class("correctness").summarize(dict(ctx.stats.counters))
    assert summary["scoring_errors"].get("math_verify.RuntimeError", 0) >= 1
    assert "scoring errors" in stage_class("correctness").summary_line(summary)


@pytest.mark.parametrize("stage", ["image_crop", "dropout_ntp"])
def test_methods_that_need_right_answers_hash_the_scoring_settings(stage):
    base = make_config(dropout_ntp={"on_correct": True})
    stricter = make_config(dropout_ntp={"on_correct": True}, scoring={"numeric_rel_tol": 0.1})
    assert base.stage_hash(stage) != stricter.stage_hash(stage)
