"""Stable seeds derived from ids, never from position or time."""
from __future__ import annotations

import hashlib


def stable_hash(*parts: object, digest_size: int = 16) -> str:
    """Hex digest of the parts joined unambiguously (length-prefixed)."""
    h = hashlib.blake2b(digest_size=digest_size)
    for p in parts:
        b = str(p).encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def derive_seed(*parts: object) -> int:
    """A 31-bit non-negative seed from the parts (vLLM and PIL accept it)."""
    return int(stable_hash(*parts, digest_size=8), 16) & 0x7FFFFFFF
