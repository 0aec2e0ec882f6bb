"""Trainer layouts of a built dataset: ``python -m pipeline export --format F --input OUT --output DIR``.

Reads the canonical shards of a dataset folder written by the ``write`` stage
(``data/*.parquet`` text-contrast pairs and ``data/image_crop/*.parquet``
image-contrast pairs) one shard at a time and lays them out for a trainer
(DESIGN.md "Trainer formats"):

``trl``
    Parquet with the TRL columns ``prompt``/``chosen``/``rejected``/``images``
    (+ ``rejected_images`` in the ``image_crop`` files), provenance dropped,
    the Hugging Face image metadata kept; same ``data/`` and
    ``data/image_crop/`` layout and a card with the ``configs:`` header.
``llamafactory``
    sharegpt ranking rows (``conversations``/``chosen``/``rejected``/``images``)
    in jsonl, images as files (LLaMA-Factory resolves them against its
    ``media_dir``, which defaults to ``dataset_dir``),
    and ``dataset_info.json`` entries with ``"ranking": true``.  Image-crop
    rows go to their own files/entries and carry an extra ``rejected_images``
    column that LLaMA-Factory itself does not read.
``swift``
    ms-swift rows: ``messages`` (user turn with ``<image>`` tags, then the
    chosen assistant turn), ``rejected_response``, ``images`` and, for
    text-contrast pairs (a row whose rejected equals its chosen is left out
    and counted: ms-swift would delete it), or ``rejected_images`` and no
    ``rejected_response`` for image-contrast pairs (ms-swift then builds the
    rejected side from the same messages with the rejected images).
``internvl``
    InternVL MPO jsonl, one file per (source, method): ``image`` (a path, or a
    list for several images), ``question`` (``<image>\\n`` placeholder, or
    ``Image-1: <image>\\n...`` for several), ``chosen``, ``rejected``; images under
    ``images/``; ``meta.json`` maps each subset to ``{root, annotation,
    data_augment, repeat_time, length}``.  ``meta.json`` holds the train split of
    the text-contrast pairs; test subsets go to ``meta_test.json`` and
    image-crop subsets (rows with an extra ``rejected_image``) to
    ``meta_image_crop.json``, since the MPO trainer has no rejected image.

Image paths are relative to the export folder, so a copied dataset folder
keeps working; ``root`` (``--root DIR``) writes them under DIR instead, where
the export will live on the training machine.  Each export's README says how
its trainer resolves them (``pipeline.export_docs``).

Every format writes the same ``<image>`` tag count as images in every row
(a literal ``<image>`` inside a text is rewritten to ``image``).  Images are
written once per export, named by content hash.  ``export.json`` lists the
files of the export; a rerun removes the files of the previous export that it
no longer writes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import export_docs, storage

log = logging.getLogger("pipeline")

FORMATS = ("trl", "llamafactory", "swift", "internvl")
IMAGE_TAG = "<image>"
_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-\d+-of-\d+\.parquet$")
_FOLDERS = (("default", "data"), ("image_crop", "data/image_crop"))
_BATCH_ROWS = 256


# -- reading the canonical folder -------------------------------------------------
@dataclass(frozen=True)
class CanonicalShard:
    config: str   # "default" (text-contrast) or "image_crop"
    split: str
    uri: str
    relpath: str  # relative to the dataset folder


def canonical_shards(input_dir: str) -> list[CanonicalShard]:
    out = []
    for config, folder in _FOLDERS:
        for uri in storage.list_files(storage.join(input_dir, folder), ".parquet"):
            name = uri.rsplit("/", 1)[1]
            m = _SHARD_RE.match(name)
            out.append(CanonicalShard(config, m.group("split") if m else "train", uri, f"{folder}/{name}"))
    if not out:
        raise FileNotFoundError(f"{input_dir}: no dataset shards under data/ (is it a folder written by `write`?)")
    return out


def iter_rows(uri: str, columns: list[str] | None = None) -> Iterator[dict]:
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            yield from batch.to_pylist()


def _dataset_name(input_dir: str, name: str | None = None) -> str:
    if not name and storage.exists(storage.join(input_dir, "manifest.json")):
        name = storage.read_json(storage.join(input_dir, "manifest.json")).get("name")
    name = name or os.path.basename(input_dir.rstrip("/")) or "mmpr"
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "mmpr"


# -- text rendering ---------------------------------------------------------------
class _Text:
    """Renders conversation columns to tagged strings and counts rewritten literal tags."""

    def __init__(self) -> None:
        self.rewritten_tags = 0

    def clean(self, text: str | None) -> str:
        text = text or ""
        if IMAGE_TAG in text:
            self.rewritten_tags += text.count(IMAGE_TAG)
            text = text.replace(IMAGE_TAG, "image")
        return text

    def message(self, message: dict, tag: str = IMAGE_TAG) -> tuple[str, int]:
        """(text with one ``tag`` per image part, number of image parts)."""
        out, n = [], 0
        for part in message.get("content") or []:
            if part.get("type") == "image":
                out.append(tag)
                n += 1
            elif part.get("type") == "text":
                out.append(self.clean(part.get("text")))
        return "".join(out), n

    def plain(self, message: dict) -> str:
        return "".join(self.clean(p.get("text")) for p in message.get("content") or [] if p.get("type") == "text")

    def reply(self, conversation: list[dict]) -> str:
        """The answer text of a chosen/rejected column (its assistant turns)."""
        return "\n".join(self.plain(m) for m in conversation if m.get("role") == "assistant") \
            or "\n".join(self.plain(m) for m in conversation)

    def prompt_turns(self, prompt: list[dict], n_images: int) -> tuple[str | None, list[tuple[str, str]]]:
        """(system text, [(role, text)]) with exactly ``n_images`` image tags in the user turns."""
        system, turns, tags = None, [], 0
        for m in prompt:
            if m.get("role") == "system":
                system = self.plain(m)
                continue
            text, n = self.message(m)
            tags += n
            turns.append((m.get("role") or "user", text))
        if tags > n_images:
            raise ValueError(f"prompt has {tags} image parts but the row has {n_images} images")
        first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
        if first_user is None:
            turns.insert(0, ("user", ""))
            first_user = 0
        if tags < n_images:  # images without a placeholder: put them before the first user text
            role, text = turns[first_user]
            turns[first_user] = (role, IMAGE_TAG * (n_images - tags) + text)
        return system, turns


# -- writing the export folder --------------------------------------------------------
def _image_ext(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:2] == b"BM":
        return ".bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    return ".bin"


class _Sink:
    """A text file written line by line, under its final name only when closed."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        fs, path = storage.resolve(uri)
        self.local = isinstance(fs, pafs.LocalFileSystem)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.final = path
            self.tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        else:
            fd, self.tmp = tempfile.mkstemp(suffix=".jsonl")
            os.close(fd)
        self.f = open(self.tmp, "w", encoding="utf-8")
        self.lines = 0

    def write_json(self, obj: Any) -> None:
        self.f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.lines += 1

    def close(self) -> None:
        self.f.close()
        if self.local:
            os.replace(self.tmp, self.final)
        else:
            with open(self.tmp, "rb") as f:
                storage.write_bytes(self.uri, f.read())
            os.remove(self.tmp)


class _Export:
    """Files of one export folder; stale files of a previous export are removed at the end."""

    def __init__(self, fmt: str, input_dir: str, root: str, image_root: str | None = None) -> None:
        self.fmt, self.input_dir, self.root, self.image_root = fmt, input_dir, root, image_root
        self.files: set[str] = set()
        self.images: dict[str, str] = {}  # content hash -> relative path
        self.sinks: dict[str, _Sink] = {}
        self.text = _Text()
        self.rows: Counter = Counter()

    def uri(self, rel: str) -> str:
        return storage.join(self.root, rel)

    def ref(self, rel: str) -> str:
        """How an export file names another: relative to the export folder, or under ``image_root``."""
        return f"{self.image_root.rstrip('/')}/{rel}" if self.image_root else rel

    def write_bytes(self, rel: str, data: bytes | pa.Buffer) -> None:
        storage.write_bytes(self.uri(rel), data)
        self.files.add(rel)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())

    def sink(self, rel: str) -> _Sink:
        if rel not in self.sinks:
            self.sinks[rel] = _Sink(self.uri(rel))
            self.files.add(rel)
        return self.sinks[rel]

    def image(self, img: dict) -> str:
        """Write an image once (named by content hash); its path relative to the export folder."""
        data = img.get("bytes")
        if data is None:
            path = img.get("path")
            if not path or not storage.exists(path):
                raise ValueError(f"image without bytes and without a readable path ({path!r})")
            data = storage.read_bytes(path)
        digest = hashlib.sha256(data).hexdigest()[:32]
        rel = self.images.get(digest)
        if rel is None:
            rel = f"images/{digest[:2]}/{digest}{_image_ext(data)}"
            if not storage.exists(self.uri(rel)):
                storage.write_bytes(self.uri(rel), data)
            self.images[digest] = rel
            self.files.add(rel)
        return rel

    def abort(self) -> None:
        for s in self.sinks.values():
            s.f.close()
            if os.path.exists(s.tmp):
                os.remove(s.tmp)

    def finish(self, extra: dict | None = None) -> dict:
        for s in self.sinks.values():
            s.close()
        manifest_uri = self.uri("export.json")
        previous = storage.read_json(manifest_uri).get("files", []) if storage.exists(manifest_uri) else []
        for rel in sorted(set(previous) - self.files - {"export.json"}):
            if storage.exists(self.uri(rel)):
                fs, path = storage.resolve(self.uri(rel))
                fs.delete_file(path)
        summary = {
            "format": self.fmt, "source": os.path.basename(self.input_dir.rstrip("/")),
            "root": self.image_root,
            "rows": dict(sorted(self.rows.items())), "images": len(self.images),
            "rewritten_image_tags": self.text.rewritten_tags,
            **(extra or {}),
            "files": sorted(self.files),
        }
        storage.write_json(manifest_uri, summary)
        return summary


# -- formats --------------------------------------------------------------------------
def _export_trl(ex: _Export, shards: list[CanonicalShard]) -> dict:
    from schemas import PAIR_SCHEMA, with_hf_metadata
    from stages.write import card_header, parquet_bytes

    written = []
    for sh in shards:
        cols = ["prompt", "chosen", "rejected", "images"] + (["rejected_images"] if sh.config == "image_crop" else [])
        schema = with_hf_metadata(pa.schema([PAIR_SCHEMA.field(c) for c in cols]))
        table = storage.read_table(sh.uri, columns=cols).cast(schema)
        data = parquet_bytes(table)
        ex.write_bytes(sh.relpath, data)
        ex.rows[f"{sh.config}.{sh.split}"] += table.num_rows
        written.append({"path": sh.relpath, "config": sh.config, "split": sh.split, "rows": table.num_rows,
                        "bytes": data.size, "arrow_bytes": table.nbytes})
    body = ("# TRL export\n\nColumns `prompt`/`chosen`/`rejected` (conversational) and `images` for TRL's "
            "DPOTrainer; the `image_crop` config adds `rejected_images` (mDPO-style trainers).\n")
    ex.write_bytes("README.md", (card_header(written) + "\n" + body).encode())
    return {}


def _export_llamafactory(ex: _Export, shards: list[CanonicalShard], name: str) -> dict:
    has_system: dict[str, bool] = {}
    for sh in shards:
        base = sh.split if sh.config == "default" else f"image_crop_{sh.split}"
        rel = f"{base}.jsonl"
        sink = ex.sink(rel)
        has_system.setdefault(rel, False)
        for row in iter_rows(sh.uri, ["prompt", "chosen", "rejected", "images", "rejected_images", "id"]):
            images = [ex.image(im) for im in row["images"] or []]
            system, turns = ex.text.prompt_turns(row["prompt"], len(images))
            out: dict[str, Any] = {
                "conversations": [{"from": "human" if r == "user" else "gpt", "value": t} for r, t in turns],
                "chosen": {"from": "gpt", "value": ex.text.reply(row["chosen"])},
                "rejected": {"from": "gpt", "value": ex.text.reply(row["rejected"])},
                "images": images,
            }
            if system:
                out["system"] = system
                has_system[rel] = True
            if sh.config == "image_crop":
                out["rejected_images"] = [ex.image(im) for im in row["rejected_images"] or []]
            out["id"] = row["id"]
            sink.write_json(out)
            ex.rows[f"{sh.config}.{sh.split}"] += 1
    info = {}
    for rel in sorted(has_system):
        columns = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "images": "images"}
        if has_system[rel]:
            columns["system"] = "system"
        info[f"{name}_{rel[:-len('.jsonl')]}"] = {
            "file_name": rel, "formatting": "sharegpt", "ranking": True, "columns": columns,
        }
    ex.write_json("dataset_info.json", info)
    first = f"{name}_train" if f"{name}_train" in info else next(iter(sorted(info)), f"{name}_train")
    ex.write_bytes("README.md", export_docs.llamafactory_readme(first, ex.image_root).encode())
    return {"datasets": sorted(info)}


def _export_swift(ex: _Export, shards: list[CanonicalShard]) -> dict:
    left_out: Counter = Counter()  # text-contrast rows whose rejected text equals the chosen
    for sh in shards:
        sink = ex.sink(f"{sh.split}.jsonl" if sh.config == "default" else f"image_crop_{sh.split}.jsonl")
        for row in iter_rows(sh.uri, ["prompt", "chosen", "rejected", "images", "rejected_images", "id"]):
            images = [ex.ref(ex.image(im)) for im in row["images"] or []]
            system, turns = ex.text.prompt_turns(row["prompt"], len(images))
            messages = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": r, "content": t} for r, t in turns] + \
                [{"role": "assistant", "content": ex.text.reply(row["chosen"])}]
            out: dict[str, Any] = {"messages": messages, "images": images}
            if sh.config == "image_crop":  # same text on both sides: ms-swift wants no rejected_response
                out["rejected_images"] = [ex.ref(ex.image(im)) for im in row["rejected_images"] or []]
            else:
                out["rejected_response"] = ex.text.reply(row["rejected"])
                if out["rejected_response"] == messages[-1]["content"]:  # ms-swift deletes such rows
                    left_out[sh.split] += 1
                    continue
            out["id"] = row["id"]
            sink.write_json(out)
            ex.rows[f"{sh.config}.{sh.split}"] += 1
    ex.write_bytes("README.md", export_docs.swift_readme(ex.image_root).encode())
    if left_out:
        log.warning("swift export: left out %d pair(s) whose rejected text equals the chosen (ms-swift "
                    "deletes them): %s", sum(left_out.values()), dict(left_out))
    return {"left_out_rejected_equals_chosen": dict(sorted(left_out.items()))}


def internvl_question(text: str, n_images: int) -> str:
    """InternVL's placeholder convention: ``<image>\\n`` for one image, ``Image-k: <image>\\n`` for several."""
    if n_images == 0:
        return text
    if n_images == 1:
        return f"{IMAGE_TAG}\n{text}"
    return "".join(f"Image-{k + 1}: {IMAGE_TAG}\n" for k in range(n_images)) + text


def _subset_name(source: str, method: str, split: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", f"{source}_{method}")
    return name if split == "train" else f"{name}_{split}"


def _export_internvl(ex: _Export, shards: list[CanonicalShard]) -> dict:
    subsets: dict[str, tuple[str, str]] = {}  # subset -> (meta file, annotation rel)
    for sh in shards:
        cols = ["prompt", "chosen", "rejected", "images", "rejected_images", "source", "method", "id"]
        for row in iter_rows(sh.uri, cols):
            images = [ex.image(im) for im in row["images"] or []]
            system, turns = ex.text.prompt_turns(row["prompt"], len(images))
            text = "\n".join(t for r, t in turns if r == "user").replace(IMAGE_TAG, "")
            if system:
                text = f"{system}\n{text}"
            rel_images = [p[len("images/"):] for p in images]  # relative to the subset root (images/)
            out: dict[str, Any] = {
                "id": row["id"],
                "image": rel_images[0] if len(rel_images) == 1 else rel_images,
                "question": internvl_question(text, len(images)),
                "chosen": ex.text.reply(row["chosen"]),
                "rejected": ex.text.reply(row["rejected"]),
            }
            if sh.config == "image_crop":
                rej = [ex.image(im)[len("images/"):] for im in row["rejected_images"] or []]
                out["rejected_image"] = rej[0] if len(rej) == 1 else rej
            subset = _subset_name(row["source"], row["method"], sh.split)
            meta = ("meta_image_crop.json" if sh.config == "image_crop"
                    else "meta.json" if sh.split == "train" else f"meta_{sh.split}.json")
            rel = f"annotations/{subset}.jsonl"
            subsets[subset] = (meta, rel)
            ex.sink(rel).write_json(out)
            ex.rows[f"{sh.config}.{sh.split}"] += 1
    metas: dict[str, dict] = {"meta.json": {}}
    for subset in sorted(subsets):
        meta, rel = subsets[subset]
        metas.setdefault(meta, {})[subset] = {
            "root": ex.ref("images"), "annotation": ex.ref(rel),
            "data_augment": False, "repeat_time": 1, "length": ex.sinks[rel].lines,
        }
    for meta, content in metas.items():
        ex.write_json(meta, content)
    ex.write_bytes("README.md", export_docs.internvl_readme(list(metas), ex.image_root).encode())
    return {"subsets": {m: sorted(c) for m, c in metas.items()}}


def export(fmt: str, input_dir: str, output_dir: str, name: str | None = None, root: str | None = None) -> dict:
    """Lay the dataset folder ``input_dir`` out for trainer ``fmt`` under ``output_dir``; returns a summary.

    ``name`` prefixes the LLaMA-Factory dataset names (default: the manifest's ``name``).  ``root``:
    where the export folder will be on the training machine; paths are written under it instead
    of relative to the export folder.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {list(FORMATS)}")
    shards = canonical_shards(input_dir)
    ex = _Export(fmt, input_dir, output_dir, root)
    try:
        if fmt == "trl":
            extra = _export_trl(ex, shards)
        elif fmt == "llamafactory":
            extra = _export_llamafactory(ex, shards, _dataset_name(input_dir, name))
        elif fmt == "swift":
            extra = _export_swift(ex, shards)
        else:
            extra = _export_internvl(ex, shards)
    except BaseException:
        ex.abort()
        raise
    return ex.finish(extra)
