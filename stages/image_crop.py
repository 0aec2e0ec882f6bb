"""image_crop: mDPO conditional image preference pairs (docs/architecture.md, "The methods").

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
from typing import Iterable, Iterator, Literal

from pydantic import Field, field_validator

from methods import scoring
from methods.crop import corrupt_image
from methods.crop_signal import first_distinct
from pipeline import __version__
from pipeline.config.settings import Section, ratio_range
from pipeline.core.seeds import derive_seed, stable_hash
from pipeline.core.stage import PairMethod, RowStage, StageContext, prefixed
from pipeline.config.templates import extraction_styles, render_user_text
from schemas import PAIR_SCHEMA, RESPONSE_SCHEMA
from schemas.records import pair_row, response_provenance


class ImageCropConfig(Section):
    fraction: float = Field(0.5, ge=0, le=1, description=(
        "Fraction of prompts (chosen by a seeded hash of prompt_id) that get a crop pair"))
    area: tuple[float, float] = Field((0.01, 0.2), description=(
        "The crop keeps between these fractions of the image's area [low, high] (mDPO: 1-20%)"))
    aspect: tuple[float, float] = Field((3 / 4, 4 / 3), description=(
        "The crop's aspect ratio (width / height) is drawn between these [low, high]"))
    text: Literal["same", "pair"] = Field("same", description=(
        '"same": chosen = rejected = one response, correct where there is ground truth (only the image differs); '
        '"pair": a right response as chosen and a wrong one as rejected where there is one'))
    jpeg_quality: int = Field(95, ge=1, le=100, description=(
        "JPEG quality of a re-encoded JPEG crop (other formats become PNG, lossless)"))
    min_difference: float = Field(16.0, ge=0, le=255, description=(
        "Skip a crop pair whose rejected image differs from the original by less than this (largest 32x32-thumbnail "
        "difference in grey levels, methods/crop_signal.py); 0 = off"))

    @field_validator("area")
    @classmethod
    def _area(cls, v):
        return ratio_range(v, "area")

    @field_validator("aspect")
    @classmethod
    def _aspect(cls, v):
        return ratio_range(v, "aspect", upper=None)


#: seeded crops tried per image before a row counts as near-identical
CROP_TRIES = 3


def selected(seed: int, prompt_id: str, fraction: float) -> bool:
    """A seeded, id-based draw: the same prompts are chosen on every run."""
    return derive_seed(seed, prompt_id, "image_crop.select") < fraction * 0x80000000


class ImageCropStage(RowStage):
    name = "image_crop"
    #: same text, a cropped image: only trainers that read rejected_images learn from it
    pair_methods = (PairMethod("image_crop", image_contrast=True),)
    after = ("generate",)
    Config = ImageCropConfig
    #: which responses are right decides the texts of ground-truth pairs
    uses = ("run.seed", "sources", "templates", *(f"scoring.{k}" for k in scoring.SETTINGS))
    input_schema = RESPONSE_SCHEMA
    output_schema = PAIR_SCHEMA

    @classmethod
    def summarize(cls, i: dict) -> dict:
        if not i:
            return {}
        out = {"pairs": i.get("pairs.image_crop", 0), "dropped": prefixed(i, "dropped."),
               "crops_retried": i.get("crops.retried", 0)}
        if i.get("skipped.text_only"):
            out["skipped_text_only"] = i["skipped.text_only"]
        return out

    def _texts(self, row: dict) -> tuple[dict, dict, float | None] | None:
        """(chosen, rejected, the prompt's pass rate): a good response twice, or a right/wrong
        pair in "pair" mode."""
        responses = row["responses"]
        if not responses:
            return None
        if not row["answer"]:
            ok = [r for r in responses if r["text"].strip() and r["finish_reason"] != "length"]
            return (ok[0], ok[0], None) if ok else None
        scored = scoring.score_responses(row, self.config.scoring, self.config.source(row["source"]),
                                         extraction_styles(self.config))
        right = [responses[i] for i, s in enumerate(scored) if s.usable_chosen]
        wrong = [responses[i] for i, s in enumerate(scored) if not s.correct and not s.states_truth]
        if not right:
            return None  # never teach a wrong answer as chosen
        rate = scoring.pass_rate(scored)
        if self.config.image_crop.text == "pair" and wrong:
            return right[0], wrong[0], rate
        return right[0], right[0], rate

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        cfg, seed = self.config.image_crop, self.config.run.seed
        chash = self.config.config_hash()
        for row in rows:
            if not row["images"]:  # text-only: no image to corrupt
                ctx.stats.inc("skipped.text_only")
                continue
            if not selected(seed, row["prompt_id"], cfg.fraction):
                continue
            texts = self._texts(row)
            if texts is None:
                ctx.stats.inc("dropped.no_usable_response")
                continue
            chosen, rejected, rate = texts
            crop_seed = derive_seed(seed, row["prompt_id"], "image_crop")
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
                pair_id=stable_hash(row["prompt_id"], "image_crop", chosen["text"], rejected["text"], boxes),
                method="image_crop", source=row["source"], question=row["question"], user_text=user_text,
                images=row["images"], rejected_images=corrupted, chosen=chosen["text"],
                rejected=rejected["text"],
                prov=response_provenance(row, chosen, rejected, crop_boxes=boxes, crop_seed=crop_seed, pass_rate=rate,
                                         pipeline_version=__version__, config_hash=chash),
            )
