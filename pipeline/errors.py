"""Errors that end a command with a message and no traceback (the CLI exits with status 2).

They sit below every other module so that any layer may raise them: a config key that is
wrong, a folder the pipeline may not write into.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration mistake; the message names the key and what to fix."""
