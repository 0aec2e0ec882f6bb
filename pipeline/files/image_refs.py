"""Where a row's image reference may point: under its source's root or an allowlisted root.

A source file is data from elsewhere; its image references must not make the
pipeline read whatever the cluster can read (``s3://other-bucket/secret.png``
with the node's credentials, ``file:///etc/hostname``, a cloud metadata
endpoint such as ``http://169.254.169.254/...``) and embed it in a dataset
that may be published.  So every reference is turned into one canonical
location *before anything is opened*, and that location must lie under the
source's image root or one of its ``allowed_image_roots`` -- whatever the
scheme.  Anything else raises ``ImageError("image_uri_not_allowed")`` (or
``image_path_escapes_root`` for a relative path with ``..`` or a link that
leaves the root), which ingest quarantines for that row alone.  Every other
file a source makes the pipeline open passes the same check (an image
folder's captions: ``pipeline.sources.readers``).

Only schemes ``pipeline.files.storage`` reads are ever allowed (local files, s3, gs,
hdfs); http(s) is never fetched.  URIs with a query, fragment, user info or
port are refused: pyarrow reads options such as ``endpoint_override`` from a
URI's query, so they would let a row redirect the client.
"""
from __future__ import annotations

import os
import posixpath
import re
import urllib.parse
from typing import Iterable

#: URI schemes pipeline.files.storage can read (through pyarrow.fs)
READABLE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "file")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")


class ImageError(ValueError):
    """A row's image cannot be used; ``reason`` is its quarantine reason code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def uri_scheme(ref: str) -> str | None:
    """The lower-cased scheme of ``scheme:...`` references (``http``, ``s3``...), else None.

    One letter before the colon is a Windows drive (``C:\\x``), not a scheme."""
    m = _SCHEME.match(ref)
    if m is None or len(m.group(1)) == 1:
        return None
    return m.group(1).lower()


def _not_allowed(ref: str, why: str) -> ImageError:
    return ImageError("image_uri_not_allowed", f"{ref!r}: {why}")


def canonical(location: str) -> str:
    """One spelling per location: a real local path, or ``scheme://bucket/normalised/key``.

    Raises ``image_uri_not_allowed`` for schemes storage does not read and for
    URIs whose parts could redirect the client or escape the bucket."""
    scheme = uri_scheme(location)
    if scheme is None:
        return os.path.realpath(location)
    if scheme not in READABLE_SCHEMES:
        raise _not_allowed(location, f"scheme {scheme!r} is never read; readable: {list(READABLE_SCHEMES)}")
    parts = urllib.parse.urlsplit(location)
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise _not_allowed(location, "a URI with a query, fragment, user info or port")
    path = urllib.parse.unquote(parts.path)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise _not_allowed(location, f"file URI on another host {parts.netloc!r}")
        return os.path.realpath(path)
    if not parts.netloc:
        raise _not_allowed(location, "a URI without a bucket or host")
    if ".." in path.split("/"):
        raise _not_allowed(location, "a URI with '..' segments")
    key = posixpath.normpath("/" + path.lstrip("/")) if path.strip("/") else "/"
    return f"{'gs' if scheme == 'gcs' else scheme}://{parts.netloc}{key.rstrip('/')}"


def _under(location: str, root: str) -> bool:
    if root == location:
        return True
    if uri_scheme(root) is None and uri_scheme(location) is None:
        return os.path.commonpath([root, location]) == root
    return location.startswith(root.rstrip("/") + "/")


def allowed_roots(root: str | None, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Canonical roots a source's images may come from: its image root, then the allowlist."""
    return tuple(canonical(r) for r in ([root] if root else []) + list(extra))


def resolve_image_ref(ref: str, root: str | None, roots: tuple[str, ...]) -> str:
    """The location to read for ``ref`` (a path relative to ``root``, an absolute path
    or a URI), or ``ImageError`` when it lies outside every one of ``roots``.

    Relative paths are joined to ``root`` (a folder or a URI); ``..`` that leaves
    it is ``image_path_escapes_root``.  Nothing is read here."""
    scheme = uri_scheme(ref)
    if scheme is not None or os.path.isabs(ref):
        location = canonical(ref)
        if not any(_under(location, r) for r in roots):
            raise _not_allowed(ref, "outside the source's image root and allowed_image_roots "
                                    "(add its folder or bucket prefix to sources[].allowed_image_roots)")
        return location
    if root is None:
        raise _not_allowed(ref, "a relative image path in a source without a folder: set sources[].image_root")
    parts = [p for p in ref.replace("\\", "/").split("/") if p not in ("", ".")]
    escapes = ImageError("image_path_escapes_root", f"{ref!r} resolves outside {root!r}")
    if uri_scheme(root) is not None:
        if ".." in parts:
            raise escapes
        return "/".join([root.rstrip("/"), *parts])
    full = os.path.realpath(os.path.join(os.path.realpath(root), *parts))
    if not any(_under(full, r) for r in roots if uri_scheme(r) is None):
        raise escapes
    return full
