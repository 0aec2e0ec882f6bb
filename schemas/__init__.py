"""Arrow schemas declared once and imported by every stage.

Three record kinds flow through the pipeline:

* ``PROMPT_SCHEMA``   -- one row per (source row), written by ``ingest``.
* ``RESPONSE_SCHEMA`` -- the prompt row plus the list of sampled responses,
  written by ``generate``.  All samples of a prompt live in one row, so pair
  construction never has to regroup a whole dataset.
* ``PAIR_SCHEMA``     -- one chosen/rejected pair in the final, trainer-ready
  layout (TRL conversational columns + Hugging Face images + typed provenance),
  written by the pair stages and consumed by ``filter``/``judge``/``write``.

Images everywhere use the Hugging Face ``struct<bytes: binary, path: string>``
layout so any Parquet file here loads with ``datasets`` and decodes to PIL.
"""
from schemas.arrow import (  # noqa: F401
    IMAGE_TYPE,
    IMAGES_TYPE,
    MESSAGE_TYPE,
    CONVERSATION_TYPE,
    SAMPLING_TYPE,
    RESPONSE_TYPE,
    PROVENANCE_TYPE,
    PROMPT_SCHEMA,
    RESPONSE_SCHEMA,
    PAIR_SCHEMA,
    PROMPT_TABLE_SCHEMA,
    SCORING_TYPE,
    QUARANTINE_SCHEMA,
    REPORT_IMAGES_SCHEMA,
    REPORT_IMAGES_SIDE,
    ANSWER_TYPES,
    hf_features_metadata,
    with_hf_metadata,
)
