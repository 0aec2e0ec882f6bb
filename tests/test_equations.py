"""Equations as answers to numeric questions (issue 13, point 4), table-driven.

A response goes through extraction and matching as in the correctness stage,
with ``answer_type: auto`` unless a row says otherwise."""
from __future__ import annotations

import pytest

from methods.equations import split_equation
from methods.extract import extract_answer
from methods.match import infer_answer_type, match_answer

COT = "The two sides are equal, so the unknown follows.\n"


@pytest.mark.parametrize("response, gt, answer_type, correct", [
    # the examples: GT 2, answer_type auto
    (COT + "Final answer: x = 2", "2", "auto", True),
    (COT + "Answer: \\boxed{x=2}", "2", "auto", True),
    (COT + "Final answer: x=2", "2", "auto", True),
    (COT + "Final answer: $x = 2$", "2", "auto", True),
    (COT + "Final answer: x = 2", "2", "integer", True),
    (COT + "Final answer: x = 2.0", "2", "number", True),
    (COT + "Final answer: x = 2, y = 3", "2", "auto", False),   # two values, not one
    (COT + "Final answer: x = 2 or x = -2", "2", "auto", False),
    (COT + "Final answer: x=-2", "2", "auto", False),
    (COT + "Final answer: x = 3", "2", "auto", False),
    (COT + "Final answer: x \\leq 2", "2", "auto", False),
    (COT + "Final answer: 2x = 4", "2", "auto", False),          # not "symbol = value"
    # units and geometry
    (COT + "Final answer: a = 2 cm", "2", "auto", True),
    (COT + "Final answer: a = 2 cm", "2 cm", "auto", True),
    (COT + "Final answer: a = 2 m", "2 cm", "auto", False),
    (COT + "Final answer: \\angle ABC = 30^\\circ", "30", "auto", True),
    (COT + "Final answer: $\\angle ABC = 30^{\\circ}$", "30", "auto", True),
    (COT + "Final answer: m\\angle A = 30°", "30", "auto", True),
    (COT + "Final answer: \\angle ABC = 35^\\circ", "30", "auto", False),
    (COT + "Final answer: AB = 5", "5", "auto", True),
    (COT + "Final answer: x_1 = 4", "4", "auto", True),
    # an equation as the ground truth
    (COT + "Final answer: 2", "x=2", "auto", True),
    (COT + "Final answer: x = 2", "x=2", "auto", True),
    (COT + "Final answer: y = 2", "x=2", "auto", False),           # another symbol
    (COT + "Final answer: 3", "x=2", "auto", False),
    (COT + "Final answer: \\angle B = 30", "\\angle B = 30^\\circ", "auto", True),
    # plain numbers unchanged
    (COT + "Final answer: 2", "2", "auto", True),
    (COT + "Final answer: 2 = 2", "2", "auto", False),
])
def test_equation_answers(response, gt, answer_type, correct):
    answer = extract_answer(response, "final_answer")
    assert match_answer(answer, [gt], answer_type).correct is correct, answer


@pytest.mark.parametrize("gt, expected", [("x=2", "integer"), ("x = 2.5", "number"), ("a = 2 cm", "number"),
                                          ("x = 2, y = 3", "text")])
def test_equation_ground_truth_type(gt, expected):
    assert infer_answer_type([gt]) == expected


@pytest.mark.parametrize("answer, expected", [
    ("x = 2", ("x", "2")),
    ("\\angle ABC = 30^\\circ", ("abc", "30^\\circ")),
    ("∠ABC = 30°", ("abc", "30°")),
    ("m\\angle ABC=30", ("abc", "30")),
    ("\\overline{AB} = 4", ("ab", "4")),
    ("x = 2, y = 3", None),
    ("x + y = 3", None),
    ("f(x) = 2", None),
    ("= 2", None),
    ("x =", None),
])
def test_split_equation(answer, expected):
    assert split_equation(answer) == expected
