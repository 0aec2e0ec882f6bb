"""Question keys for near-duplicate matching: normalised tokens, MinHash signatures, LSH bands.

**Normalisation** (``tokens``), in order: NFKC and casefold; tokens are numbers (``3``,
``3.5``; ``1,000`` -> ``1000``), runs of letters and digits, and the math symbols
``= < > + * / ^ % × ÷`` (other punctuation and whitespace only separate); number words
become digits (zero..nineteen and the tens; "twenty-one" and "twenty one" -> 21); the
short-answer suffixes the caller passes (the pipeline's ``SHORT_ANSWER_SUFFIXES``) are
stripped as token tails, so their own spacing and punctuation do not matter.  Every
formatting variant (case, spaces, tabs, NBSP, ``?``/`` ?``/``!!``, an added suffix, digits
as words) of the sample's questions normalises to the same tokens.

**Matching**: word 3-grams (a question of at most 3 tokens is one shingle), a 128-value
MinHash (xxh64 of each shingle, then 128 multiply-shift hashes; seeded, so every worker
computes the same signature), 16 LSH bands of 8 rows for candidates (P(candidate) is
0.9999 at Jaccard 0.9, 0.61 at 0.7, 0.06 at 0.5), then the **exact** 3-gram Jaccard of the
two normalised texts decides (``similarity`` >= ``threshold``, default 0.9).  The normalised
text (median 14 words) is smaller than a signature (512 bytes), so it is what the key files
keep; the signature's own estimate has a standard error of 0.027 at 0.9 and put the
sample's "bar b" / "bar c" questions (J = 0.85) at 0.906.  The closest
*different* sample questions ("... value of bar b" / "... bar c") are at J = 0.85, so 0.8
would merge them.  Under about 20 words, 3-grams at 0.9 match only questions equal after
normalising, which is what is wanted: a one-word edit of a 5-word question is another
question.  An exact 64-bit key of the normalised text (``exact_key``) catches every
formatting variant.

**Decontamination** n-grams (``ngram_keys``): 64-bit keys of the question's word
n-grams (default 13, as in the GPT-3 and Llama reports), after normalising and stripping
the suffixes; a question shorter than n words has none.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
import xxhash

NUM_PERM = 128
BANDS = 16
ROWS = NUM_PERM // BANDS
SHINGLE = 3
_SEED = 20240529

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
         if i >= 2}
_NUMBER_WORDS = {w: i for i, w in enumerate(_UNITS)} | _TENS
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W_]+|[=<>+*/^%×÷]")
_THOUSANDS = re.compile(r",(?=\d{3}\b)")


def _raw_tokens(text: str) -> list[str]:
    out: list[str] = []
    after_tens = False  # the previous token was a tens word (twenty..ninety)
    for t in _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold()):
        if t[0].isdigit():
            t = _THOUSANDS.sub("", t)
        v = _NUMBER_WORDS.get(t)
        if v is None:
            out.append(t)
            after_tens = False
        elif after_tens and 0 < v < 10:
            out[-1] = str(int(out[-1]) + v)  # twenty one -> 21
            after_tens = False
        else:
            out.append(str(v))
            after_tens = t in _TENS
    return out


@lru_cache(maxsize=64)
def _suffix_tokens(suffixes: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(_raw_tokens(s)) for s in suffixes if s.strip())


def tokens(text: str, suffixes: Sequence[str] = ()) -> list[str]:
    """The normalised tokens of a question, short-answer ``suffixes`` stripped from its end."""
    toks = _raw_tokens(text)
    strip = _suffix_tokens(tuple(suffixes))
    stripped = True
    while stripped:
        stripped = False
        for s in strip:
            if len(toks) > len(s) and tuple(toks[-len(s):]) == s:
                toks, stripped = toks[:-len(s)], True
    return toks


def prompt_text(question: str, choices: Iterable[str] = ()) -> str:
    """What a prompt's question is matched on: the question and its choices (the same question
    with other options is another prompt)."""
    choices = list(choices)
    return question if not choices else question + "\n" + "\n".join(choices)


def key64(text: str) -> int:
    """A stable signed 64-bit key of a string (Arrow and numpy hold it as int64)."""
    return xxhash.xxh64_intdigest(text.encode("utf-8")) - (1 << 63)


def exact_key(toks: Sequence[str]) -> int:
    return key64(" ".join(toks))


def answer_key(answers: Iterable[str]) -> int:
    """Key of a ground truth: its normalised answers, order-free (0 tokens = no ground truth)."""
    return key64("\x1f".join(sorted(" ".join(_raw_tokens(a)) for a in answers)))


def shingles(toks: Sequence[str], n: int = SHINGLE) -> list[str]:
    """Word n-grams; a question of at most n words is one shingle (its whole text)."""
    if len(toks) <= n:
        return [" ".join(toks)]
    return [" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)]


def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_SEED)
    a = rng.integers(1, 2 ** 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
    b = rng.integers(0, 2 ** 63, size=num_perm, dtype=np.uint64)
    return a, b


_A, _B = _permutations(NUM_PERM)


def signature(toks: Sequence[str]) -> np.ndarray:
    """(NUM_PERM,) uint32 MinHash of the question's 3-gram set (multiply-shift on xxh64)."""
    h = np.fromiter((xxhash.xxh64_intdigest(s.encode("utf-8")) for s in set(shingles(toks))), np.uint64)
    with np.errstate(over="ignore"):
        v = (h[:, None] * _A[None, :] + _B[None, :]) >> np.uint64(32)
    return v.min(axis=0).astype(np.uint32)


def band_keys(sig: np.ndarray) -> np.ndarray:
    """(BANDS,) int64: one key per band of ROWS signature values (LSH)."""
    rows = np.asarray(sig, np.uint32).reshape(BANDS, ROWS)
    return np.array([key64(f"{i}:" + r.tobytes().hex()) for i, r in enumerate(rows)], np.int64)


def similarity(text_a: str, text_b: str) -> float:
    """Exact Jaccard of the 3-gram sets of two normalised texts (tokens joined by spaces)."""
    if text_a == text_b:
        return 1.0
    return jaccard(shingles(text_a.split()), shingles(text_b.split()))


def estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The signatures' Jaccard estimate."""
    return float(np.mean(np.asarray(sig_a) == np.asarray(sig_b)))


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def ngram_keys(toks: Sequence[str], n: int) -> list[int]:
    """64-bit keys of the question's word n-grams (none when it has fewer than n words)."""
    return sorted({key64(" ".join(toks[i:i + n])) for i in range(len(toks) - n + 1)})
