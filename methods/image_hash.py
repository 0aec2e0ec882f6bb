"""Perceptual image keys for near-duplicate matching: a 64-bit pHash and an 8x8 colour thumbnail.

**pHash** is imagehash's ``phash`` (64 bits: the image in grey, resized to 32x32 with
Lanczos, the 8x8 low-frequency block of its 2-D DCT-II, each coefficient compared with
their median), bit for bit, without scipy: the DCT is two products with an 8x32 cosine
matrix.  The coefficients are rounded to 3 decimals before the median.  Symmetric
drawings have coefficients that are 0 up to float noise, and without the rounding the
noise (the FFT or BLAS build) decides which side of the median they fall on; with it
numpy, scipy and imagehash agree on every sample image and perturbation.

Two images are near-duplicates when their pHashes are within ``k`` bits (default 10:
JPEG q50, a 50% resize, a 5%-of-area crop and brightness +-10% all land there, at native
size and at 448 and 1024 px) **and** their colour thumbnails agree.  pHash sees grey levels
only: a red and a blue circle are 0 bits apart, and every plain image hashes to
``0x8000000000000000``.  The **colour check** compares the images' 8x8 RGB box thumbnails
minus each cell's grey mean (its chroma): the largest per-cell sum of absolute chroma
differences must be at most ``colour_tolerance`` (default 50, on 0-255 values).  It keeps
every perturbation above and separates 99.6% of the sample's same-shape, other-colour pairs.
The thumbnail is stored as 192 bytes (8x8 RGB, uint8) and compared only for candidate pairs.

Hashes made with JPEG draft decoding (``decode(..., draft=True)``: the decoder scales in the
DCT domain, 3-10x faster on large JPEGs) differ from full decodes by up to 8 bits: one run
must use one path for every image, reference sets included.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

HASH_SIZE = 8
_N = 32
#: scipy.fftpack's unnormalised DCT-II rows 0..7 for 32 samples: y_k = 2 sum x_n cos(pi k (2n+1) / 2N)
_COS = 2 * np.cos(np.pi * np.arange(HASH_SIZE)[:, None] * (2 * np.arange(_N)[None, :] + 1) / (2 * _N))
_BITS = np.arange(63, -1, -1, dtype=np.uint64)
THUMB = 8
THUMB_BYTES = THUMB * THUMB * 3

#: pHash of an image with no grey-level structure (any plain colour)
PLAIN_PHASH = 0x8000000000000000


def decode(data: bytes, draft: bool = False) -> Image.Image:
    """The image in ``data``; with ``draft``, a JPEG is decoded at >= 64 px by the decoder itself."""
    im = Image.open(io.BytesIO(data))
    if draft and im.format == "JPEG":
        im.draft("RGB", (4 * _N, 4 * _N))
    return im


def grey32(im: Image.Image) -> np.ndarray:
    """(32, 32) uint8: the image in grey, resized as imagehash does."""
    return np.asarray(im.convert("L").resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.uint8)


def thumbnail(im: Image.Image) -> bytes:
    """The 8x8 RGB box thumbnail (192 bytes) the colour check compares."""
    return np.asarray(im.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.uint8).tobytes()


def phash_batch(grey: np.ndarray) -> np.ndarray:
    """(n, 32, 32) grey images -> (n,) uint64 pHashes, bit order as imagehash's hex string."""
    g = np.asarray(grey, dtype=np.float64).reshape(-1, _N, _N)
    low = np.einsum("kn,bnm,lm->bkl", _COS, g, _COS).reshape(len(g), HASH_SIZE * HASH_SIZE)
    low = np.round(low, 3)
    bits = low > np.median(low, axis=1, keepdims=True)
    return (bits.astype(np.uint64) << _BITS).sum(axis=1, dtype=np.uint64)


def image_keys(images: list[bytes], draft: bool = False) -> tuple[np.ndarray, list[bytes]]:
    """pHashes (uint64) and colour thumbnails of encoded images, one batched DCT for all."""
    if not images:
        return np.zeros(0, np.uint64), []
    greys, thumbs = [], []
    for data in images:
        im = decode(data, draft)
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        greys.append(grey32(im))
        thumbs.append(thumbnail(im))
    return phash_batch(np.stack(greys)), thumbs


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bits that differ between uint64 hashes (broadcasts)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))


def _chroma(thumb: bytes | np.ndarray) -> np.ndarray:
    a = np.frombuffer(thumb, np.uint8) if isinstance(thumb, (bytes, bytearray)) else np.asarray(thumb, np.uint8)
    a = a.reshape(-1, 3).astype(np.float32)
    return a - a.mean(axis=1, keepdims=True)


def colour_distance(a: bytes, b: bytes) -> float:
    """Largest, over the 64 cells, sum over R, G, B of the absolute chroma difference."""
    return float(np.abs(_chroma(a) - _chroma(b)).sum(axis=1).max())


def images_match(hashes_a: list[int], thumbs_a: list[bytes], hashes_b: list[int], thumbs_b: list[bytes],
                 k: int, colour_tolerance: float) -> tuple[bool, list[int], list[float]]:
    """Whether two prompts' images match one to one, in order (same count, each within ``k`` bits
    and the colour tolerance); also the distances, for the quarantine detail."""
    if len(hashes_a) != len(hashes_b):
        return False, [], []
    bits = [int(hamming(x, y)) for x, y in zip(hashes_a, hashes_b)]
    if any(d > k for d in bits):
        return False, bits, []
    colour = [round(colour_distance(x, y), 1) for x, y in zip(thumbs_a, thumbs_b)]
    return all(c <= colour_tolerance for c in colour), bits, colour
