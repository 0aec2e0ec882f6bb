"""Counts and length/token distributions of the written pairs (manifest, card, HTML report)."""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from publish.layout import SPLITS


def assistant_chars(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Characters of text in each row's conversation (chosen/rejected: the assistant turns)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.int64)
    messages = pc.list_flatten(arr)
    msg_row = pc.list_parent_indices(arr).to_numpy()
    content = pc.struct_field(messages, "content")
    parts = pc.list_flatten(content)
    if len(parts) == 0:
        return np.zeros(n, np.int64)
    part_msg = pc.list_parent_indices(content).to_numpy()
    is_text = pc.fill_null(pc.equal(pc.struct_field(parts, "type"), "text"), False).to_numpy(zero_copy_only=False)
    lens = pc.fill_null(pc.utf8_length(pc.struct_field(parts, "text")), 0).to_numpy(zero_copy_only=False)
    weights = np.where(is_text, lens, 0)
    return np.bincount(msg_row[part_msg], weights=weights, minlength=n).astype(np.int64)


def _per_method() -> defaultdict:
    return defaultdict(list)  # a named function, not a lambda: a gather task pickles its Stats back


class Stats:
    """Counts and per-method length/token distributions of the written rows."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()   # (config, split, source, method) -> rows
        self.models: Counter = Counter()
        self.values: dict[str, dict[str, list[np.ndarray]]] = defaultdict(_per_method)
        #: (method, what) -> count: distinct chosen / rejected responses, prompts, their samples drawn
        self.distinct: Counter = Counter()

    def add(self, shard, table: pa.Table) -> None:
        """Count ``table``'s rows under ``shard``'s config and split."""
        if table.num_rows == 0:
            return
        source = table.column("source").to_pylist()
        method = table.column("method").to_pylist()
        for s, m in zip(source, method):
            self.counts[(shard.config, shard.split, s, m)] += 1
        prov = table.column("provenance")
        self.models.update(v for v in pc.struct_field(prov, "model").to_pylist() if v)
        chosen = assistant_chars(table.column("chosen"))
        rejected = assistant_chars(table.column("rejected"))
        ct = pc.struct_field(prov, "chosen_tokens").to_numpy(zero_copy_only=False).astype(np.float64)
        rt = pc.struct_field(prov, "rejected_tokens").to_numpy(zero_copy_only=False).astype(np.float64)
        m_arr = np.asarray(method, dtype=object)
        self._count_distinct(method, prov)
        for m in sorted(set(method)):
            sel = m_arr == m
            v = self.values[m]
            v["chosen_chars"].append(chosen[sel])
            v["rejected_chars"].append(rejected[sel])
            v["chosen_tokens"].append(ct[sel])
            v["rejected_tokens"].append(rt[sel])

    def _count_distinct(self, method: list[str], prov) -> None:
        """Distinct responses per method (``provenance.prompt_id`` + ``chosen_index`` /
        ``rejected_index``; pairs not made of sampled responses have none).  A prompt's pairs
        are all in one shard (``publish.shard_order``), so shard counts add up."""
        cols = {k: pc.struct_field(prov, k).to_pylist()
                for k in ("prompt_id", "chosen_index", "rejected_index", "samples_drawn")}
        seen: set = set()
        for i, m in enumerate(method):
            pid = cols["prompt_id"][i]
            for side in ("chosen", "rejected"):
                key = (m, side, pid, cols[f"{side}_index"][i])
                if key[3] is not None and key not in seen:
                    seen.add(key)
                    self.distinct[(m, side)] += 1
            if (m, pid) not in seen and cols["chosen_index"][i] is not None:
                seen.add((m, pid))
                self.distinct[(m, "prompts")] += 1
                self.distinct[(m, "samples_drawn")] += cols["samples_drawn"][i] or 0

    def diversity(self) -> dict[str, dict]:
        """Per method of sampled responses: pairs per distinct chosen and per distinct rejected
        response, and samples drawn (of the prompts it has pairs from) per distinct chosen."""
        rows = self.totals(3)
        out = {}
        for m in sorted({m for m, _ in self.distinct}):
            chosen, rejected = self.distinct[(m, "chosen")], self.distinct[(m, "rejected")]
            if chosen:
                out[m] = {"distinct_chosen": chosen, "distinct_rejected": rejected,
                          "pairs_per_chosen": round(rows.get(m, 0) / chosen, 3),
                          # None: the rejected side is no sampled response (DropoutNTP's continuation)
                          "pairs_per_rejected": round(rows.get(m, 0) / rejected, 3) if rejected else None,
                          "samples_per_chosen": round(self.distinct[(m, "samples_drawn")] / chosen, 3)}
        return out

    def merge(self, other: "Stats") -> None:
        """Add ``other``'s rows (another shard's statistics) after this one's."""
        self.counts.update(other.counts)
        self.distinct.update(other.distinct)
        self.models.update(other.models)
        for m, cols in other.values.items():
            for k, arrays in cols.items():
                self.values[m][k].extend(arrays)

    def totals(self, level: int) -> dict[str, int]:
        out: Counter = Counter()
        for key, n in self.counts.items():
            out[key[level]] += n
        return dict(sorted(out.items()))

    def source_method(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter] = defaultdict(Counter)
        for (_, _, s, m), n in self.counts.items():
            out[s][m] += n
        return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}

    def splits(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter] = defaultdict(Counter)
        for (c, sp, _, _), n in self.counts.items():
            out[c][sp] += n
        rank = {s: i for i, s in enumerate(SPLITS)}
        return {c: dict(sorted(v.items(), key=lambda kv: (rank.get(kv[0], len(SPLITS)), kv[0])))
                for c, v in sorted(out.items())}

    def lengths(self) -> dict[str, dict]:
        out = {}
        for m in sorted(self.values):
            v = {k: np.concatenate(a) for k, a in self.values[m].items()}
            c, r = v["chosen_chars"].astype(np.float64), v["rejected_chars"].astype(np.float64)
            ratio = r[c > 0] / c[c > 0]
            out[m] = {
                "rows": int(len(c)),
                "chosen_chars": _describe(c), "rejected_chars": _describe(r),
                "rejected_over_chosen": _describe(ratio, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9)),
                "rejected_longer_fraction": round(float(np.mean(r > c)), 4) if len(c) else None,
                "chosen_tokens": _describe(v["chosen_tokens"]),
                "rejected_tokens": _describe(v["rejected_tokens"]),
            }
        return out


def _describe(x: np.ndarray, quantiles=(0.5, 0.9)) -> dict:
    x = x[~np.isnan(x)] if x.dtype.kind == "f" else x
    if len(x) == 0:
        return {"n": 0}
    d = {"n": int(len(x)), "mean": round(float(np.mean(x)), 2), "min": round(float(np.min(x)), 2),
         "max": round(float(np.max(x)), 2)}
    for q in quantiles:
        name = "median" if q == 0.5 else f"p{int(round(q * 100))}"
        d[name] = round(float(np.quantile(x, q)), 2)
    return d
