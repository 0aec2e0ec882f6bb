"""dedup: near-duplicate prompts (the same images and question, re-encoded or reformatted) collapsed to one.

A prompt is a near-duplicate of another when its images match one to one (pHash within
``dedup.image_distance`` bits and the colour check, ``methods.image_hash``), its question
matches (normalised text and choices; 3-gram Jaccard at least ``dedup.question_threshold``,
``methods.question_keys``) and the ground truths agree.  Of each cluster the prompt first in
``prompt_id`` order is kept; the others are quarantined as ``near_duplicate`` with the kept
id and the distances.  Generic questions ("How many circles are there?") never merge prompts
whose images differ: the image check is always part of the rule.

It runs right after ingest, before any token is generated, as a **merging row stage**
(``RowStage.merges``): each partition hashes its prompts and writes a key file
(``side/keys/<part>.parquet``, ~300 bytes a prompt, no images) and passes its rows on; the
driver then merges the key files (``pipeline.sources.prompt_keys``: a few columns at a time,
never rows or images) and redoes only the partitions that hold a near-duplicate, which reuse
their input and quarantine those rows.

**Memory** on the driver for 10M prompts: about 0.8 GB at the peak and 2.5 minutes of one core
(measured at 1M and 2M prompts: 88 and 81 B a prompt; ranks, answer keys, first pHashes, one
key column and its sort at a time, the candidate pairs and the keys of candidate rows only;
``pipeline.sources.prompt_keys``).  Workers hold one
partition.  Defaults come from a measured table (issue 29's notes): k = 10 matches JPEG q50,
50% resizes, 5%-of-area crops and brightness +-10% at 0.997-1.0 recall on the sample, with
0.056% of distinct sample image pairs matching on images alone (the question and answer must
match too).
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from pydantic import Field

from pipeline.config.settings import Section
from pipeline.core.stage import RowStage, StageContext
from schemas import PROMPT_SCHEMA

SIDE = "keys"


class DedupConfig(Section):
    image_distance: int = Field(10, ge=0, le=32, description=(
        "Images match when their 64-bit pHashes differ in at most this many bits (10: JPEG q50, 50% resizes, "
        "5%-of-area crops and brightness +-10% match; 8 is stricter)"))
    colour_tolerance: float = Field(50.0, ge=0, description=(
        "...and their 8x8 colour thumbnails (chroma) differ by at most this much in any cell (sum over R, G, B "
        "of 0-255 values); pHash sees grey levels only, so a red and a blue circle need this check"))
    question_threshold: float = Field(0.9, gt=0, le=1, description=(
        "Questions match when the Jaccard similarity of their normalised word 3-grams is at least this "
        "(0.9: the sample's closest different questions are at 0.85)"))
    jpeg_draft: bool = Field(False, description=(
        "Decode JPEGs at reduced size in the decoder (3-10x faster on large images; moves pHashes by up to 8 bits "
        "against full decodes, so change it only with a restart)"))


class DedupStage(RowStage):
    name = "dedup"
    Config = DedupConfig
    after = ("ingest",)
    input_schema = PROMPT_SCHEMA
    output_schema = PROMPT_SCHEMA
    merges = True

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        rows = list(rows)
        if rows and "_dedup" in rows[0]:  # a redone partition: the driver's decisions
            yield from self._apply(rows, ctx)
            return
        from pipeline.config.templates import SHORT_ANSWER_SUFFIXES
        from pipeline.sources.prompt_keys import KEYS_SCHEMA, prompt_keys

        for key in prompt_keys(rows, SHORT_ANSWER_SUFFIXES, self.section.jpeg_draft):
            ctx.side(SIDE, KEYS_SCHEMA, key)
        ctx.stats.inc("images_hashed", sum(len(r["images"]) for r in rows))
        ctx.stats.inc("prompts_kept", len(rows))
        yield from rows

    def _apply(self, rows: list[dict], ctx: StageContext) -> Iterator[dict]:
        ctx.stats.inc("images_hashed", sum(len(r["images"]) for r in rows))  # by the partition's first run
        for row in rows:
            found = row.pop("_dedup")
            if found is None:
                ctx.stats.inc("prompts_kept")
                yield row
                continue
            ctx.stats.inc("near_duplicates")
            ctx.quarantine(row, "near_duplicate",
                           f"near-duplicate of prompt {found['keep']} (image bits {found['bits']}, colour "
                           f"{found['colour']}, question jaccard {found['jaccard']})")

    def redo_rows(self, rows: list[dict], extra: tuple[str, ...]) -> list[dict]:
        drop = {d["position"]: d for d in json.loads(extra[0])["drop"]}
        return [{**r, "_dedup": drop.get(i)} for i, r in enumerate(rows)]

    def redo_partitions(self, planned: list[tuple[str, tuple[str, ...]]], out_dir: str
                        ) -> dict[str, tuple[str, ...]]:
        """Partitions holding a near-duplicate of an earlier kept prompt, with what to drop."""
        from pipeline.files import storage
        from pipeline.sources.prompt_keys import KeyFiles, near_duplicates

        files = KeyFiles([(name, storage.join(out_dir, "side", SIDE, f"{name}.parquet")) for name, _ in planned])
        s = self.section
        found = near_duplicates(files, s.image_distance, s.colour_tolerance, s.question_threshold)
        ids = files.rows([m.keep for m in found], ["prompt_id"])
        drops: dict[str, list[dict]] = {}
        for m in found:
            name, position = files.where(m.drop)
            drops.setdefault(name, []).append({"position": position, "keep": ids[m.keep]["prompt_id"],
                                               "bits": list(m.image_bits), "colour": list(m.colour),
                                               "jaccard": m.jaccard})
        inputs = dict(planned)
        return {name: (*inputs[name], json.dumps({"drop": d}, sort_keys=True)) for name, d in drops.items()}

    @classmethod
    def summarize(cls, counters: dict) -> dict:
        if "images_hashed" not in counters:
            return {}
        return {"prompts_kept": counters.get("prompts_kept", 0), "near_duplicates": counters.get("near_duplicates", 0),
                "images_hashed": counters["images_hashed"]}

    @classmethod
    def summary_line(cls, summary: dict) -> str | None:
        if not summary:
            return None
        return (f"near-duplicates removed: {summary['near_duplicates']}, prompts kept: {summary['prompts_kept']} "
                f"({summary['images_hashed']} images hashed)")

    @classmethod
    def card_section(cls, config, summary: dict) -> str | None:
        s = config.dedup
        return (f"- Near-duplicates (`dedup`): {summary['near_duplicates']} prompts removed, {summary['prompts_kept']} "
                f"kept. A prompt is removed when its images are within {s.image_distance} pHash bits of a kept "
                f"prompt's (and their colours agree), its question's normalised 3-gram Jaccard is at least "
                f"{s.question_threshold} and its ground truth is the same; the kept one is the first by prompt id.")
