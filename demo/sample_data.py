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
"""
from __future__ import annotations

import io
import json
import math
import random
import shutil
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

# -- vocabulary ---------------------------------------------------------------
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "orange": (245, 140, 20),
    "purple": (140, 60, 180),
    "black": (20, 20, 20),
    "pink": (245, 120, 180),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
COUNT_SHAPES = ("circle", "square", "triangle")
WORDS = (
    "cat", "dog", "sun", "tree", "book", "fish", "bird", "milk", "rain", "star",
    "moon", "ship", "lamp", "door", "cake", "frog", "bell", "king", "road", "wind",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
BAR_LABELS = ("A", "B", "C", "D")
BAR_COLOURS = ("blue", "orange", "green", "purple")
#: (quantity, unit, how the question names the biggest value)
CHART_UNITS = (
    ("heights", "cm", "How tall is the tallest bar?"),
    ("weights", "kg", "How heavy is the heaviest bar?"),
    ("lengths", "m", "How long is the longest bar?"),
    ("shares", "%", "What is the largest value?"),
)
SUFFIX_WORD = "Answer the question using a single word or phrase."
SUFFIX_MC = "Answer with the option's letter from the given choices directly."
SUFFIX_YN = "Please answer yes or no."
SUFFIX_NUM = "Answer with a number."
LETTERS = "ABCD"

ANSWER_TYPES = ("multiple_choice", "integer", "yes_no", "word", "number")
OPEN_QUESTIONS = (
    "Describe the image.",
    "Describe this image.",
    "Describe the image in a few sentences.",
    "What is shown in this picture? Describe it.",
    "Give a short description of the image.",
)
BACKGROUND = (255, 255, 255)


# -- drawing ------------------------------------------------------------------
def _a(word: str) -> str:
    """'a red' / 'an orange'."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else noun + "s"


def _count_phrase(n: int, colour: str, shape: str) -> str:
    return f"{NUMBER_WORDS[n]} {colour} {_plural(n, shape)}"


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                colour: str) -> None:
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)],
                  fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)], fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        d.polygon(pts, fill=fill)
    else:  # pragma: no cover - programming error
        raise ValueError(shape)


def _place(rng: random.Random, size: int, r: int, n: int) -> list[tuple[int, int]]:
    """n non-overlapping centres for objects of radius r (rejection sampling)."""
    for _attempt in range(200):
        centres: list[tuple[int, int]] = []
        for _ in range(n):
            for _try in range(200):
                c = (rng.randint(r + 2, size - r - 3), rng.randint(r + 2, size - r - 3))
                if all((c[0] - o[0]) ** 2 + (c[1] - o[1]) ** 2 >= (2 * r + 4) ** 2 for o in centres):
                    centres.append(c)
                    break
            else:
                break
        if len(centres) == n:
            return centres
    raise RuntimeError(f"cannot place {n} objects of radius {r} in {size}px")


def _canvas(size: int, colour: tuple[int, int, int] = BACKGROUND) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (size, size), colour)
    return img, ImageDraw.Draw(img)


def _scene(rng: random.Random, objects: list[tuple[str, str]], size: int) -> Image.Image:
    """objects: (shape, colour) pairs drawn at random non-overlapping places."""
    img, d = _canvas(size)
    r = max(8, min(18, size // (2 + len(objects))))
    for (shape, colour), (cx, cy) in zip(objects, _place(rng, size, r, len(objects))):
        _draw_shape(d, shape, cx, cy, r, colour)
    return img


def _single_shape(shape: str, colour: str, size: int) -> Image.Image:
    img, d = _canvas(size)
    _draw_shape(d, shape, size / 2, size / 2, size * 0.36, colour)
    return img


def _word_image(word: str, colour: str, size: int) -> Image.Image:
    img, d = _canvas(size)
    font = ImageFont.load_default(size=max(14, size // 4))
    left, top, right, bottom = d.textbbox((0, 0), word, font=font)
    x = (size - (right - left)) / 2 - left
    y = (size - (bottom - top)) / 2 - top
    d.text((x, y), word, fill=COLOURS[colour], font=font)
    return img


def _bar_chart(values: list[int], unit: str, size: int) -> Image.Image:
    img, d = _canvas(size)
    font = ImageFont.load_default(size=10)
    n = len(values)
    x0, y0, x1, y1 = 14, 14, size - 6, size - 16  # plot area
    d.line([(x0, y0), (x0, y1), (x1, y1)], fill=(0, 0, 0), width=1)
    slot = (x1 - x0) / n
    vmax = 100
    for i, v in enumerate(values):
        h = (y1 - y0) * v / vmax
        bx0 = x0 + slot * i + slot * 0.2
        bx1 = x0 + slot * (i + 1) - slot * 0.2
        d.rectangle([bx0, y1 - h, bx1, y1], fill=COLOURS[BAR_COLOURS[i]])
        d.text(((bx0 + bx1) / 2, y1 - h - 2), str(v), fill=(0, 0, 0), font=font, anchor="mb")
        d.text(((bx0 + bx1) / 2, y1 + 2), BAR_LABELS[i], fill=(0, 0, 0), font=font, anchor="mt")
    d.text((2, 2), unit, fill=(0, 0, 0), font=font)
    return img


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


# -- question builders -----------------------------------------------------------
# Each returns (image, row-without-id/image); the caller adds id and image path.
Row = dict


def _size(rng: random.Random) -> int:
    return rng.choice((96, 112, 128, 144, 160))


def _maybe_suffix(rng: random.Random, question: str, suffix: str) -> str:
    return f"{question} {suffix}" if rng.random() < 0.35 else question


def _mc(rng: random.Random) -> tuple[Image.Image, Row]:
    kind = rng.choice(("shape", "colour", "count"))
    if kind == "shape":
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        img = _single_shape(shape, colour, _size(rng))
        options = [shape] + rng.sample([s for s in SHAPES if s != shape], 3)
        question = rng.choice(("What shape is shown?", "Which shape is in the image?"))
        facts = f"The image shows {_a(colour)} {shape}."
    elif kind == "colour":
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        img = _single_shape(shape, colour, _size(rng))
        options = [colour] + rng.sample([c for c in COLOURS if c != colour], 3)
        question = f"What colour is the {shape}?"
        facts = f"The image shows {_a(colour)} {shape}."
    else:
        shape, colour, n = rng.choice(COUNT_SHAPES), rng.choice(list(COLOURS)), rng.randint(1, 6)
        img = _scene(rng, [(shape, colour)] * n, _size(rng))
        others = rng.sample([k for k in range(1, 8) if k != n], 3)
        options = [str(n)] + [str(k) for k in others]
        question = f"How many {shape}s are in the image?"
        facts = f"The image shows {_count_phrase(n, colour, shape)}."
    correct = options[0]
    rng.shuffle(options)
    letter = LETTERS[options.index(correct)]
    return img, {
        "question": _maybe_suffix(rng, question, SUFFIX_MC),
        "answer": letter,
        "answer_type": "multiple_choice",
        "choices": options,
        "facts": facts,
    }


def _integer(rng: random.Random) -> tuple[Image.Image, Row]:
    shape, colour, n = rng.choice(COUNT_SHAPES), rng.choice(list(COLOURS)), rng.randint(1, 6)
    objects = [(shape, colour)] * n
    facts = f"The image shows {_count_phrase(n, colour, shape)}"
    if rng.random() < 0.5:  # distractors of another shape
        other = rng.choice([s for s in COUNT_SHAPES if s != shape])
        ocolour = rng.choice(list(COLOURS))
        m = rng.randint(1, 3)
        objects = objects + [(other, ocolour)] * m
        rng.shuffle(objects)
        facts += f" and {_count_phrase(m, ocolour, other)}"
    img = _scene(rng, objects, _size(rng))
    question = rng.choice((f"How many {shape}s are there?", f"Count the {shape}s in the image."))
    return img, {
        "question": _maybe_suffix(rng, question, SUFFIX_NUM),
        "answer": str(n),
        "answer_type": "integer",
        "facts": facts + ".",
    }


def _yes_no(rng: random.Random, want_yes: bool) -> tuple[Image.Image, Row]:
    target = (rng.choice(COUNT_SHAPES), rng.choice(list(COLOURS)))
    pool = [(s, c) for s in COUNT_SHAPES for c in COLOURS if (s, c) != target]
    k = rng.randint(1, 3)
    objects = rng.sample(pool, k)
    if want_yes:
        objects[rng.randrange(k)] = target
    img = _scene(rng, objects, _size(rng))
    shape, colour = target
    parts = [f"{_a(c)} {s}" for s, c in objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return img, {
        "question": _maybe_suffix(rng, f"Is there {_a(colour)} {shape}?", SUFFIX_YN),
        "answer": "yes" if want_yes else "no",
        "answer_type": "yes_no",
        "facts": f"The image shows {listed}.",
    }


def _word(rng: random.Random) -> tuple[Image.Image, Row]:
    kind = rng.choice(("colour", "text", "plain"))
    size = _size(rng)
    if kind == "colour":
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        img = _single_shape(shape, colour, size)
        question, answer = f"What colour is the {shape}?", colour
        facts = f"The image shows {_a(colour)} {shape}."
    elif kind == "text":
        word, colour = rng.choice(WORDS), rng.choice(["black", "blue", "red", "green", "purple"])
        img = _word_image(word, colour, size)
        question, answer = rng.choice(("What word is written?", "What word is written in the image?")), word
        facts = f"The word {word} is written in {colour} letters."
    else:
        colour = rng.choice(list(COLOURS))
        img, _ = _canvas(size, COLOURS[colour])
        question, answer = "What colour is this image?", colour
        facts = f"The whole image is a single {colour} colour."
    return img, {
        "question": _maybe_suffix(rng, question, SUFFIX_WORD),
        "answer": answer,
        "answer_type": "word",
        "facts": facts,
    }


def _number(rng: random.Random) -> tuple[Image.Image, Row]:
    quantity, unit, ask_max = rng.choice(CHART_UNITS)
    n = rng.randint(3, 4)
    values = rng.sample(range(10, 100, 5), n)
    img = _bar_chart(values, unit, _size(rng))
    sep = "" if unit == "%" else " "
    if rng.random() < 0.5:
        question = f"The bar chart shows {quantity} in {unit}. {ask_max}"
        value = max(values)
        facts = f"The tallest bar is bar {BAR_LABELS[values.index(value)]} with {value}{sep}{unit}."
    else:
        i = rng.randrange(n)
        question = f"The bar chart shows {quantity} in {unit}. What is the value of bar {BAR_LABELS[i]}?"
        value = values[i]
        facts = f"Bar {BAR_LABELS[i]} reaches {value}{sep}{unit}."
    return img, {
        "question": _maybe_suffix(rng, question, SUFFIX_WORD),
        "answer": f"{value}{sep}{unit}",
        "answer_type": "number",
        "facts": facts,
    }


def _open(rng: random.Random) -> tuple[Image.Image, str]:
    """An image and a 2-3 sentence caption of what is really drawn."""
    kind = rng.choice(("scene", "single", "word", "chart", "plain"))
    size = _size(rng)
    # the second half of every caption carries image details, so a continuation
    # of its first half without the image (DropoutNTP) has to guess them
    if kind == "scene":
        k = rng.randint(2, 4)
        objects = [(rng.choice(COUNT_SHAPES), rng.choice(list(COLOURS))) for _ in range(k)]
        img = _scene(rng, objects, size)
        parts = [f"{_a(c)} {s}" for s, c in objects]
        listed = ", ".join(parts[:-1]) + " and " + parts[-1]
        facts = (f"There are {NUMBER_WORDS[k]} shapes on a white background. "
                 f"They are {listed}, and they do not overlap.")
    elif kind == "single":
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        img = _single_shape(shape, colour, size)
        facts = (f"The image shows one large shape on a white background. "
                 f"It is {_a(colour)} {shape} in the centre.")
    elif kind == "word":
        word, colour = rng.choice(WORDS), rng.choice(["black", "blue", "red", "green", "purple"])
        img = _word_image(word, colour, size)
        facts = (f"The image shows a single word written on a white background. "
                 f"The word is {word} and the letters are {colour}.")
    elif kind == "chart":
        quantity, unit, _ = rng.choice(CHART_UNITS)
        n = rng.randint(3, 4)
        values = rng.sample(range(10, 100, 5), n)
        img = _bar_chart(values, unit, size)
        top = BAR_LABELS[values.index(max(values))]
        facts = (f"The image is a bar chart of {quantity} with {NUMBER_WORDS[n]} bars. "
                 f"The values are given in {unit} and bar {top} is the tallest at {max(values)}.")
    else:
        colour = rng.choice(list(COLOURS))
        img, _ = _canvas(size, COLOURS[colour])
        facts = (f"The image has no shapes and no text in it. "
                 f"The whole image is filled with a single {colour} colour.")
    return img, facts


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
        "multiple_choice": lambda i: _mc(rng),
        "integer": lambda i: _integer(rng),
        "yes_no": lambda i: _yes_no(rng, want_yes=(i % 2 == 0)),
        "word": lambda i: _word(rng),
        "number": lambda i: _number(rng),
    }
    short = {"multiple_choice": "mc", "integer": "int", "yes_no": "yn", "word": "word", "number": "num"}

    gt_rows: list[dict] = []
    # interleave the types so any prefix of the file is balanced
    for i in range(per_type):
        for atype in ANSWER_TYPES:
            img, row = builders[atype](i)
            rid = f"{short[atype]}-{i:04d}"
            rel = f"images/{rid}.png"
            (out_dir / rel).write_bytes(_png_bytes(img))
            gt_rows.append({"id": rid, "image": rel, **row})

    open_rows: list[dict] = []
    for i in range(n_open):
        img, facts = _open(rng)
        rid = f"open-{i:04d}"
        rel = f"images/{rid}.png"
        (out_dir / rel).write_bytes(_png_bytes(img))
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
