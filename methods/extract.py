"""Final-answer extraction from chain-of-thought responses (pure Python, no I/O).

The MMPR pipeline asks the policy model to end its reasoning with a parseable
final answer (see ``pipeline/config/templates.py``) and needs the answer string back
to score it against the ground truth.  A response whose answer cannot be
parsed is a *format negative*: :func:`extract_answer` returns ``None`` for it
and the caller files it in its own bucket.

Styles (``style=``), one per prompt template:

``"final_answer"``
    The last ``Final answer:`` / ``Answer:`` label (case-insensitive; also
    ``**Final Answer:**``, ``The answer is:``).  Only a label followed by a
    colon counts, except the markdown-header form ``### Final Answer`` which
    has no colon.  The answer is the rest of the label's line; only when that
    is empty (``Final answer:`` alone, or a header) is the next non-empty line
    taken.  A ``\\boxed{...}`` inside the answer is unwrapped.  Answers are
    stripped of surrounding markdown (``**``, ``*``, ``_``, backticks), quotes,
    ``$...$`` / ``\\(...\\)`` delimiters and a trailing period.
``"boxed"``
    The content of the last ``\\boxed{...}`` (nested braces handled, e.g.
    ``\\boxed{\\frac{1}{2}}``); falls back to an answer label.  If the last
    ``\\boxed`` is unbalanced (a truncated generation) or empty, no earlier box
    is used -- an earlier box is an intermediate result, not the answer.
``"think"``
    R1 style.  Only the text after the last ``</think>`` counts (``None`` when
    there is no ``</think>``).  In that tail, whichever of a ``\\boxed{}`` or an
    answer label comes *last* wins; with neither, the whole tail is the answer
    when it is short (<= 200 characters), else ``None``.
``"final_answer_zh"``
    For InternVL's Chinese instruction (``答案: ...``): the later of the last
    ``答案:`` / ``答案：`` label and the last English answer label (the
    reference accepts both).
``"any"``
    ``"think"`` rules when the text has ``</think>``; otherwise whichever of
    the last box and the last answer label comes later, and as a last resort a
    ``the answer is X`` sentence.  Use it for responses of unknown templates.

"Last occurrence wins" everywhere: models restate and correct themselves, and
the final statement is what a reader takes as the answer.

Every final-answer statement (:func:`extract_answers`)
    A response may state several final answers (``Final answer: 80%.\nFinal
    answer: 95Final answer: 40%``); such a response does not state *one*
    answer, so it is no clean chosen, and a rejected that states the ground
    truth in an earlier statement is no clean negative.  The statements are:
    every answer label that starts a line (after markdown) or reads ``final
    answer`` / ``the answer is`` -- a label glued to the previous answer
    (``95Final answer:``) ends that answer --, plus for the ``boxed``,
    ``think`` and ``any`` styles the last ``\boxed{}`` (earlier boxes are
    intermediate results); ``think``/``any`` look only after ``</think>``
    (reasoning inside the think block may try values).  ``Let me find the
    answer: count the bars`` mid-sentence is not a statement.

Speed matters (the matcher targets 20,000+ responses/s/core), so every regex
is compiled once at import, and labels are located with ``str.rfind`` on a
lowercased copy instead of scanning the whole response with a regex.
"""
from __future__ import annotations

import re

__all__ = ["extract_answer", "extract_answers", "last_boxed", "clean_answer", "STYLES", "MAX_BARE_TAIL_CHARS"]

STYLES = ("final_answer", "boxed", "think", "any", "final_answer_zh")

#: the longest bare (unlabelled) text after ``</think>`` still taken as an answer
MAX_BARE_TAIL_CHARS = 200

_THINK_CLOSE = "</think>"
_BOXED_CMDS = ("\\boxed", "\\fbox")

# "answer" (already found with rfind) + optional " is" + optional markdown + colon
_LABEL_AT = re.compile(r"answer(?:[ \t]+is)?[ \t]*(?:\*\*|__|\*)?[ \t]*[:\uff1a]", re.IGNORECASE)
# header form without colon: "## Final Answer" / "**Final Answer**" ending its line
_HEADER_AT = re.compile(r"answer[ \t]*(?:\*\*|__|\*)?[ \t]*#*[ \t]*(?:\r?\n|$)", re.IGNORECASE)
_FINAL_BEFORE = re.compile(r"final[ \t]+$", re.IGNORECASE)
# fallback when str.lower() changes the length (rare Unicode), so rfind indices would drift
_ANSWER_WORD = re.compile("answer", re.IGNORECASE)
# "the answer is X." sentence, only used by style "any" as a last resort
_ANSWER_IS = re.compile(
    r"\bthe\s+(?:final\s+|correct\s+|right\s+)?answer\s+(?:is|would\s+be|should\s+be)\s*:?\s*"
    r"(.+?)(?:\.(?:\s|$)|\n|$)",
    re.IGNORECASE,
)
_BRACES = re.compile(r"[{}]")
_ZH_LABEL = re.compile("答案[ \t]*[:：]")
# what may precede a label's "answer" and belongs to the label, not to the text before it
_GLUED_LABEL_LEAD = re.compile(r"(?:(?:the|my)[ \t]+)?(?:final[ \t]+)?[*_#]*[ \t]*\Z", re.IGNORECASE)
# a label counts as a final-answer *statement* when it starts a line or says "final"/"the answer is"
_STATEMENT_LEAD = re.compile(r"(?:^|\n)[ \t>#*_-]*(?:(?:the|my)[ \t]+)?(?:final[ \t]+)?[*_]*[ \t]*$",
                             re.IGNORECASE)
_FINAL_LEAD = re.compile(r"final[ \t]*[*_]*[ \t]*$", re.IGNORECASE)
_IS_LABEL = re.compile(r"answer[ \t]+is", re.IGNORECASE)
_MATH_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_EDGE_MARKUP = " \t\r\n*_`\"'"
_TRAILING_PUNCT = " \t\r\n.\u3002"


def clean_answer(ans: str) -> str:
    """Strip presentation around an answer: markdown, quotes, math delimiters, final period.

    Applied repeatedly until stable because the wrappers nest
    (``**$\\frac{1}{2}$**.``).  Inner text is never touched.
    """
    prev = None
    while ans != prev:
        prev = ans
        ans = ans.strip(_EDGE_MARKUP).rstrip(_TRAILING_PUNCT)
        for left, right in _MATH_WRAPPERS:
            if len(ans) > len(left) + len(right) and ans.startswith(left) and ans.endswith(right):
                ans = ans[len(left):-len(right)]
                break
    return ans


def _boxed_start(text: str, end: int) -> tuple[int, int]:
    """(start of the last box command before ``end``, index just after its name); (-1, -1) if none."""
    best, best_after = -1, -1
    for cmd in _BOXED_CMDS:
        i = text.rfind(cmd, 0, end)
        if i > best:
            best, best_after = i, i + len(cmd)
    return best, best_after


def last_boxed(text: str, end: int | None = None) -> tuple[int, str | None]:
    """Position and content of the last ``\\boxed{...}`` (or ``\\fbox``) before ``end``.

    Returns ``(-1, None)`` when there is no box, ``(pos, None)`` when the last
    box is unbalanced/empty (truncated output: no earlier box is substituted).
    Braces are counted so ``\\boxed{\\frac{1}{2}}`` yields ``\\frac{1}{2}``.
    """
    end = len(text) if end is None else end
    pos, after = _boxed_start(text, end)
    while pos >= 0 and after < len(text) and text[after].isalpha():
        # "\boxedfoo" is a different macro; keep looking further left
        pos, after = _boxed_start(text, pos)
    if pos < 0:
        return -1, None
    j = after
    while j < len(text) and text[j] in " \t":
        j += 1
    if j >= len(text) or text[j] != "{":
        return pos, None
    depth = 0
    for m in _BRACES.finditer(text, j):
        if m.group() == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                content = text[j + 1:m.start()].strip()
                return pos, (content or None)
    return pos, None


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _answer_positions(text: str):
    """Start indices of "answer" (any case), last first.

    ``rfind`` on a lowercased copy keeps this linear and in C even on
    4k-token responses; the regex path only serves text whose lowercase form
    has a different length (e.g. U+0130), where rfind indices would drift.
    """
    low = text.lower()
    if len(low) != len(text):
        yield from reversed([m.start() for m in _ANSWER_WORD.finditer(text)])
        return
    pos = len(low)
    while True:
        i = low.rfind("answer", 0, pos)
        if i < 0:
            return
        yield i
        pos = i


def _labels(text: str):
    """(label start, label end) of every answer label, last first.

    A label is "answer" at a word start followed by an optional "is", optional
    markdown and a colon; or "final answer" ending its line (markdown header).
    """
    for i in _answer_positions(text):
        if i > 0 and _is_word_char(text[i - 1]):
            continue  # "manswer", "_answer"
        m = _LABEL_AT.match(text, i)
        if m is not None:
            yield i, m.end()
            continue
        if _FINAL_BEFORE.search(text, max(0, i - 16), i) is not None:
            m = _HEADER_AT.match(text, i)
            if m is not None:
                yield i, m.start() + len(m.group().rstrip("\r\n"))


def _last_label(text: str) -> tuple[int, int] | None:
    """(label start, label end) of the last answer label, or None."""
    return next(_labels(text), None)


def _line_answer(text: str, start: int, stop: int | None = None) -> str | None:
    """The answer that follows a label ending at ``start``: same line, else next non-empty line.

    ``stop`` (the next label's start) bounds the search, so a label glued to
    the previous answer (``95Final answer: 40%``) ends that answer.
    """
    if stop is not None:
        lead = _GLUED_LABEL_LEAD.search(text, max(start, stop - 40), stop)
        text = text[:stop if lead is None else lead.start()]
    nl = text.find("\n", start)
    line = text[start:] if nl < 0 else text[start:nl]
    ans = _unwrap(line)
    while not ans and nl >= 0:
        nxt = text.find("\n", nl + 1)
        line = text[nl + 1:] if nxt < 0 else text[nl + 1:nxt]
        if line.strip():
            return _unwrap(line)
        nl = nxt
    return ans


def _unwrap(segment: str) -> str | None:
    """Clean an answer segment; a box inside it is unwrapped (a broken box -> None)."""
    if "\\boxed" in segment or "\\fbox" in segment:
        pos, content = last_boxed(segment)
        if pos >= 0:
            if content is None:
                return None
            return clean_answer(content) or None
    return clean_answer(segment) or None


def _from_label(text: str) -> tuple[int, str | None]:
    """(label position, answer) of the last answer label; (-1, None) if no label."""
    found = _last_label(text)
    if found is None:
        return -1, None
    return found[0], _line_answer(text, found[1])


def _from_boxed(text: str) -> tuple[int, str | None]:
    pos, content = last_boxed(text)
    if content is not None:
        content = clean_answer(content) or None
    return pos, content


def _latest(text: str) -> tuple[int, str | None]:
    """Whichever of the last box and the last label starts later (a label's own box included)."""
    bpos, bans = _from_boxed(text)
    lpos, lans = _from_label(text)
    if bpos < 0 and lpos < 0:
        return -1, None
    return (bpos, bans) if bpos > lpos else (lpos, lans)


def _extract_final_answer(text: str) -> str | None:
    return _from_label(text)[1]


def _extract_boxed(text: str) -> str | None:
    pos, ans = _from_boxed(text)
    if pos >= 0:
        return ans
    return _from_label(text)[1]


def _extract_think(text: str) -> str | None:
    i = text.rfind(_THINK_CLOSE)
    if i < 0:
        return None
    tail = text[i + len(_THINK_CLOSE):]
    pos, ans = _latest(tail)
    if pos >= 0:
        return ans
    tail = clean_answer(tail)
    if not tail or len(tail) > MAX_BARE_TAIL_CHARS:
        return None
    return tail


def _extract_final_answer_zh(text: str) -> str | None:
    zh = None
    for zh in _ZH_LABEL.finditer(text):
        pass
    lpos, lans = _from_label(text)
    if zh is None or lpos > zh.start():
        return lans
    return _line_answer(text, zh.end())


def _extract_any(text: str) -> str | None:
    if _THINK_CLOSE in text:
        return _extract_think(text)
    pos, ans = _latest(text)
    if pos >= 0:
        return ans
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    return None if last is None else (clean_answer(last.group(1)) or None)


def _is_statement(text: str, start: int) -> bool:
    """A label that states an answer, not "...to find the answer: count the bars"."""
    lead = text[max(0, start - 40):start]
    return (_STATEMENT_LEAD.search(lead) is not None or _FINAL_LEAD.search(lead) is not None
            or _IS_LABEL.match(text, start) is not None)


def _stated(scope: str, with_box: bool) -> list[str]:
    """Answers of every statement label in ``scope`` (in order), plus its last box if asked."""
    labels = list(_labels(scope))[::-1]
    answers, spans = [], []
    for k, (start, end) in enumerate(labels):
        stop = labels[k + 1][0] if k + 1 < len(labels) else None
        if k + 1 < len(labels) and not _is_statement(scope, start):
            continue
        ans = _line_answer(scope, end, stop)
        spans.append((start, len(scope) if stop is None else stop))
        if ans:
            answers.append(ans)
    if with_box:
        pos, box = _from_boxed(scope)
        if box and not any(a <= pos < b for a, b in spans):
            answers.append(box)
    return answers


def extract_answers(text: str | None, style: str = "final_answer") -> list[str]:
    """Every final-answer statement of a response, in order (see the module docstring).

    Empty when the response has no parseable answer; otherwise the last item
    is :func:`extract_answer`'s answer.
    """
    if style == "final_answer" and text:
        labels = _labels(text)  # one scan gives the answer and whether there are more statements
        last = next(labels, None)
        primary = None if last is None else _line_answer(text, last[1])
        if primary is None:
            return []
        if next(labels, None) is None:
            return [primary]
        return _stated(text, with_box=False)
    primary = extract_answer(text, style)
    if primary is None:
        return []
    scope = text
    if style in ("think", "any") and _THINK_CLOSE in text:
        scope = text[text.rfind(_THINK_CLOSE) + len(_THINK_CLOSE):]
    labels = _labels(scope)
    n_labels = (next(labels, None) is not None) + (next(labels, None) is not None)
    boxes = style != "final_answer" and any(cmd in scope for cmd in _BOXED_CMDS)
    if n_labels + boxes <= 1:
        return [primary]  # the common case: one statement, no second pass
    answers = _stated(scope, with_box=style != "final_answer")
    if primary in answers:  # a bare think tail or an "the answer is X" sentence is not in it
        del answers[len(answers) - 1 - answers[::-1].index(primary)]
    return answers + [primary]


_EXTRACTORS = {
    "final_answer": _extract_final_answer,
    "boxed": _extract_boxed,
    "think": _extract_think,
    "any": _extract_any,
    "final_answer_zh": _extract_final_answer_zh,
}


def extract_answer(text: str | None, style: str = "final_answer") -> str | None:
    """The final answer of a response, or None when it has no parseable answer (a format negative).

    ``style`` is one of :data:`STYLES` (see the module docstring for the exact
    rules).  An empty answer is treated as no answer.
    """
    try:
        extractor = _EXTRACTORS[style]
    except KeyError:
        raise ValueError(f"unknown extraction style {style!r}; known: {STYLES}") from None
    if not text:
        return None
    return extractor(text)
