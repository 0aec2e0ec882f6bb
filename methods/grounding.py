"""Visual-grounding arithmetic: assistant spans, log-prob sums, gains, margins, verdicts.

Pure functions (no engine, no I/O) so the numbers the grounding stage records
can be checked on their own.  Conventions, stated once:

- a *score* is the sum of the log-probabilities of the assistant-text tokens
  given the rendered prompt (the model's own chat template, generation prompt
  included) -- the end-of-turn token is not part of the text and not counted;
- a *gain* is a difference of **mean** log-probs per token (a per-token
  quantity, so long and short answers compare);
- a *margin* is a difference of **sums** (the quantity a DPO loss sees).
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


def answer_token_count(prompt_ids: Sequence[int], full_ids: Sequence[int]) -> tuple[int, bool]:
    """How many trailing tokens of ``full_ids`` (prompt text + answer text) belong to the answer.

    The answer starts after the longest common prefix of the two tokenisations;
    ``clean`` is False when the last prompt token merged with the answer's first
    characters (the merged token is then counted as answer).
    """
    common = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        common += 1
    return len(full_ids) - common, common == len(prompt_ids)


def tail_logprob(prompt_logprobs: Sequence[Mapping[int, Any] | None], token_ids: Sequence[int],
                 k: int) -> float | None:
    """Sum of the log-probs of the last ``k`` prompt tokens (vLLM ``prompt_logprobs`` layout:
    one ``{token_id: Logprob}`` per position, None at position 0).  None when a value is missing."""
    if k <= 0 or k > len(token_ids) - 1:
        return None
    total = 0.0
    for pos in range(len(token_ids) - k, len(token_ids)):
        lp = position_logprob(prompt_logprobs, pos, token_ids[pos])
        if lp is None:
            return None
        total += lp
    return total


def position_logprob(logprobs: Any, pos: int, token_id: int) -> float | None:
    """The log-prob of ``token_id`` at ``pos``: read straight from vLLM's ``FlatLogprobs``
    arrays (its item access builds a dict of Logprob objects per position), or from a list
    of ``{token_id: Logprob | float}``.  None when missing."""
    if hasattr(logprobs, "start_indices"):  # vllm.logprobs.FlatLogprobs
        if pos >= len(logprobs.start_indices):
            return None
        for i in range(logprobs.start_indices[pos], logprobs.end_indices[pos]):
            if logprobs.token_ids[i] == token_id:
                return float(logprobs.logprobs[i])
        return None
    entry = logprobs[pos]
    if entry is None or token_id not in entry:
        return None
    lp = entry[token_id]
    return float(getattr(lp, "logprob", lp))


def tokens_key(ids: Sequence[int]) -> str:
    """A short digest of a token sequence: "these are the same model inputs"."""
    return hashlib.blake2b(array("q", ids).tobytes(), digest_size=12).hexdigest()


def sampled_score(prompt_ids: Sequence[int], token_ids: Sequence[int], logprobs: Any,
                  finish_reason: str) -> tuple[float | None, str | None]:
    """A sampled response's score, from the log-probs vLLM returned while sampling it.

    Generation already computed, token by token, the log-prob of every sampled
    token given the prompt with its images (vLLM's raw log-probs, before
    temperature and top-k/top-p): their sum is the with-image score of the
    response's text, when scoring would send exactly the same tokens.  The
    end-of-turn token that stopped it is not part of the text.  Returns the sum
    and ``tokens_key`` of prompt + text tokens, which the scoring request's
    tokens must match for the sum to be used ((None, None) when not sampled
    with log-probs).  ``logprobs``: vLLM's, one position per sampled token.
    """
    if logprobs is None:
        return None, None
    m = len(token_ids) - (1 if finish_reason == "stop" and token_ids else 0)
    values = [position_logprob(logprobs, pos, tok) for pos, tok in enumerate(token_ids[:m])]
    if m <= 0 or None in values:
        return None, None
    return float(sum(values)), tokens_key([*prompt_ids, *token_ids[:m]])


def mean(total: float | None, tokens: int | None) -> float | None:
    return None if total is None or not tokens else total / tokens


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


@dataclass(frozen=True)
class Scores:
    """Summed log-probs of one answer text under the three image conditions (None = not scored)."""
    tokens: int | None
    image: float | None
    no_image: float | None
    crop: float | None = None

    def image_gain(self) -> float | None:
        """Mean log-prob per token with the image minus without it."""
        return diff(mean(self.image, self.tokens), mean(self.no_image, self.tokens))

    def crop_gain(self) -> float | None:
        """Mean log-prob per token with the original image minus with the cropped one."""
        return diff(mean(self.image, self.tokens), mean(self.crop, self.tokens))


def signals(chosen: Scores, rejected: Scores, image_crop: bool) -> dict[str, float | None]:
    """The derived signals of one pair.

    ``policy_margin`` is chosen minus rejected summed log-prob as the pair is
    trained: both with the original image, except an image_crop pair's
    rejected side, which is its text with the cropped image.
    ``grounding_margin`` is chosen's image gain minus rejected's (> 0: the
    chosen answer leans on the image more than the rejected one).
    """
    rejected_lp = rejected.crop if image_crop else rejected.image
    cg, rg = chosen.image_gain(), rejected.image_gain()
    return {
        "chosen_image_gain": cg, "rejected_image_gain": rg,
        "chosen_crop_gain": chosen.crop_gain() if image_crop else None,
        "rejected_crop_gain": rejected.crop_gain() if image_crop else None,
        "policy_margin": diff(chosen.image, rejected_lp),
        "grounding_margin": diff(cg, rg),
    }


#: threshold name -> (signal it reads, the methods it applies to; None = every method)
RULES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "min_chosen_image_gain": ("chosen_image_gain", None),
    "min_grounding_margin": ("grounding_margin", ("dropout_ntp",)),
    "min_crop_gain": ("chosen_crop_gain", ("image_crop",)),
}


def resolve_thresholds(default: Mapping[str, float | None], per_method: Mapping[str, Mapping],
                       per_source: Mapping[str, Mapping], method: str, source: str) -> dict[str, float | None]:
    """Thresholds for one pair: defaults, then the method's overrides, then the source's."""
    out = dict(default)
    for layer in (per_method.get(method), per_source.get(source)):
        out.update({k: v for k, v in (layer or {}).items()})
    return out


def verdict(sig: Mapping[str, float | None], thresholds: Mapping[str, float | None],
            method: str) -> tuple[str | None, list[str]]:
    """(the first rule that removes the pair or None, the rules that could not be checked).

    A missing signal never removes a pair (no evidence against it); it is reported instead.
    """
    unchecked = []
    for rule, (key, methods) in RULES.items():
        bound = thresholds.get(rule)
        if bound is None or (methods is not None and method not in methods):
            continue
        value = sig.get(key)
        if value is None:
            unchecked.append(rule)
        elif value < bound:
            return rule, unchecked
    return None, unchecked
