"""Small thumbnails for the report's views of removed prompts (``schemas.REPORT_IMAGES_SCHEMA``).

A stage that removes prompts before generation (dedup) is the last place that holds their
images: the dataset folder keeps only what was written.  It keeps a few thumbnails of what
it removed, so the HTML report can show them.  They are small on purpose (``MAX_PX``, JPEG):
a removed cluster costs a few kilobytes, whatever the size of the images.  The same bytes
give the same thumbnail (no timestamps, fixed quality), so a rebuild writes the same file.
"""
from __future__ import annotations

import io

from PIL import Image

#: longest side of a thumbnail, in pixels
MAX_PX = 96
QUALITY = 85


def jpeg_of(im: Image.Image, max_px: int = MAX_PX, quality: int = QUALITY, optimize: bool = True) -> bytes:
    """JPEG bytes of an opened image, its longest side at most ``max_px``, transparency on white
    (JPEG has no alpha).  Also what the HTML report's sample cards show."""
    im.draft("RGB", (max_px, max_px))  # JPEG: decode at a reduced scale
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, (255, 255, 255))
        im.paste(rgba, mask=rgba.getchannel("A"))
    else:
        im = im.convert("RGB")
    im.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=optimize)
    return buf.getvalue()


def thumbnail(data: bytes, max_px: int = MAX_PX) -> bytes | None:
    """A JPEG of ``data`` (an encoded image) whose longest side is at most ``max_px``; transparency
    on white.  None for bytes that do not decode (the report then says the image is missing)."""
    try:
        return jpeg_of(Image.open(io.BytesIO(data)), max_px)
    except Exception:  # noqa: BLE001 -- an undecodable image is shown as missing, never fatal
        return None
