"""Repetition inside one text: repeated substrings (rolling hashes, tail loops) and repeated
lines or sentences -- the generation loops InternVL-2.5 found to hurt chain-of-thought training."""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from methods.verdict import Verdict, ok, verdict

# ============================================================ repeated substrings

_P1, _P2, _BASE = 1_000_000_007, 998_244_353, 911_382_323


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)


def _powers(base: int, n: int, mod: int) -> np.ndarray:
    """base**i % mod for i < n, by doubling (log n numpy ops, no Python loop)."""
    out = np.ones(max(n, 1), dtype=np.int64)
    filled, step = 1, base % mod
    while filled < n:
        take = min(filled, n - filled)
        out[filled:filled + take] = out[:take] * step % mod
        filled += take
        step = step * step % mod
    return out[:n]


class _SubstringHasher:
    """Double polynomial hashing (two ~30-bit primes) of every substring.

    A substring hash is normalised by the inverse power of its start, so all
    windows of one length are comparable in one vectorised step.  Collision
    probability for a 10k-char text is ~n^2/2^60, negligible; prime moduli are
    used because mod-2^64 hashing is broken by Thue-Morse-like strings.
    """

    def __init__(self, text: str):
        codes = _code_points(text)
        self.n = len(codes)
        self.parts = []
        for mod in (_P1, _P2):
            pw = _powers(_BASE, self.n + 1, mod)
            inv = _powers(pow(_BASE, mod - 2, mod), self.n + 1, mod)
            prefix = np.zeros(self.n + 1, dtype=np.int64)
            np.cumsum(codes % mod * pw[:self.n] % mod, out=prefix[1:])
            self.parts.append((mod, prefix % mod, inv))

    def window_keys(self, length: int) -> np.ndarray:
        """One int64 key per window of ``length`` characters."""
        m = self.n - length + 1
        keys = np.zeros(m, dtype=np.int64)
        for mod, prefix, inv in self.parts:
            h = (prefix[length:length + m] - prefix[:m]) % mod * inv[:m] % mod
            keys = keys * mod + h
        return keys

    def repeated_window(self, length: int) -> Optional[int]:
        """Start of a window of ``length`` that occurs again later, or None."""
        if length <= 0 or length >= self.n:
            return None
        keys = self.window_keys(length)
        order = np.argsort(keys, kind="stable")
        same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
        return int(order[same[0]]) if len(same) else None


def longest_repeat(text: str) -> tuple[int, int]:
    """(length, start) of the longest substring occurring at least twice.

    Occurrences may overlap ("abab a" -> "ab"; a loop of k copies of a unit of
    p characters gives (k-1)*p).  Binary search over the length -- having a
    repeat of length L implies one of L-1 -- with a hashed duplicate test per
    length: O(n log^2 n) in numpy, a few ms for 10k characters.
    """
    if len(text) < 2:
        return 0, 0
    hasher = _SubstringHasher(text)
    lo, hi, start = 0, len(text) - 1, 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        found = hasher.repeated_window(mid)
        if found is None:
            hi = mid - 1
        else:
            lo, start = mid, found
    return lo, start


def _z_function(s: str) -> list[int]:
    """z[i] = length of the longest common prefix of s and s[i:] (z[0] = len)."""
    n = len(s)
    z = [0] * n
    if n:
        z[0] = n
    left = right = 0
    for i in range(1, n):
        k = min(right - i, z[i - left]) if i < right else 0
        while i + k < n and s[k] == s[i + k]:
            k += 1
        z[i] = k
        if i + k > right:
            left, right = i, i + k
    return z


def tail_loop(text: str, min_repeats: float = 3.0, min_chars: int = 40) -> Optional[tuple[int, int]]:
    """(period, run length) of a generation loop at the end of ``text``, or None.

    The end of the text is periodic with period p over a run of z + p
    characters, where z is the Z-value at p of the reversed text, so one
    O(n) pass finds every period.  A partial last copy (the loop cut off by
    the token limit) still counts.  The shortest qualifying period is
    reported: a run of at least ``min_chars`` characters holding at least
    ``min_repeats`` copies.
    """
    z = _z_function(text[::-1])
    for p in range(1, len(text) // 2 + 1):
        run = z[p] + p
        if run >= min_chars and run / p >= min_repeats:
            return p, run
    return None


def longest_repeated_substring(text: str, max_fraction: float = 0.3, min_chars: int = 30,
                               tail_min_repeats: float = 3.0,
                               tail_min_chars: int = 40) -> Verdict:
    """Fail on a long duplicated substring or a loop at the end of the text.

    * longest substring occurring twice (overlaps allowed): fails when it has
      at least ``min_chars`` characters and covers more than ``max_fraction``
      of the text -- a paragraph written twice, or any long loop;
    * a tail loop: the text ends with ``tail_min_repeats``+ copies of the same
      unit over ``tail_min_chars``+ characters -- the classic degenerate
      generation that runs into the token limit, even in a long text where
      the loop is a small fraction.
    """
    rule = "longest_repeated_substring"
    if not text:
        return ok(rule)
    problems = []
    length, start = longest_repeat(text)
    if length >= min_chars and length / len(text) > max_fraction:
        snippet = text[start:start + 40]
        problems.append(f"repeated substring of {length} chars is "
                        f"{length / len(text):.2f} > {max_fraction:.2f} of the text: {snippet!r}")
    loop = tail_loop(text, tail_min_repeats, tail_min_chars)
    if loop is not None:
        period, run = loop
        problems.append(f"ends in a loop: {text[-run:][:period][:40]!r} "
                        f"x{run / period:.1f} ({run} chars)")
    return verdict(rule, problems)


# ================================================================ repeated lines

_LINE_END = re.compile(r"\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")  # CJK: no space after
_LIST_MARKER = re.compile(r"^(?:[-*•+>]+|\(?\d+[.)]|\(?[a-z][.)])\s+")
_SPACES = re.compile(r"\s+")
_HAS_WORD = re.compile(r"\w")


def _normalise_unit(unit: str) -> str:
    """Case-fold, drop a list marker and collapse spaces ("3. Foo" ~ "7. foo")."""
    unit = _SPACES.sub(" ", unit.casefold()).strip()
    return _LIST_MARKER.sub("", unit)


def _units(text: str, splitter: re.Pattern) -> list[str]:
    """Non-trivial units: ones without any letter or digit (``` fences, ---,
    $$) repeat legitimately and are skipped."""
    units = (_normalise_unit(u) for u in splitter.split(text))
    return [u for u in units if _HAS_WORD.search(u)]


def duplicate_unit_fractions(units: list[str]) -> tuple[float, float]:
    """(fraction of units, fraction of characters) that repeat an earlier unit."""
    seen: set[str] = set()
    dup, dup_chars = 0, 0
    for u in units:
        if u in seen:
            dup += 1
            dup_chars += len(u)
        seen.add(u)
    total_chars = sum(map(len, units))
    return dup / max(len(units), 1), dup_chars / max(total_chars, 1)


def repeated_lines(text: str, max_dup_frac: float = 0.30, max_dup_char_frac: float = 0.20,
                   min_units: int = 3) -> Verdict:
    """Gopher duplicate-line rule, applied to lines and to sentences.

    Sentences catch a loop inside one paragraph ("The cat is on the mat. The
    cat is on the mat. ..."); list markers are ignored so a numbered list
    that restarts its items is caught.  Texts with fewer than ``min_units``
    units pass (a two-sentence answer can't be judged by fractions).
    """
    problems = []
    for kind, splitter in (("line", _LINE_END), ("sentence", _SENTENCE_END)):
        units = _units(text, splitter)
        if len(units) < min_units:
            continue
        frac, char_frac = duplicate_unit_fractions(units)
        if frac > max_dup_frac:
            problems.append(f"dup_{kind}_frac {frac:.2f} > {max_dup_frac:.2f} ({len(units)} {kind}s)")
        if char_frac > max_dup_char_frac:
            problems.append(f"dup_{kind}_char_frac {char_frac:.2f} > {max_dup_char_frac:.2f}")
    return verdict("repeated_lines", problems)
