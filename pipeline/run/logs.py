"""Logging set-up shared by the CLI and Ray workers."""
from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    level = level or os.environ.get("MMPR_LOG_LEVEL", "INFO")
    root = logging.getLogger("pipeline")
    if not root.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    root.setLevel(level)
    root.propagate = False
