"""mDPO conditional-image corruption: a small random resized crop (pure, no I/O).

mDPO (arXiv 2406.11839) builds an image-contrast pair by keeping the question
and the chosen response and *corrupting the image*: a random resized crop that
keeps 1% to 20% of the image area (aspect ratio 3/4 to 4/3), resized back to
the original size.  Keeping more of the image made the pairs less useful in
their ablation, so the area range is the point of the method and is enforced
on the *realised* (whole-pixel) crop, not only on the sampled target.

Box sampling (:func:`sample_crop_box`)
    Follows torchvision's ``RandomResizedCrop.get_params``: up to 10 tries,
    each drawing a target area fraction uniformly from ``area`` and an aspect
    ratio log-uniformly from ``aspect``; a try whose rounded size does not fit
    in the image is rejected.  Two deliberate differences:

    * Rounding the target to whole pixels can push the realised area fraction
      or aspect ratio just outside the range (e.g. a target of 1.0% that
      rounds down).  An accepted try is therefore snapped to the nearest
      whole-pixel size (heights within a pixel of the target's floor/ceil)
      that is inside both ranges; if none is, the try counts as rejected.
      For 448x448..1024x1024 images over 97% of boxes equal torchvision's
      exactly (tests/test_crop.py), the rest differ by one pixel of size.
    * torchvision's fallback after 10 failed tries is a centre crop of the
      *whole* image (clamped aspect), which would be an uncorrupted image.
      Here the fallback draws uniformly among all whole-pixel sizes that are
      inside both ranges (random height first, then random width).

    Tolerance: the realised area fraction ``(w*h)/(W*H)`` and aspect ``w/h``
    are inside the ranges (exactly, no epsilon) whenever *any* whole-pixel
    box can satisfy both.  With the default ranges that is every image of at
    least 5 pixels (1 px <= 20%) whose long side is at most
    ``100 * floor(4/3 * short)`` pixels, i.e. about 133x the short side
    (``max aspect / min area``; 100x for 1-2 px strips): all normal photos,
    charts and documents, and tiny ones like 8x8, 37x91 or 1x100.  Only when
    no box can satisfy both (a 2x2 image, a 10000x64 panorama, or a range
    too narrow for whole pixels such as ``area=(0.5, 0.5)`` on 64x64, where
    the only 2048-px boxes are 32x64 and 64x32) does the function return
    the box closest to the ranges: it minimises the area violation first
    (the area kept is what mDPO is about), then the aspect violation, both
    measured as log-distance outside the range.

    The box is placed uniformly at random, as torchvision does.

Corruption (:func:`corrupt_image`)
    Decodes with PIL, crops, resizes back to the original size with bicubic
    resampling and re-encodes in the source format: JPEG (and MPO, i.e.
    camera JPEGs) stays JPEG at ``jpeg_quality`` with the source's chroma
    subsampling; everything else becomes PNG (lossless; see
    :data:`PNG_PARAMS`).  Modes are adapted
    where the resampler or the encoder can't handle them:

    ======  ===================================================================
    mode    handling
    ======  ===================================================================
    1       resized as ``L`` (bicubic makes grey edges), saved as ``L``
    P       resized as ``RGB`` (``RGBA`` when it has transparency) -- PIL
            would otherwise silently use nearest-neighbour for palettes
    PA      resized and saved as ``RGBA``
    L, RGB  with a PNG colour-key transparency: ``LA`` / ``RGBA``
    CMYK    JPEG keeps CMYK; PNG can't store it -> ``RGB``
    I       PNG stores at most 16 bits -> ``I;16`` (clipped to 0..65535)
    F       PNG has no float -> ``I`` (fraction truncated) -> ``I;16``
            (clipped); same values ``.convert("RGB")`` shows for 0..255
    I;16    kept (16-bit PNG)
    others  RGBA if they carry alpha, else RGB (e.g. YCbCr, LAB, RGBX)
    ======  ===================================================================

    Determinism: the box comes from ``random.Random(seed)``; the encoders run
    with fixed parameters and no metadata (no EXIF, text chunks or
    timestamps), so the same bytes and seed give byte-identical output --
    with the same Pillow build (its zlib and libjpeg-turbo versions); a
    different build may encode the same pixels to different bytes.  The
    ICC profile is carried over when the colour space is unchanged, so the
    rejected image shows the same colours as the chosen one.  EXIF
    orientation is *not* applied: trainers feed raw pixels to the model, and
    the crop must match what the model sees of the chosen image.  Animated
    images use their first frame.
"""
from __future__ import annotations

import io
import math
import random
from typing import Optional

from PIL import Image, JpegImagePlugin

DEFAULT_AREA: tuple[float, float] = (0.01, 0.2)
DEFAULT_ASPECT: tuple[float, float] = (3 / 4, 4 / 3)
MAX_TRIES = 10  # torchvision's RandomResizedCrop value
#: PNG encoder settings.  zlib's Z_RLE strategy: a crop keeps at most 20% of
#: the area, so the output is an upscaled (smooth) image, on which the default
#: strategy at level 6 spends 5-8x longer and still writes ~5% larger files
#: (measured on bench/bench_crop.py's images; zlib's manual: "Z_RLE is designed to be almost as
#: fast as Z_HUFFMAN_ONLY, but give better compression for PNG image data").
PNG_PARAMS: dict = {"compress_level": 6, "compress_type": Image.RLE, "optimize": False}

Box = tuple[int, int, int, int]
Size = tuple[int, int]

# ---------------------------------------------------------------- validation


def _check_range(name: str, value, upper: Optional[float] = None) -> tuple[float, float]:
    """Return ``value`` as a float pair after checking 0 < lo <= hi (<= upper)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi) of numbers, got {value!r}") from None
    ok = math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi
    if upper is not None:
        ok = ok and hi <= upper
    if not ok:
        bound = f" <= {upper:g}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < lo <= hi{bound}, got {value!r}")
    return lo, hi


def _check_dim(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ---------------------------------------------------------------- box sampling


class _Ranges:
    """The two constraints of one image, evaluated exactly on whole pixels."""

    def __init__(self, width: int, height: int, area: tuple[float, float],
                 aspect: tuple[float, float]):
        self.width, self.height, self.total = width, height, width * height
        self.area, self.aspect = area, aspect

    def inside(self, w: int, h: int) -> bool:
        """The documented check, written exactly as a caller would test it."""
        frac, ratio = (w * h) / self.total, w / h
        return (self.area[0] <= frac <= self.area[1]
                and self.aspect[0] <= ratio <= self.aspect[1])

    def width_interval(self, h: int) -> Optional[tuple[int, int]]:
        """All widths w with (w, h) inside both ranges, as [lo, hi], or None.

        Each constraint is monotone in w, so the feasible widths form one
        interval.  Float ceil/floor can be off by one at the boundary, so the
        estimate is widened by a pixel and then tightened with the exact
        predicate.
        """
        (a_lo, a_hi), (r_lo, r_hi) = self.area, self.aspect
        lo = max(1, math.ceil(max(a_lo * self.total / h, r_lo * h)) - 1)
        hi = min(self.width, math.floor(min(a_hi * self.total / h, r_hi * h)) + 1)
        while lo <= hi and not ((lo * h) / self.total >= a_lo and lo / h >= r_lo):
            lo += 1
        while hi >= lo and not ((hi * h) / self.total <= a_hi and hi / h <= r_hi):
            hi -= 1
        return (lo, hi) if lo <= hi else None

    def violation(self, w: int, h: int) -> tuple[float, float]:
        """(area, aspect) log-distance outside the ranges; (0, 0) when inside."""
        return (_log_outside((w * h) / self.total, self.area),
                _log_outside(w / h, self.aspect))


def _log_outside(x: float, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    if x < lo:
        return math.log(lo / x)
    if x > hi:
        return math.log(x / hi)
    return 0.0


def _snap(ranges: _Ranges, w_f: float, h_f: float) -> Optional[Size]:
    """Nearest whole-pixel size inside both ranges to the target (w_f, h_f).

    Only heights within a pixel of the target are considered, so a snapped
    try stays a faithful sample of torchvision's distribution; if the plain
    rounding is already inside it wins (it is the L1-nearest integer point).
    """
    best, best_dist = None, math.inf
    for h in range(max(1, math.floor(h_f) - 1), min(ranges.height, math.ceil(h_f) + 1) + 1):
        interval = ranges.width_interval(h)
        if interval is None:
            continue
        w = min(max(round(w_f), interval[0]), interval[1])
        dist = abs(w - w_f) + abs(h - h_f)
        if dist < best_dist:
            best, best_dist = (w, h), dist
    return best


def _fallback_size(ranges: _Ranges, rng: random.Random) -> Size:
    """A random in-range size, or the least-violating one when none exists."""
    feasible = [(h, iv) for h in range(1, ranges.height + 1)
                if (iv := ranges.width_interval(h)) is not None]
    if feasible:
        h, (w_lo, w_hi) = feasible[rng.randrange(len(feasible))]
        return rng.randint(w_lo, w_hi), h
    return _closest_size(ranges)


def _closest_size(ranges: _Ranges) -> Size:
    """Deterministic least-violating size: area first, then aspect.

    For a fixed height the violations are piecewise monotone in w with
    breakpoints at the range edges, so checking the edges (and their
    neighbours) and the image border finds the optimum for that height.
    """
    (a_lo, a_hi), (r_lo, r_hi) = ranges.area, ranges.aspect
    best, best_key = (1, 1), None
    for h in range(1, ranges.height + 1):
        edges = (1, ranges.width, a_lo * ranges.total / h, a_hi * ranges.total / h,
                 r_lo * h, r_hi * h)
        candidates = {min(max(int(e) + d, 1), ranges.width) for e in edges for d in (-1, 0, 1)}
        for w in candidates:
            key = (ranges.violation(w, h), h, w)
            if best_key is None or key < best_key:
                best, best_key = (w, h), key
    return best


def _place(size: Size, width: int, height: int, rng: random.Random) -> Box:
    """Uniform position for a (w, h) box, torchvision order: top, then left."""
    w, h = size
    top = rng.randint(0, height - h)
    left = rng.randint(0, width - w)
    return left, top, left + w, top + h


def sample_crop_box(width: int, height: int, rng: random.Random,
                    area: tuple[float, float] = DEFAULT_AREA,
                    aspect: tuple[float, float] = DEFAULT_ASPECT) -> Box:
    """Random crop box ``(left, top, right, bottom)`` keeping ``area`` of the image.

    torchvision ``RandomResizedCrop`` sampling with the realised whole-pixel
    area fraction and aspect ratio kept inside the ranges (see the module
    docstring for the fallback and the tolerance on tiny images).
    """
    _check_dim("width", width)
    _check_dim("height", height)
    ranges = _Ranges(width, height, _check_range("area", area, upper=1.0),
                     _check_range("aspect", aspect))
    log_lo, log_hi = math.log(ranges.aspect[0]), math.log(ranges.aspect[1])
    for _ in range(MAX_TRIES):
        target = ranges.total * rng.uniform(*ranges.area)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w_f, h_f = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if not (0 < round(w_f) <= width and 0 < round(h_f) <= height):
            continue
        size = _snap(ranges, w_f, h_f)
        if size is not None:
            return _place(size, width, height, rng)
    return _place(_fallback_size(ranges, rng), width, height, rng)


# ---------------------------------------------------------------- image corruption

_PNG_MODES = frozenset({"1", "L", "LA", "I;16", "P", "RGB", "RGBA"})
_JPEG_MODES = frozenset({"L", "RGB", "CMYK"})
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


def _working_mode(img: Image.Image) -> Image.Image:
    """Convert modes PIL would resample poorly (1, P, PA would use NEAREST)
    and turn a colour-key transparency (PNG tRNS) into an alpha channel, which
    survives bicubic resampling."""
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "P":
        return img.convert("RGBA" if img.has_transparency_data else "RGB")
    if img.mode == "PA":
        return img.convert("RGBA")
    if img.mode in ("L", "RGB") and "transparency" in img.info:
        return img.convert("LA" if img.mode == "L" else "RGBA")
    return img


def _encodable(img: Image.Image, fmt: str) -> Image.Image:
    """Convert ``img`` to a mode the ``fmt`` encoder writes (see module table)."""
    allowed = _JPEG_MODES if fmt == "JPEG" else _PNG_MODES
    if img.mode in allowed:
        return img
    if fmt == "PNG":
        if img.mode == "F":
            img = img.convert("I")
        if img.mode in ("I", "I;16B", "I;16L"):
            return img.convert("I;16")
        if img.mode == "La":
            return img.convert("LA")
    if fmt == "JPEG" and img.mode in _GRAY_MODES:
        return img.convert("L")
    has_alpha = "A" in img.getbands() or "a" in img.getbands()
    return img.convert("RGBA" if has_alpha and fmt == "PNG" else "RGB")


def _colour_space(mode: str) -> str:
    if mode in _GRAY_MODES:
        return "gray"
    return "cmyk" if mode == "CMYK" else "rgb"


def _encode(img: Image.Image, src: Image.Image, fmt: str, jpeg_quality: int) -> bytes:
    """Encode with fixed parameters and no metadata except a still-valid ICC."""
    params: dict = {}
    icc = src.info.get("icc_profile")
    if icc and _colour_space(src.mode) == _colour_space(img.mode):
        params["icc_profile"] = icc
    if fmt == "JPEG":
        params.update(quality=jpeg_quality, optimize=False, progressive=False)
        sampling = JpegImagePlugin.get_sampling(src) if src.format in ("JPEG", "MPO") else -1
        if sampling >= 0 and img.mode == "RGB":
            params["subsampling"] = sampling
    else:
        params.update(PNG_PARAMS)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def corrupt_image(data: bytes, seed: int,
                  area: tuple[float, float] = DEFAULT_AREA,
                  aspect: tuple[float, float] = DEFAULT_ASPECT,
                  jpeg_quality: int = 95) -> tuple[bytes, Box]:
    """mDPO rejected image: crop a small random box and resize it back.

    Returns the encoded image (same size and, for PNG/JPEG, same format as
    the input) and the crop box ``(left, top, right, bottom)`` to store in
    provenance.  ``seed`` should come from the sample id
    (``pipeline.core.seeds.derive_seed``) so the dataset rebuilds identically.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) \
            or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an int in 1..100, got {jpeg_quality!r}")
    area = _check_range("area", area, upper=1.0)
    aspect = _check_range("aspect", aspect)

    src = Image.open(io.BytesIO(data))
    src.load()
    fmt = "JPEG" if src.format in ("JPEG", "MPO") else "PNG"
    box = sample_crop_box(src.width, src.height, random.Random(seed), area, aspect)
    cropped = _working_mode(src.crop(box))
    out = _encodable(cropped.resize(src.size, Image.Resampling.BICUBIC), fmt)
    out.info = {}  # PIL copies info through crop/convert; the encoder must not see it
    return _encode(out, src, fmt, jpeg_quality), box
