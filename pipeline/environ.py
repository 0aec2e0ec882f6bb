"""Environment variables set for the processes a block starts."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """``env`` set in this process while the block runs, then put back as it was: the processes
    the block starts (Ray's on ``ray.init``, vLLM's on ``vllm.LLM``) inherit it, and what this
    process runs afterwards does not see it."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
