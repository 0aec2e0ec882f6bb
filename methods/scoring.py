"""Score every sampled response of a prompt against its ground truth (pure, no I/O).

Extract each response's final answer in the style the prompt template asked
for, then match it with the rules of ``methods.match``.  Used by the
correctness pairs and by any method that must know which samples are right
(DropoutNTP on correct responses, image-crop pairs): one function, so every
method scores a response the same way.

``settings`` is anything with ``threshold``, ``numeric_rel_tol``,
``anls_cutoff`` and ``extraction`` (the correctness config section);
``source`` anything with ``relaxed_numeric`` and ``true_false`` (or None).
Scoring exceptions the matcher swallows (math_verify parse/verify errors)
are counted into ``counters`` when one is given, so they are reported rather
than silently scored "wrong".
"""
from __future__ import annotations

from typing import Any, Mapping, MutableMapping

from methods import match
from methods.consistency import conflicting, states_any
from methods.extract import extract_answers
from methods.match import infer_answer_type, match_answer
from methods.pairs import Scored

#: the attributes of ``settings`` a score depends on (a caller hashes them to know when to rescore)
SETTINGS = ("threshold", "numeric_rel_tol", "anls_cutoff", "extraction")


def score_responses(row: Mapping[str, Any], settings: Any, source: Any, styles: Mapping[str, str],
                    counters: MutableMapping[str, int] | None = None) -> list[Scored]:
    """One ``Scored`` per response of ``row`` (a RESPONSE_SCHEMA row), in response order.

    The last final answer is the one matched; a response stating several different final
    answers is marked ``conflicting``, one stating the ground truth in any of them
    ``states_truth`` (``methods.consistency``)."""
    style = settings.extraction or styles.get(row["template_id"] or "", "final_answer")
    answer_type = row["answer_type"] or "auto"
    if answer_type == "auto":
        answer_type = infer_answer_type(row["answer"], row["choices"])
    kw = dict(threshold=settings.threshold, rel_tol=settings.numeric_rel_tol,
              relaxed=bool(source and source.relaxed_numeric), true_false=bool(source and source.true_false),
              anls_cutoff=settings.anls_cutoff)
    before = dict(match.SCORING_ERRORS)
    out = []
    for r in row["responses"]:
        answers = extract_answers(r["text"], style)
        if not answers:
            out.append(Scored(r["index"], r["text"], None, 0.0, False))
            continue
        ans = answers[-1]
        m = match_answer(ans, row["answer"], answer_type, row["choices"], **kw)
        several = len(answers) > 1
        out.append(Scored(
            r["index"], r["text"], ans, m.score, m.correct, m.rule, tuple(answers),
            conflicting=several and conflicting(answers, answer_type, row["choices"], **kw),
            states_truth=m.correct or (several and states_any(answers[:-1], row["answer"], answer_type,
                                                              row["choices"], **kw))))
    if counters is not None:
        for key, n in match.SCORING_ERRORS.items():
            if n - before.get(key, 0):
                counters[f"scoring_errors.{key}"] = counters.get(f"scoring_errors.{key}", 0) + n - before.get(key, 0)
    return out


def pass_rate(scored: list[Scored]) -> float | None:
    """The share of a prompt's samples that were right (None: no samples)."""
    return sum(s.correct for s in scored) / len(scored) if scored else None


def pass_rate_bin(rate: float, bins: int = 10) -> int:
    """The histogram bin of a pass rate: 0 = [0, 0.1), ..., 9 = [0.9, 1.0]."""
    return min(int(rate * bins), bins - 1)
