"""The dataset folder's layout: which configs and splits exist and where their shards live.

One module, so the write stage, the card, the exports and the HTML report
agree on it.  The configs follow the pair methods the stages declare
(``pipeline.core.stage.PairMethod``): text-contrast pairs are the ``default``
config under ``data/``; each image-contrast method gets a config of its own
under ``data/<method>``.
"""
from __future__ import annotations

from pipeline.core import graph

SPLITS = ("train", "test")


def image_methods() -> tuple[str, ...]:
    """Methods whose pairs differ in the image, not the text (their own files and config)."""
    return tuple(m.name for m in graph.pair_methods() if m.image_contrast)


def configs() -> tuple[tuple[str, str], ...]:
    """Dataset configs in the card, in order: (config name, folder under OUT)."""
    return (("default", "data"), *((name, f"data/{name}") for name in image_methods()))


def method_order() -> tuple[str, ...]:
    """Every pair method in the order reports list them."""
    return tuple(graph.method_names())
