"""Benchmark reference sets for decontamination: read with the source readers, indexed once.

A reference set is configured like a source (``SourceConfig``: jsonl, parquet, hf, mmpr,
image_folder; ``fields``, ``image_root``, ``allowed_image_roots``) and read by the same
readers with the same root checks; a row that cannot be read or whose image is refused is
counted and skipped, never fatal.  ``ReferenceIndex`` holds, per reference item, its
normalised question, pHashes and colour thumbnails, plus lookups by exact question key,
LSH band and question n-gram.

Two rules mark a training prompt as contaminated (``ReferenceIndex.match``):

* **image_question**: one of its images matches one of the item's images (pHash within ``k``
  bits and the colour check) and its question matches (3-gram Jaccard >= threshold);
* **ngram**: its question shares a word n-gram (default 13) with a reference question, unless
  that n-gram is boilerplate: found in at least ``boilerplate_items`` reference items, or in a
  prompt template or a short-answer suffix (here), or in many training prompts (decided by the
  stage's driver merge, which alone sees them all).

The index is built once per process and reused by every partition (``index_for``); for a
benchmark of 10k items it holds ~1 KB an item.  ``fingerprint`` hashes a reference's files
(the path's file, or every file under its folder), for the dataset card.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

from methods import image_hash as ih
from methods import question_keys as qk
from pipeline.files import storage
from pipeline.files.image_refs import allowed_roots
from pipeline.sources.images import ImageError, load_image
from pipeline.sources.readers import iter_source

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config.sources import SourceConfig


@dataclass(frozen=True)
class Rules:
    image_question: bool = True
    k: int = 10
    colour_tolerance: float = 50.0
    threshold: float = 0.9
    ngram: bool = True
    n: int = 13
    boilerplate_items: int = 5


@dataclass
class Hit:
    reference: str
    rule: str
    item: str
    detail: str
    #: ngram hits: (n-gram key, reference set, item) of every reference n-gram the prompt holds
    grams: list[tuple[int, str, str]] = field(default_factory=list)


def reference_items(src: "SourceConfig") -> Iterator[tuple[str, str, list[bytes]] | None]:
    """(row key, question with its choices, image bytes) per readable reference row; None for a
    row that cannot be read (a bad line, a missing or refused image)."""
    fields = {k: src.fields.get(k, k) for k in ("question", "image", "images", "choices")}
    for raw in iter_source(src):
        data = raw.get("data")
        question = data.get(fields["question"], src.default_question) if isinstance(data, dict) else None
        if raw.get("error") or not isinstance(question, str) or not question.strip():
            yield None
            continue
        refs = data.get(fields["images"])
        refs = data.get(fields["image"]) if refs is None else refs
        refs = [] if refs in (None, "") else refs if isinstance(refs, (list, tuple)) else [refs]
        roots = allowed_roots(raw.get("root"), src.allowed_image_roots)
        try:
            images = [load_image(ref, raw.get("root"), roots)["bytes"] for ref in refs]
        except ImageError:
            yield None
            continue
        choices = data.get(fields["choices"]) or []
        choices = [str(c) for c in choices] if isinstance(choices, (list, tuple)) else []
        yield raw["row_key"], qk.prompt_text(question, choices), images


def fingerprint(src: "SourceConfig") -> str:
    """SHA-256 (first 16 hex digits) of the reference's files: its file, or every file under its
    folder (names and bytes); a hub id that is no local path hashes as its name and split."""
    h = hashlib.sha256()
    try:
        if storage.is_dir(src.path):
            for rel in storage.walk_files(src.path):
                h.update(rel.encode() + b"\0" + hashlib.sha256(storage.read_bytes(storage.join(src.path, rel))).digest())
        elif storage.exists(src.path):
            h.update(hashlib.sha256(storage.read_bytes(src.path)).digest())
        else:
            h.update(f"hub:{src.path}:{src.split}".encode())
    except OSError:
        h.update(f"unreadable:{src.path}".encode())
    return h.hexdigest()[:16]


@dataclass
class _Ref:
    name: str
    items: list[tuple[str, str, list[int], list[bytes]]] = field(default_factory=list)  # key, text, hashes, thumbs
    by_key: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    ngrams: dict[int, int] = field(default_factory=dict)  # n-gram key -> first item
    unreadable: int = 0


class ReferenceIndex:
    """Every reference set's items and lookups (see the module docstring)."""

    def __init__(self, references: Sequence["SourceConfig"], rules: Rules, suffixes: Sequence[str],
                 boilerplate_texts: Sequence[str] = (), draft: bool = False) -> None:
        self.rules, self.suffixes, self.draft = rules, tuple(suffixes), draft
        self.boilerplate = {g for t in (*boilerplate_texts, *suffixes)
                            for g in qk.ngram_keys(qk.tokens(t), rules.n)}
        self.refs = [self._build(src) for src in references]

    def _build(self, src: "SourceConfig") -> _Ref:
        ref, df = _Ref(src.name), defaultdict(int)
        for found in reference_items(src):
            if found is None:
                ref.unreadable += 1
                continue
            key, text, images = found
            toks = qk.tokens(text, self.suffixes)
            hashes, thumbs = ih.image_keys(images, self.draft)
            i = len(ref.items)
            ref.items.append((key, " ".join(toks), [int(h) for h in hashes], thumbs))
            for k in (qk.exact_key(toks), *qk.band_keys(qk.signature(toks)).tolist()):
                ref.by_key[int(k)].append(i)
            for g in qk.ngram_keys(toks, self.rules.n):
                df[g] += 1
                ref.ngrams.setdefault(g, i)
        ref.ngrams = {g: i for g, i in ref.ngrams.items()
                      if df[g] < self.rules.boilerplate_items and g not in self.boilerplate}
        return ref

    def match(self, question: str, choices: Sequence[str], images: Sequence[bytes]) -> Hit | None:
        """A training prompt's image_question hit (the first), else its n-gram hits (every
        non-boilerplate reference n-gram it holds: ``Hit.grams``), or None."""
        toks = qk.tokens(qk.prompt_text(question, choices), self.suffixes)
        text, r = " ".join(toks), self.rules
        if r.image_question and images:
            keys = [qk.exact_key(toks), *qk.band_keys(qk.signature(toks)).tolist()]
            hashes, thumbs = ih.image_keys(list(images), self.draft)
            for ref in self.refs:
                for i in sorted({i for k in keys for i in ref.by_key.get(int(k), ())}):
                    hit = self._image_question(ref, i, text, hashes, thumbs)
                    if hit:
                        return hit
        grams = self.grams(toks)
        if not grams:
            return None
        _, name, item = grams[0]
        return Hit(name, "ngram", item, f"shares a {r.n}-word n-gram with reference item {item!r} of {name}", grams)

    def grams(self, toks: Sequence[str]) -> list[tuple[int, str, str]]:
        """(n-gram key, reference set, item) of every non-boilerplate reference n-gram in ``toks``."""
        if not self.rules.ngram:
            return []
        return [(g, ref.name, ref.items[ref.ngrams[g]][0]) for g in qk.ngram_keys(toks, self.rules.n)
                for ref in self.refs if g in ref.ngrams]

    def tokens(self, question: str, choices: Sequence[str]) -> list[str]:
        return qk.tokens(qk.prompt_text(question, choices), self.suffixes)

    def _image_question(self, ref: _Ref, i: int, text: str, hashes, thumbs) -> Hit | None:
        key, rtext, rhashes, rthumbs = ref.items[i]
        j = qk.similarity(text, rtext)
        if j < self.rules.threshold:
            return None
        for h, t in zip(hashes, thumbs):
            for rh, rt in zip(rhashes, rthumbs):
                ok, bits, colour = ih.images_match([h], [t], [rh], [rt], self.rules.k, self.rules.colour_tolerance)
                if ok:
                    return Hit(ref.name, "image_question", key, f"reference item {key!r} of {ref.name}: image bits "
                                                                f"{bits[0]}, colour {colour[0]}, question jaccard {j:.3f}")
        return None

    def counts(self) -> dict[str, dict[str, int]]:
        return {ref.name: {"items": len(ref.items), "unreadable": ref.unreadable} for ref in self.refs}


_INDEXES: dict[str, ReferenceIndex] = {}


def index_for(references: Sequence["SourceConfig"], rules: Rules, suffixes: Sequence[str],
              boilerplate_texts: Sequence[str] = (), draft: bool = False) -> ReferenceIndex:
    """The index of these references under these rules, built once per process."""
    key = json.dumps([[r.model_dump(mode="json") for r in references], rules.__dict__, list(suffixes),
                      list(boilerplate_texts), draft], sort_keys=True, default=str)
    if key not in _INDEXES:
        _INDEXES[key] = ReferenceIndex(references, rules, suffixes, boilerplate_texts, draft)
    return _INDEXES[key]
