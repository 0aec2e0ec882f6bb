"""One prompt's row of the prompt table: how the policy did on it (pure, no I/O).

The correctness stage scores every sample of a prompt (``methods.scoring``); this
keeps those verdicts per prompt instead of only in aggregate counters, so a build
publishes each prompt's measured pass rate (``prompts/*.parquet``, the RL exports'
curriculum).  The counts are exactly the stage's: ``correct`` is what
``methods.scoring.pass_rate`` counts, ``right`` / ``wrong`` the responses usable as
chosen / rejected, ``unparseable`` those without a final answer.

The interval is Wilson's score interval: defined at 0/n and n/n (where the normal
approximation collapses to a point), and never outside [0, 1].  With adaptive
sampling ``samples_drawn`` is where the prompt stopped (``stop_reason``), not the
budget: a prompt stopped at 4/4 right has a wide interval, and the interval says so.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from methods.pairs import Scored

#: the normal quantile of a two-sided 95% interval
Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval of ``k`` successes in ``n`` trials ((None, None) when n = 0)."""
    if n <= 0:
        return None, None
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def scoring_settings(sc: Any, source: Any, extraction: str) -> dict:
    """The scoring settings a prompt's verdicts use (SCORING_TYPE): the shared ``scoring`` section
    ``sc``, the prompt's source (relaxed numeric, true/false answers) and ``extraction``, the style
    read from its responses (``scoring.extraction``, else its template's).  One function for the
    correctness stage, which records them per prompt, and a rebuild with ``generate.prior``, which
    compares them with the prior's (another scoring, another pass rate)."""
    return {"extraction": sc.extraction or extraction, "threshold": sc.threshold,
            "numeric_rel_tol": sc.numeric_rel_tol, "anls_cutoff": sc.anls_cutoff,
            "relaxed_numeric": bool(source and source.relaxed_numeric),
            "true_false": bool(source and source.true_false)}


def prompt_row(row: Mapping[str, Any], scored: Sequence[Scored] | None, prompt: list[dict],
               scoring: Mapping[str, Any]) -> dict:
    """The PROMPT_TABLE_SCHEMA row of a generated prompt (a RESPONSE_SCHEMA row).

    ``scored``: the stage's verdicts on its responses, None for a prompt without ground truth
    (counts and pass rate are null then); ``prompt``: the conversation as sent; ``scoring``:
    the settings the verdicts used (SCORING_TYPE)."""
    responses = row["responses"] or []
    sampling = row.get("sampling") or None
    out = {k: row.get(k) for k in ("prompt_id", "source", "row_key", "question", "template_id", "template_hash",
                                   "images", "answer", "answer_type", "choices", "model", "model_revision")}
    out.update(
        prompt=prompt, sampling=sampling, scoring=dict(scoring),
        samples_drawn=len(responses),
        tokens_generated=sum(r.get("num_tokens") or 0 for r in responses),
        finish_length=sum(r.get("finish_reason") == "length" for r in responses),
        seeds=[r.get("seed") for r in responses],
        # fixed-N sampling records no stop reason: every prompt drew generate.n
        stop_reason=(sampling or {}).get("stop_reason") or ("fixed_n" if sampling else None),
    )
    if scored is None:
        out.update(correct=None, right=None, wrong=None, unparseable=None, conflicting=None,
                   wrong_states_truth=None, pass_rate=None, pass_rate_low=None, pass_rate_high=None)
        return out
    n, k = len(scored), sum(s.correct for s in scored)
    low, high = wilson(k, n)
    out.update(
        correct=k,
        right=sum(s.usable_chosen for s in scored),
        wrong=sum(s.usable_rejected for s in scored),
        unparseable=sum(s.answer is None for s in scored),
        conflicting=sum(s.correct and s.conflicting for s in scored),
        wrong_states_truth=sum(s.states_truth and not s.correct for s in scored),
        pass_rate=k / n if n else None, pass_rate_low=low, pass_rate_high=high,
    )
    return out
