"""The dataset folder's layout: which configs and splits exist and where their shards live.

One module, so the write stage, the card, the exports and the HTML report
agree on it.
"""
from __future__ import annotations

#: methods whose pairs differ in the image, not the text (their own files and config)
IMAGE_METHODS = ("image_crop",)
#: dataset configs in the card, in order: (config name, folder under OUT)
CONFIGS = (("default", "data"), ("image_crop", "data/image_crop"))
SPLITS = ("train", "test")
