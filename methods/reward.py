"""The rule reward of the RL exports: exactly the correctness stage's verdict on one response.

The correctness stage counts a sample right when ``methods.scoring.score_responses``
says ``correct`` (its pass rate counts these).  This module calls the same function on
a one-response row, so the answer extraction, the answer-type inference, the match
rules, the threshold and the source flags are the stage's own: a policy trained on
this reward is rewarded for exactly what the published pass rates measured.

The RL exports (``publish/exports/rl.py``) write what a verdict needs into every row:
``solution`` (the first ground truth, a string: what TRL's and ms-swift's built-in
rewards expect), ``answers`` (every acceptable ground truth), ``answer_type``,
``choices`` and ``scoring`` (the build's settings: extraction style, threshold,
tolerances, the source's flags).  The functions, with stable signatures:

* ``reward(completions, solution, answer_type, **kw) -> list[float]``: TRL's
  ``GRPOTrainer`` and ms-swift's GRPO reward-function shape (dataset columns arrive as
  keyword lists, one entry per completion; a completion is a string or TRL's
  ``[{"role": "assistant", "content": str}]``);
* ``compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw) -> float``:
  verl's ``custom_reward_function`` (``extra_info`` holds answers, answer_type,
  choices and scoring);
* ``verdict(text, answers, ...) -> bool``: one response.

Only this package's own modules are imported, so the file works with nothing but
mmpr-forge's ``methods`` package on the path.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from methods.scoring import score_responses

#: the scoring settings when a row does not say (pipeline.config.shared.ScoringConfig's defaults;
#: tests/test_reward.py checks they agree)
DEFAULT_SCORING = {"extraction": "final_answer", "threshold": 0.9, "numeric_rel_tol": 1e-3, "anls_cutoff": 0.5,
                   "relaxed_numeric": False, "true_false": False}


def _text(completion: Any) -> str:
    """A completion's text: TRL's conversational ``[{"role": "assistant", "content": str}]`` or a string."""
    if isinstance(completion, list):
        completion = "".join(m.get("content") or "" for m in completion if isinstance(m, Mapping)
                             and isinstance(m.get("content"), str))
    return (completion or "").strip()  # generate stores responses stripped, so the stage scored them so


def verdict(text: str, answers: Sequence[str] | str, answer_type: str | None = "auto",
            choices: Sequence[str] | None = None, scoring: Mapping[str, Any] | None = None) -> bool:
    """Whether the correctness stage counts ``text`` right against ``answers``."""
    s = {**DEFAULT_SCORING, **{k: v for k, v in (scoring or {}).items() if v is not None}}
    row = {"template_id": None, "answer_type": answer_type or "auto",
           "answer": [answers] if isinstance(answers, str) else list(answers),
           "choices": list(choices) if choices else None,
           "responses": [{"index": 0, "text": text}]}
    settings = SimpleNamespace(extraction=s["extraction"], threshold=s["threshold"],
                               numeric_rel_tol=s["numeric_rel_tol"], anls_cutoff=s["anls_cutoff"])
    source = SimpleNamespace(relaxed_numeric=bool(s["relaxed_numeric"]), true_false=bool(s["true_false"]))
    return score_responses(row, settings, source, {})[0].correct


def _column(kw: Mapping[str, Any], name: str, n: int) -> list:
    value = kw.get(name)
    return list(value) if value is not None else [None] * n


def reward(completions: Sequence[Any], solution: Sequence[Any], answer_type: Sequence[str | None],
           **kw: Any) -> list[float]:
    """1.0 per completion the correctness stage would count right, else 0.0.

    ``solution``: one ground truth (str) or a list of them per completion; the optional
    ``answers``, ``choices`` and ``scoring`` columns (as the RL exports write them) are used
    when given; every other keyword (TRL's and ms-swift's trainer state, other columns) is
    ignored."""
    n = len(completions)
    answers, choices, scoring = _column(kw, "answers", n), _column(kw, "choices", n), _column(kw, "scoring", n)
    return [float(verdict(_text(c), a or s, t, ch, sc))
            for c, s, t, a, ch, sc in zip(completions, solution, answer_type, answers, choices, scoring)]


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping | None = None,
                  **kw: Any) -> float:
    """verl's reward-function shape: ``reward_model.ground_truth`` and the row's ``extra_info``."""
    info = extra_info or {}
    return float(verdict(_text(solution_str), info.get("answers") or ground_truth, info.get("answer_type"),
                         info.get("choices"), info.get("scoring")))
