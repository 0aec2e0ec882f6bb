"""The Arrow types and schemas of every record the pipeline writes.

Declared once here; stages import them and never build their own.  Nested
provenance is a typed struct (not a JSON string) so Parquet readers, ``datasets``
and SQL engines can filter on it directly.
"""
from __future__ import annotations

import json
from typing import Iterable

import pyarrow as pa

#: answer types the correctness matcher understands (``auto`` = infer per row)
ANSWER_TYPES = (
    "auto", "multiple_choice", "integer", "number", "yes_no", "word",
    "text", "anls", "math", "open",
)

# -- images: exactly the Hugging Face layout (field order and types matter) --
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
IMAGES_TYPE = pa.list_(IMAGE_TYPE)

# -- TRL conversational form: [{role, content: [{type, text}]}] -------------
CONTENT_PART_TYPE = pa.struct([("type", pa.string()), ("text", pa.string())])
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.list_(CONTENT_PART_TYPE))])
CONVERSATION_TYPE = pa.list_(MESSAGE_TYPE)

SAMPLING_TYPE = pa.struct([
    ("n", pa.int32()),
    ("temperature", pa.float64()),
    ("top_p", pa.float64()),
    ("top_k", pa.int32()),
    ("max_tokens", pa.int32()),
    ("seed", pa.int64()),
    # adaptive sampling (methods.adaptive): samples drawn after each round, and why the
    # prompt stopped; null under fixed-N sampling (n samples, one round)
    ("rounds", pa.list_(pa.int32())),
    ("stop_reason", pa.string()),
])

#: one sampled response of the policy model
RESPONSE_TYPE = pa.struct([
    ("index", pa.int32()),
    ("text", pa.string()),
    ("finish_reason", pa.string()),
    ("num_tokens", pa.int32()),
    ("seed", pa.int64()),
    # the summed log-prob of the text's tokens as sampled (with the image), and the digest of
    # the prompt + text tokens it is for (methods.grounding.sampled_score); null unless
    # generate asked vLLM for log-probs (generate.logprobs)
    ("logprob", pa.float64()),
    ("tokens_key", pa.string()),
])

_PROMPT_FIELDS = [
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("row_key", pa.string(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("images", IMAGES_TYPE),
    # where each image's <image> placeholder stood in the question (character offsets
    # into "question", which is stored without them); empty = images before the text
    pa.field("image_positions", pa.list_(pa.int32())),
    # acceptable ground truths; empty list = no ground truth (open prompt)
    pa.field("answer", pa.list_(pa.string())),
    pa.field("answer_type", pa.string()),
    # option texts of a multiple-choice question, in letter order (A, B, ...)
    pa.field("choices", pa.list_(pa.string())),
    # extra facts about the sample (caption, rationale...) for judges
    pa.field("facts", pa.string()),
]

PROMPT_SCHEMA = pa.schema(_PROMPT_FIELDS)

RESPONSE_SCHEMA = pa.schema(_PROMPT_FIELDS + [
    pa.field("template_id", pa.string()),
    # hash of the template's text (and system prompt): a changed text is a changed prompt
    pa.field("template_hash", pa.string()),
    pa.field("prompt_text", pa.string()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("model", pa.string()),
    pa.field("model_revision", pa.string()),
    pa.field("sampling", SAMPLING_TYPE),
    pa.field("responses", pa.list_(RESPONSE_TYPE)),
])

FILTER_VERDICT_TYPE = pa.struct([
    ("rule", pa.string()),
    ("target", pa.string()),  # chosen | rejected | pair
    ("passed", pa.bool_()),
    ("reason", pa.string()),
])

#: visual grounding (stages/grounding.py): summed log-probs of the assistant text with the
#: image, without it and (image_crop) with the cropped image; token counts; derived signals
GROUNDING_TYPE = pa.struct([
    (f"{side}_{key}", typ) for side in ("chosen", "rejected")
    for key, typ in (("tokens", pa.int32()), ("logp_image", pa.float64()), ("logp_no_image", pa.float64()),
                     ("logp_crop", pa.float64()), ("image_gain", pa.float64()), ("crop_gain", pa.float64()))
] + [("policy_margin", pa.float64()), ("grounding_margin", pa.float64())])

PROVENANCE_TYPE = pa.struct([
    ("prompt_id", pa.string()),
    ("row_key", pa.string()),
    ("model", pa.string()),
    ("model_revision", pa.string()),
    ("template_id", pa.string()),
    ("template_hash", pa.string()),
    ("sampling", SAMPLING_TYPE),
    ("chosen_index", pa.int32()),
    ("rejected_index", pa.int32()),
    ("chosen_seed", pa.int64()),
    ("rejected_seed", pa.int64()),
    ("chosen_tokens", pa.int32()),
    ("rejected_tokens", pa.int32()),
    ("chosen_finish_reason", pa.string()),
    ("rejected_finish_reason", pa.string()),
    # the sampled response's logprob and tokens_key (RESPONSE_TYPE): grounding reuses them
    ("chosen_logprob", pa.float64()),
    ("rejected_logprob", pa.float64()),
    ("chosen_tokens_key", pa.string()),
    ("rejected_tokens_key", pa.string()),
    # correctness
    ("answer_type", pa.string()),
    ("ground_truth", pa.list_(pa.string())),
    # facts about the sample from its source (caption...), for judges
    ("facts", pa.string()),
    ("chosen_answer", pa.string()),
    ("rejected_answer", pa.string()),
    ("chosen_score", pa.float64()),
    ("rejected_score", pa.float64()),
    ("match_rule", pa.string()),
    # the prompt's samples drawn, and the share of them that were right (ground truth only):
    # filter prompts by difficulty, e.g. MMPR-Tiny's 0.2-0.8 band
    ("samples_drawn", pa.int32()),
    ("pass_rate", pa.float64()),
    # dropout_ntp
    ("truncation_ratio", pa.float64()),
    ("truncation_unit", pa.string()),
    ("cut_words", pa.int32()),
    ("cut_chars", pa.int32()),
    ("continuation_tokens", pa.int32()),
    ("image_kept", pa.bool_()),
    # image_crop: one [left, top, right, bottom] box per image
    ("crop_boxes", pa.list_(pa.list_(pa.int32()))),
    ("crop_seed", pa.int64()),
    # quality
    ("filters", pa.list_(FILTER_VERDICT_TYPE)),
    ("judge_chosen_score", pa.float64()),
    ("judge_rejected_score", pa.float64()),
    ("grounding", GROUNDING_TYPE),
    # build
    ("pipeline_version", pa.string()),
    ("config_hash", pa.string()),
])

PAIR_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("prompt", CONVERSATION_TYPE),
    pa.field("chosen", CONVERSATION_TYPE),
    pa.field("rejected", CONVERSATION_TYPE),
    pa.field("images", IMAGES_TYPE),
    pa.field("rejected_images", IMAGES_TYPE),
    pa.field("method", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("question", pa.string()),
    pa.field("provenance", PROVENANCE_TYPE),
    # trainer-readable margins (null unless the grounding stage ran): chosen minus rejected
    # summed log-prob under the policy, and chosen minus rejected image gain per token
    pa.field("policy_margin", pa.float64()),
    pa.field("grounding_margin", pa.float64()),
])

#: the scoring settings a prompt's verdicts used, on its prompt-table row: what a reward function
#: needs to give the correctness stage's verdict (``methods.reward``)
SCORING_TYPE = pa.struct([
    ("extraction", pa.string()),       # the answer-extraction style the prompt's responses were read with
    ("threshold", pa.float64()),
    ("numeric_rel_tol", pa.float64()),
    ("anls_cutoff", pa.float64()),
    ("relaxed_numeric", pa.bool_()),   # the source's flags
    ("true_false", pa.bool_()),
])

#: one row per generated prompt (``prompts/*.parquet`` in the dataset folder): how the policy did on
#: it.  Counts are over the samples drawn (adaptive sampling may stop early); a prompt without
#: ground truth has null counts and pass rate
PROMPT_TABLE_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("row_key", pa.string(), nullable=False),
    pa.field("question", pa.string()),
    # the conversation as sent (template system turn, then the templated user turn with image parts)
    pa.field("prompt", CONVERSATION_TYPE),
    pa.field("template_id", pa.string()),
    pa.field("template_hash", pa.string()),
    pa.field("images", IMAGES_TYPE),
    pa.field("answer", pa.list_(pa.string())),
    pa.field("answer_type", pa.string()),
    pa.field("choices", pa.list_(pa.string())),
    pa.field("samples_drawn", pa.int32()),
    pa.field("tokens_generated", pa.int64()),
    pa.field("correct", pa.int32()),             # right by the last final answer (what pass_rate counts)
    pa.field("right", pa.int32()),               # usable as chosen (correct, one answer stated)
    pa.field("wrong", pa.int32()),               # usable as rejected (parsed, never states the truth)
    pa.field("unparseable", pa.int32()),         # no final answer found
    pa.field("conflicting", pa.int32()),         # correct, but states several answers
    pa.field("wrong_states_truth", pa.int32()),  # wrong, but an earlier statement is the truth
    pa.field("finish_length", pa.int32()),       # cut at max_tokens
    pa.field("pass_rate", pa.float64()),         # correct / samples_drawn
    pa.field("pass_rate_low", pa.float64()),     # Wilson 95% interval
    pa.field("pass_rate_high", pa.float64()),
    pa.field("stop_reason", pa.string()),        # adaptive sampling's, or "fixed_n"
    pa.field("model", pa.string()),
    pa.field("model_revision", pa.string()),
    pa.field("sampling", SAMPLING_TYPE),
    pa.field("seeds", pa.list_(pa.int64())),     # each sample's seed, in order
    pa.field("scoring", SCORING_TYPE),
])

QUARANTINE_SCHEMA = pa.schema([
    pa.field("stage", pa.string()),
    pa.field("source", pa.string()),
    pa.field("row_key", pa.string()),
    pa.field("prompt_id", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
    pa.field("record", pa.string()),
])

#: the side output a stage writes for the HTML report's views of the prompts it removed: a few
#: groups (a near-duplicate cluster: its kept prompt and the removed ones), small thumbnails and
#: the distances that decided.  ``pipeline.run.report`` gathers every stage's files into the
#: dataset folder (``report_images.parquet``) beside ``report.json``; the stage bounds the count.
REPORT_IMAGES_SIDE = "report_images"
REPORT_IMAGES_SCHEMA = pa.schema([
    pa.field("stage", pa.string(), nullable=False),      # the stage that removed the prompts
    pa.field("group", pa.string(), nullable=False),      # what they were matched to (dedup: the kept prompt id)
    pa.field("group_size", pa.int32()),                  # prompts in the group, kept one included (shown or not)
    pa.field("role", pa.string(), nullable=False),       # "kept" or "removed"
    pa.field("prompt_id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("question", pa.string()),
    pa.field("n_images", pa.int32()),                    # the prompt's images (thumbnails may be fewer)
    pa.field("thumbnails", pa.list_(pa.binary())),       # JPEG, longest side <= methods.thumbnails.MAX_PX
    pa.field("image_bits", pa.list_(pa.int32())),        # removed: pHash bits to the kept prompt's image, per image
    pa.field("colour", pa.list_(pa.float32())),          # removed: colour distance to it, per image
    pa.field("question_jaccard", pa.float64()),          # removed: normalised 3-gram Jaccard to its question
])

_IMAGE_COLUMNS = ("images", "rejected_images")


def hf_features_metadata(schema: pa.Schema) -> dict:
    """The ``huggingface`` schema metadata that makes ``datasets`` decode images.

    Only image columns are declared (in the ``Sequence`` form, which every
    ``datasets`` version understands); ``datasets`` infers the rest from Arrow.
    """
    features = {
        name: {"feature": {"_type": "Image"}, "_type": "Sequence"}
        for name in _IMAGE_COLUMNS if name in schema.names
    }
    return {"info": {"features": features}}


def with_hf_metadata(schema: pa.Schema) -> pa.Schema:
    meta = dict(schema.metadata or {})
    meta[b"huggingface"] = json.dumps(hf_features_metadata(schema)).encode()
    return schema.with_metadata(meta)


def from_rows(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
    """Build a table from Python dicts, failing loudly on a schema mismatch."""
    return pa.Table.from_pylist(list(rows), schema=schema)
