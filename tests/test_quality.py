"""Quality rules: degenerate generations fail, healthy responses pass every default rule."""
from __future__ import annotations

import random
import time

import pytest

from methods import quality as q
from methods.quality import (DEFAULT_PAIR_RULES, DEFAULT_RULES, GOPHER_DUP_NGRAM, GOPHER_TOP_NGRAM,
                             Verdict, check_pair, check_text, dup_ngram_char_fraction, failures,
                             longest_repeat, tail_loop, top_ngram_char_fraction, words_of)

# ------------------------------------------------------------------ samples

QUESTION = "Which company's revenue grew more between 2015 and 2020 according to the bar chart?"

CHAIN_OF_THOUGHT = (
    "Let me look at the chart carefully. The x-axis shows the years from 2015 to 2020, "
    "and the y-axis shows revenue in millions of dollars. The blue bars represent Company A "
    "and the orange bars represent Company B.\n\n"
    "In 2015, Company A had a revenue of about 12 million, while Company B had about 9 million. "
    "By 2020, Company A grew to roughly 20 million and Company B reached about 24 million. "
    "So Company B overtook Company A at some point. Looking at the bars for 2018, both companies "
    "are close: A is at 17 million and B is at 18 million, which is the first year where B is higher.\n\n"
    "To find the growth of Company B, I subtract its 2015 value from its 2020 value: 24 - 9 = 15 million. "
    "For Company A the growth is 20 - 12 = 8 million. The question asks which company grew more over "
    "the period, and 15 is greater than 8.\n\n"
    "Final answer: Company B"
)

MATH_CHAIN_OF_THOUGHT = (
    "The triangle in the image has legs of length 6 and 8. By the Pythagorean theorem, the "
    "hypotenuse is $c = \\sqrt{6^2 + 8^2} = \\sqrt{36 + 64} = \\sqrt{100} = 10$.\n"
    "The perimeter is the sum of the three sides: 6 + 8 + 10 = 24.\n"
    "The area is half the product of the legs: (6 x 8) / 2 = 24.\n"
    "Interesting: the perimeter and the area are both 24, so the ratio of area to perimeter is 1.\n"
    "The question asks for the ratio of the area to the perimeter, so the answer is 1.\n"
    "Answer: \\boxed{1}"
)

BULLETED_LIST = (
    "Here are the objects visible on the kitchen counter:\n"
    "- A stainless steel kettle next to the stove\n"
    "- Two ceramic mugs, one blue and one white\n"
    "- A wooden cutting board with sliced tomatoes\n"
    "- A glass jar filled with dried pasta\n"
    "- A small potted basil plant by the window\n"
    "- A red toaster in the far corner\n"
    "- A bowl of green apples and two bananas\n"
    "- A roll of paper towels on a metal holder"
)

CAPTION = (
    "A golden retriever is lying on a wooden porch in the late afternoon sun. Its head rests on "
    "its front paws and it looks toward the camera. Behind the dog, a blue door is half open, and "
    "a pair of muddy boots stands next to a watering can. Ivy climbs the brick wall on the left, "
    "and a wind chime hangs from the roof beam above the steps."
)

CODE_ANSWER = (
    "The screenshot shows a Python function with a bug. Here is the corrected version:\n\n"
    "```python\ndef mean(values):\n    if not values:\n        return 0.0\n"
    "    return sum(values) / len(values)\n```\n\n"
    "The original code divided by `len(values) - 1`, which gives the wrong result. "
    "Here is a quick check:\n\n```python\nassert mean([1, 2, 3]) == 2.0\n```"
)

CHINESE_QUESTION = "图中的柱状图显示了哪一年的销售额最高？请说明理由。"
CHINESE_ANSWER = (
    "从图中可以看出，横轴表示年份，纵轴表示销售额（单位：万元）。2018年的柱子最高，"
    "约为120万元，而其他年份都低于100万元。因此，销售额最高的是2018年。"
)

HEALTHY = [
    ("chain_of_thought", CHAIN_OF_THOUGHT, QUESTION),
    ("math_chain_of_thought", MATH_CHAIN_OF_THOUGHT, "What is the ratio of the area of the triangle to its perimeter?"),
    ("bulleted_list", BULLETED_LIST, "List the objects you can see on the kitchen counter."),
    ("caption", CAPTION, "Describe the image in detail."),
    ("code", CODE_ANSWER, "Fix the bug in the function shown in the screenshot."),
    ("yes", "Yes.", "Is there a dog in the picture?"),
    ("short_no", "No, the man in the picture is not wearing a hat.", "Is the man wearing a hat?"),
    ("number", "42", "How many people are in the photo?"),
    ("chinese", CHINESE_ANSWER, CHINESE_QUESTION),
    ("ocr_quote", "The sign above the shop door says 欢迎光临, which means 'welcome'.",
     "What does the sign above the door say?"),
]

LOOPING_PHRASE = "The cat is on the mat. " * 30
LOOP_AFTER_CONTENT = (
    "The image shows a busy street at night with several cars and a bus. The traffic light on the "
    "right is red, and pedestrians are waiting to cross. " + "The bus is red and the bus is red and " * 20
)
REPEATING_LIST = "The menu lists the following dishes:\n" + "".join(
    f"{i + 1}. {dish}\n" for i, dish in enumerate(
        ["Grilled salmon with lemon", "Caesar salad", "Mushroom risotto", "Beef burger with fries"] * 4))
SINGLE_TOKEN_LOOP = ("Looking at the table, the highest value is in the column labelled "
                     + "2019 " * 200)
NEWLINE_LOOP = "The answer is B because the red line is above the blue one." + "\n" * 300
CJK_LOOP = "图中有一只猫。" + "猫猫猫猫" * 60
LONG_TEXT_TAIL_LOOP = CAPTION * 3 + " It is sunny. It is sunny. It is sunny. It is sunny."
CUT_MID_SENTENCE = (
    "To answer this, first we count the number of red blocks in the top row, which is four, "
    "and then we add the blue blocks in the second row, which gives us a total of")
REPLACEMENT_CHARS = "The sign says \ufffd\ufffd\ufffd\ufffd in large letters above the door of the shop."
CONTROL_CHARS = "The total is 15 million dollars.\x00\x1b[0m"

# (name, text, finish_reason, rules that must fail)
DEGENERATE = [
    ("looping_phrase", LOOPING_PHRASE, "stop",
     {"repeated_ngram_fraction", "longest_repeated_substring", "repeated_lines"}),
    ("loop_after_content", LOOP_AFTER_CONTENT, "stop",
     {"repeated_ngram_fraction", "longest_repeated_substring"}),
    ("repeating_numbered_list", REPEATING_LIST, "stop", {"repeated_lines"}),
    ("single_token_loop", SINGLE_TOKEN_LOOP, "length",
     {"repeated_ngram_fraction", "longest_repeated_substring", "never_ends"}),
    ("newline_loop", NEWLINE_LOOP, "stop", {"longest_repeated_substring"}),
    ("cjk_loop", CJK_LOOP, "stop", {"longest_repeated_substring"}),
    ("tail_loop_in_long_text", LONG_TEXT_TAIL_LOOP, "stop", {"longest_repeated_substring"}),
    ("cut_mid_sentence", CUT_MID_SENTENCE, "length", {"never_ends"}),
    ("replacement_chars", REPLACEMENT_CHARS, "stop", {"bad_characters"}),
    ("control_chars", CONTROL_CHARS, "stop", {"bad_characters"}),
    ("empty", "", "stop", {"empty", "length_bounds"}),
    ("whitespace", " \n\t ", "stop", {"empty"}),
]


@pytest.mark.parametrize("name,text,question", HEALTHY, ids=[h[0] for h in HEALTHY])
def test_healthy_responses_pass_every_default_rule(name, text, question):
    verdicts = check_text(text, {}, finish_reason="stop", num_tokens=len(text) // 4 + 1,
                          question=question)
    assert {v.rule for v in verdicts} == {r for r, p in DEFAULT_RULES.items() if p is not False}
    assert failures(verdicts) == [], failures(verdicts)
    assert all(v.reason == "" for v in verdicts)


@pytest.mark.parametrize("name,text,finish_reason,must_fail", DEGENERATE, ids=[d[0] for d in DEGENERATE])
def test_degenerate_generations_fail(name, text, finish_reason, must_fail):
    failed = {v.rule: v for v in failures(check_text(text, {}, finish_reason=finish_reason))}
    assert must_fail <= set(failed), (set(failed), [v.reason for v in failed.values()])
    assert all(v.reason for v in failed.values())


def test_final_answer_rule_with_extractor():
    def extract(text):
        marker = "Final answer:"
        return text.rsplit(marker, 1)[1].strip() if marker in text else None

    config = {"missing_final_answer": True}
    assert not failures(check_text(CHAIN_OF_THOUGHT, config, extractor=extract))
    failed = failures(check_text(CUT_MID_SENTENCE, config, extractor=extract))
    assert [v.rule for v in failed] == ["missing_final_answer"]
    assert failures(check_text("Final answer:   ", config, extractor=extract))[0].rule == "missing_final_answer"
    with pytest.raises(ValueError, match="extractor"):
        check_text(CHAIN_OF_THOUGHT, config)


# ------------------------------------------------------------------ Gopher n-grams

def test_gopher_thresholds_are_the_papers():
    assert GOPHER_DUP_NGRAM == {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    assert GOPHER_TOP_NGRAM == {2: 0.20, 3: 0.18, 4: 0.16}


@pytest.mark.parametrize("words,n,expected", [
    (["a", "b", "c", "a", "b", "c"], 3, 3 / 6),          # second "a b c" is duplicate
    (["aa", "b", "aa", "b", "aa", "b"], 2, 6 / 9),        # "aa b" x2 dup, jumps by n
    (["one", "two", "three", "four"], 2, 0.0),
    (["x"] * 10, 5, 5 / 10),                              # positions 5..9 repeat 0..4
    ([], 5, 0.0),
])
def test_dup_ngram_char_fraction(words, n, expected):
    assert dup_ngram_char_fraction(words, n) == pytest.approx(expected)


@pytest.mark.parametrize("words,n,expected", [
    (["the", "cat", "the", "cat", "sat"], 2, 12 / 15),    # "the cat" twice, 6 chars each
    (["one", "two", "three", "four"], 2, 0.0),            # nothing repeats: no penalty
    (["ab", "c", "ab", "c", "ab", "c"], 2, min(1.0, 3 * 3 / 9)),
    (["yes"], 2, 0.0),
])
def test_top_ngram_char_fraction(words, n, expected):
    assert top_ngram_char_fraction(words, n) == pytest.approx(expected)


def test_words_ignore_case_and_punctuation():
    assert words_of("The cat, THE cat! the-cat") == ["the", "cat", "the", "cat", "the", "cat"]


def test_ngram_thresholds_are_configurable():
    # 80 distinct words with one 6-word phrase repeated: dup 5-gram fraction ~0.07
    rng = random.Random(3)
    words = [f"w{rng.randrange(10**6)}" for _ in range(80)]
    text = " ".join(words + words[:6])
    frac = dup_ngram_char_fraction(words_of(text), 5)
    assert 0.03 < frac < 0.15
    assert not failures(check_text(text, {}))
    strict = {"repeated_ngram_fraction": {"dup_ngram_thresholds": {"5": frac - 0.01}}}
    lenient = {"repeated_ngram_fraction": {"dup_ngram_thresholds": {5: frac + 0.01}}}
    failed = failures(check_text(text, strict))
    assert [v.rule for v in failed] == ["repeated_ngram_fraction"]
    assert "dup_ngram_frac" in failed[0].reason and "n=5" in failed[0].reason
    assert not failures(check_text(text, lenient))
    # short texts are exempt below min_words
    assert not failures(check_text(text, {"repeated_ngram_fraction": {
        "dup_ngram_thresholds": {5: 0.0}, "min_words": 87}}))


# ------------------------------------------------------------------ substrings

def _brute_longest_repeat(s):
    best = 0
    for length in range(1, len(s)):
        seen = set()
        for i in range(len(s) - length + 1):
            sub = s[i:i + length]
            if sub in seen:
                best = length
                break
            seen.add(sub)
        else:
            break
    return best


def test_longest_repeat_matches_brute_force():
    rng = random.Random(0)
    for _ in range(400):
        alphabet = rng.choice(["ab", "abc ", "xyz.\n", "猫a"])
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 50)))
        length, start = longest_repeat(s)
        assert length == _brute_longest_repeat(s), s
        if length:
            assert s.count(s[start:start + length]) >= 2 or \
                s.find(s[start:start + length], start + 1) != -1


def _brute_tail_loop(s, min_repeats, min_chars):
    for p in range(1, len(s) // 2 + 1):
        run = p
        while run < len(s) and s[-run - 1] == s[-run - 1 + p]:
            run += 1
        if run >= min_chars and run / p >= min_repeats:
            return p, run
    return None


def test_tail_loop_matches_brute_force():
    rng = random.Random(1)
    for _ in range(400):
        unit = "".join(rng.choice("ab c") for _ in range(rng.randint(1, 6)))
        head = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 20)))
        s = head + unit * rng.randint(1, 12) + unit[:rng.randint(0, len(unit))]
        assert tail_loop(s, 3, 8) == _brute_tail_loop(s, 3, 8), s


def test_tail_loop_tolerates_a_partial_last_copy():
    text = CAPTION + " The bus is red." * 10 + " The bus"
    period, run = tail_loop(text, 3, 40)
    assert period == len(" The bus is red.") and run > 10 * period


@pytest.mark.parametrize("text", [
    "x" * 10_000,
    LOOPING_PHRASE * 15,
    "".join(random.Random(5).choice("abcdefghij klmnop") for _ in range(10_000)),
    (CAPTION + "\n") * 30,
])
def test_substring_rule_is_fast_on_10k_chars(text):
    text = text[:10_000]
    start = time.perf_counter()
    q.longest_repeated_substring(text)
    assert time.perf_counter() - start < 0.5


def test_long_healthy_text_passes():
    text = "\n\n".join([CHAIN_OF_THOUGHT.replace("Final answer: Company B", ""), CAPTION, BULLETED_LIST,
                       MATH_CHAIN_OF_THOUGHT, CODE_ANSWER])
    assert not failures(check_text(text, {}, finish_reason="stop"))


# ------------------------------------------------------------------ single rules

@pytest.mark.parametrize("rule,text,kwargs,passed", [
    ("never_ends", "ok", {"finish_reason": "length"}, False),
    ("never_ends", "ok", {"finish_reason": "stop"}, True),
    ("never_ends", "ok", {"finish_reason": None}, True),
    ("never_ends", "ok", {"finish_reason": "abort", "fail_on": ["length", "abort"]}, False),
    ("empty", "", {}, False),
    ("empty", "\n \t", {}, False),
    ("empty", ".", {}, True),
    ("length_bounds", "abc", {"min_chars": 4}, False),
    ("length_bounds", "abcd", {"min_chars": 4, "max_chars": 4}, True),
    ("length_bounds", "abcde", {"max_chars": 4}, False),
    ("length_bounds", "abc", {"max_tokens": 10, "num_tokens": 11}, False),
    ("length_bounds", "abc", {"min_tokens": 2, "num_tokens": 1}, False),
    ("length_bounds", "abc", {"max_tokens": 10}, True),           # no count given: skipped
    ("bad_characters", "tab\there\nnewline", {}, True),
    ("bad_characters", "bell\x07", {}, False),
    ("bad_characters", "crlf\r\n", {}, False),
    ("bad_characters", "crlf\r\n", {"allowed_controls": "\n\t\r"}, True),
    ("bad_characters", "c1 control \x85", {}, False),
    ("bad_characters", "lone surrogate \ud83d", {}, False),
    ("bad_characters", "emoji \U0001F600 and accents é ü 猫", {}, True),
    ("bad_characters", "one \ufffd", {"max_count": 1}, True),
    ("bad_characters", "two \ufffd\ufffd", {"max_count": 1}, False),
    ("repeated_lines", "Yes. Yes.", {}, True),                  # too few units to judge
    ("repeated_lines", "```\nx = 1\n```\n```\ny = 2\n```\nDone.", {}, True),  # fences skipped
    ("repeated_lines", "1) Salmon\n2) Salad\n3) Risotto\n4) Salmon\n5) Salad\n6) Risotto", {}, False),
    ("repeated_lines", "(a) Salmon\n(b) Salad\n(c) Risotto\n(d) Soup", {}, True),
    ("repeated_lines", "猫在垫子上。" * 6, {}, False),                # CJK sentences, no spaces
    ("repeated_lines", CHINESE_ANSWER, {}, True),
    ("repeated_lines", "a\nb\nc\nd\na", {"max_dup_frac": 0.3}, True),      # 1/5 dup
    ("repeated_lines", "a\nb\nc\na\nb", {"max_dup_frac": 0.3}, False),     # 2/5 dup
    ("language_mismatch", "This is an English answer about the chart.", {"question": CHINESE_QUESTION}, False),
    ("language_mismatch", CHINESE_ANSWER, {"question": CHINESE_QUESTION}, True),
    ("language_mismatch", "Это ответ на русском языке о графике.", {"question": QUESTION}, False),
    ("language_mismatch", "The answer is 42.", {"question": "2 + 40 = ?"}, True),   # undetectable
    ("language_mismatch", "Ответ на русском языке, довольно длинный.", {}, True),    # no question
    ("language_mismatch", "由勾股定理得 $c = \\sqrt{a^2 + b^2} = \\sqrt{9 + 16} = 5$，所以斜边长为5。",
     {"question": "直角三角形的两条直角边分别为3和4，斜边长是多少？"}, True),  # LaTeX ignored
])
def test_single_rules(rule, text, kwargs, passed):
    verdict = q.RULES[rule](text, **kwargs)
    assert verdict == Verdict(rule, passed, verdict.reason)
    assert (verdict.reason == "") == passed


# ------------------------------------------------------------------ pair rules

@pytest.mark.parametrize("chosen,rejected,config,failed", [
    ("The answer is B.", "the answer  is b.", {}, {"identical"}),
    ("Final answer: 3", "Final answer:\n3 ", {}, {"identical"}),
    ("Final answer: 3", "Final answer: 3.", {}, set()),
    ("The answer is B.", "The answer is C.", {}, set()),
    ("x" * 100, "y" * 30, {}, {"length_ratio"}),
    ("x" * 100, "y" * 210, {}, {"length_ratio"}),
    ("x" * 100, "y" * 120, {}, set()),
    ("x" * 100, "y" * 30, {"length_ratio": {"lo": 0.25}}, set()),
    ("x" * 100, "y" * 30, {"length_ratio": False}, set()),
    ("   ", "y", {}, {"length_ratio"}),
])
def test_pair_rules(chosen, rejected, config, failed):
    assert {v.rule for v in failures(check_pair(chosen, rejected, config))} == failed


@pytest.mark.parametrize("setting", [False, None])
def test_identical_rule_cannot_be_switched_off(setting):
    # ms-swift deletes such rows, TRL and LLaMA-Factory train on zero signal
    with pytest.raises(ValueError, match=r"filter\.pair_rules\.identical cannot be turned off"):
        check_pair("a", "a", {"identical": setting})


def test_identical_rule_cannot_be_switched_off_in_the_config():
    from helpers import make_config

    with pytest.raises(ValueError, match="identical cannot be turned off"):
        make_config(filter={"pair_rules": {"identical": False}})


def test_default_pair_rules_run():
    assert [v.rule for v in check_pair("a", "b")] == list(DEFAULT_PAIR_RULES)


# ------------------------------------------------------------------ configuration

def test_disabling_a_rule_removes_it():
    verdicts = check_text(LOOPING_PHRASE, {"repeated_lines": False, "longest_repeated_substring": None})
    rules = {v.rule for v in verdicts}
    assert "repeated_lines" not in rules and "longest_repeated_substring" not in rules
    assert "repeated_ngram_fraction" in {v.rule for v in failures(verdicts)}


def test_params_merge_over_defaults():
    resolved = q.resolve_rules({"repeated_lines": {"max_dup_frac": 0.5}})
    assert resolved["repeated_lines"] == {"max_dup_frac": 0.5, "max_dup_char_frac": 0.20, "min_units": 3}
    assert "missing_final_answer" not in resolved
    assert q.resolve_rules({"missing_final_answer": True})["missing_final_answer"] == {}
    # the defaults themselves are not mutated
    assert DEFAULT_RULES["repeated_lines"]["max_dup_frac"] == 0.30


@pytest.mark.parametrize("config,match", [
    ({"repeated_line": {}}, "unknown quality rule"),
    ({"repeated_lines": {"max_dup": 0.2}}, "unknown parameter"),
    ({"never_ends": {"finish_reason": "length"}}, "unknown parameter"),   # context, not config
    ({"empty": "yes"}, "dict, true or false"),
    ({"repeated_ngram_fraction": {"dup_ngram_thresholds": {"five": 0.1}}}, "dup_ngram_thresholds"),
])
def test_bad_config_raises(config, match):
    with pytest.raises(ValueError, match=match):
        check_text("some text here", config)


def test_reason_format_names_metric_and_threshold():
    verdict = q.repeated_ngram_fraction(LOOPING_PHRASE)
    assert not verdict.passed
    assert "dup_ngram_frac" in verdict.reason and "> 0.15 for n=5" in verdict.reason
