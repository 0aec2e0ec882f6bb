"""What the HTML report read of a dataset folder: its row groups and the seeded sample.

``publish.html_report`` reads the sample (``sample_dataset``) and ``publish.html_sections``
plots it; both import these types from here, below either of them, so neither imports the
other back (``tests/test_layering.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RowGroup:
    uri: str
    config: str
    index: int
    rows: int


@dataclass
class Sample:
    """What was read for statistics and which rows became cards.

    ``groups``: row groups read (narrow columns), in read order.  ``method``,
    ``source``, ``chosen_chars``, ``rejected_chars``, ``rows`` (index into
    ``groups``, row in that group): one entry per row read.  ``picks``: per method, (index into ``groups``, row in
    that group) of each card, in display order.
    """
    groups: list[RowGroup] = field(default_factory=list)
    method: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    chosen_chars: list[np.ndarray] = field(default_factory=list)
    rejected_chars: list[np.ndarray] = field(default_factory=list)
    rows: list[tuple[int, int]] = field(default_factory=list)
    picks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    rows_total: int = 0

    @property
    def rows_read(self) -> int:
        return len(self.method)

    def lengths(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        sel = np.asarray(self.method, dtype=object) == method
        c = np.concatenate(self.chosen_chars) if self.chosen_chars else np.zeros(0)
        r = np.concatenate(self.rejected_chars) if self.rejected_chars else np.zeros(0)
        return c[sel], r[sel]
