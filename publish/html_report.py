"""A self-contained HTML report of a built dataset folder: ``DIR/report.html``.

    python -m pipeline report --input DIR [--seed 0] [--per-method 20]

(``python -m pipeline run`` writes it at the end of a build.)  One file, no
network: images are embedded as data URIs, plots are inline SVG, and the
method/source filter and the text search are a few lines of inline JavaScript.

What it reads, and how much:

* ``manifest.json`` and ``report.json`` (written by the run): shards, rows per
  method/source, length quantiles, rows in/out, quarantine reasons, tokens and
  time per stage, policy accuracy, filter counters.  These are shown as they
  are, never recomputed.
* Parquet footers of every shard (row groups and their sizes).
* A *seeded sample of row groups* per dataset config, narrow columns only
  (``method``, ``source``, ``chosen``, ``rejected``): the chosen/rejected length
  histograms, and the pool the pair cards are drawn from.  Reading stops after
  ``STATS_ROWS`` rows once every method the manifest lists has enough card
  candidates (``MAX_SCAN_ROWS`` at most).
* ``method`` and ``provenance.prompt_id`` of every row (two narrow columns) for
  the pairs-per-prompt distribution of the written dataset, up to
  ``PROMPT_SCAN_MAX_ROWS`` rows; above that the correctness stage's own
  counter from ``report.json`` is shown instead.
* Full rows (with image bytes) only of the row groups that hold a sampled card.
* ``report_images.parquet`` (written by the run beside ``report.json``): small thumbnails
  of prompts removed before generation (near-duplicate clusters, bounded by the stage),
  shown side by side with their distances (``publish.html_clusters``).

Every string that comes from the data goes through :func:`html.escape` before
it is placed in the page; the page's script only reads ``textContent`` and
toggles ``hidden``, and a Content-Security-Policy allows that one script (by
hash) and nothing else, so a model output that contains ``<script>`` shows up
as text and never runs.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import zlib
from collections import Counter, defaultdict
from importlib import resources
from string import Template
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import __version__
from pipeline.files import storage
from pipeline.files.ownership import open_folder
# the dataset layout: configs and their folders; image-contrast methods live in their own config
from publish.html_cards import THUMB_PX, _slug, card_html, esc, image_html, thumbnail  # noqa: F401 -- tests use them
from publish.grounding_report import grounding_html
from publish.html_clusters import FILE as REMOVED_FILE, removed_html
from publish.html_sections import _method_key, method_order, _summary_of, plots_html, summary_html
from publish.sampling_report import curriculum_html, sampling_html
from publish.layout import configs, image_methods
from publish.report_sample import RowGroup, Sample
from publish.stats import assistant_chars

log = logging.getLogger("pipeline")

#: pair cards per method
PER_METHOD = 20
#: rows (narrow columns) read for the length histograms, per dataset config
STATS_ROWS = 50_000
#: never read more rows than this per config while looking for card candidates of rare methods
MAX_SCAN_ROWS = 500_000
#: above this many rows, pairs per prompt come from report.json instead of a column scan
PROMPT_SCAN_MAX_ROWS = 5_000_000
REPORT_NAME = "report.html"



def _stable(*parts: Any) -> int:
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"))


# -- the dataset folder ------------------------------------------------------------
def _read_json(uri: str) -> dict | None:
    try:
        return storage.read_json(uri) if storage.exists(uri) else None
    except (OSError, ValueError) as e:
        log.warning("report: cannot read %s: %s", uri, e)
        return None


def dataset_files(root: str, manifest: dict | None) -> list[tuple[str, str]]:
    """(uri, config) of every shard: the manifest's list, else the Parquet files in the config folders."""
    if manifest and manifest.get("shards"):
        return [(storage.join(root, s["path"]), s.get("config", "default")) for s in manifest["shards"]]
    files = []
    for config, folder in configs():
        files += [(u, config) for u in storage.list_files(storage.join(root, folder), ".parquet")]
    return files


def row_groups(files: list[tuple[str, str]]) -> list[RowGroup]:
    out = []
    for uri, config in files:
        md = storage.parquet_file(uri).metadata
        out += [RowGroup(uri, config, i, md.row_group(i).num_rows) for i in range(md.num_row_groups)]
    return out


def _read_group(group: RowGroup, columns: list[str] | None = None) -> pa.Table:
    return storage.parquet_file(group.uri).read_row_group(group.index, columns=columns)


# -- sampling -------------------------------------------------------------------------
def _expected_methods(config: str, manifest: dict | None) -> set[str]:
    methods = set((manifest or {}).get("totals", {}).get("method", {}))
    if config == "image_crop":
        return {m for m in methods if m in image_methods()}
    if config == "default":
        return {m for m in methods if m not in image_methods()}
    return set()


def sample_dataset(groups: list[RowGroup], seed: int = 0, per_method: int = PER_METHOD,
                   stats_rows: int = STATS_ROWS, manifest: dict | None = None,
                   max_scan_rows: int = MAX_SCAN_ROWS) -> Sample:
    """Read a seeded sample of row groups (narrow columns) per config and pick the cards.

    Deterministic: the same dataset and seed give the same sample and cards.  Row
    groups of a config are read in a seeded random order until ``stats_rows`` rows
    are in and every method the manifest lists for the config has ``per_method``
    rows (or ``max_scan_rows`` is reached).  A method's cards come from the first
    row groups read that hold ``per_method`` of its rows, so few full row groups
    are read back for the cards; within a method they are spread over its
    sources (seeded round-robin).
    """
    sample = Sample(rows_total=sum(g.rows for g in groups))
    present = [c for c, _ in configs() if any(g.config == c for g in groups)]
    present += sorted({g.config for g in groups} - set(present))
    for config in present:
        mine = sorted((g for g in groups if g.config == config), key=lambda g: (g.uri, g.index))
        order = np.random.default_rng([seed, _stable("config", config)]).permutation(len(mine))
        expected = _expected_methods(config, manifest)
        counts: Counter = Counter()
        rows = 0
        for gi in order:
            group = mine[int(gi)]
            t = _read_group(group, ["method", "source", "chosen", "rejected"])
            no = len(sample.groups)
            sample.groups.append(group)
            methods = t.column("method").to_pylist()
            sample.method += methods
            sample.source += [s or "" for s in t.column("source").to_pylist()]
            # characters of the answers: the same measure as the manifest's length statistics
            sample.chosen_chars.append(assistant_chars(t.column("chosen")))
            sample.rejected_chars.append(assistant_chars(t.column("rejected")))
            sample.rows += [(no, i) for i in range(t.num_rows)]
            counts.update(methods)
            rows += t.num_rows
            enough = all(counts[m] >= per_method for m in expected)
            if (rows >= stats_rows and enough) or rows >= max_scan_rows:
                break
    # card candidates of a method: its rows in the first row groups read that hold
    # ``per_method`` of them (few full row groups to read back for the cards)
    by_method: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    taken: Counter = Counter()
    start = 0
    for no, group in enumerate(sample.groups):
        end = start + group.rows
        here: dict[str, list[int]] = defaultdict(list)
        for i in range(start, end):
            here[sample.method[i]].append(i)
        for m, idx in here.items():
            if taken[m] < per_method:
                for i in idx:
                    by_method[m][sample.source[i]].append(i)
                taken[m] += len(idx)
        start = end
    rows_at = sample.rows
    for method in sorted(by_method, key=_method_key):
        rng = np.random.default_rng([seed, _stable("cards", method)])
        queues = [list(rng.permutation(np.asarray(idx)))
                  for _, idx in sorted(by_method[method].items())]
        picked: list[int] = []
        while len(picked) < per_method and any(queues):
            for q in queues:
                if q and len(picked) < per_method:
                    picked.append(int(q.pop(0)))
        sample.picks[method] = [rows_at[i] for i in picked]
    return sample


def read_cards(sample: Sample) -> list[dict]:
    """The full rows (images included) of the sampled cards, by method, in pick order."""
    wanted: dict[int, list[int]] = defaultdict(list)
    for picks in sample.picks.values():
        for no, row in picks:
            wanted[no].append(row)
    rows: dict[tuple[int, int], dict] = {}
    for no in sorted(wanted):
        idx = sorted(set(wanted[no]))
        table = _read_group(sample.groups[no]).take(pa.array(idx))
        for i, r in zip(idx, table.to_pylist()):
            rows[(no, i)] = r
    return [rows[p] for m in sorted(sample.picks, key=_method_key) for p in sample.picks[m]]


def pairs_per_prompt(files: list[tuple[str, str]]) -> dict[str, list[tuple[int, int]]]:
    """Per method: (pairs of one prompt, prompts with that many) over every written row."""
    parts = []
    for uri, _ in files:
        t = storage.parquet_file(uri).read(columns=["method", "provenance.prompt_id"])
        parts.append(pa.table({"method": t.column("method"),
                               "sid": pc.struct_field(t.column("provenance"), "prompt_id")}))
    if not parts:
        return {}
    table = pa.concat_tables(parts)
    table = table.filter(pc.is_valid(table.column("sid")))
    table = table.append_column("n", pa.array(np.ones(table.num_rows, np.int64)))
    per_prompt = table.group_by(["method", "sid"]).aggregate([("n", "sum")])
    out: dict[str, list[tuple[int, int]]] = {}
    methods = per_prompt.column("method").to_numpy(zero_copy_only=False)
    sizes = per_prompt.column("n_sum").to_numpy()
    for m in sorted(set(methods.tolist()), key=_method_key):
        k, n = np.unique(sizes[methods == m], return_counts=True)
        out[m] = [(int(a), int(b)) for a, b in zip(k, n)]
    return out


# -- images ---------------------------------------------------------------------------
# -- summary --------------------------------------------------------------------------
# -- the page (template, CSS and script are package data under publish/assets/) --------
ASSETS = "assets"  # package data: the page template, its stylesheet and its script


def _asset(name: str) -> str:
    return (resources.files("publish") / ASSETS / name).read_text(encoding="utf-8")


def _script_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


def _options(values: Counter, label: str) -> str:
    opts = [f'<option value="">all {esc(label)}</option>']
    keys = sorted(values, key=_method_key) if label == "methods" else sorted(values)
    opts += [f'<option value="{esc(v)}">{esc(v)} ({values[v]})</option>' for v in keys]
    return "".join(opts)


def read_removed(root: str) -> pa.Table | None:
    """The thumbnails of prompts removed before generation (``publish.html_clusters``), if the build wrote any."""
    uri = storage.join(root, REMOVED_FILE)
    try:
        return storage.read_table(uri) if storage.exists(uri) else None
    except (OSError, ValueError, pa.ArrowException) as e:
        log.warning("report: cannot read %s: %s", uri, e)
        return None


def render_html(root: str, *, manifest: dict | None, report: dict | None, sample: Sample,
                cards: list[dict], prompts: dict[str, list[tuple[int, int]]] | None, seed: int,
                removed: pa.Table | None = None) -> str:
    name = (manifest or {}).get("name") or root.rstrip("/").rsplit("/", 1)[-1]
    version = (manifest or {}).get("pipeline_version") or (report or {}).get("pipeline_version") or "?"
    chash = (manifest or {}).get("config_hash") or (report or {}).get("config_hash") or "?"
    finished = (report or {}).get("finished_at")

    by_method: dict[str, list[str]] = defaultdict(list)
    methods, sources = Counter(), Counter()
    for i, row in enumerate(cards, 1):
        by_method[row.get("method") or ""].append(card_html(row, i))
        methods[row.get("method") or ""] += 1
        sources[row.get("source") or ""] += 1
    groups = []
    written = (manifest or {}).get("totals", {}).get("method", {})
    for m in sorted(by_method, key=_method_key):
        total = f" of {written[m]:,} written" if m in written else ""
        groups.append(f'<section class="group" data-method="{esc(m)}"><h3>'
                      f'<span class="badge m-{esc(_slug(m))}">{esc(m)}</span> '
                      f'<span class="dim">{len(by_method[m])} sampled pairs{esc(total)}</span></h3>'
                      + "".join(by_method[m]) + "</section>")
    samples = "".join(groups) or '<p class="note">The dataset has no rows.</p>'
    per_method = max((len(v) for v in sample.picks.values()), default=0)
    script = _asset("report.js")
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           f"script-src '{_script_hash(script)}'; base-uri 'none'; form-action 'none'")
    sub = (f"mmpr-forge {esc(version)} \u00b7 config hash <code>{esc(chash)}</code>"
           + (f" \u00b7 built {esc(finished)}" if finished else "")
           + f" \u00b7 <code>{esc(root)}</code>")
    return Template(_asset("report.html")).substitute(
        csp=esc(csp), name=esc(name), css=_asset("report.css"), sub=sub, summary=summary_html(report, manifest) + removed_html(removed),
        plots=plots_html(sample, report, prompts) + sampling_html(_summary_of(report))
        + curriculum_html(manifest, _summary_of(report)) + grounding_html(dataset_files(root, manifest)), cards=len(cards), per_method=per_method, seed=seed,
        rows_read=f"{sample.rows_read:,}", rows_total=f"{sample.rows_total:,}",
        method_options=_options(methods, "methods"), source_options=_options(sources, "sources"),
        samples=samples, version=esc(__version__), thumb_px=THUMB_PX, script=script)


def build_report_html(root: str, seed: int = 0, per_method: int = PER_METHOD,
                      stats_rows: int = STATS_ROWS) -> str:
    """The report page of the dataset folder ``root`` (local path or URI), as a string."""
    manifest = _read_json(storage.join(root, "manifest.json"))
    report = _read_json(storage.join(root, "report.json"))
    files = dataset_files(root, manifest)
    groups = row_groups(files)
    sample = sample_dataset(groups, seed=seed, per_method=per_method, stats_rows=stats_rows, manifest=manifest)
    cards = read_cards(sample)
    prompts = pairs_per_prompt(files) if sample.rows_total <= PROMPT_SCAN_MAX_ROWS else None
    return render_html(root, manifest=manifest, report=report, sample=sample, cards=cards,
                       prompts=prompts, seed=seed, removed=read_removed(root))


def write_html_report(root: str, output: str | None = None, seed: int = 0,
                      per_method: int = PER_METHOD, stats_rows: int = STATS_ROWS) -> str:
    """Write ``root/report.html`` (or ``output``); returns where it was written."""
    page = build_report_html(root, seed=seed, per_method=per_method, stats_rows=stats_rows)
    if output is None:  # in the dataset folder: only over a report the pipeline wrote (an explicit --html is the user's call)
        open_folder(root, "dataset", "--input").reserve(REPORT_NAME)
    dest = output or storage.join(root, REPORT_NAME)
    storage.write_bytes(dest, page.encode("utf-8"))
    return dest
