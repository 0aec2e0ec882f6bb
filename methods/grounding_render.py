"""The grounding stage's prompt renderings: the chat template run once per prompt, not per text.

A scoring request is the rendered conversation with an answer as the assistant turn, cut
right after it.  For a template that copies the answer unchanged, that is the rendering up
to where the turn's text starts (``answer_head``) plus the text, so a prompt needs three
template runs (the prompt with the generation prompt, the head, a probe that the text is
copied) whatever the number of its texts; ``Renderings`` keeps them across partitions, since
the prompts of one input partition come back in every pair method's partition.  The
renderer is anything with ``render(messages, continue_final=False)`` (the engine); nothing
here touches vLLM or files.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterable, Iterator

from schemas.records import assistant_turn

#: stands for the answer in a view's one assistant-turn rendering (``answer_head``), and a text
#: that a template changing answers (trimming, collapsing or escaping characters) would change
_ANSWER = "\x00mmpr-answer\x00"
_PROBE = "Step 1:  a\n\n\tb <c> {d} [e] 'f' \"g\" & h\\i \u00e9\u4e2d\nFinal answer: 42"


def answer_head(engine, messages: list[dict]) -> str | None:
    """The rendering of ``messages`` plus an assistant turn, up to where the turn's text starts,
    when the template copies that text unchanged (a text's rendering is then head + text, no
    template run per text); None when it changes it or cannot be cut."""
    try:
        framed = engine.render(messages + [assistant_turn(_ANSWER)], continue_final=True)
        if not framed.endswith(_ANSWER) or framed.count(_ANSWER) != 1:
            return None
        head = framed[:-len(_ANSWER)]
        probed = engine.render(messages + [assistant_turn(_PROBE)], continue_final=True)
    except Exception:  # noqa: BLE001 -- then every text is rendered on its own
        return None
    return head if probed == head + _PROBE else None


@dataclass
class Rendering:
    """A prompt's text through the chat template, with or without its image parts: the same for
    every image condition that has images (original or crop) and for every partition the prompt
    comes back in (each pair method writes its own), so it is made once (``Renderings``)."""
    messages: list[dict]
    prompt: str
    head: str | None
    prompt_ids: list[int] | None = None  # tokenised with a partition's texts, in the same batch


#: renderings a stage keeps across partitions (a few KB each): the prompts of one input
#: partition come back in every pair method's partitions, in the order they were made
RENDERINGS_KEPT = 4096


def scoring_messages(prompt: list[dict], keep_images: bool) -> list[dict]:
    """The stored prompt turns (system, user) as chat-template messages, each image part
    where generation had it, or dropped unless kept."""
    return [{"role": m["role"],
             "content": [{"type": "image"} if p["type"] == "image" else {"type": "text", "text": p["text"]}
                         for p in m["content"] if keep_images or p["type"] != "image"]}
            for m in prompt]


class Renderings:
    """The renderings of one renderer (engine), by (image parts kept, prompt turns), the oldest
    dropped past ``RENDERINGS_KEPT``; another renderer (a restarted engine, another model)
    starts afresh."""

    def __init__(self, kept: int = RENDERINGS_KEPT) -> None:
        self.kept = kept
        self._by_prompt: OrderedDict[tuple, Rendering] = OrderedDict()
        self._for: Any = None  # a weak reference to the renderer they were made with

    def get(self, prompt: list[dict], keep_images: bool, engine) -> Rendering:
        if self._for is None or self._for() is not engine:
            self._by_prompt, self._for = OrderedDict(), weakref.ref(engine)
        key = (keep_images, tuple((m["role"], tuple((p["type"], p["text"]) for p in m["content"])) for m in prompt))
        done = self._by_prompt.get(key)
        if done is None:
            messages = scoring_messages(prompt, keep_images)
            done = self._by_prompt[key] = Rendering(messages, engine.render(messages), answer_head(engine, messages))
            if len(self._by_prompt) > self.kept:
                self._by_prompt.popitem(last=False)
        return done


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def tokenize_texts(texts: list[str], views: Iterable, engine) -> list[list[int]]:
    """The token ids of ``texts``, in one tokenizer call with the prompts of the ``views`` not
    tokenised before (``prompt_ids`` None): their ids are filled in, on their ``Rendering``
    too, so the stage's later partitions do not tokenise them again."""
    views = list(views)
    prompts = {v.prompt: None for v in views if v.prompt_ids is None}
    all_ids = engine.tokenizer([*prompts, *texts], add_special_tokens=False)["input_ids"] if texts or prompts else []
    prompts = dict(zip(prompts, all_ids[:len(prompts)]))
    for view in views:
        if view.prompt_ids is None:
            view.prompt_ids = prompts[view.prompt]
            if view.rendering is not None:
                view.rendering.prompt_ids = view.prompt_ids
    return all_ids[len(prompts):]
