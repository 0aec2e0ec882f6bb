"""mDPO crop corruption: realised ranges, torchvision semantics, formats, modes."""
from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
from PIL import Image

from helpers import encode
from methods.crop import DEFAULT_AREA, DEFAULT_ASPECT, _Ranges, corrupt_image, sample_crop_box
from pipeline.core.seeds import derive_seed

SEEDS = [derive_seed("sample", i, "image_crop") for i in range(1000)]


def realised(box, width, height):
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    return (w * h) / (width * height), w / h


def inside(box, width, height, area=DEFAULT_AREA, aspect=DEFAULT_ASPECT):
    frac, ratio = realised(box, width, height)
    return area[0] <= frac <= area[1] and aspect[0] <= ratio <= aspect[1]


# ------------------------------------------------------------------ sample_crop_box

# Every size here has a whole-pixel box inside the default ranges, so the
# documented tolerance is zero: the realised values must be strictly inside.
FEASIBLE_SIZES = [(448, 448), (640, 480), (480, 640), (1024, 1024), (37, 91), (91, 37),
                  (64, 64), (8, 8), (5, 1), (1, 100), (1000, 10), (3000, 23)]


@pytest.mark.parametrize("width,height", FEASIBLE_SIZES)
def test_realised_area_and_aspect_inside_ranges(width, height):
    for seed in SEEDS:
        box = sample_crop_box(width, height, random.Random(seed))
        left, top, right, bottom = box
        assert all(isinstance(v, int) for v in box)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height, box
        assert inside(box, width, height), (seed, box, realised(box, width, height))


@pytest.mark.parametrize("area,aspect", [((0.3, 0.5), (0.5, 2.0)), ((0.01, 0.011), (1.0, 1.0)),
                                         ((0.9, 1.0), (0.75, 4 / 3)), ((0.05, 0.05), (0.5, 2.0))])
def test_custom_ranges_inside(area, aspect):
    for width, height in [(448, 448), (640, 480), (100, 100)]:
        if not any(_Ranges(width, height, area, aspect).width_interval(h) for h in range(1, height + 1)):
            continue  # no whole-pixel box exists; covered by the infeasible test
        for seed in SEEDS[:300]:
            box = sample_crop_box(width, height, random.Random(seed), area, aspect)
            assert inside(box, width, height, area, aspect), (width, height, seed, box)


def test_distribution_spans_the_ranges():
    """Not a degenerate sampler: areas uniform-ish over 1..20%, both aspect
    sides used, positions spread over the image."""
    boxes = [sample_crop_box(640, 480, random.Random(s)) for s in SEEDS]
    fracs = [realised(b, 640, 480)[0] for b in boxes]
    ratios = [realised(b, 640, 480)[1] for b in boxes]
    assert 0.095 <= sum(fracs) / len(fracs) <= 0.115  # uniform(0.01, 0.2) has mean 0.105
    assert min(fracs) < 0.02 and max(fracs) > 0.19
    assert sum(r < 0.9 for r in ratios) > 200 and sum(r > 1.1 for r in ratios) > 200
    lefts = [b[0] for b in boxes]
    assert min(lefts) < 20 and max(lefts) > 450 and len(set(lefts)) > 300


def _torchvision_get_params(width, height, rng, scale, ratio):
    """torchvision RandomResizedCrop.get_params with Python's RNG (same draws)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = rng.randint(0, height - h)
            j = rng.randint(0, width - w)
            return j, i, j + w, i + h
    return None  # torchvision would return a whole-image crop here


@pytest.mark.parametrize("width,height", [(448, 448), (640, 480), (1024, 1024)])
def test_matches_torchvision_up_to_whole_pixel_snapping(width, height):
    same = 0
    for seed in SEEDS:
        ours = sample_crop_box(width, height, random.Random(seed))
        ref = _torchvision_get_params(width, height, random.Random(seed), DEFAULT_AREA, DEFAULT_ASPECT)
        assert ref is not None
        if ours == ref:
            same += 1
            continue
        # only a boundary rounding case may differ, by one pixel of size
        ref_w, ref_h = ref[2] - ref[0], ref[3] - ref[1]
        assert not inside(ref, width, height)
        assert abs((ours[2] - ours[0]) - ref_w) <= 1 and abs((ours[3] - ours[1]) - ref_h) <= 1
    assert same >= 0.97 * len(SEEDS)


def test_torchvision_rounding_would_leave_the_range():
    """The reason for snapping: plain rounding does leave the range sometimes."""
    outside = sum(not inside(_torchvision_get_params(37, 91, random.Random(s), DEFAULT_AREA,
                                                     DEFAULT_ASPECT), 37, 91) for s in SEEDS)
    assert outside > 0
    assert all(inside(sample_crop_box(37, 91, random.Random(s)), 37, 91) for s in SEEDS)


def _min_violation(width, height, area, aspect):
    r = _Ranges(width, height, area, aspect)
    return min(r.violation(w, h) for w in range(1, width + 1) for h in range(1, height + 1))


@pytest.mark.parametrize("width,height,area,aspect", [
    (1, 1, DEFAULT_AREA, DEFAULT_ASPECT),
    (2, 2, DEFAULT_AREA, DEFAULT_ASPECT),
    (4, 1, DEFAULT_AREA, DEFAULT_ASPECT),
    (300, 1, DEFAULT_AREA, DEFAULT_ASPECT),     # 1-px strip longer than 100 px
    (1, 300, DEFAULT_AREA, DEFAULT_ASPECT),
    (3000, 20, DEFAULT_AREA, DEFAULT_ASPECT),   # panorama beyond ~133:1
    (64, 64, (0.5, 0.5), DEFAULT_ASPECT),       # only 32x64 / 64x32 have 2048 px
])
def test_infeasible_ranges_give_the_least_violating_box(width, height, area, aspect):
    """Tolerance case: no whole-pixel box fits, so the area violation (then the
    aspect violation) is the smallest any box can have."""
    best = _min_violation(width, height, area, aspect)
    assert best != (0.0, 0.0)
    r = _Ranges(width, height, area, aspect)
    for seed in SEEDS[:50]:
        box = sample_crop_box(width, height, random.Random(seed), area, aspect)
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
        assert r.violation(box[2] - box[0], box[3] - box[1]) == best


@pytest.mark.parametrize("width,height", [(w, h) for w in range(1, 24, 3) for h in range(1, 24, 2)])
def test_small_images_inside_whenever_any_box_fits(width, height):
    best = _min_violation(width, height, DEFAULT_AREA, DEFAULT_ASPECT)
    r = _Ranges(width, height, DEFAULT_AREA, DEFAULT_ASPECT)
    for seed in SEEDS[:40]:
        box = sample_crop_box(width, height, random.Random(seed))
        assert r.violation(box[2] - box[0], box[3] - box[1]) == best


def test_same_rng_state_same_box():
    assert sample_crop_box(640, 480, random.Random(7)) == sample_crop_box(640, 480, random.Random(7))
    boxes = {sample_crop_box(640, 480, random.Random(s)) for s in SEEDS[:50]}
    assert len(boxes) > 45


@pytest.mark.parametrize("kwargs,name", [
    ({"area": (0.0, 0.2)}, "area"), ({"area": (0.3, 0.2)}, "area"), ({"area": (0.1, 1.5)}, "area"),
    ({"area": (-0.1, 0.2)}, "area"), ({"area": (float("nan"), 0.2)}, "area"),
    ({"area": (0.1,)}, "area"), ({"area": "ab"}, "area"),
    ({"aspect": (0.0, 1.0)}, "aspect"), ({"aspect": (2.0, 1.0)}, "aspect"),
    ({"aspect": (1.0, float("inf"))}, "aspect"), ({"aspect": None}, "aspect"),
])
def test_invalid_ranges_raise_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sample_crop_box(100, 100, random.Random(0), **kwargs)
    with pytest.raises(ValueError, match=name):
        corrupt_image(encode(_rgb(32, 32)), 0, **kwargs)


@pytest.mark.parametrize("width,height,name", [(0, 10, "width"), (10, 0, "height"),
                                               (10.0, 10, "width"), (-3, 10, "width")])
def test_invalid_size_raises(width, height, name):
    with pytest.raises(ValueError, match=name):
        sample_crop_box(width, height, random.Random(0))


def test_area_upper_bound_one_is_allowed():
    box = sample_crop_box(50, 50, random.Random(0), area=(1.0, 1.0), aspect=(1.0, 1.0))
    assert box == (0, 0, 50, 50)


# ------------------------------------------------------------------ corrupt_image

def _rgb(width, height, seed=0):
    """A smooth gradient with texture: a natural-ish image that compresses."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 40, (height, width))
    arr = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    ((x + y) * 3 + noise) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _open(data):
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize("fmt,size", [("PNG", (224, 224)), ("JPEG", (640, 480)), ("PNG", (37, 91))])
def test_format_size_and_box(fmt, size):
    data = encode(_rgb(*size), fmt)
    seed = derive_seed("row-1", "image_crop")
    out, box = corrupt_image(data, seed)
    img = _open(out)
    assert img.format == fmt
    assert img.size == size
    assert box == sample_crop_box(*size, random.Random(seed))
    assert inside(box, *size)


def test_png_output_is_the_bicubic_resized_crop():
    """Lossless path: the pixels are exactly crop(box).resize(size, BICUBIC)."""
    src = _rgb(120, 80)
    out, box = corrupt_image(encode(src), 11)
    expected = src.crop(box).resize(src.size, Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(_open(out)), np.asarray(expected))
    assert not np.array_equal(np.asarray(_open(out)), np.asarray(src))


def test_jpeg_output_is_close_to_the_resized_crop():
    src = _rgb(320, 240)
    data = encode(src, "JPEG", quality=95)
    out, box = corrupt_image(data, 5)
    decoded = _open(data)
    expected = np.asarray(decoded.crop(box).resize(decoded.size, Image.Resampling.BICUBIC), dtype=float)
    assert np.abs(np.asarray(_open(out), dtype=float) - expected).mean() < 4.0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_deterministic_byte_identical(fmt):
    data = encode(_rgb(256, 192), fmt)
    runs = [corrupt_image(data, 1234) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert corrupt_image(data, 1235)[0] != runs[0][0]


def test_jpeg_quality_is_used():
    data = encode(_rgb(256, 256), "JPEG", quality=95)
    high, box_high = corrupt_image(data, 3, jpeg_quality=95)
    low, box_low = corrupt_image(data, 3, jpeg_quality=30)
    assert box_high == box_low
    assert len(low) < len(high)


def test_no_metadata_is_written():
    src = _rgb(64, 64)
    exif = Image.Exif()
    exif[0x0132] = "2024:01:01 00:00:00"  # DateTime
    exif[0x0112] = 6                       # Orientation
    jpeg_out, _ = corrupt_image(encode(src, "JPEG", exif=exif), 1)
    assert "exif" not in _open(jpeg_out).info
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "made at 12:00")
    png_out, _ = corrupt_image(encode(src, pnginfo=info), 1)
    assert b"tEXt" not in png_out and b"tIME" not in png_out and b"eXIf" not in png_out


def test_icc_profile_is_carried_when_colour_space_is_unchanged():
    ImageCms = pytest.importorskip("PIL.ImageCms")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out, _ = corrupt_image(encode(_rgb(64, 64), icc_profile=icc), 2)
    assert _open(out).info.get("icc_profile") == icc
    # a CMYK image written as RGB PNG must not keep its (CMYK) profile
    cmyk = encode(_rgb(64, 64).convert("CMYK"), "TIFF", icc_profile=icc)
    assert _open(cmyk).info.get("icc_profile") == icc
    out, _ = corrupt_image(cmyk, 2)
    assert _open(out).mode == "RGB" and "icc_profile" not in _open(out).info


def _mode_image(mode, width=48, height=40):
    rng = np.random.default_rng(1)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 70000, (height, width)).astype(np.int32), "I")
    if mode == "F":
        return Image.fromarray((rng.random((height, width)) * 300).astype(np.float32), "F")
    return _rgb(width, height).convert(mode)


# (mode, container the test stores it in, expected output format, expected output mode)
MODE_CASES = [
    ("RGB", "PNG", "PNG", "RGB"),
    ("RGBA", "PNG", "PNG", "RGBA"),
    ("L", "PNG", "PNG", "L"),
    ("LA", "PNG", "PNG", "LA"),
    ("P", "PNG", "PNG", "RGBA"),       # palette with transparency
    ("P", "GIF", "PNG", "RGB"),        # GIF (no transparency) -> PNG, palette expanded
    ("1", "PNG", "PNG", "L"),
    ("I;16", "PNG", "PNG", "I;16"),
    ("CMYK", "TIFF", "PNG", "RGB"),
    ("I", "TIFF", "PNG", "I;16"),
    ("F", "TIFF", "PNG", "I;16"),
    ("RGB", "WEBP", "PNG", "RGB"),
    ("RGB", "JPEG", "JPEG", "RGB"),
    ("L", "JPEG", "JPEG", "L"),
    ("CMYK", "JPEG", "JPEG", "CMYK"),
]


@pytest.mark.parametrize("mode,container,out_format,out_mode", MODE_CASES)
def test_every_mode_round_trips(mode, container, out_format, out_mode):
    img = _mode_image(mode)
    params = {"transparency": 0} if mode == "P" and container == "PNG" else {}
    data = encode(img, container, **params)
    assert _open(data).mode == mode
    out, box = corrupt_image(data, 99)
    result = _open(out)
    assert (result.format, result.mode, result.size) == (out_format, out_mode, img.size)
    assert corrupt_image(data, 99) == (out, box)


def test_sixteen_bit_depth_survives():
    out, _ = corrupt_image(encode(_mode_image("I;16"), "PNG"), 4)
    arr = np.asarray(_open(out))
    assert arr.dtype == np.uint16 and arr.max() > 255


@pytest.mark.parametrize("kwargs,name", [({"jpeg_quality": 0}, "jpeg_quality"),
                                         ({"jpeg_quality": 101}, "jpeg_quality"),
                                         ({"jpeg_quality": 9.5}, "jpeg_quality"),
                                         ({"seed": "abc"}, "seed"), ({"seed": 1.5}, "seed")])
def test_invalid_corrupt_args_raise(kwargs, name):
    args = {"seed": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        corrupt_image(encode(_rgb(16, 16)), **args)


def test_colour_key_transparency_becomes_alpha():
    out, _ = corrupt_image(encode(_rgb(40, 40), transparency=(0, 0, 0)), 8)
    assert _open(out).mode == "RGBA"


@pytest.mark.parametrize("subsampling", [0, 2])
def test_jpeg_chroma_subsampling_is_kept(subsampling):
    from PIL import JpegImagePlugin
    data = encode(_rgb(128, 128), "JPEG", quality=90, subsampling=subsampling)
    out, _ = corrupt_image(data, 6)
    assert JpegImagePlugin.get_sampling(_open(out)) == subsampling
