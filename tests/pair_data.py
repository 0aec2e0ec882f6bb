"""Small PAIR_SCHEMA inputs for the write/export tests (no model, no build folder).

Two sources, every method, a duplicated pair id, one text with a literal
``<image>`` in it, PNG and JPEG images, a two-image prompt.  The rows are
written the way the pair stages write them: ``<stage>/data/part-*.parquet``.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from helpers import encode
from pipeline.core.seeds import derive_seed, stable_hash
from schemas import PAIR_SCHEMA
from schemas.arrow import from_rows
from schemas.records import pair_row, provenance

SOURCES = ("src_a", "src_b")
PROMPTS_PER_SOURCE = 12
TEXT_METHODS = ("correctness", "format", "dropout_ntp")


def image(seed: int, fmt: str = "PNG", size: int = 24) -> dict:
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)
    im = Image.new("RGB", (size, size), colour)
    im.putpixel((seed % size, (seed // size) % size), (255 - colour[0], 0, 0))
    return {"bytes": encode(im, fmt), "path": None}


def make_pair(source: str, i: int, method: str) -> dict:
    prompt_id = stable_hash(source, i)
    n_images = 2 if (source, i) == ("src_b", 5) else 1
    images = [image(derive_seed(source, i, k) % 10_000, "JPEG" if i % 2 else "PNG") for k in range(n_images)]
    question = f"[{source}] how many circles are in picture {i}?"
    chosen = f"I count the circles one by one in picture {i}.\nFinal answer: {i % 5}"
    rejected = f"There are a lot.\nFinal answer: {i % 5 + 1}" if method != "format" else "No idea, sorry"
    if method == "dropout_ntp":
        chosen = f"The picture {i} shows a few circles on a plain background, drawn in colour."
        rejected = f"The picture {i} shows a few circles on a beach with palm trees and a boat."
    if (source, i, method) == ("src_a", 3, "correctness"):
        chosen = "The <image> shows three circles.\nFinal answer: 3"  # a literal tag inside a text
    rejected_images = []
    if method == "image_crop":
        rejected = chosen
        rejected_images = [image(derive_seed(source, i, k, "crop") % 10_000) for k in range(n_images)]
    return pair_row(
        pair_id=stable_hash(prompt_id, method, chosen, rejected), method=method, source=source,
        question=question, user_text=question + "\nThink step by step.", images=images,
        chosen=chosen, rejected=rejected, rejected_images=rejected_images,
        prov=provenance(prompt_id=prompt_id, row_key=f"{source}-{i}", model="tiny",
                        chosen_tokens=len(chosen.split()), rejected_tokens=len(rejected.split()),
                        crop_boxes=[[0, 0, 4, 4]] * n_images if method == "image_crop" else None),
    )


def pairs(prompts, every: dict[str, tuple[int, int]]) -> list[dict]:
    """For each (source, i) of ``prompts``: its correctness pair, then a pair of each method of
    ``every`` (method -> (m, r)) whose i % m == r."""
    return [make_pair(source, i, method) for source, i in prompts for method in ("correctness", *every)
            if method == "correctness" or i % every[method][0] == every[method][1]]


def all_pairs() -> list[dict]:
    return pairs([(s, i) for s in SOURCES for i in range(PROMPTS_PER_SOURCE)],
                 {"format": (3, 0), "dropout_ntp": (2, 0), "image_crop": (4, 1)})


def write_inputs(base: Path) -> tuple[list[str], list[dict]]:
    """Stage folders holding all pairs (sorted by source, as stages write them) plus one duplicate.

    Returns (input dirs, the unique rows).
    """
    rows = all_pairs()
    dirs = []
    by_stage = {
        "correctness": [r for r in rows if r["method"] in ("correctness", "format")],
        "dropout_ntp": [r for r in rows if r["method"] == "dropout_ntp"],
        "image_crop": [r for r in rows if r["method"] == "image_crop"],
    }
    for stage, stage_rows in by_stage.items():
        data = base / stage / "data"
        data.mkdir(parents=True, exist_ok=True)
        half = len(stage_rows) // 2
        for k, part in enumerate((stage_rows[:half], stage_rows[half:])):
            pq.write_table(from_rows(part, PAIR_SCHEMA), data / f"part-{k:05d}.parquet")
        dirs.append(str(base / stage))
    # the same pair twice: once more in a third file of the correctness stage
    pq.write_table(from_rows([by_stage["correctness"][0]], PAIR_SCHEMA),
                   base / "correctness" / "data" / "part-00002.parquet")
    return dirs, rows
