"""Deterministic sample data for machines without a dataset hub.

``python -m pipeline sample-data --out data/sample`` draws small images with
PIL (coloured shapes, object counts, a rendered word, bar charts, single-colour
images) and writes

* ``gt.jsonl``   -- questions WITH ground truth, in equal parts of the five
  answer types ``multiple_choice``, ``integer``, ``yes_no``, ``word``, ``number``;
* ``open.jsonl`` -- open prompts WITHOUT ground truth ("Describe the image.")
  with a ``facts`` caption of what is really drawn;
* ``images/*.png`` and a short ``README.md``.

Every row also carries ``facts``: one or more sentences saying what the image
shows (ground for judges, and the reasoning sentence the tiny test model is
taught to write, see :mod:`demo.tiny_model`).

The output is byte-for-byte reproducible: one seeded ``random.Random``, no
timestamps (PIL writes none into PNG), only PIL's built-in font, and files
written in a fixed order with fixed serialisation.

This module writes the set; the pictures are drawn by ``demo.drawing`` and each
answer type's question by ``demo.sample_questions``.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Callable

from PIL import Image

from demo.drawing import png_bytes
from demo.sample_questions import (
    Row, draw_integer, draw_mc, draw_number, draw_open, draw_word, draw_yes_no)

ANSWER_TYPES = ("multiple_choice", "integer", "yes_no", "word", "number")
OPEN_QUESTIONS = (
    "Describe the image.",
    "Describe this image.",
    "Describe the image in a few sentences.",
    "What is shown in this picture? Describe it.",
    "Give a short description of the image.",
)


# -- build ----------------------------------------------------------------------
README = """\
# Sample data (generated)

Built by `python -m pipeline sample-data --out data/sample` (seed {seed});
deterministic: the same files byte for byte on every run. Do not edit by hand.

- `images/*.png`: small PIL drawings (shapes, object counts, a word, bar
  charts, single-colour images), {images} files.
- `gt.jsonl`: {gt} questions with ground truth (`id`, `image`, `question`,
  `answer`, `answer_type`, `choices` for multiple choice, `facts`), answer types:
  {by_type}. Some questions end with a short-answer suffix that the pipeline strips.
- `open.jsonl`: {open} open prompts without ground truth (`id`, `image`,
  `question`, `facts` = a caption of what is really drawn).
"""


def build_sample_data(out_dir: Path, seed: int = 0, per_type: int = 46, n_open: int = 64) -> dict:
    """Write the sample set into ``out_dir`` and return counts.

    ``out_dir/images`` is replaced; ``gt.jsonl``, ``open.jsonl`` and
    ``README.md`` are overwritten.
    """
    from pipeline.files.ownership import SAMPLE_ENTRIES, Folder  # the demo stays importable on its own

    out_dir = Path(out_dir)
    # a folder of someone else's is refused, and nothing of theirs is replaced (pipeline.files.ownership)
    Folder.claim(str(out_dir), "sample", "--out").reserve(*SAMPLE_ENTRIES)
    img_dir = out_dir / "images"
    if img_dir.exists():
        shutil.rmtree(img_dir)
    img_dir.mkdir(parents=True)
    rng = random.Random(seed)

    builders: dict[str, Callable[[int], tuple[Image.Image, Row]]] = {
        "multiple_choice": lambda i: draw_mc(rng),
        "integer": lambda i: draw_integer(rng),
        "yes_no": lambda i: draw_yes_no(rng, want_yes=(i % 2 == 0)),
        "word": lambda i: draw_word(rng),
        "number": lambda i: draw_number(rng),
    }
    short = {"multiple_choice": "mc", "integer": "int", "yes_no": "yn", "word": "word", "number": "num"}

    gt_rows: list[dict] = []
    # interleave the types so any prefix of the file is balanced
    for i in range(per_type):
        for atype in ANSWER_TYPES:
            img, row = builders[atype](i)
            rid = f"{short[atype]}-{i:04d}"
            rel = f"images/{rid}.png"
            (out_dir / rel).write_bytes(png_bytes(img))
            gt_rows.append({"id": rid, "image": rel, **row})

    open_rows: list[dict] = []
    for i in range(n_open):
        img, facts = draw_open(rng)
        rid = f"open-{i:04d}"
        rel = f"images/{rid}.png"
        (out_dir / rel).write_bytes(png_bytes(img))
        open_rows.append({"id": rid, "image": rel, "question": OPEN_QUESTIONS[i % len(OPEN_QUESTIONS)],
                          "facts": facts})

    def dump(rows: list[dict], name: str) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in rows)
        (out_dir / name).write_text(text, encoding="utf-8")

    dump(gt_rows, "gt.jsonl")
    dump(open_rows, "open.jsonl")
    by_type = {t: sum(r["answer_type"] == t for r in gt_rows) for t in ANSWER_TYPES}
    counts = {"gt": len(gt_rows), "open": len(open_rows), "images": len(gt_rows) + len(open_rows),
              "by_type": by_type}
    (out_dir / "README.md").write_text(README.format(
        seed=seed, images=counts["images"], gt=counts["gt"], open=counts["open"],
        by_type=", ".join(f"{k} {v}" for k, v in by_type.items())), encoding="utf-8")
    return counts
