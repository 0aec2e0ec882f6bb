"""Quality rules: no repetitive or broken sample reaches the dataset (pure).

InternVL-2.5 found that a few anomalous samples -- above all repetitive
generations -- badly hurt chain-of-thought training, and MPO reports that
plain DPO made 16.4% of outputs unparsable or repetitive.  A chosen response
must therefore never be garbage.  These rules are cheap heuristics run by the
``filter`` stage before any (optional) LLM judge.

Every rule is a small function ``rule(text, **params) -> Verdict`` (pair rules
take ``(chosen, rejected, **params)``), and :func:`check_text` /
:func:`check_pair` run the enabled ones from a plain dict, so a stage drives
them from YAML::

    quality:
      repeated_lines: {max_dup_frac: 0.25}
      language_mismatch: false

This module is the rule set and its configuration; the rules live by family in
``methods.broken_text`` (empty, cut off, bad characters, no final answer),
``methods.ngram_repetition`` and ``methods.repetition`` (loops),
``methods.language_script`` (script switches) and ``methods.pair_rules``.

Repetition thresholds come from Gopher (Rae et al. 2021, "Scaling Language
Models", MassiveText quality filter, appendix A):

* duplicate lines: fraction of lines > 0.30, fraction of characters > 0.20
  (the same values are used for paragraphs);
* most common n-gram, fraction of characters: n=2 > 0.20, n=3 > 0.18,
  n=4 > 0.16;
* characters in duplicate n-grams: n=5 > 0.15, 6 > 0.14, 7 > 0.13,
  8 > 0.12, 9 > 0.11, 10 > 0.10.

Gopher tuned them for web documents of at least 50 words; model responses
are often shorter, so the n-gram rule only applies from ``min_words`` (50)
words on.  Below that a single 4-gram said twice ("the area of the
triangle") already exceeds 0.16 of the characters, and short maths like
"3 x 4 = 12, 3 x 5 = 15" trips the 2-gram rule.  Loops in short texts are
caught by :func:`longest_repeated_substring` and :func:`repeated_lines`.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable, Mapping, Optional

# the rules, by family; imported here because this module is their rule set and API
from methods.broken_text import (  # noqa: F401
    bad_characters, empty, length_bounds, missing_final_answer, never_ends)
from methods.language_script import dominant_script, language_mismatch, script_counts  # noqa: F401
from methods.ngram_repetition import (  # noqa: F401
    GOPHER_DUP_NGRAM, GOPHER_TOP_NGRAM, dup_ngram_char_fraction, repeated_ngram_fraction,
    top_ngram_char_fraction, words_of)
from methods.pair_rules import identical, length_ratio, same_text, text_key  # noqa: F401
from methods.repetition import (  # noqa: F401
    longest_repeat, longest_repeated_substring, repeated_lines, tail_loop)
from methods.verdict import Verdict


# ================================================================ configuration

#: single-text rules, in the order they run; a dict gives the default params,
#: False means off unless enabled in the config.
DEFAULT_RULES: dict[str, Any] = {
    "empty": {},
    "never_ends": {"fail_on": ["length"]},
    "length_bounds": {"min_chars": 1, "max_chars": None, "min_tokens": None, "max_tokens": None},
    "bad_characters": {"allowed_controls": "\n\t", "max_count": 0},
    "repeated_ngram_fraction": {"dup_ngram_thresholds": dict(GOPHER_DUP_NGRAM),
                                "top_ngram_thresholds": dict(GOPHER_TOP_NGRAM),
                                "min_words": 50},
    "longest_repeated_substring": {"max_fraction": 0.3, "min_chars": 30,
                                   "tail_min_repeats": 3.0, "tail_min_chars": 40},
    "repeated_lines": {"max_dup_frac": 0.30, "max_dup_char_frac": 0.20, "min_units": 3},
    "language_mismatch": {"min_letters": 20, "min_share": 0.8},
    # only for ground-truth data, where the template asks for a final answer
    "missing_final_answer": False,
}

#: chosen-vs-rejected rules (not for image_crop pairs: same text by design)
DEFAULT_PAIR_RULES: dict[str, Any] = {
    "identical": {},
    "length_ratio": {"lo": 0.5, "hi": 2.0},
}

#: pair rules a config may not disable, with the reason given in the error
MANDATORY_PAIR_RULES = {"identical": "a text pair with the same chosen and rejected text teaches nothing "
                                     "(ms-swift deletes it, TRL and LLaMA-Factory train on zero signal)"}

RULES: dict[str, Callable[..., Verdict]] = {
    "empty": empty, "never_ends": never_ends, "length_bounds": length_bounds,
    "bad_characters": bad_characters, "repeated_ngram_fraction": repeated_ngram_fraction,
    "longest_repeated_substring": longest_repeated_substring,
    "repeated_lines": repeated_lines, "language_mismatch": language_mismatch,
    "missing_final_answer": missing_final_answer,
}
PAIR_RULES: dict[str, Callable[..., Verdict]] = {"identical": identical, "length_ratio": length_ratio}

#: per-sample inputs passed by the caller, never configured
_CONTEXT = ("finish_reason", "num_tokens", "question", "extractor")


@functools.lru_cache(maxsize=None)
def _params_of(fn: Callable) -> tuple[str, ...]:
    """Keyword parameters of a rule (after its text argument(s))."""
    skip = 2 if fn in PAIR_RULES.values() else 1
    return tuple(inspect.signature(fn).parameters)[skip:]


def resolve_rules(rules_config: Optional[Mapping[str, Any]] = None,
                  pair: bool = False) -> dict[str, dict]:
    """Merge a config over the defaults: enabled rule name -> params.

    ``rules_config`` maps a rule name to a dict of params (merged over its
    defaults), True (defaults) or False/None (off); rules not named keep
    their default.  Unknown rules or params raise ValueError, so a typo in
    YAML fails at start-up instead of silently disabling a filter.
    """
    defaults = DEFAULT_PAIR_RULES if pair else DEFAULT_RULES
    table = PAIR_RULES if pair else RULES
    config = dict(rules_config or {})
    unknown = set(config) - set(defaults)
    if unknown:
        raise ValueError(f"unknown quality rule(s) {sorted(unknown)}; known: {list(defaults)}")
    resolved = {}
    for name, default in defaults.items():
        value = config.get(name, default)
        if value is None or value is False:
            if pair and name in MANDATORY_PAIR_RULES:
                raise ValueError(f"filter.pair_rules.{name} cannot be turned off: {MANDATORY_PAIR_RULES[name]}; "
                                 f"remove the key from the config")
            continue
        params = dict(default) if isinstance(default, dict) else {}
        if isinstance(value, Mapping):
            params.update(value)
        elif value is not True:
            raise ValueError(f"quality rule {name!r} must be a dict, true or false, got {value!r}")
        allowed = [p for p in _params_of(table[name]) if p not in _CONTEXT]
        bad = [p for p in params if p not in allowed]
        if bad:
            raise ValueError(f"unknown parameter(s) {bad} for quality rule {name!r}; allowed: {allowed}")
        resolved[name] = params
    return resolved


def check_text(text: str, rules_config: Optional[Mapping[str, Any]] = None,
               finish_reason: Optional[str] = None, num_tokens: Optional[int] = None,
               *, question: Optional[str] = None,
               extractor: Optional[Callable[[str], Any]] = None) -> list[Verdict]:
    """Run every enabled single-text rule; one Verdict per rule, in order.

    ``finish_reason``, ``num_tokens``, ``question`` and ``extractor`` are the
    per-sample context handed to the rules that take them.
    """
    context = {"finish_reason": finish_reason, "num_tokens": num_tokens,
               "question": question, "extractor": extractor}
    verdicts = []
    for name, params in resolve_rules(rules_config).items():
        fn = RULES[name]
        extra = {k: v for k, v in context.items() if k in _params_of(fn)}
        verdicts.append(fn(text, **params, **extra))
    return verdicts


def check_pair(chosen: str, rejected: str,
               rules_config: Optional[Mapping[str, Any]] = None) -> list[Verdict]:
    """Run every enabled pair rule on (chosen, rejected)."""
    return [PAIR_RULES[name](chosen, rejected, **params)
            for name, params in resolve_rules(rules_config, pair=True).items()]


def failures(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """The failed verdicts (empty list: the sample passes)."""
    return [v for v in verdicts if not v.passed]


#: rules switched off when choosing DropoutNTP's chosen response (``dropout_ntp.selection:
#: filtered``): every other default single-text rule must pass
DROPOUT_SELECTION_RULES = {"length_bounds": False, "language_mismatch": False, "bad_characters": False}


def usable_as_dropout_chosen(text: str, finish_reason: Optional[str] = None) -> bool:
    """Whether a response may be DropoutNTP's chosen under ``selection: filtered`` (also what
    adaptive sampling of a prompt without ground truth waits for)."""
    return not failures(check_text(text, dict(DROPOUT_SELECTION_RULES), finish_reason=finish_reason))
