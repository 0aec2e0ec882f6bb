"""The sample data's pictures: coloured shapes, object scenes, a written word, bar charts,
single-colour images, drawn with PIL alone (``demo.sample_data``).

Only PIL's built-in font and no randomness of their own (placements come from the
caller's seeded ``random.Random``), and PNGs written without timestamps, so the same
calls give the same bytes on every machine.
"""
from __future__ import annotations

import io
import math
import random

from PIL import Image, ImageDraw, ImageFont

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
BAR_LABELS = ("A", "B", "C", "D")
BAR_COLOURS = ("blue", "orange", "green", "purple")
BACKGROUND = (255, 255, 255)


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


def canvas(size: int, colour: tuple[int, int, int] = BACKGROUND) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (size, size), colour)
    return img, ImageDraw.Draw(img)


def scene(rng: random.Random, objects: list[tuple[str, str]], size: int) -> Image.Image:
    """objects: (shape, colour) pairs drawn at random non-overlapping places."""
    img, d = canvas(size)
    r = max(8, min(18, size // (2 + len(objects))))
    for (shape, colour), (cx, cy) in zip(objects, _place(rng, size, r, len(objects))):
        _draw_shape(d, shape, cx, cy, r, colour)
    return img


def single_shape(shape: str, colour: str, size: int) -> Image.Image:
    img, d = canvas(size)
    _draw_shape(d, shape, size / 2, size / 2, size * 0.36, colour)
    return img


def word_image(word: str, colour: str, size: int) -> Image.Image:
    img, d = canvas(size)
    font = ImageFont.load_default(size=max(14, size // 4))
    left, top, right, bottom = d.textbbox((0, 0), word, font=font)
    x = (size - (right - left)) / 2 - left
    y = (size - (bottom - top)) / 2 - top
    d.text((x, y), word, fill=COLOURS[colour], font=font)
    return img


def bar_chart(values: list[int], unit: str, size: int) -> Image.Image:
    img, d = canvas(size)
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


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()
