"""Load, validate and normalise images into the Hugging Face ``{bytes, path}`` layout.

Ingest calls ``load_image`` for every image reference.  It either returns a
valid image record or raises ``ImageError`` with a short reason code, which the
stage turns into a quarantine row.  Images a model can consume after a cheap
fix (CMYK, palette, 16-bit, alpha, EXIF rotation) are converted, not refused;
well-formed RGB/L images keep their original bytes (so a JPEG stays a JPEG).
"""
from __future__ import annotations

import hashlib
import io
import unicodedata
import warnings
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.files import storage
from pipeline.files.image_refs import ImageError, resolve_image_ref

__all__ = ["ImageError", "load_image", "decode_checked", "to_pil", "image_uuid"]

#: PIL's decompression-bomb guard, enforced as an error (not a warning)
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
_KEEP_MODES = {"RGB", "L"}
_KEEP_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}


def _read_ref(ref: Any, root: str | None, roots: tuple[str, ...]) -> tuple[bytes, str]:
    if isinstance(ref, Image.Image):
        buf = io.BytesIO()
        ref.save(buf, format="PNG")
        return buf.getvalue(), getattr(ref, "filename", "") or ""
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return bytes(ref["bytes"]), ref.get("path") or ""
        if ref.get("path"):
            ref = ref["path"]
        else:
            raise ImageError("missing_image", "image record has neither bytes nor path")
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref), ""
    if not isinstance(ref, str):
        raise ImageError("bad_image_reference", f"image reference of type {type(ref).__name__}")
    if not ref.strip():
        raise ImageError("missing_image", "empty image path")
    return storage.read_bytes(_find_file(ref.strip(), root, roots)), ref


#: the spellings one name has (macOS writes names decomposed, NFD; most text is composed, NFC)
_UNICODE_FORMS = ("NFC", "NFD")


def _find_file(ref: str, root: str | None, roots: tuple[str, ...]) -> str:
    """The file ``ref`` names: its exact name, else the same name in another Unicode
    normalisation form -- a file named on a Mac and listed in a prompt file typed elsewhere
    differ only so.  Every spelling tried passes the root check first."""
    path = resolve_image_ref(ref, root, roots)
    if storage.is_file(path):
        return path
    others = [o for o in dict.fromkeys(unicodedata.normalize(f, ref) for f in _UNICODE_FORMS) if o != ref]
    for other in others:
        try:
            path = resolve_image_ref(other, root, roots)
        except ImageError:  # this spelling leaves the roots (a root named in the other form)
            continue
        if storage.is_file(path):
            return path
    raise ImageError("missing_image_file", f"{ref} (nor in Unicode {' or '.join(_UNICODE_FORMS)} form)"
                     if others else ref)


def _normalise(img: Image.Image) -> Image.Image:
    """The image as a model should see it: upright, 8-bit, no alpha.  Returns ``img`` itself
    when nothing changes, so the source bytes are kept (Pillow's ``exif_transpose`` always
    returns a copy, so it is only called for an orientation that needs it)."""
    if img.getexif().get(0x0112, 1) not in (1, None):
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping to white
        img = img.point(lambda v: v / 256).convert("L") if img.mode != "I" else img.convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode not in _KEEP_MODES:
        return img.convert("RGB")
    return img


def decode_checked(data: bytes) -> Image.Image:
    """Decode fully (catches truncation) with the bomb limit as a hard error."""
    if not data:
        raise ImageError("empty_image", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageError("image_too_large", f"{w}x{h} exceeds {MAX_IMAGE_PIXELS} pixels")
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("image_too_large", str(e)) from None
    except UnidentifiedImageError:
        # Pillow's message names the BytesIO it was given ("<_io.BytesIO object at 0x...>");
        # load_image names the file
        raise ImageError("not_an_image", "cannot identify image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError("corrupt_image", str(e)) from None
    return img


def load_image(ref: Any, root: str | None = None, roots: tuple[str, ...] | None = None) -> dict:
    """An image reference -> ``{"bytes": ..., "path": ...}`` or ``ImageError``.

    ``roots``: the canonical roots the reference may point into
    (``image_refs.allowed_roots``); default: ``root`` alone."""
    if roots is None:
        from pipeline.files.image_refs import allowed_roots

        roots = allowed_roots(root)
    data, path = _read_ref(ref, root, roots)
    try:
        img = decode_checked(data)
    except ImageError as e:  # which of a source's million files it was
        name = repr(path) if path else f"image bytes in the row ({len(data)} bytes)"
        raise ImageError(e.reason, f"{name}: {e.detail}") from None
    fixed = _normalise(img)
    rotated = img.getexif().get(0x0112, 1) not in (1, None)
    if fixed is img and not rotated and img.format in _KEEP_FORMATS:
        return {"bytes": data, "path": path}
    buf = io.BytesIO()
    fixed.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": path}


def to_pil(record: dict) -> Image.Image:
    """Decode a stored image record for a model (RGB)."""
    img = Image.open(io.BytesIO(record["bytes"]))
    return img.convert("RGB") if img.mode != "RGB" else img


def image_uuid(record: dict) -> str:
    """A stored image's content id, sent to vLLM as the image's ``multi_modal_uuids`` entry:
    vLLM keys its processor and encoder caches by it instead of hashing the decoded pixels
    again for every request that shows the image (a prompt's N samples, every text scored)."""
    return hashlib.blake2b(record["bytes"], digest_size=16).hexdigest()
