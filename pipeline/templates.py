"""Chain-of-thought prompt templates (configuration as data, chosen by id).

MMPR's released pipeline strips short-answer suffixes such as "Answer the
question using a single word or phrase." and instead asks for reasoning ending
in a parseable final-answer line.  The template id is recorded in every pair's
provenance, and the answer extractor is configured by the same id.
"""
from __future__ import annotations

import re
from typing import Sequence

#: template id -> instruction appended after the (cleaned) question
TEMPLATES: dict[str, str] = {
    "mmpr_final_answer": (
        "{question}\nThink step by step, then end your response with a line "
        "of the form 'Final answer: <answer>'."
    ),
    "mmpr_boxed": (
        "{question}\nThink step by step. The last line of your response must be "
        "of the form 'Answer: \\boxed{{<answer>}}'."
    ),
    "r1_think": (
        "{question}\nFirst think inside <think></think> tags, then give the final "
        "answer after the closing tag."
    ),
    # open prompts (no ground truth): the question as is
    "plain": "{question}",
}

#: which extraction style each template asks for (see methods.extract)
EXTRACTION_STYLE: dict[str, str] = {
    "mmpr_final_answer": "final_answer",
    "mmpr_boxed": "boxed",
    "r1_think": "think",
    "plain": "final_answer",
}

SHORT_ANSWER_SUFFIXES = (
    "Answer the question using a single word or phrase.",
    "Answer the question with a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Answer with the option letter from the given choices directly.",
    "Please answer yes or no.",
    "Answer yes or no.",
    "Answer with a single word.",
    "Answer with a number.",
)
_SUFFIX_RE = re.compile(
    r"\s*(?:" + "|".join(re.escape(s) for s in SHORT_ANSWER_SUFFIXES) + r")\s*$",
    re.IGNORECASE,
)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def strip_short_answer_suffix(question: str) -> str:
    """Remove instructions that ask for a bare answer (they fight CoT)."""
    prev = None
    while prev != question:
        prev, question = question, _SUFFIX_RE.sub("", question)
    return question.strip()


def format_choices(choices: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def render_question(question: str, choices: Sequence[str] | None, template_id: str,
                    has_ground_truth: bool = True) -> str:
    """The user-turn text sent to the model (without image placeholders)."""
    if template_id not in TEMPLATES:
        raise KeyError(f"unknown template id {template_id!r}; known: {sorted(TEMPLATES)}")
    q = strip_short_answer_suffix(question)
    if choices:
        q = f"{q}\nOptions:\n{format_choices(choices)}"
    if not has_ground_truth:
        template_id = "plain"
    return TEMPLATES[template_id].format(question=q)
