"""DropoutNTP truncation: exact prefixes on word boundaries, reference word counts."""
from __future__ import annotations

import random
import re

import pytest

from methods.truncate import Truncation, hf_token_spans, truncate_tokens, truncate_words

TEN = "one two three four five six seven eight nine ten"

# (text, ratio, expected prefix, cut_words, total_words)
WORD_CASES = [
    (TEN, 0.5, "one two three four five", 5, 10),
    (TEN, 0.25, "one two", 2, 10),            # int(2.5) == 2, as the reference
    (TEN, 0.75, "one two three four five six seven", 7, 10),
    (TEN, 0.99, "one two three four five six seven eight nine", 9, 10),
    (TEN, 0.01, "one", 1, 10),                 # int(0.1) == 0 -> at least one word
    ("Hello world", 0.5, "Hello", 1, 2),
    ("Hello world", 0.99, "Hello", 1, 2),      # never all words
    ("a b c", 0.99, "a b", 2, 3),
    ("First line here.\n\nSecond  line\tthere now", 0.5, "First line here.", 3, 7),
    ("First line here.\n\nSecond  line\tthere now", 0.6, "First line here.\n\nSecond", 4, 7),
    ("First line here.\n\nSecond  line\tthere now", 0.75, "First line here.\n\nSecond  line", 5, 7),
    ("  leading  spaces kept here", 0.5, "  leading  spaces", 2, 4),
    ("word\u3000word2 word3 word4", 0.5, "word\u3000word2", 2, 4),   # ideographic space
    ("1. Step one\n2. Step two\n3. Done.\n", 0.5, "1. Step one\n2.", 4, 8),
    ("The cat sat.", 0.5, "The", 1, 3),
]


@pytest.mark.parametrize("text,ratio,prefix,cut_words,total_words", WORD_CASES)
def test_truncate_words_table(text, ratio, prefix, cut_words, total_words):
    t = truncate_words(text, ratio)
    assert t == Truncation(prefix=prefix, cut_words=cut_words, cut_chars=len(prefix),
                           total_words=total_words)
    assert text.startswith(t.prefix)


@pytest.mark.parametrize("text", ["", "   ", "single", "single\n", "  word  ", "\n\t"])
def test_fewer_than_two_words_gives_none(text):
    assert truncate_words(text, 0.5) is None
    assert truncate_tokens(text, 0.5, _char_tokens) is None


@pytest.mark.parametrize("ratio", [0, 0.0, 1, 1.0, -0.5, 1.5, float("nan"), float("inf"),
                                   True, "0.5", None])
def test_invalid_ratio_raises(ratio):
    with pytest.raises(ValueError, match="ratio"):
        truncate_words(TEN, ratio)
    with pytest.raises(ValueError, match="ratio"):
        truncate_tokens(TEN, ratio, _char_tokens)


def _random_text(rng: random.Random) -> str:
    words = ["alpha", "b", "gamma-ray", "δέλτα", "猫", "x=1", "end.", "(note)", "42"]
    seps = [" ", "  ", "\n", "\n\n", "\t", " \n ", "\u00a0", "\u3000"]
    n = rng.randint(1, 40)
    out = [rng.choice(seps) if rng.random() < 0.2 else ""]
    for i in range(n):
        out.append(rng.choice(words))
        out.append(rng.choice(seps) if i < n - 1 else rng.choice(["", "\n", " "]))
    return "".join(out)


def test_words_properties_against_reference_split():
    """Same word count as the reference ``text.split()`` code, but an exact
    slice of the original text ending at a word end."""
    rng = random.Random(0)
    for _ in range(2000):
        text, ratio = _random_text(rng), rng.choice([0.25, 0.5, 0.75, rng.uniform(0.01, 0.99)])
        words = text.split()
        t = truncate_words(text, ratio)
        if len(words) < 2:
            assert t is None
            continue
        expected_k = min(max(int(len(words) * ratio), 1), len(words) - 1)
        assert t.cut_words == expected_k and t.total_words == len(words)
        assert t.prefix == text[:t.cut_chars] and text.startswith(t.prefix)
        assert t.prefix.split() == words[:expected_k]        # reference words, in order
        assert not t.prefix[-1].isspace()                     # ends on a word
        assert text[t.cut_chars].isspace()                    # ... at its boundary


# ------------------------------------------------------------------ token variant

def _char_tokens(text):
    """Three-character pieces of each word, whitespace excluded (trimmed offsets)."""
    return [(m.start() + i, min(m.start() + i + 3, m.end()))
            for m in re.finditer(r"\S+", text) for i in range(0, m.end() - m.start(), 3)]


def _gpt2_tokens(text):
    """GPT-2 style: leading whitespace attached to the token, two-char pieces."""
    return [m.span() for m in re.finditer(r"\s*\S{1,2}|\s+$", text)]


def _with_specials(tokenize):
    return lambda text: [(0, 0)] + list(tokenize(text)) + [(len(text), len(text))]


# (text, ratio, tokenize, expected prefix, cut_words)
TOKEN_CASES = [
    # one token per word: same as the word variant
    (TEN, 0.5, lambda t: [m.span() for m in re.finditer(r"\S+", t)], "one two three four five", 5),
    # 10 tokens "int ern ati ona liz ati on is har d": 0.5 -> 5 tokens ends inside the
    # first word -> moved back -> clamped to one word
    ("internationalization is hard", 0.5, _char_tokens, "internationalization", 1),
    # tokens "abc" "def" | "gh" | "ijk" "lmn" | "op": 0.5 -> 3 tokens ends exactly at "gh"
    ("abcdef gh ijklmn op", 0.5, _char_tokens, "abcdef gh", 2),
    # 4 of 6 tokens ends inside "ijklmn" -> back to "abcdef gh"
    ("abcdef gh ijklmn op", 0.7, _char_tokens, "abcdef gh", 2),
    # GPT-2 style offsets with leading spaces: " gh" ends a word
    ("abcdef gh ijklmn op", 0.5, _gpt2_tokens, "abcdef gh", 2),
    # special tokens with empty spans are ignored
    ("abcdef gh ijklmn op", 0.5, _with_specials(_char_tokens), "abcdef gh", 2),
    # newlines preserved
    ("Line one.\nLine two has more words.", 0.5, _char_tokens, "Line one.\nLine", 3),
    # ratio so small no token is kept -> the first word
    ("abcdef gh ijklmn op", 0.01, _char_tokens, "abcdef", 1),
]


@pytest.mark.parametrize("text,ratio,tokenize,prefix,cut_words", TOKEN_CASES)
def test_truncate_tokens_table(text, ratio, tokenize, prefix, cut_words):
    t = truncate_tokens(text, ratio, tokenize)
    assert (t.prefix, t.cut_words, t.cut_chars, t.total_words) == (
        prefix, cut_words, len(prefix), len(text.split()))


@pytest.mark.parametrize("tokenize", [_char_tokens, _gpt2_tokens])
def test_token_variant_never_cuts_mid_word(tokenize):
    rng = random.Random(1)
    for _ in range(2000):
        text, ratio = _random_text(rng), rng.uniform(0.01, 0.99)
        t = truncate_tokens(text, ratio, tokenize)
        words = text.split()
        if len(words) < 2:
            assert t is None
            continue
        assert text.startswith(t.prefix) and t.cut_chars == len(t.prefix)
        assert not t.prefix[-1].isspace() and text[t.cut_chars].isspace()
        assert t.prefix.split() == words[:t.cut_words]
        assert 1 <= t.cut_words <= len(words) - 1
        # the cut is the last word end at or before the token cut (unless clamped)
        ends = [e for s, e in tokenize(text) if e > s]
        token_cut = ends[int(len(ends) * ratio) - 1] if int(len(ends) * ratio) else 0
        if 1 < t.cut_words < len(words) - 1:
            assert t.cut_chars <= token_cut
            next_word_end = t.cut_chars + len(text[t.cut_chars:]) - len(text[t.cut_chars:].lstrip())
            next_word_end += len(words[t.cut_words])
            assert next_word_end > token_cut


def test_hf_token_spans_adapter():
    class FakeTokenizer:
        def __call__(self, text, add_special_tokens, return_offsets_mapping):
            assert add_special_tokens is False and return_offsets_mapping is True
            return {"input_ids": [1, 2], "offset_mapping": [[0, 5], [5, 11]]}

    assert hf_token_spans(FakeTokenizer())("hello world") == [(0, 5), (5, 11)]
    t = truncate_tokens("hello world", 0.5, hf_token_spans(FakeTokenizer()))
    assert t.prefix == "hello"
