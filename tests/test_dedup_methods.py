"""Near-duplicate keys (methods.image_hash, methods.question_keys, methods.near_duplicates),
table-driven: real perturbations of the sample images made here, real negatives drawn from
the sample's own templates, and the sample's generic questions."""
from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from helpers import ROOT, encode
from methods import image_hash as ih
from methods import question_keys as qk
from methods.near_duplicates import Match, candidate_pairs, group_columns, representatives

SAMPLE = ROOT / "data" / "sample"
K, COLOUR = 10, 50.0
SUFFIXES = ("Answer the question using a single word or phrase.", "Answer with a number.")


def sample_rows() -> list[dict]:
    return [json.loads(line) for name in ("gt.jsonl", "open.jsonl")
            for line in (SAMPLE / name).read_text().splitlines()]


def crop(im: Image.Image, f: float) -> Image.Image:
    w, h = im.size
    dx, dy = round(w * f), round(h * f)
    return im.crop((dx, dy, w - dx, h - dy))


#: perturbation -> (image -> bytes); crop 5% of the area keeps 97.5% of each side
PERTURBATIONS = {
    "jpeg_q50": lambda im: encode(im, "JPEG", quality=50),
    "resize_50": lambda im: encode(im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC)),
    "crop_5pc_area": lambda im: encode(crop(im, (1 - 0.95 ** 0.5) / 2)),
    "bright_+10": lambda im: encode(ImageEnhance.Brightness(im).enhance(1.1)),
    "bright_-10": lambda im: encode(ImageEnhance.Brightness(im).enhance(0.9)),
}


@pytest.fixture(scope="module")
def sample_images() -> list[bytes]:
    return sorted({(SAMPLE / r["image"]).read_bytes() for r in sample_rows()})


@pytest.mark.parametrize("name,want", [  # imagehash.phash(Image.open(path)), computed with ImageHash 4.3.2
    ("mc-0000", "e6839e2c19c7e31a"), ("int-0000", "ae1be57cd8e4181a"), ("yn-0000", "e969969669699692"),
    ("word-0000", "8000000000000000"), ("num-0000", "dec0a12d9d1fe14a"), ("open-0000", "e6c69a39c1073ec6"),
])
def test_phash_is_imagehash_bit_for_bit(name, want):
    h, _ = ih.image_keys([(SAMPLE / "images" / f"{name}.png").read_bytes()])
    assert f"{int(h[0]):016x}" == want


@pytest.mark.parametrize("perturbation", sorted(PERTURBATIONS))
def test_perturbed_sample_images_match(sample_images, perturbation):
    fn = PERTURBATIONS[perturbation]
    h0, t0 = ih.image_keys(sample_images)
    h1, t1 = ih.image_keys([fn(Image.open(io.BytesIO(b)).convert("RGB")) for b in sample_images])
    hits = [ih.images_match([a], [ta], [b], [tb], K, COLOUR)[0] for a, ta, b, tb in zip(h0, t0, h1, t1)]
    assert np.mean(hits) >= 0.99, f"{perturbation}: recall {np.mean(hits):.3f}"


def _template_negatives() -> dict[str, list[Image.Image]]:
    """Different images from one template of the sample generator (demo.drawing)."""
    from demo import drawing as d

    rng = random.Random(7)
    charts = [d.bar_chart([rng.randint(5, 95) for _ in range(4)], "kg", 128) for _ in range(6)]
    scenes = [d.scene(random.Random(s), [("circle", "red")] * 3 + [("square", "blue")] * 2, 128) for s in range(6)]
    colours = [d.single_shape("circle", c, 128) for c in ("red", "blue", "green", "orange", "purple")]
    plain = [Image.new("RGB", (128, 128), d.COLOURS[c]) for c in ("red", "blue", "green", "yellow")]
    return {"bar_charts": charts, "counting_scenes": scenes, "one_shape_other_colour": colours,
            "plain_other_colour": plain}


@pytest.mark.parametrize("template", sorted(_template_negatives()))
def test_different_images_of_one_template_do_not_match(template):
    h, t = ih.image_keys([encode(im) for im in _template_negatives()[template]])
    for i in range(len(h)):
        for j in range(i + 1, len(h)):
            ok, bits, colour = ih.images_match([h[i]], [t[i]], [h[j]], [t[j]], K, COLOUR)
            assert not ok, f"{template}: images {i} and {j} matched ({bits} bits, colour {colour})"


def test_distinct_sample_images_rarely_match(sample_images):
    """At most 0.1% of the pairs of distinct sample images match on images alone (the question
    and the answer must match too before prompts merge)."""
    h, t = ih.image_keys(sample_images)
    close = [(i, j) for i in range(len(h)) for j in range(i + 1, len(h)) if ih.hamming(h[i], h[j]) <= K]
    matched = sum(ih.colour_distance(t[i], t[j]) <= COLOUR for i, j in close)
    pairs = len(h) * (len(h) - 1) // 2
    assert len(close) > 10 * matched  # the colour check is what keeps most of them apart
    assert matched / pairs <= 0.001 + 89 / pairs  # 89 pairs are the same drawing at another size


@pytest.mark.parametrize("variant", [
    "what colour is the diamond?", "WHAT COLOUR IS THE DIAMOND", "What   colour\tis the\u00a0diamond ?",
    "What colour is the diamond!!", "What colour is the diamond? Answer the question using a single word or phrase.",
    "What colour is the diamond?Answer the question using a single word or phrase",
])
def test_formatting_variants_normalise_to_the_same_tokens(variant):
    assert qk.tokens(variant, SUFFIXES) == qk.tokens("What colour is the diamond?", SUFFIXES)


@pytest.mark.parametrize("a,b", [
    ("How many circles are there?", "How many circles are there? Answer with a number."),
    ("Are there three red squares?", "Are there 3 red squares?"),
    ("Is the value twenty-one?", "Is the value 21?"),
    ("Is the value twenty one?", "Is the value 21?"),
    ("The total is 1,000 kg.", "the total is 1000 kg"),
])
def test_number_words_and_suffixes(a, b):
    assert qk.tokens(a, SUFFIXES) == qk.tokens(b, SUFFIXES)


@pytest.mark.parametrize("a,b", [
    ("How many circles are there?", "How many squares are there?"),
    ("What is 3 + 4?", "What is 3 * 4?"),
    ("The bar chart shows weights in kg. What is the value of bar B?",
     "The bar chart shows weights in kg. What is the value of bar C?"),
])
def test_different_questions_do_not_match(a, b):
    ta, tb = qk.tokens(a, SUFFIXES), qk.tokens(b, SUFFIXES)
    assert ta != tb
    assert qk.similarity(" ".join(ta), " ".join(tb)) < 0.9


def test_minhash_estimates_jaccard_and_bands_find_close_questions():
    base = ("the chart compares the yearly rainfall of twelve cities in three countries over the last "
            "decade and asks which city had the most rain in the driest year").split()
    edited = base[:-1] + ["recorded"]  # one word of 26 changed: J = 0.92
    j = qk.jaccard(qk.shingles(base), qk.shingles(edited))
    sa, sb = qk.signature(base), qk.signature(edited)
    assert abs(qk.estimate(sa, sb) - j) < 0.1 and qk.estimate(sa, sb) >= 0.8
    assert set(qk.band_keys(sa)) & set(qk.band_keys(sb))
    other = "how many circles are there in the picture on the left".split()
    assert not set(qk.band_keys(sa)) & set(qk.band_keys(qk.signature(other)))
    assert np.array_equal(qk.signature(base), qk.signature(list(base)))  # deterministic


def test_ngram_keys():
    toks = qk.tokens("a b c d e f g h i j k l m n", ())
    assert len(qk.ngram_keys(toks, 13)) == 2 and qk.ngram_keys(toks[:12], 13) == []


def _prompt_keys(rows: list[dict], images: list[bytes]) -> dict:
    h, t = ih.image_keys(images)
    toks = [qk.tokens(qk.prompt_text(r["question"], r.get("choices") or ()), SUFFIXES) for r in rows]
    sigs = np.stack([qk.signature(x) for x in toks])
    qcols = np.column_stack([[qk.exact_key(x) for x in toks], np.stack([qk.band_keys(s) for s in sigs])])
    akeys = np.array([qk.answer_key([r["answer"]] if r.get("answer") else []) for r in rows], np.int64)
    return {"h": h, "t": t, "text": [" ".join(x) for x in toks], "akey": akeys,
            "groups": group_columns(akeys, np.ones(len(rows)), qcols)}


def _near_duplicates(rows: list[dict], images: list[bytes]) -> list[Match]:
    k = _prompt_keys(rows, images)

    def check(e: int, l: int) -> Match | None:
        j = qk.similarity(k["text"][e], k["text"][l])
        ok, bits, colour = ih.images_match([k["h"][e]], [k["t"][e]], [k["h"][l]], [k["t"][l]], K, COLOUR)
        if ok and j >= 0.9 and k["akey"][e] == k["akey"][l]:
            return Match(l, e, tuple(bits), tuple(colour), j)
        return None
    pairs = candidate_pairs(k["groups"], k["h"], K)
    return representatives(len(rows), np.arange(len(rows)), pairs, check)


#: the one pair of different sample images the image rule cannot tell apart: a short word on white
#: ("milk" in purple, "cat" in black; pHash 8 bits, colour 40), asked "Describe this image." with no
#: ground truth to separate them.  pHash sees a 32x32 blur of thin strokes; a 256-bit pHash or a grey
#: correlation did not separate such pairs from the perturbations either (NOTES of issue 29)
KNOWN_WORD_PAIR = ("open-0021", "open-0046")


def test_generic_questions_never_merge_prompts_whose_images_differ():
    """The sample asks "How many circles are there?" and "Describe the image." of many different
    images: none of them merges (but the known short-word pair), and a re-encoded copy of one does."""
    rows = sample_rows()
    generic = [r for r in rows if r["question"].startswith(("How many", "Describe"))]
    assert len(generic) > 40 and len({r["question"] for r in generic}) < len(generic) / 3
    images = [(SAMPLE / r["image"]).read_bytes() for r in generic]
    distinct = {b: i for i, b in enumerate(images)}
    generic, images = [generic[i] for i in sorted(distinct.values())], [images[i] for i in sorted(distinct.values())]
    found = [(generic[m.keep]["id"], generic[m.drop]["id"]) for m in _near_duplicates(generic, images)]
    assert found == [KNOWN_WORD_PAIR]
    copy = PERTURBATIONS["jpeg_q50"](Image.open(io.BytesIO(images[3])).convert("RGB"))
    again = dict(generic[3], question=generic[3]["question"].upper(), id="copy")
    found = [(generic[m.keep]["id"], ([*generic, again])[m.drop]["id"])
             for m in _near_duplicates(generic + [again], images + [copy])]
    assert found == [KNOWN_WORD_PAIR, (generic[3]["id"], "copy")]


def test_answer_must_agree_and_chains_keep_their_representative():
    img = encode(Image.new("RGB", (64, 64), (200, 30, 30)))
    rows = [{"question": "What colour is it?", "answer": "red"}, {"question": "what colour is it", "answer": "Red"},
            {"question": "What colour is it?", "answer": "blue"}]
    found = _near_duplicates(rows, [img] * 3)
    assert [(m.drop, m.keep, m.image_bits, m.jaccard) for m in found] == [(1, 0, (0,), 1.0)]
