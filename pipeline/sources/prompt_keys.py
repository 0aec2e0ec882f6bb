"""Near-duplicate keys of prompts, and the driver's merge of them, from small key files.

Workers compute each prompt's keys (``prompt_keys``): the pHash and colour thumbnail of
every image, the exact key and 16 LSH band keys of its normalised question (with its
choices), the normalised text itself and a key of its ground truth.  They go to a key file
per partition (``KEYS_SCHEMA``: about 300 bytes a one-image prompt, no images).  The driver
(``near_duplicates``) then reads the key files a few columns at a time, finds candidate pairs
(``methods.near_duplicates``), reads the images' and questions' keys of those candidates
only, checks each pair and picks one representative per cluster.

**Driver memory** for N prompts: their ranks (the ids are sorted in Arrow, ~40 B an id, then
dropped), 22 B a prompt held (rank, answer key, first pHash, image count) and one key column
at a time with its sort, plus the candidate pairs (16 B each) and the keys of candidate rows
only; colour thumbnails (192 B an image) and texts stay in the key files.  Measured on
synthetic key files (``bench/bench_dedup.py``, 1% near-duplicates): 1M prompts 84 MB over the
process (88 B a prompt), 14.7 s CPU; 2M prompts 161 MB, 31.5 s.  **10M prompts: about 0.8 GB
and 2.5 minutes of one core** on the driver.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from methods import image_hash as ih
from methods import question_keys as qk
from methods.near_duplicates import Match, candidate_pairs, group_columns, representatives
from pipeline.files import storage

BAND_COLUMNS = [f"band_{i:02d}" for i in range(qk.BANDS)]
KEYS_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.string()),
    pa.field("position", pa.int32()),
    pa.field("answer_key", pa.int64()),
    pa.field("n_images", pa.int16()),
    pa.field("phash", pa.list_(pa.uint64())),
    pa.field("thumbs", pa.list_(pa.binary(ih.THUMB_BYTES))),
    pa.field("text", pa.string()),
    pa.field("question_key", pa.int64()),
    *[pa.field(c, pa.int64()) for c in BAND_COLUMNS],
])


def prompt_keys(rows: Sequence[dict], suffixes: Sequence[str], draft: bool = False) -> list[dict]:
    """One key row per prompt row (``PROMPT_SCHEMA``), in order; ``position`` is its index."""
    images = [img["bytes"] for r in rows for img in r["images"]]
    hashes, thumbs = ih.image_keys(images, draft)
    out, at = [], 0
    for i, r in enumerate(rows):
        n = len(r["images"])
        toks = qk.tokens(qk.prompt_text(r["question"], r.get("choices") or ()), suffixes)
        bands = qk.band_keys(qk.signature(toks))
        out.append({"prompt_id": r["prompt_id"], "position": i, "answer_key": qk.answer_key(r.get("answer") or ()),
                    "n_images": n, "phash": [int(h) for h in hashes[at:at + n]], "thumbs": thumbs[at:at + n],
                    "text": " ".join(toks), "question_key": qk.exact_key(toks),
                    **{c: int(b) for c, b in zip(BAND_COLUMNS, bands)}})
        at += n
    return out


class KeyFiles:
    """The key files of a stage's partitions, read a column or a few rows at a time."""

    def __init__(self, uris: list[tuple[str, str]]) -> None:
        self.parts = [(name, uri) for name, uri in uris if storage.exists(uri)]
        self.sizes = [storage.read_table(uri, columns=["position"]).num_rows for _, uri in self.parts]
        self.offsets = np.cumsum([0, *self.sizes])

    def column(self, name: str) -> pa.ChunkedArray:
        return pa.chunked_array([storage.read_table(uri, columns=[name]).column(0) for _, uri in self.parts],
                                type=KEYS_SCHEMA.field(name).type)

    def rows(self, index: np.ndarray, columns: list[str]) -> dict[int, dict]:
        """Global row index -> the given columns, for these rows only (one file at a time)."""
        out: dict[int, dict] = {}
        index = np.unique(index)
        for f, (_, uri) in enumerate(self.parts):
            lo, hi = self.offsets[f], self.offsets[f + 1]
            mine = index[(index >= lo) & (index < hi)]
            if len(mine):
                t = storage.read_table(uri, columns=columns).take(pa.array(mine - lo))
                for g, row in zip(mine.tolist(), t.to_pylist()):
                    out[g] = row
        return out

    def where(self, g: int) -> tuple[str, int]:
        """(partition, row number in its key file) of global row ``g``."""
        f = int(np.searchsorted(self.offsets, g, side="right")) - 1
        return self.parts[f][0], g - int(self.offsets[f])


def _first_hashes(col: pa.ChunkedArray) -> np.ndarray:
    """Each row's first pHash (0 for a prompt without images)."""
    col = col.combine_chunks()
    offsets, values = col.offsets.to_numpy(), col.values.to_numpy()
    has = offsets[1:] > offsets[:-1]
    out = np.zeros(len(col), np.uint64)
    out[has] = values[offsets[:-1][has]]
    return out


def near_duplicates(files: KeyFiles, k: int, colour_tolerance: float, threshold: float) -> list[Match]:
    """The prompts to drop, each naming the kept one (global row indices of ``files``)."""
    n = int(files.offsets[-1])
    if n < 2:
        return []
    order = pc.sort_indices(files.column("prompt_id")).to_numpy()  # Arrow strings: ~40 B an id
    rank = np.empty(n, np.int32 if n < 2 ** 31 else np.int64)
    rank[order] = np.arange(n)
    del order
    akey = files.column("answer_key").to_numpy()
    nimg = files.column("n_images").to_numpy()
    phash = _first_hashes(files.column("phash"))
    pairs = [np.zeros((0, 2), np.int64)]
    for col in ["question_key", *BAND_COLUMNS]:  # one key column at a time
        groups = group_columns(akey, nimg, files.column(col).to_numpy()[:, None])
        pairs.append(candidate_pairs(groups, phash, k))
    allp = np.concatenate(pairs)
    allp = np.unique(allp, axis=0) if len(allp) else allp
    keys = files.rows(allp.ravel(), ["phash", "thumbs", "text", "answer_key"])

    def check(keep: int, drop: int) -> Match | None:
        a, b = keys[keep], keys[drop]
        if a["answer_key"] != b["answer_key"]:
            return None
        j = qk.similarity(a["text"], b["text"])
        if j < threshold:
            return None
        ok, bits, colour = ih.images_match(a["phash"], a["thumbs"], b["phash"], b["thumbs"], k, colour_tolerance)
        return Match(drop, keep, tuple(bits), tuple(colour), round(j, 3)) if ok else None
    return representatives(n, rank, allp, check)
