"""Chain-of-thought prompt templates (configuration as data, chosen by id).

MMPR's released pipeline strips short-answer suffixes such as "Answer the
question using a single word or phrase." and instead asks for reasoning ending
in a parseable final-answer line.  The template id and a hash of its text are
recorded in every pair's provenance, and the answer extractor is configured
by the same template.

Templates are data: the built-in ones below (our own four and InternVL's six
MMPR instructions, ``pipeline.config.internvl_instructions``) plus any defined under
``templates:`` in the YAML config.  A source picks one (``sources[].template``,
default ``generate.template``); templates sharing a ``group`` are language
variants of one prompt, and the source's language (``sources[].language``, or
``auto``: ``zh`` for prompt files whose name contains ``_zh_``, as InternVL's
pipeline decides) picks the variant.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from pipeline.config import internvl_instructions as internvl
from pipeline.core.seeds import stable_hash

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
    "Please answer the question and put the final answer within \\boxed{}.",
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


@dataclass(frozen=True)
class Template:
    """One prompt: ``text`` holds ``{question}`` (filled literally, other braces stay)."""
    id: str
    text: str
    system: str | None = None
    #: the methods.extract style that reads the answer format the text asks for
    extraction: str = "final_answer"
    language: str = "en"
    #: language variants of one prompt share a group (default: the id)
    group: str | None = None

    @property
    def family(self) -> str:
        return self.group or self.id

    @property
    def hash(self) -> str:
        """What provenance records next to the id: a changed text is a changed prompt."""
        return stable_hash(self.system or "", self.text)[:16]

    def fill(self, question: str) -> str:
        return self.text.replace("{question}", question)


BUILTIN_TEMPLATES: dict[str, Template] = {
    **{tid: Template(tid, text.format(question="{question}"), extraction=EXTRACTION_STYLE[tid],
                     language="any" if tid == "plain" else "en") for tid, text in TEMPLATES.items()},
    **{f"internvl_{v}": Template(f"internvl_{v}", text, extraction=internvl.EXTRACTION[v],
                                 language=v.split("_")[0], group="internvl" + v[2:])
       for v, text in internvl.INSTRUCTIONS.items()},
}


def template_table(custom: Iterable[Any] = ()) -> dict[str, Template]:
    """Built-in templates plus config-defined ones (``TemplateConfig`` or ``Template``)."""
    table = dict(BUILTIN_TEMPLATES)
    for t in custom:
        if not isinstance(t, Template):
            t = Template(t.id, t.text, t.system, t.extraction, t.language, t.group)
        table[t.id] = t
    return table


def pick_template(table: dict[str, Template], wanted: str, language: str | None,
                  strict: bool = False) -> Template:
    """The variant of ``wanted`` (a template id or group) in ``language``.

    Without a variant in that language the named template is used, or with
    ``strict`` (a language the user set explicitly) a ``KeyError`` says so."""
    family = table[wanted].family if wanted in table else wanted
    variants = [t for t in table.values() if t.family == family]
    if not variants:
        raise KeyError(f"unknown template {wanted!r}; known: {sorted(table)}")
    for t in variants:
        if t.language in (language, "any"):
            return t
    if strict:
        raise KeyError(f"template {wanted!r} has no {language!r} variant (it has "
                       f"{sorted(t.language for t in variants)}): define one under templates: with "
                       f"group: {family} and language: {language}")
    return table.get(wanted, variants[0])


def detect_language(path: str) -> str:
    """InternVL's rule: prompt files whose name contains ``_zh_`` are Chinese."""
    return "zh" if "_zh_" in os.path.basename(path.rstrip("/")) else "en"


def template_for_source(config: Any, source: str, default: str) -> Template:
    """The template a source's ground-truth prompts are wrapped in: the source's own, else
    ``default`` (the stage's setting)."""
    table = template_table(config.templates)
    src = config.source(source)
    wanted = (src.template if src is not None else None) or default
    if src is None:
        return pick_template(table, wanted, "en")
    explicit = src.language != "auto"
    return pick_template(table, wanted, src.language if explicit else detect_language(src.path), strict=explicit)


def check_templates(config: Any, default: str, key: str) -> None:
    """Every source's template (or ``default``, the setting ``key``) exists in the language the
    source asks for: raise ValueError naming the key to fix."""
    table = template_table(config.templates)
    uses = [(key, default, "auto")]
    uses += [(f"sources.{i}.template", s.template or default, s.language) for i, s in enumerate(config.sources)]
    for name, wanted, language in uses:
        try:
            pick_template(table, wanted, None if language == "auto" else language, strict=language != "auto")
        except KeyError as e:
            raise ValueError(f"{name}: {e.args[0]}") from None


def template_by_id(config: Any, template_id: str | None) -> Template:
    """A template recorded on a row (``template_id``), built-in or from the config."""
    table = template_table(config.templates)
    return table.get(template_id or "plain") or table["plain"]


def extraction_style(config: Any, template_id: str | None) -> str:
    return template_by_id(config, template_id).extraction


def render_question(question: str, choices: Sequence[str] | None, template: "str | Template",
                    has_ground_truth: bool = True) -> str:
    """The user-turn text sent to the model (image placeholders, if any, stay where they are).

    ``template`` is a Template or the id of a built-in one."""
    if not isinstance(template, Template):
        if template not in BUILTIN_TEMPLATES:
            raise KeyError(f"unknown template id {template!r}; known: {sorted(BUILTIN_TEMPLATES)}")
        template = BUILTIN_TEMPLATES[template]
    q = strip_short_answer_suffix(question)
    if choices:
        q = f"{q}\nOptions:\n{format_choices(choices)}"
    if not has_ground_truth:
        template = BUILTIN_TEMPLATES["plain"]
    return template.fill(q)


def prompt_text(row: dict, template: Template) -> str:
    """A prompt row's user text in ``template``, with image marks where a multi-image
    question had its ``<image>`` placeholders (``schemas.placeholders``)."""
    from schemas.placeholders import interleaved, with_marks

    question, positions = row["question"], row.get("image_positions") or []
    if interleaved(len(row["images"] or []), positions):
        question = with_marks(question, positions)
    return render_question(question, row["choices"], template)


def render_user_text(config: Any, row: dict) -> str:
    """The user text of a generated row's prompt, rebuilt from its recorded template."""
    return prompt_text(row, template_by_id(config, row.get("template_id")))


def extraction_styles(config: Any) -> dict[str, str]:
    """Template id -> the answer-extraction style it asks for (built-ins and the config's)."""
    return {tid: t.extraction for tid, t in template_table(config.templates).items()}
