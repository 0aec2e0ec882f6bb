"""Image-crop pairs whose rejected image is (near-)identical to the original carry no
signal (issue 13, point 4: 7 of 53 crops of the sample build, all of uniform images)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers import encode, make_config, run_stage_on
from methods.crop import corrupt_image
from methods.crop_signal import MIN_DIFFERENCE, first_distinct, image_difference
from pipeline.core.seeds import derive_seed
from schemas import RESPONSE_SCHEMA

SEEDS = [derive_seed("crop-signal", i) for i in range(40)]


def uniform(size=(128, 128), colour=(255, 255, 255)) -> bytes:
    return encode(Image.new("RGB", size, colour))


def noisy(size=(448, 448), sigma=2.0, fmt="PNG", seed=0) -> bytes:
    """A near-uniform grey image: a blank scan, a plain wall."""
    rng = np.random.default_rng(seed)
    a = np.clip(128 + rng.normal(0, sigma, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(a), fmt)


def circles(size=(128, 128), n=3) -> bytes:
    """Like the sample data: a few coloured shapes on white."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for i in range(n):
        x = 12 + i * (size[0] - 24) // max(n, 1)
        draw.ellipse((x, 40, x + 24, 64), fill=(40, 80, 220))
    return encode(img)


def one_small_dot(size=(448, 448)) -> bytes:
    """Uniform but for one dot of 0.3% of the area: a mean difference would miss it."""
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).ellipse((300, 300, 328, 328), fill="black")
    return encode(img)


@pytest.mark.parametrize("name, data, near_identical", [
    ("uniform-white", uniform(), True),
    ("uniform-red", uniform((96, 160), (200, 30, 30)), True),
    ("near-uniform-noise", noisy(), True),
    ("near-uniform-noise-jpeg", noisy(fmt="JPEG"), True),
    ("near-uniform-noise-small", noisy((96, 96), seed=1), True),
    ("near-uniform-noise-sigma3", noisy((96, 96), sigma=3.0, seed=2), True),
    ("circles", circles(), False),
    ("one-circle", circles(n=1), False),
    ("one-small-dot", one_small_dot(), False),
])
def test_every_crop_of_uniform_images_is_near_identical_and_of_normal_ones_not(name, data, near_identical):
    diffs = [image_difference(data, corrupt_image(data, s)[0]) for s in SEEDS]
    if near_identical:
        assert max(diffs) < MIN_DIFFERENCE, diffs
    else:
        # a crop that happens to keep the whole content can look alike; almost all differ
        assert sum(d >= MIN_DIFFERENCE for d in diffs) >= 0.9 * len(SEEDS), diffs


def test_difference_is_zero_for_the_same_picture_and_large_for_another():
    a = circles()
    assert image_difference(a, a) == 0
    assert image_difference(a, uniform()) > 100
    # colour counts, not only grey level: red vs green of about equal luminance
    assert image_difference(uniform(colour=(200, 60, 60)), uniform(colour=(90, 120, 60))) >= MIN_DIFFERENCE


def _picture_per_seed(distinct_seed):
    """corrupt(data, seed): a blank picture except for ``distinct_seed``."""
    def corrupt(data, seed):
        return (circles() if seed == distinct_seed else data, (0, 0, seed, 1))
    return corrupt


@pytest.mark.parametrize("distinct_at, tries, kept_box", [(0, 1, 10), (2, 3, 30), (None, 3, 30)])
def test_first_distinct_tries_seeds_in_order(distinct_at, tries, kept_box):
    seeds = [10, 20, 30]
    corrupt = _picture_per_seed(seeds[distinct_at] if distinct_at is not None else None)
    (_, box), diff, n = first_distinct(uniform(), seeds, corrupt, MIN_DIFFERENCE)
    assert (n, box[2]) == (tries, kept_box)
    assert (diff >= MIN_DIFFERENCE) is (distinct_at is not None)


def _row(prompt_id, data):
    return {
        "prompt_id": prompt_id, "source": "sample_gt", "row_key": prompt_id, "question": "How many circles?",
        "images": [{"bytes": data, "path": None}], "answer": ["3"], "answer_type": "integer", "choices": [],
        "facts": None, "template_id": "mmpr_final_answer", "prompt_text": "q", "prompt_tokens": 3, "model": "m",
        "model_revision": "r", "sampling": None,
        "responses": [{"index": 0, "text": "Three circles.\nFinal answer: 3", "finish_reason": "stop",
                       "num_tokens": 8, "seed": 1}],
    }


@pytest.mark.parametrize("min_difference, kept", [(MIN_DIFFERENCE, {"normal"}),
                                                  (0.0, {"normal", "uniform", "noisy"})])
def test_image_crop_stage_skips_near_identical_crops(tmp_path, min_difference, kept):
    rows = [_row("uniform", uniform()), _row("noisy", noisy((128, 128))), _row("normal", circles())]
    cfg = make_config(image_crop={"fraction": 1.0, "min_difference": min_difference})
    out, stats = run_stage_on("image_crop", cfg, rows, RESPONSE_SCHEMA, tmp_path)
    assert {r["provenance"]["prompt_id"] for r in out} == kept
    assert stats.counters["dropped.near_identical_crop"] == 3 - len(kept)
    assert stats.counters["crops.retried"] == (2 if min_difference else 0)
    for r in out:
        got = image_difference(r["images"][0]["bytes"], r["rejected_images"][0]["bytes"])
        assert (got >= MIN_DIFFERENCE) is (r["provenance"]["prompt_id"] == "normal")
