"""What a prior measurement of a prompt says about sampling it again (pure, no I/O).

A rebuild with ``generate.prior`` knows, for each prompt an earlier build sampled, its
pass rate and 95% Wilson interval (``methods.prompt_stats``).  ``skip_reason``: a prompt
whose whole interval lies below the band (``too_hard``) or above it (``too_easy``) would,
with 95% confidence, fall outside the RL curriculum again, so it is not sampled.  A
prompt whose interval touches the band is sampled as in any build: its rate is measured
again, so the curriculum of a rebuild is decided by the rebuild's own samples.

With n samples the interval is never narrower than Wilson's at 0/n or n/n: at n = 8 it
is [0, 0.32] and [0.68, 1], so with MMPR-Tiny's band [0.2, 0.8] a prior needs at least
16 samples per prompt (0/16: [0, 0.19]; 16/16: [0.81, 1]) before any prompt is skipped.

The interval is the right rule when the prior's rate is a measurement of the same policy
that the rebuild would repeat with other random draws.  When the prior drew exactly the
samples the rebuild would draw (same model, prompt text, sampling settings and per-prompt
seed, and the same scoring: ``publish.prior.fingerprint``), there is no sampling noise
left: the rebuild would measure the prior's rate exactly, and ``point_skip_reason`` skips
by the rate itself.  The prompts a rebuild then keeps in the band are exactly the plain
build's, and every prompt outside it is skipped.
"""
from __future__ import annotations

from typing import Sequence

#: how a rebuild decides that a prior prompt lies outside the band (``generate.prior_skip``)
RULES = ("auto", "point", "interval")


def skip_reason(low: float | None, high: float | None, band: Sequence[float]) -> str | None:
    """``too_hard`` / ``too_easy`` when the interval [low, high] lies wholly below / above
    ``band`` (both bounds of the band included in it); None: sample the prompt."""
    if low is None or high is None:
        return None
    if high < band[0]:
        return "too_hard"
    if low > band[1]:
        return "too_easy"
    return None


def point_skip_reason(rate: float | None, band: Sequence[float]) -> str | None:
    """``too_hard`` / ``too_easy`` when ``rate`` lies below / above ``band``: the RL curriculum's
    own test (``publish.exports.rl``), for a prior whose rate the rebuild would measure again exactly."""
    return skip_reason(rate, rate, band)


def use_point(rule: str, identical: bool) -> bool:
    """Whether a prompt is judged by its prior point rate: ``point`` always, ``interval`` never,
    ``auto`` when the prior's sampling of it is identical to this build's."""
    return rule == "point" or (rule == "auto" and identical)


def judge(rule: str, identical: bool, rate: float | None, low: float | None, high: float | None,
          band: Sequence[float]) -> tuple[str | None, str]:
    """(skip reason or None, the rule that judged: ``point`` / ``interval``) of a prior prompt."""
    if use_point(rule, identical):
        return point_skip_reason(rate, band), "point"
    return skip_reason(low, high, band), "interval"
