"""image_crop: mDPO conditional image preference pairs (DESIGN.md section 3).

Same question, same answer text; the rejected side sees a corrupted image: a
random resized crop keeping 1-20% of the area (aspect 3/4..4/3), resized back
to the original size.  The pair teaches the model to *use* the image, so it
only carries signal for trainers that read ``rejected_images`` (ms-swift,
mDPO-style); the write stage keeps these rows in their own files.

A crop that leaves the picture (near-)unchanged -- any crop of a uniform
image -- carries no signal: up to ``CROP_TRIES`` seeded crops are tried per
image, and a row none of whose images changed by ``image_crop.min_difference``
(``methods.crop_signal``) is skipped and counted as
``dropped.near_identical_crop``.
"""
from __future__ import annotations

from functools import partial
from typing import Iterable, Iterator

from methods.crop import corrupt_image
from methods.crop_signal import first_distinct
from pipeline import __version__
from pipeline.seeds import derive_seed, stable_hash
from pipeline.stage import Stage, StageContext
from pipeline.templates import render_user_text
from schemas import PAIR_SCHEMA, RESPONSE_SCHEMA
from schemas.records import pair_row, provenance


#: seeded crops tried per image before a row counts as near-identical
CROP_TRIES = 3


def selected(seed: int, sample_id: str, fraction: float) -> bool:
    """A seeded, id-based draw: the same prompts are chosen on every run."""
    return derive_seed(seed, sample_id, "image_crop.select") < fraction * 0x80000000


class ImageCropStage(Stage):
    name = "image_crop"
    input_schema = RESPONSE_SCHEMA
    output_schema = PAIR_SCHEMA

    def _texts(self, row: dict) -> tuple[dict, dict] | None:
        """(chosen, rejected) responses: a good one twice, or a right/wrong pair in "pair" mode."""
        from stages.correctness import score_responses

        responses = row["responses"]
        if not responses:
            return None
        if not row["answer"]:
            ok = [r for r in responses if r["text"].strip() and r["finish_reason"] != "length"]
            return (ok[0], ok[0]) if ok else None
        scored = score_responses(row, self.config)
        right = [responses[i] for i, s in enumerate(scored) if s.usable_chosen]
        wrong = [responses[i] for i, s in enumerate(scored) if not s.correct and not s.states_truth]
        if not right:
            return None  # never teach a wrong answer as chosen
        if self.config.image_crop.text == "pair" and wrong:
            return right[0], wrong[0]
        return right[0], right[0]

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        cfg, seed = self.config.image_crop, self.config.run.seed
        chash = self.config.config_hash()
        for row in rows:
            if not row["images"]:  # text-only: no image to corrupt
                ctx.stats.inc("skipped.text_only")
                continue
            if not selected(seed, row["sample_id"], cfg.fraction):
                continue
            texts = self._texts(row)
            if texts is None:
                ctx.stats.inc("dropped.no_usable_response")
                continue
            chosen, rejected = texts
            crop_seed = derive_seed(seed, row["sample_id"], "image_crop")
            corrupt = partial(corrupt_image, area=tuple(cfg.area), aspect=tuple(cfg.aspect),
                              jpeg_quality=cfg.jpeg_quality)
            corrupted, boxes, distinct = [], [], False
            try:
                for i, im in enumerate(row["images"]):
                    # try 0 is the seed crops always had, so rows with a visible crop do not change
                    seeds = [derive_seed(crop_seed, i)] + [derive_seed(crop_seed, i, "retry", t)
                                                           for t in range(1, CROP_TRIES)]
                    (data, box), diff, tries = first_distinct(im["bytes"], seeds, corrupt, cfg.min_difference)
                    if tries > 1:
                        ctx.stats.inc("crops.retried")
                    distinct = distinct or diff >= cfg.min_difference
                    corrupted.append({"bytes": data, "path": None})
                    boxes.append(list(box))
            except Exception as e:  # noqa: BLE001 -- one undecodable image quarantines its row only
                ctx.quarantine(row, "image_crop_error", str(e))
                continue
            if not distinct:
                ctx.stats.inc("dropped.near_identical_crop")
                continue
            ctx.stats.inc("pairs.image_crop")
            user_text = render_user_text(self.config, row)
            yield pair_row(
                pair_id=stable_hash(row["sample_id"], "image_crop", chosen["text"], rejected["text"], boxes),
                method="image_crop", source=row["source"], question=row["question"], user_text=user_text,
                images=row["images"], rejected_images=corrupted, chosen=chosen["text"],
                rejected=rejected["text"],
                prov=provenance(
                    sample_id=row["sample_id"], source_row_id=row["row_key"], facts=row["facts"], model=row["model"],
                    model_revision=row["model_revision"], template_id=row["template_id"],
                    template_hash=row.get("template_hash"),
                    sampling=row["sampling"], chosen_index=chosen["index"], rejected_index=rejected["index"],
                    chosen_seed=chosen["seed"], rejected_seed=rejected["seed"],
                    chosen_tokens=chosen["num_tokens"], rejected_tokens=rejected["num_tokens"],
                    chosen_finish_reason=chosen["finish_reason"],
                    rejected_finish_reason=rejected["finish_reason"],
                    answer_type=row["answer_type"], ground_truth=row["answer"] or None,
                    crop_boxes=boxes, crop_seed=crop_seed, pipeline_version=__version__, config_hash=chash,
                ))
