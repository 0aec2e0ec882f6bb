"""Does a corrupted image differ from its original?  (pure, no I/O)

An mDPO image-contrast pair teaches through the difference between the
original and the corrupted image.  For a uniform picture (a blank chart, a
plain background) every crop, resized back, is the same picture: the pair
carries no signal, and a trainer reading ``rejected_images`` sees two equal
images.  The image_crop stage therefore tries a few seeded crops and skips the
row when none differs.

The measure (:func:`image_difference`): both images are reduced to
``THUMB_SIZE`` x ``THUMB_SIZE`` RGB thumbnails by area averaging (PIL's BOX
filter), and the difference is the *largest* per-pixel, per-channel absolute
difference between the two thumbnails, in 8-bit grey levels (0..255).

* Area averaging removes most pixel noise and JPEG artefacts, but a 1%
  crop of a small image is blown up so much that its noise survives: over 40
  seeded crops, grey noise of sigma 2 / 3 / 4 levels gave at most 9 / 13 / 17
  on a 96x96 PNG and 4 / 6 / 8 on a 448x448 one (JPEG less).
* The maximum (not the mean) keeps small content visible: one object of a few
  percent of the image changes a thumbnail pixel by tens of levels, while
  its share of a mean difference would be lost under a mean threshold.
* Colour is kept (max over R, G, B), so equal-luminance hues still differ.

:data:`MIN_DIFFERENCE` = 16 levels (about 6% of the range) is the default
of ``image_crop.min_difference``: a crop whose difference is below it is
"near-identical".  It sits above such noise (sigma <= 3 at any size) and far
below real content: every sample-build image that is not uniform gave 135
or more for every crop tried, uniform ones 0.
"""
from __future__ import annotations

import io
from typing import Callable, Sequence

import numpy as np
from PIL import Image

THUMB_SIZE = 32
#: below this (grey levels, see the module docstring) a corrupted image is near-identical
MIN_DIFFERENCE = 16.0


def thumbnail(data: bytes) -> np.ndarray:
    """RGB ``THUMB_SIZE`` square thumbnail of an encoded image, area-averaged, as int16."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))  # JPEG: decode at a reduced scale
    img = img.convert("RGB").resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.int16)


def image_difference(original: bytes | np.ndarray, corrupted: bytes | np.ndarray) -> float:
    """Largest thumbnail difference between two images (0 = the same picture)."""
    a = original if isinstance(original, np.ndarray) else thumbnail(original)
    b = corrupted if isinstance(corrupted, np.ndarray) else thumbnail(corrupted)
    return float(np.abs(a - b).max())


def first_distinct(original: bytes, seeds: Sequence[int], corrupt: Callable[[bytes, int], tuple],
                   min_difference: float) -> tuple[tuple, float, int]:
    """``corrupt(original, seed)`` for each seed in order until the result differs enough.

    Returns (the first result whose difference reaches ``min_difference``,
    or the last one tried; its difference; the number of tries).  Seeds are
    fixed by the caller, so the outcome is reproducible.  A
    ``min_difference`` of 0 accepts the first crop without decoding it.
    """
    if min_difference <= 0:
        return corrupt(original, seeds[0]), float("inf"), 1
    base = thumbnail(original)
    for tries, seed in enumerate(seeds, 1):
        result = corrupt(original, seed)
        diff = image_difference(base, result[0])
        if diff >= min_difference:
            break
    return result, diff, tries
