"""One sample question per answer type: its picture, its question, its answer and its facts.

Each ``draw_*`` takes the one seeded ``random.Random`` of the build and returns
(image, row without id and image path); the answer is what the picture really shows,
and ``facts`` says it in a sentence (the reasoning the tiny model is taught,
``demo.tiny_training``).  ``draw_open`` draws an open prompt's picture and caption.  The
order of the random draws is the data: ``demo.sample_data`` calls them in a fixed order.
"""
from __future__ import annotations

import random

from PIL import Image

from demo.drawing import BAR_LABELS, COLOURS, bar_chart, canvas, scene, single_shape, word_image

SHAPES = ("circle", "square", "triangle", "diamond", "star")
COUNT_SHAPES = ("circle", "square", "triangle")
WORDS = (
    "cat", "dog", "sun", "tree", "book", "fish", "bird", "milk", "rain", "star",
    "moon", "ship", "lamp", "door", "cake", "frog", "bell", "king", "road", "wind",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
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


def _a(word: str) -> str:
    """'a red' / 'an orange'."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else noun + "s"


def _count_phrase(n: int, colour: str, shape: str) -> str:
    return f"{NUMBER_WORDS[n]} {colour} {_plural(n, shape)}"


# -- question builders -----------------------------------------------------------
# Each returns (image, row-without-id/image); the caller adds id and image path.
Row = dict


def _size(rng: random.Random) -> int:
    return rng.choice((96, 112, 128, 144, 160))


def _maybe_suffix(rng: random.Random, question: str, suffix: str) -> str:
    return f"{question} {suffix}" if rng.random() < 0.35 else question


def draw_mc(rng: random.Random) -> tuple[Image.Image, Row]:
    kind = rng.choice(("shape", "colour", "count"))
    if kind == "shape":
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        img = single_shape(shape, colour, _size(rng))
        options = [shape] + rng.sample([s for s in SHAPES if s != shape], 3)
        question = rng.choice(("What shape is shown?", "Which shape is in the image?"))
        facts = f"The image shows {_a(colour)} {shape}."
    elif kind == "colour":
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        img = single_shape(shape, colour, _size(rng))
        options = [colour] + rng.sample([c for c in COLOURS if c != colour], 3)
        question = f"What colour is the {shape}?"
        facts = f"The image shows {_a(colour)} {shape}."
    else:
        shape, colour, n = rng.choice(COUNT_SHAPES), rng.choice(list(COLOURS)), rng.randint(1, 6)
        img = scene(rng, [(shape, colour)] * n, _size(rng))
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


def draw_integer(rng: random.Random) -> tuple[Image.Image, Row]:
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
    img = scene(rng, objects, _size(rng))
    question = rng.choice((f"How many {shape}s are there?", f"Count the {shape}s in the image."))
    return img, {
        "question": _maybe_suffix(rng, question, SUFFIX_NUM),
        "answer": str(n),
        "answer_type": "integer",
        "facts": facts + ".",
    }


def draw_yes_no(rng: random.Random, want_yes: bool) -> tuple[Image.Image, Row]:
    target = (rng.choice(COUNT_SHAPES), rng.choice(list(COLOURS)))
    pool = [(s, c) for s in COUNT_SHAPES for c in COLOURS if (s, c) != target]
    k = rng.randint(1, 3)
    objects = rng.sample(pool, k)
    if want_yes:
        objects[rng.randrange(k)] = target
    img = scene(rng, objects, _size(rng))
    shape, colour = target
    parts = [f"{_a(c)} {s}" for s, c in objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return img, {
        "question": _maybe_suffix(rng, f"Is there {_a(colour)} {shape}?", SUFFIX_YN),
        "answer": "yes" if want_yes else "no",
        "answer_type": "yes_no",
        "facts": f"The image shows {listed}.",
    }


def draw_word(rng: random.Random) -> tuple[Image.Image, Row]:
    kind = rng.choice(("colour", "text", "plain"))
    size = _size(rng)
    if kind == "colour":
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        img = single_shape(shape, colour, size)
        question, answer = f"What colour is the {shape}?", colour
        facts = f"The image shows {_a(colour)} {shape}."
    elif kind == "text":
        word, colour = rng.choice(WORDS), rng.choice(["black", "blue", "red", "green", "purple"])
        img = word_image(word, colour, size)
        question, answer = rng.choice(("What word is written?", "What word is written in the image?")), word
        facts = f"The word {word} is written in {colour} letters."
    else:
        colour = rng.choice(list(COLOURS))
        img, _ = canvas(size, COLOURS[colour])
        question, answer = "What colour is this image?", colour
        facts = f"The whole image is a single {colour} colour."
    return img, {
        "question": _maybe_suffix(rng, question, SUFFIX_WORD),
        "answer": answer,
        "answer_type": "word",
        "facts": facts,
    }


def draw_number(rng: random.Random) -> tuple[Image.Image, Row]:
    quantity, unit, ask_max = rng.choice(CHART_UNITS)
    n = rng.randint(3, 4)
    values = rng.sample(range(10, 100, 5), n)
    img = bar_chart(values, unit, _size(rng))
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


def draw_open(rng: random.Random) -> tuple[Image.Image, str]:
    """An image and a 2-3 sentence caption of what is really drawn."""
    kind = rng.choice(("scene", "single", "word", "chart", "plain"))
    size = _size(rng)
    # the second half of every caption carries image details, so a continuation
    # of its first half without the image (DropoutNTP) has to guess them
    if kind == "scene":
        k = rng.randint(2, 4)
        objects = [(rng.choice(COUNT_SHAPES), rng.choice(list(COLOURS))) for _ in range(k)]
        img = scene(rng, objects, size)
        parts = [f"{_a(c)} {s}" for s, c in objects]
        listed = ", ".join(parts[:-1]) + " and " + parts[-1]
        facts = (f"There are {NUMBER_WORDS[k]} shapes on a white background. "
                 f"They are {listed}, and they do not overlap.")
    elif kind == "single":
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        img = single_shape(shape, colour, size)
        facts = (f"The image shows one large shape on a white background. "
                 f"It is {_a(colour)} {shape} in the centre.")
    elif kind == "word":
        word, colour = rng.choice(WORDS), rng.choice(["black", "blue", "red", "green", "purple"])
        img = word_image(word, colour, size)
        facts = (f"The image shows a single word written on a white background. "
                 f"The word is {word} and the letters are {colour}.")
    elif kind == "chart":
        quantity, unit, _ = rng.choice(CHART_UNITS)
        n = rng.randint(3, 4)
        values = rng.sample(range(10, 100, 5), n)
        img = bar_chart(values, unit, size)
        top = BAR_LABELS[values.index(max(values))]
        facts = (f"The image is a bar chart of {quantity} with {NUMBER_WORDS[n]} bars. "
                 f"The values are given in {unit} and bar {top} is the tallest at {max(values)}.")
    else:
        colour = rng.choice(list(COLOURS))
        img, _ = canvas(size, COLOURS[colour])
        facts = (f"The image has no shapes and no text in it. "
                 f"The whole image is filled with a single {colour} colour.")
    return img, facts
