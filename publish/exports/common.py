"""What every trainer export shares: reading the canonical shards, rendering the
conversation columns to tagged text, writing images and files, and the format registry.

A format is one module of this package with a ``TrainerFormat`` subclass; the
subclass registers itself on definition (like the stages in
``pipeline.core.stage``), so adding a format is adding a module.

Image paths are relative to the export folder, so a copied dataset folder
keeps working; ``root`` (``--root DIR``) writes them under DIR instead, where
the export will live on the training machine.  Each export's README says how
its trainer resolves them; it names the build machine's paths only in the
command that writes the export again (``publish.exports.readme``), which runs there.

Every format writes the same ``<image>`` tag count as images in every row
(a literal ``<image>`` inside a text is rewritten to ``image``).  Images are
written once, named by content hash: a build's exports (``export_dataset``) share one
folder, ``exports/images/``, which their files name as ``../images/...`` (relative to the
export folder, as before); an export written alone keeps its own ``images/``.  ``export.json`` lists the
files of the export; a rerun removes the files of the previous export that it
no longer writes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import pyarrow as pa

from pipeline.files import storage
from pipeline.files.ownership import open_folder
from publish.layout import configs
from publish.exports.sinks import ParquetSink, Sink

log = logging.getLogger("pipeline")

IMAGE_TAG = "<image>"
#: how a README names the export folder when paths are relative to it
HERE = "<this folder>"
_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-\d+-of-\d+\.parquet$")
_BATCH_ROWS = 256
#: columns most formats read from a canonical shard
PAIR_COLUMNS = ["prompt", "chosen", "rejected", "images", "rejected_images", "id"]


# -- reading the canonical folder -------------------------------------------------
@dataclass(frozen=True)
class CanonicalShard:
    config: str   # "default" (text-contrast) or "image_crop"
    split: str
    uri: str
    relpath: str  # relative to the dataset folder


def canonical_shards(input_dir: str) -> list[CanonicalShard]:
    out = []
    for config, folder in configs():
        for uri in storage.list_files(storage.join(input_dir, folder), ".parquet"):
            name = uri.rsplit("/", 1)[1]
            m = _SHARD_RE.match(name)
            out.append(CanonicalShard(config, m.group("split") if m else "train", uri, f"{folder}/{name}"))
    if not out:
        raise FileNotFoundError(f"{input_dir}: no dataset shards under data/ (is it a folder written by `write`?)")
    return out


def iter_rows(uri: str, columns: list[str] | None = None) -> Iterator[dict]:
    with storage.parquet_file(uri) as pf:
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            yield from batch.to_pylist()


def dataset_name(input_dir: str, name: str | None = None) -> str:
    if not name and storage.exists(storage.join(input_dir, "manifest.json")):
        name = storage.read_json(storage.join(input_dir, "manifest.json")).get("name")
    name = name or os.path.basename(input_dir.rstrip("/")) or "mmpr"
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "mmpr"


# -- text rendering ---------------------------------------------------------------
class TextRenderer:
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
def image_ext(data: bytes) -> str:
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


class SharedImages:
    """One content-addressed image folder that every export of one build writes into
    (``<exports>/images/``): each image once, however many formats name it.  The folder it is
    in (the dataset folder's ``exports/``) is the pipeline's; ``finish`` removes the images a
    previous export of the build wrote that no format names now."""

    FOLDER = "images"

    def __init__(self, exports_dir: str) -> None:
        self.root = exports_dir
        self.files: set[str] = set()

    def put(self, data: bytes) -> str:
        """Write ``data`` once; its path relative to the exports folder."""
        digest = hashlib.sha256(data).hexdigest()[:32]
        rel = f"{self.FOLDER}/{digest[:2]}/{digest}{image_ext(data)}"
        if rel not in self.files:
            if not storage.exists(storage.join(self.root, rel)):
                storage.write_bytes(storage.join(self.root, rel), data)
            self.files.add(rel)
        return rel

    def finish(self, previous: list[str], keep: bool = False) -> dict:
        """Remove the images of ``previous`` (the last index's list) no export names now, or, with
        ``keep`` (a format of the last export was not written again, and its folder still names
        them), keep them listed; the index entry."""
        stale = set(previous) - self.files
        if keep:
            self.files |= {rel for rel in stale if rel.startswith(self.FOLDER + "/")}
        else:
            for rel in sorted(stale):
                if rel.startswith(self.FOLDER + "/") and storage.exists(storage.join(self.root, rel)):
                    storage.remove(storage.join(self.root, rel))
        return {"folder": self.FOLDER, "count": len(self.files), "files": sorted(self.files)}


class ExportFolder:
    """Files of one export folder; stale files of a previous export are removed at the end.

    Every file goes through the folder's ledger (``pipeline.files.ownership``): a top-level entry is
    reserved before its first write, so a file of someone else's is never replaced."""

    def __init__(self, fmt: str, input_dir: str, root: str, image_root: str | None = None,
                 adopt: bool = False, curriculum: Any = None, shared: SharedImages | None = None) -> None:
        self.fmt, self.input_dir, self.root, self.image_root = fmt, input_dir, root, image_root
        #: the build's shared image folder (None: this export writes its own ``images/``)
        self.shared = shared
        #: the image folder as the export's files name it, relative to the export folder
        self.image_dir = f"../{SharedImages.FOLDER}" if shared is not None else "images"
        #: which prompts the RL exports keep (``publish.exports.rl.Curriculum``; None: every one with ground truth)
        self.curriculum = curriculum
        self.ledger = open_folder(root, "export", "--output", adopt)
        self.claimed: list[str] = []  # entries this export added to the ledger (undone by abort)
        self.files: set[str] = set()
        self.images: dict[str, str] = {}  # content hash -> relative path
        self.sinks: dict[str, Sink | ParquetSink] = {}
        self.text = TextRenderer()
        self.rows: Counter = Counter()

    def uri(self, rel: str) -> str:
        return storage.join(self.root, rel)

    def ref(self, rel: str) -> str:
        """How an export file names another: relative to the export folder, or under ``image_root``."""
        return f"{self.image_root.rstrip('/')}/{rel}" if self.image_root else rel

    def reserve(self, rel: str) -> None:
        """Claim ``rel``'s top-level entry (``images/`` for an image) before it is first written."""
        top, sep, _ = rel.partition("/")
        if not self.ledger.owns(top + sep):
            self.ledger.reserve(top + sep)
            self.claimed.append(top + sep)

    def write_bytes(self, rel: str, data: bytes | pa.Buffer) -> None:
        self.reserve(rel)
        storage.write_bytes(self.uri(rel), data)
        self.files.add(rel)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())

    def sink(self, rel: str) -> Sink:
        if rel not in self.sinks:
            self.reserve(rel)
            self.sinks[rel] = Sink(self.uri(rel))
            self.files.add(rel)
        return self.sinks[rel]

    def parquet_sink(self, rel: str, schema: pa.Schema) -> ParquetSink:
        """A Parquet file of the export written a table at a time (closed by ``finish``)."""
        if rel not in self.sinks:
            self.reserve(rel)
            self.sinks[rel] = ParquetSink(self.uri(rel), schema)
            self.files.add(rel)
        return self.sinks[rel]

    @staticmethod
    def image_bytes(img: dict) -> bytes:
        """An image's bytes: its own, or read from its path."""
        data = img.get("bytes")
        if data is None:
            path = img.get("path")
            if not path or not storage.exists(path):
                raise ValueError(f"image without bytes and without a readable path ({path!r})")
            data = storage.read_bytes(path)
        return data

    def image(self, img: dict) -> str:
        """Write an image once (named by content hash); its path relative to the export folder
        (``../images/...`` in the build's shared folder, else ``images/...``)."""
        data = self.image_bytes(img)
        digest = hashlib.sha256(data).hexdigest()[:32]
        rel = self.images.get(digest)
        if rel is None and self.shared is not None:
            rel = self.images[digest] = f"../{self.shared.put(data)}"
        elif rel is None:
            rel = f"images/{digest[:2]}/{digest}{image_ext(data)}"
            self.reserve(rel)
            if not storage.exists(self.uri(rel)):
                storage.write_bytes(self.uri(rel), data)
            self.images[digest] = rel
            self.files.add(rel)
        return rel

    def abort(self) -> None:
        """A failed export leaves nothing new behind: its temp files and the entries it added go."""
        for s in self.sinks.values():
            s.discard()
        for rel in reversed(self.claimed):
            self.ledger.remove(rel, forget=True)

    def finish(self, extra: dict | None = None) -> dict:
        for s in self.sinks.values():
            s.close()
        manifest_uri = self.uri("export.json")
        previous = storage.read_json(manifest_uri).get("files", []) if storage.exists(manifest_uri) else []
        self.reserve("export.json")
        for rel in sorted(set(previous) - self.files - {"export.json"}):
            if self.ledger.owns(rel) and storage.exists(self.uri(rel)):
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


# -- the registry -----------------------------------------------------------------------
#: every format defined so far, by name (filled by ``TrainerFormat.__init_subclass__``)
REGISTRY: dict[str, type["TrainerFormat"]] = {}


class TrainerFormat:
    """One trainer's layout of a dataset folder; a subclass with a ``name`` registers itself."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return
        known = REGISTRY.get(cls.name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"export format {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
        REGISTRY[cls.name] = cls

    def write(self, ex: ExportFolder, shards: list[CanonicalShard], dataset_name: str) -> dict:
        """Write the export's files through ``ex``; returns extra fields for ``export.json``."""
        raise NotImplementedError
