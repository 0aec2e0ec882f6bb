"""Which files the pipeline owns: it removes or replaces only what it can prove it wrote.

Users point the pipeline at folders that may hold their own files (a Hugging
Face dataset folder uses the same ``data/train-…parquet`` names; ``--work-dir .``
is one typo away).  So every folder the pipeline writes into carries a record,
``.mmpr-forge.json``::

    {"tool": "mmpr-forge", "role": "dataset", "entries": ["README.md", "data/train-…", …]}

``entries`` is the ledger: paths relative to the folder that the pipeline
created; an entry ending in ``/`` owns that whole subtree (a stage folder it
made).  A path is *reserved* before it is first written: a path that already
exists and is not in the ledger belongs to someone else and is never written,
replaced or removed -- the write fails with a message naming it.

A folder is taken (``Folder.claim``) when it is new or empty, or when it is
already the pipeline's own: it has a record, or it was written by a version
from before records existed (a dataset folder with our ``manifest.json``, a
work folder with stage markers, a stage folder with markers; the ledger is then
rebuilt from what those name).  A non-empty folder of someone else's is refused
before any work starts, unless the user adopts it explicitly (``--adopt``):
the pipeline then adds its own files beside theirs and still touches none of them.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field

from pipeline.files import storage
from pipeline.errors import ConfigError

RECORD = ".mmpr-forge.json"
LOCK = ".mmpr-forge.lock"
#: files of the folder's own bookkeeping: always the pipeline's
BOOKKEEPING = (RECORD, LOCK)
#: what a stage run writes in its folder (pipeline.run.runner)
STAGE_ENTRIES = ("data/", "quarantine/", "side/", "markers/", "failed/", "attempts/", "plan.json", "engine/",
                 "stats.json")
#: a work folder's own files besides one folder per stage
WORK_ENTRIES = ("logs/", "report.json", "models/")
#: a dataset folder's fixed files (its shards are reserved one by one when planned)
DATASET_ENTRIES = ("README.md", "manifest.json", "report.json", "report_images.parquet", "report.html",
                   "exports/")
#: what ``python -m pipeline sample-data`` writes
SAMPLE_ENTRIES = ("images/", "gt.jsonl", "open.jsonl", "README.md")
ROLES = ("work", "stage", "dataset", "export", "sample")
ADOPT_HINT = "give a new or empty folder, or pass --adopt to add the pipeline's files beside the ones there " \
             "(they are never touched)"


class NotOwned(ConfigError):
    """A folder or file the pipeline did not write stands where it would write."""
    label = "error"


@dataclass
class Folder:
    """One folder the pipeline writes into, with its ledger of owned entries."""
    uri: str
    role: str
    entries: set[str] = field(default_factory=set)
    #: the config key or flag that named the folder, for messages
    key: str = ""

    # -- reading what is there ----------------------------------------------------------
    @classmethod
    def load(cls, uri: str, role: str, key: str = "") -> "Folder | None":
        """The folder's record (or one rebuilt from an older version's files); None when the
        folder is missing, empty or not the pipeline's."""
        data = _json_or_none(storage.join(uri, RECORD))
        if isinstance(data, dict) and data.get("tool") == "mmpr-forge":
            return cls(uri, data.get("role", role), set(data.get("entries", [])), key)
        legacy = _legacy_entries(uri, role)
        if legacy is not None:
            return cls(uri, role, legacy, key)
        return None

    @classmethod
    def check(cls, uri: str, role: str, key: str = "", adopt: bool = False) -> "Folder":
        """What claiming ``uri`` for ``role`` would give, writing nothing: the pipeline's own
        folder (its ledger), or a new one with an empty ledger when ``uri`` is new or empty (or
        adopted); ``NotOwned`` for a folder of someone else's or of another role."""
        folder = cls.load(uri, role, key)
        if folder is not None:
            if folder.role != role:
                raise NotOwned(f"{key or 'folder'}: {uri} holds a {folder.role} folder of mmpr-forge, "
                               f"not a {role} folder; give another folder")
            return folder
        foreign = [n for n in _listing(uri) if n not in BOOKKEEPING]
        if foreign and not adopt:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise NotOwned(f"{key or 'folder'}: {uri} is not empty ({shown}) and was not written by "
                           f"mmpr-forge; {ADOPT_HINT}")
        return cls(uri, role, set(), key)

    @classmethod
    def claim(cls, uri: str, role: str, key: str = "", adopt: bool = False) -> "Folder":
        """``check``, then the record written: from here on the folder is the pipeline's."""
        folder = cls.check(uri, role, key, adopt)
        folder.save()
        return folder

    # -- the ledger ------------------------------------------------------------------------
    def owns(self, rel: str) -> bool:
        rel = rel.strip("/")
        if rel in BOOKKEEPING or rel in self.entries or f"{rel}/" in self.entries:
            return True
        return any(e.endswith("/") and rel.startswith(e) for e in self.entries)

    def check_free(self, *rels: str) -> list[str]:
        """The ``rels`` not yet the pipeline's; ``NotOwned`` names every one that already exists
        and is someone else's.  Writes nothing."""
        new = [r for r in rels if not self.owns(r)]
        taken = [r for r in new if storage.exists(self.path(r))]
        if taken:
            raise NotOwned(f"{self.key or 'folder'}: {', '.join(self.path(r) for r in taken)} "
                           f"{'exists' if len(taken) == 1 else 'exist'} and {'was' if len(taken) == 1 else 'were'} "
                           "not written by mmpr-forge, so the pipeline will not replace "
                           f"{'it' if len(taken) == 1 else 'them'}: move {'it' if len(taken) == 1 else 'them'} "
                           "away or choose another folder")
        return new

    def reserve(self, *rels: str) -> None:
        """Record ``rels`` as the pipeline's before they are written (``check_free`` first)."""
        new = self.check_free(*rels)
        if new:
            self.entries.update(new)
            self.save()

    def remove(self, rel: str, forget: bool = False) -> bool:
        """Delete an owned file or folder (``forget``: and drop it from the ledger, for a name the
        pipeline will not write again); False, and nothing deleted, when it is not the pipeline's."""
        if not self.owns(rel):
            return False
        uri = self.path(rel)
        if storage.is_dir(uri):
            storage.remove_tree(uri)
        else:
            storage.remove(uri)
        if forget and rel in self.entries:
            self.entries.discard(rel)
            self.save()
        return True

    def path(self, rel: str) -> str:
        return storage.join(self.uri, rel.rstrip("/"))

    def save(self) -> None:
        storage.write_json(storage.join(self.uri, RECORD), {
            "tool": "mmpr-forge", "role": self.role, "entries": sorted(self.entries)})


def open_folder(uri: str, role: str, key: str = "", adopt: bool = False) -> Folder:
    """The folder as a stage that writes into it sees it: its record when the CLI (or an
    earlier run) claimed it, else claimed now (so a stage called from Python, without the
    CLI's up-front claim, still never writes into someone else's folder)."""
    return Folder.load(uri, role, key) or Folder.claim(uri, role, key, adopt)


# -- folders written before records existed -------------------------------------------------
def _listing(uri: str) -> list[str]:
    """Names directly under ``uri`` (files and folders); [] when it does not exist."""
    if not storage.is_uri(uri):
        return sorted(os.listdir(uri)) if os.path.isdir(uri) else []
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, recursive=False)))


def _markers_with_hash(uri: str) -> bool:
    for m in storage.list_files(storage.join(uri, "markers"), ".json")[:3]:
        try:
            if "stage_hash" in storage.read_json(m):
                return True
        except (OSError, ValueError):
            continue
    return False


def _json_or_none(uri: str) -> object:
    """A JSON file's content; None when it is missing or unreadable."""
    try:
        return storage.read_json(uri) if storage.exists(uri) else None
    except (OSError, ValueError):
        return None


def _legacy_entries(uri: str, role: str) -> set[str] | None:
    """The ledger of a folder an earlier version wrote, rebuilt from the files it names; None
    when the folder shows no sign of being the pipeline's."""
    if role == "dataset":
        data = _json_or_none(storage.join(uri, "manifest.json"))
        if not (isinstance(data, dict) and "pipeline_version" in data and "shards" in data):
            return None
        return {*DATASET_ENTRIES, *(s["path"] for s in data["shards"] if isinstance(s, dict) and "path" in s)}
    if role == "work":
        # an earlier version's work folder: stage folders with markers (their names are the
        # stages'), beside at most the work folder's own entries
        names = [n for n in _listing(uri) if n not in BOOKKEEPING]
        marked = [n for n in names if _markers_with_hash(storage.join(uri, n))]
        # a stage killed before its first marker still has its data/ (or plan.json, for ingest)
        stages = [n for n in names if n in marked or storage.list_files(storage.join(uri, n, "data"), ".parquet")
                  or storage.exists(storage.join(uri, n, "plan.json"))]
        own = {e.rstrip("/") for e in WORK_ENTRIES}
        logs = storage.list_files(storage.join(uri, "logs"), ".log")
        if not names or set(names) - own - set(stages) or not (marked or any("/build-" in u for u in logs)):
            return None
        return {f"{n}/" if storage.is_dir(storage.join(uri, n)) else n for n in names} | set(WORK_ENTRIES)
    if role == "stage":
        return set(STAGE_ENTRIES) if _markers_with_hash(uri) else None
    if role == "export":
        data = _json_or_none(storage.join(uri, "export.json"))
        if not (isinstance(data, dict) and "format" in data):
            return None
        return {"export.json", *data.get("files", [])}
    if role == "sample":
        names = set(_listing(uri))
        return set(SAMPLE_ENTRIES) if "gt.jsonl" in names and names <= {*SAMPLE_ENTRIES, "images"} else None
    raise ValueError(f"unknown folder role {role!r}; known: {ROLES}")


def describe_holder(info: dict) -> str:
    """'pid 123 on host h, started 2026-12-06 10:00:00' from a lock's content."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    cmd = f" ({info['command']})" if info.get("command") else ""
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {when}{cmd}"


def holder_info(command: str = "") -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "command": command}


def dumps(info: dict) -> bytes:
    return json.dumps(info).encode()
