"""Pre-flight checks: fail in seconds, with the key to fix, before a build starts any work.

Sources exist (the shipped sample data is generated when a source reads it),
the work and output folders are writable, a configured Ray address answers,
and the model is there (the tiny model is built, and published to the work
folder's store when workers cannot see this machine's disk).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from pipeline import storage
from pipeline.config import ConfigError, PipelineConfig

log = logging.getLogger("pipeline")


def ensure_sample_data(config: PipelineConfig) -> None:
    """Generate the shipped sample data when a source reads it and it is not there yet."""
    sample = os.path.abspath(config.model.tiny_model_data)
    wanted = [s for s in config.sources if os.path.abspath(s.path).startswith(sample + os.sep)]
    if wanted and not all(os.path.exists(s.path) for s in wanted):
        from pipeline.sample_data import build_sample_data

        log.info("generating the sample data in %s", sample)
        build_sample_data(Path(sample))


def check_sources(config: PipelineConfig) -> None:
    ensure_sample_data(config)
    if not config.sources:
        raise ConfigError("sources: no sources configured; add at least one")
    for i, src in enumerate(config.sources):
        if src.format == "hf" and not os.path.exists(src.path):
            continue  # a hub dataset id
        try:
            found = storage.exists(src.path)
        except OSError as e:  # unreachable store, bad credentials, unknown scheme
            raise ConfigError(f"sources.{i}.path: cannot read {src.path} ({e})") from None
        if not found:
            raise ConfigError(f"sources.{i}.path: {src.path} does not exist (source {src.name!r})")


def check_storage(config: PipelineConfig) -> None:
    """Fail before any work when the work or output folder cannot be written
    (a missing bucket, no credentials, a read-only mount).  On a store a probe
    object is written and removed; a local folder is checked without creating
    anything (its nearest existing parent must be a writable folder)."""
    for key, uri in (("run.work_dir", config.run.work_dir), ("run.output_dir", config.run.output_dir)):
        if not storage.is_uri(uri):
            parent = os.path.abspath(uri)
            while not os.path.exists(parent):
                parent = os.path.dirname(parent)
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{key}: cannot write to {uri} ({parent} is not a writable folder)")
            continue
        probe = storage.join(uri, f".mmpr-probe-{os.getpid()}")
        try:
            storage.write_bytes(probe, b"")
            storage.remove(probe)
        except OSError as e:
            raise ConfigError(f"{key}: cannot write to {uri} ({str(e).splitlines()[0][:300]})") from None


def check_ray_address(config: PipelineConfig) -> None:
    """Fail in seconds, not minutes, when a configured Ray address cannot be reached."""
    import socket

    address = config.executor.address or os.environ.get("RAY_ADDRESS")
    if config.executor.kind != "ray" or not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"executor.address: {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"executor.address: cannot reach Ray at {address} ({e})") from None


def ensure_model(config: PipelineConfig) -> None:
    """Build the tiny model when the config names it; check a local model path exists."""
    m = config.model
    if m.is_tiny:
        from pipeline.tiny_model import build_tiny_model

        # builds the sample data it trains on first when that is missing
        build_tiny_model(Path(m.tiny_model_dir), Path(m.tiny_model_data))
        publish_tiny_model(config)
    elif (m.path.startswith((".", "/")) or os.sep in m.path and not _looks_like_hub_id(m.path)) \
            and not os.path.exists(m.path):
        raise ConfigError(f"model.path: {m.path} does not exist")


def publish_tiny_model(config: PipelineConfig) -> None:
    """Put the tiny model where every worker can read it.

    The tiny model is built on the driver's disk.  When the work folder is on
    a store (``s3://...``), cluster nodes may not see that disk, so the model
    goes to ``<work_dir>/models/`` and engine workers load it from there
    (``pipeline.engine.model_location``).  A marker written last makes the
    upload all-or-nothing for readers.
    """
    from pipeline.engine import model_location

    uri = model_location(config)
    if not storage.is_uri(uri):
        return
    local = config.model.tiny_model_dir
    stamp = hashlib.sha256(b"".join(
        p.read_bytes() for p in sorted(Path(local).rglob("*")) if p.is_file())).hexdigest().encode()
    done = storage.join(uri, ".published")
    if storage.exists(done) and storage.read_bytes(done) == stamp:
        return
    log.info("publishing the tiny model to %s", uri)
    storage.remove_tree(uri)
    storage.upload_dir(local, uri)
    storage.write_bytes(done, stamp)


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(parts[0])
