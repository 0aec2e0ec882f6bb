"""Logging set-up shared by the CLI and Ray workers."""
from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    """The pipeline's log at ``level``: the config's ``run.log_level`` (which MMPR_LOG_LEVEL
    overrides when the config is loaded); None, before a config is loaded: MMPR_LOG_LEVEL,
    else INFO (an unknown name is INFO here: loading the config reports it)."""
    level = (level or os.environ.get("MMPR_LOG_LEVEL") or "INFO").strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        level = "INFO"
    root = logging.getLogger("pipeline")
    if not root.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    root.setLevel(level)
    root.propagate = False
