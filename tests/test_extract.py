"""Table-driven tests of methods.extract.extract_answer (answer extraction from CoT responses)."""
from __future__ import annotations

import pytest

from methods.extract import MAX_BARE_TAIL_CHARS, clean_answer, extract_answer, last_boxed

COT = "The image shows three apples on a table.\nCounting them one by one gives 3.\n"


def e(text, style, expected, id):
    return pytest.param(text, style, expected, id=id)


FINAL_ANSWER = [
    e(COT + "Final answer: 3", "final_answer", "3", "fa-basic"),
    e(COT + "Final Answer: 3", "final_answer", "3", "fa-capitalised"),
    e(COT + "FINAL ANSWER: 3", "final_answer", "3", "fa-upper"),
    e(COT + "Answer: 3", "final_answer", "3", "fa-plain-answer-label"),
    e(COT + "final answer:3", "final_answer", "3", "fa-no-space"),
    e(COT + "Final answer: 3.", "final_answer", "3", "fa-trailing-period"),
    e(COT + "Final answer: 3.5", "final_answer", "3.5", "fa-decimal-kept"),
    e(COT + "Final answer: **3**", "final_answer", "3", "fa-bold-answer"),
    e(COT + "**Final Answer:** 3", "final_answer", "3", "fa-bold-label-colon-inside"),
    e(COT + "**Final Answer**: 3", "final_answer", "3", "fa-bold-label-colon-outside"),
    e(COT + "*Final answer:* `3`", "final_answer", "3", "fa-italic-and-code"),
    e(COT + "Final answer: \"blue\"", "final_answer", "blue", "fa-quoted"),
    e(COT + "Final answer: $\\frac{1}{2}$", "final_answer", "\\frac{1}{2}", "fa-inline-math"),
    e(COT + "Final answer: \\(x^2\\)", "final_answer", "x^2", "fa-paren-math"),
    e(COT + "Final answer: \\boxed{42}", "final_answer", "42", "fa-boxed-unwrapped"),
    e(COT + "Final answer: $\\boxed{\\frac{1}{2}}$.", "final_answer", "\\frac{1}{2}", "fa-boxed-in-math"),
    e(COT + "Final answer: B. nucleus", "final_answer", "B. nucleus", "fa-option-with-text"),
    e(COT + "Final answer: 3 apples\nHope this helps!", "final_answer", "3 apples", "fa-rest-of-line-only"),
    e("Answer: 2\nWait, I miscounted.\nFinal answer: 3", "final_answer", "3", "fa-last-occurrence-wins"),
    e("Final answer: 2\nOn reflection...\nAnswer: 3", "final_answer", "3", "fa-last-label-wins-any-kind"),
    e("Final answer: A\nFinal answer: C", "final_answer", "C", "fa-two-final-lines"),
    e("So the final answer: 7", "final_answer", "7", "fa-label-mid-line"),
    e("The answer is: 12 cm", "final_answer", "12 cm", "fa-answer-is-colon"),
    # same line vs. next line: the next line is used only when the label's line is empty
    e(COT + "Final answer:\n3", "final_answer", "3", "fa-next-line-when-label-alone"),
    e(COT + "Final answer:\n\n  3  \nmore text", "final_answer", "3", "fa-next-nonempty-line"),
    e(COT + "### Final Answer\n\\boxed{3}", "final_answer", "3", "fa-markdown-header-no-colon"),
    e(COT + "**Final Answer**\n3", "final_answer", "3", "fa-bold-header-no-colon"),
    e(COT + "Final answer: 3\n4", "final_answer", "3", "fa-same-line-wins-over-next"),
    # format negatives
    e(COT + "So there are 3 apples.", "final_answer", None, "fa-missing-label"),
    e(COT + "Final answer:", "final_answer", None, "fa-empty-at-end"),
    e(COT + "Final answer: **", "final_answer", None, "fa-only-markdown"),
    e(COT + "Final answer: .", "final_answer", None, "fa-only-period"),
    e("Answer the question using a single word.", "final_answer", None, "fa-answer-without-colon"),
    e("The answer is 3", "final_answer", None, "fa-answer-is-without-colon"),
    e("My final answer would be 3", "final_answer", None, "fa-final-answer-mid-sentence-no-colon"),
    e("Answers: 3", "final_answer", None, "fa-plural-label"),
    e("The reanswer: 3", "final_answer", None, "fa-label-inside-word"),
    e(COT + "\\boxed{3}", "final_answer", None, "fa-style-ignores-bare-box"),
    e(COT + "Final answer: \\boxed{3", "final_answer", None, "fa-broken-box"),
    e("", "final_answer", None, "fa-empty-response"),
]

BOXED = [
    e(COT + "\\boxed{3}", "boxed", "3", "box-basic"),
    e(COT + "Answer: \\boxed{3}", "boxed", "3", "box-template-line"),
    e("\\boxed{\\frac{1}{2}}", "boxed", "\\frac{1}{2}", "box-nested-braces"),
    e("\\boxed{\\frac{\\sqrt{2}}{2}}", "boxed", "\\frac{\\sqrt{2}}{2}", "box-doubly-nested"),
    e("\\boxed{\\{1, 2\\}}", "boxed", "\\{1, 2\\}", "box-escaped-braces-balanced"),
    e("\\boxed{2} then later \\boxed{5}", "boxed", "5", "box-last-wins"),
    e("\\boxed { 7 }", "boxed", "7", "box-space-before-brace"),
    e("\\fbox{7}", "boxed", "7", "box-fbox"),
    e("$\\boxed{B}$.", "boxed", "B", "box-inside-math"),
    e("\\boxed{\\text{blue}}", "boxed", "\\text{blue}", "box-text-kept-for-matcher"),
    e("\\boxed{**3**}", "boxed", "3", "box-markdown-inside"),
    e("\\boxed{2} and finally \\boxed{5", "boxed", None, "box-truncated-last-no-fallback"),
    e("\\boxed{}", "boxed", None, "box-empty"),
    e("\\boxedx{3}", "boxed", None, "box-other-macro"),
    e(COT + "Answer: 3", "boxed", "3", "box-fallback-answer-line"),
    e(COT + "There are 3.", "boxed", None, "box-nothing"),
]

THINK = [
    e("<think>Let me count. \\boxed{2}</think>\n\n\\boxed{3}", "think", "3", "think-box-after"),
    e("<think>I think 2</think>\nFinal answer: 3", "think", "3", "think-label-after"),
    e("<think>reasoning</think>\n3", "think", "3", "think-bare-short-tail"),
    e("<think>reasoning</think>\nThe answer is B.", "think", "The answer is B", "think-bare-sentence"),
    e("<think>reasoning</think>\n" + "x" * (MAX_BARE_TAIL_CHARS + 1), "think", None, "think-long-tail"),
    e("<think>reasoning</think>\n   \n", "think", None, "think-empty-tail"),
    e("<think>reasoning \\boxed{3}", "think", None, "think-unclosed"),
    e("no tags at all, Final answer: 3", "think", None, "think-no-tags"),
    e("<think>a</think>x<think>b</think>\n5", "think", "5", "think-last-close-tag"),
    e("<think>r</think>\\boxed{5} is wrong. Final answer: 6", "think", "6", "think-later-label-wins"),
    e("<think>r</think>Final answer: 6, i.e. \\boxed{6}", "think", "6", "think-box-in-label-line"),
    e("reasoning without the opening tag</think>4", "think", "4", "think-opening-tag-in-prompt"),
]

ANY = [
    e(COT + "Final answer: 3", "any", "3", "any-label"),
    e(COT + "\\boxed{3}", "any", "3", "any-box"),
    e("\\boxed{2}. Then Final answer: 7", "any", "7", "any-later-label-wins"),
    e("Final answer: 7. Double-check: \\boxed{8}", "any", "8", "any-later-box-wins"),
    e("<think>\\boxed{2}</think>\\boxed{3}", "any", "3", "any-think-tail"),
    e("<think>Final answer: 2</think>", "any", None, "any-think-empty-tail"),
    e("Thus, the answer is blue. Done.", "any", "blue", "any-answer-is-sentence"),
    e("The answer is 3.5.", "any", "3.5", "any-answer-is-decimal"),
    e("The correct answer is (B).", "any", "(B)", "any-correct-answer-is"),
    e("I cannot determine this from the image.", "any", None, "any-nothing"),
]

CASES = FINAL_ANSWER + BOXED + THINK + ANY


@pytest.mark.parametrize("text, style, expected", CASES)
def test_extract_answer(text, style, expected):
    assert extract_answer(text, style) == expected


def test_unknown_style_raises():
    with pytest.raises(ValueError, match="unknown extraction style"):
        extract_answer("Answer: 3", "xml")


def test_none_response_is_format_negative():
    assert extract_answer(None) is None


def test_unicode_that_changes_length_when_lowercased():
    """'İ'.lower() is two code points: the rfind fast path must not misplace the label."""
    assert extract_answer("İİİ İstanbul\nFinal answer: İzmir", "final_answer") == "İzmir"
    assert extract_answer("İ Answer: 3\nİİ", "final_answer") == "3"


def test_long_response_last_label():
    text = ("Answer: 1\n" + COT * 300) + "Final answer: 9"
    assert extract_answer(text) == "9"


@pytest.mark.parametrize("text, pos, content", [
    pytest.param("x", -1, None, id="no-box"),
    pytest.param("a \\boxed{1} b", 2, "1", id="position"),
    pytest.param("\\boxed{1} \\boxed{", 10, None, id="unbalanced-last"),
])
def test_last_boxed(text, pos, content):
    assert last_boxed(text) == (pos, content)


@pytest.mark.parametrize("raw, cleaned", [
    pytest.param("**$3$**.", "3", id="nested-wrappers"),
    pytest.param("  `B`  ", "B", id="code"),
    pytest.param("U.S.", "U.S", id="final-period-only"),
    pytest.param("$5", "$5", id="currency-not-math"),
])
def test_clean_answer(raw, cleaned):
    assert clean_answer(raw) == cleaned
