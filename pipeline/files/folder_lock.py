"""One run per folder: a second run on a work (or output) folder is refused at once.

Two runs on one work folder would both generate everything, then trip over
each other's temp files.  A local folder is locked with ``flock`` on
``<folder>/.mmpr-forge.lock``: the kernel drops the lock when its process
ends, however it ends (SIGKILL, OOM, a power cut on a local disk), so a lock
left by a killed run never blocks the rerun.  The file holds who took it
(host, pid, start time, command) for the message a second run prints.

Object stores have no locks.  There the lock is a *lease*: the same file,
rewritten by the holder every ``LEASE_S / 4`` seconds; a second run is refused
while the lease is fresh, and a killed run's lease expires after ``LEASE_S``.
Two runs started within the same second can both miss each other's lease
(an object store has no atomic create here): README "Folders and safety"
says so.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time

from pipeline.files import storage
from pipeline.files.ownership import LOCK, NotOwned, describe_holder, dumps, holder_info

#: seconds after its last refresh that an object-store lease is taken as abandoned
LEASE_S = 120.0


class FolderBusy(NotOwned):
    """Another run holds the folder."""


class FolderLock:
    """The lock of one folder, held from ``acquire`` to ``release`` (or the process's end)."""

    def __init__(self, uri: str, key: str = "") -> None:
        self.uri, self.key = uri, key
        self._fd: int | None = None
        self._stop = threading.Event()
        self._lease: threading.Thread | None = None

    def acquire(self, command: str = "") -> "FolderLock":
        info = holder_info(command)
        if storage.is_uri(self.uri):
            self._take_lease(info)
            return self
        os.makedirs(self.uri, exist_ok=True)
        fd = os.open(os.path.join(self.uri, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            held = os.pread(fd, 4096, 0)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            self._busy(_parse(held))
        os.ftruncate(fd, 0)
        os.pwrite(fd, dumps(info), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._lease is not None:
            self._stop.set()
            self._lease.join(timeout=5)
            self._lease = None
            storage.remove(storage.join(self.uri, LOCK))

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- object stores ---------------------------------------------------------------------
    def _take_lease(self, info: dict) -> None:
        uri = storage.join(self.uri, LOCK)
        if storage.exists(uri):
            held = _parse(storage.read_bytes(uri))
            if time.time() - held.get("heartbeat", 0) < LEASE_S:
                self._busy(held, lease=True)
        info["heartbeat"] = time.time()
        storage.write_bytes(uri, dumps(info))

        def refresh() -> None:
            while not self._stop.wait(LEASE_S / 4):
                info["heartbeat"] = time.time()
                try:
                    storage.write_bytes(uri, dumps(info))
                except OSError:  # a store hiccup: the next refresh tries again
                    pass

        self._lease = threading.Thread(target=refresh, name="mmpr-lease", daemon=True)
        self._lease.start()

    def _busy(self, held: dict, lease: bool = False) -> None:
        way_out = (f"wait for it to end or stop it (a killed run's lease expires {LEASE_S:.0f} s after its "
                   "last refresh)" if lease else "wait for it to end or stop it")
        raise FolderBusy(f"{self.key or 'folder'}: {self.uri} is in use by another run "
                         f"({describe_holder(held)}); {way_out}")


def _parse(raw: bytes) -> dict:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
