"""The HTML report: escaping, seeded sampling, per-method cards, and the page in headless Chromium.

The unit tests build small dataset folders from ``pair_data`` (no model).  The
browser tests render the report of the session's sample build (with a
``<script>`` planted in a response) in Debian's ``chromium`` and read back the
DOM after the page's own script has run.
"""
from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import png, run_cli
from pair_data import SOURCES, all_pairs, image, pairs
from publish import html_report as hr
from schemas import PAIR_SCHEMA
from schemas.arrow import from_rows, with_hf_metadata

PAYLOAD = ("<script>window.__pwned=1;document.documentElement.setAttribute('data-pwned','1')</script>"
           "<img src=x onerror=\"window.__pwned=2;document.documentElement.setAttribute('data-pwned','2')\">")
SCHEMA = with_hf_metadata(PAIR_SCHEMA)


# -- helpers -----------------------------------------------------------------------------
def write_dataset_folder(out: Path, rows: list[dict], shards: int = 1) -> Path:
    """A dataset folder in the write stage's layout (no manifest/report: the report copes)."""
    text = [r for r in rows if r["method"] != "image_crop"]
    crops = [r for r in rows if r["method"] == "image_crop"]
    for folder, part in (("data", text), ("data/image_crop", crops)):
        if not part:
            continue
        (out / folder).mkdir(parents=True, exist_ok=True)
        per = -(-len(part) // shards)
        chunks = [part[i:i + per] for i in range(0, len(part), per)]
        for k, chunk in enumerate(chunks):
            pq.write_table(from_rows(chunk, SCHEMA), out / folder / f"train-{k:05d}-of-{len(chunks):05d}.parquet",
                           row_group_size=7)
    return out


def hostile_rows() -> list[dict]:
    rows = all_pairs()
    for r in rows:
        if r["method"] == "correctness" and r["source"] == "src_a":
            r["question"] = PAYLOAD + r["question"]
            r["rejected"][0]["content"][0]["text"] += PAYLOAD
            r["provenance"]["rejected_answer"] = PAYLOAD
            r["provenance"]["ground_truth"] = [PAYLOAD]
            r["provenance"]["facts"] = PAYLOAD
            r["provenance"]["filters"] = [{"rule": PAYLOAD, "target": "pair", "passed": False, "reason": PAYLOAD}]
        if r["method"] == "dropout_ntp":
            r["chosen"][0]["content"][0]["text"] += PAYLOAD
        if r["method"] == "image_crop":
            r["images"][0] = {"bytes": None, "path": PAYLOAD}
    rows.append({**rows[0], "id": "hostile-source", "source": PAYLOAD})
    return rows


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(page: str) -> Tags:
    p = Tags()
    p.feed(page)
    p.close()
    return p


def card_ids(page: str) -> list[str]:
    return re.findall(r"pair id</th><td><code>([^<]*)</code>", page)


# -- escaping ------------------------------------------------------------------------------
def test_esc_escapes_markup_and_quotes():
    assert hr.esc('<a href="x" onclick=\'y\'>&</a>') == \
        "&lt;a href=&quot;x&quot; onclick=&#x27;y&#x27;&gt;&amp;&lt;/a&gt;"
    assert hr.esc(None) == ""
    assert hr.esc(3) == "3"


def test_no_data_string_becomes_markup(tmp_path):
    """Payloads in question, responses, answers, ground truth, facts, filter verdicts, source
    names and image paths all end up as text: the only <script> is the page's own, no element
    carries an event handler, and every <img> is an embedded data URI."""
    folder = write_dataset_folder(tmp_path / "ds", hostile_rows())
    page = hr.build_report_html(str(folder), per_method=1000)
    assert "__pwned" in page  # the payloads are in the page...
    assert "<script>window.__pwned" not in page and "<img src=x" not in page  # ...never as markup
    assert html.escape(PAYLOAD) in page
    tags = parse(page)
    assert len(tags.scripts) == 1 and tags.scripts[0] == hr._asset("report.js")
    assert all(not a.startswith("on") for _, attrs in tags.tags for a in attrs), "event handler attribute in page"
    imgs = [attrs for tag, attrs in tags.tags if tag == "img"]
    assert imgs and all(a["src"].startswith("data:image/") for a in imgs)
    # the hostile source is a filter option and a data attribute, escaped, and its card is there
    assert any(t == "option" and a.get("value") == PAYLOAD for t, a in tags.tags)
    assert any(t == "article" and a.get("data-source") == PAYLOAD for t, a in tags.tags)
    # the image that is only a path is reported as such (no <img src=path>)
    assert "image not embedded in the row (path: " + html.escape(PAYLOAD) in page
    # the page's only script is allowed by hash in the CSP; nothing else may run
    csp = next(a["content"] for t, a in tags.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]


# -- sampling ------------------------------------------------------------------------------
def many_rows(n_prompts: int = 60) -> list[dict]:
    return pairs([(s, i) for i in range(n_prompts) for s in SOURCES],
                 {"dropout_ntp": (2, 0), "format": (10, 0), "image_crop": (5, 1)})


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    return write_dataset_folder(tmp_path_factory.mktemp("many") / "ds", many_rows(), shards=4)


def test_same_seed_same_cards_other_seed_other_cards(many):
    a = hr.build_report_html(str(many), seed=3, per_method=5)
    b = hr.build_report_html(str(many), seed=3, per_method=5)
    c = hr.build_report_html(str(many), seed=4, per_method=5)
    assert a == b  # the page is a pure function of the dataset and the seed
    assert card_ids(a) == card_ids(b) and len(card_ids(a)) == 20
    assert card_ids(a) != card_ids(c)


def test_sample_spreads_cards_over_methods_and_sources(many):
    groups = hr.row_groups(hr.dataset_files(str(many), None))
    s = hr.sample_dataset(groups, seed=0, per_method=6)
    assert {m: len(p) for m, p in s.picks.items()} == {"correctness": 6, "dropout_ntp": 6, "format": 6,
                                                       "image_crop": 6}
    cards = hr.read_cards(s)
    assert [r["method"] for r in cards] == [m for m in hr.method_order() for _ in range(6)]
    for m in ("correctness", "dropout_ntp", "format", "image_crop"):
        assert {r["source"] for r in cards if r["method"] == m} == set(SOURCES)  # round-robin over sources
    assert len({r["id"] for r in cards}) == len(cards)


def test_large_dataset_is_sampled_not_loaded(many):
    """With a small stats budget only some row groups are read, yet every method the manifest
    lists still gets its cards."""
    groups = hr.row_groups(hr.dataset_files(str(many), None))
    total = sum(g.rows for g in groups)
    manifest = {"totals": {"method": {"correctness": 1, "dropout_ntp": 1, "format": 1, "image_crop": 1}}}
    s = hr.sample_dataset(groups, seed=1, per_method=2, stats_rows=10, manifest=manifest)
    assert 0 < s.rows_read < total / 2 and s.rows_total == total
    assert len(s.groups) < len(groups)
    assert all(len(p) == 2 for p in s.picks.values()) and set(s.picks) == {"correctness", "dropout_ntp",
                                                                         "format", "image_crop"}
    page = hr.build_report_html(str(many), stats_rows=10, per_method=2)
    assert f"of {total:,} rows" in page


# -- cards ----------------------------------------------------------------------------------
def test_dropout_card_marks_prefix_and_continuations():
    from pair_data import make_pair

    row = make_pair("src_a", 2, "dropout_ntp")
    chosen = row["chosen"][0]["content"][0]["text"]
    cut = chosen.index(" shows a few circles on a") + len(" shows a few circles on a")
    row["provenance"]["cut_chars"] = cut
    page = hr.card_html(row, 1)
    assert (f'<mark class="prefix">{html.escape(chosen[:cut])}</mark>'
            f'<span class="cont-c">{html.escape(chosen[cut:])}</span>') in page
    assert '<span class="cont-r"> beach with palm trees and a boat.</span>' in page
    # a stale cut point (texts no longer share it) falls back to the common prefix
    row["provenance"]["cut_chars"] = len(chosen)
    page = hr.card_html(row, 1)
    assert f'<mark class="prefix">{html.escape(chosen[:cut + 1])}</mark><span class="cont-c">plain' in page


def test_correctness_card_shows_answers_and_ground_truth():
    from pair_data import make_pair

    row = make_pair("src_b", 4, "correctness")
    row["provenance"].update(ground_truth=["4", "four"], chosen_answer="4", rejected_answer="5",
                             chosen_score=1.0, rejected_score=0.0, match_rule="number", answer_type="integer")
    page = hr.card_html(row, 7)
    assert "<code>4</code> / <code>four</code>" in page
    assert "<code>4</code> <span class=\"dim\">(score 1)</span>" in page
    assert "<code>5</code> <span class=\"dim\">(score 0)</span>" in page


def test_image_crop_card_shows_original_with_box_and_crop():
    from pair_data import make_pair

    row = make_pair("src_a", 1, "image_crop")
    row["images"] = [image(5, size=100)]
    row["provenance"]["crop_boxes"] = [[10, 20, 40, 50]]
    page = hr.card_html(row, 2)
    tags = parse(page)
    assert [t for t, _ in tags.tags].count("img") == 2
    svg = next(a for t, a in tags.tags if t == "svg")
    rect = next(a for t, a in tags.tags if t == "rect")
    assert svg["class"] == "cropbox" and svg["viewbox"] == "0 0 100 100"
    assert (rect["x"], rect["y"], rect["width"], rect["height"]) == ("10", "20", "30", "30")
    assert "= 9.0% of the image" in page
    assert "original 1 + crop box" in page and "rejected 1: cropped, resized back" in page


def test_thumbnails_are_small_and_bad_images_do_not_fail():
    t = hr.thumbnail({"bytes": png((10, 120, 200), (1600, 900)), "path": None})
    assert t.uri.startswith("data:image/jpeg;base64,") and (t.width, t.height) == (1600, 900)
    import base64
    small = Image.open(io.BytesIO(base64.b64decode(t.uri.split(",", 1)[1])))
    assert max(small.size) == hr.THUMB_PX
    bad = hr.thumbnail({"bytes": b"not an image", "path": None})
    assert bad.uri is None and "undecodable" in bad.error
    assert "undecodable" in hr.image_html(bad, "x")


# -- the sample build in a browser -------------------------------------------------------------
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (scripts/setup-test.sh installs Debian's chromium)")
    return exe


def browse(page: Path, profile: Path, fragment: str = "", screenshot: Path | None = None) -> str:
    """The DOM after the page's scripts ran (``--dump-dom``), or a screenshot."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}"]
    cmd += [f"--screenshot={screenshot}", "--window-size=1400,3000"] if screenshot else ["--dump-dom"]
    proc = subprocess.run(cmd + [page.as_uri() + fragment], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def plant(folder: Path, seed: int = 0) -> str:
    """Append PAYLOAD to the rejected response of the first sampled correctness card; returns its id."""
    groups = hr.row_groups(hr.dataset_files(str(folder), json.loads((folder / "manifest.json").read_text())))
    s = hr.sample_dataset(groups, seed=seed, manifest=json.loads((folder / "manifest.json").read_text()))
    no, row = s.picks["correctness"][0]
    uri = s.groups[no].uri
    pf = pq.ParquetFile(uri)
    assert pf.metadata.num_row_groups == 1, "the rewrite below keeps one row group per shard"
    rows = pf.read().to_pylist()
    rows[row]["rejected"][0]["content"][0]["text"] += PAYLOAD
    pq.write_table(from_rows(rows, SCHEMA), uri)
    return rows[row]["id"]


@pytest.fixture(scope="module")
def planted_report(sample_build, tmp_path_factory) -> tuple[Path, str, dict]:
    assert (sample_build / "report.html").is_file(), "`python -m pipeline run` did not write report.html"
    folder = tmp_path_factory.mktemp("html_report") / "dataset"
    shutil.copytree(sample_build, folder, ignore=shutil.ignore_patterns("exports", "report.html"))
    pair_id = plant(folder)
    proc = run_cli("report", "--input", folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(folder / "report.html") in proc.stdout
    return folder / "report.html", pair_id, json.loads((folder / "manifest.json").read_text())


def test_run_writes_the_html_report(sample_build):
    page = (sample_build / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'class="card"' in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing from the network
    assert "https://" not in page


def test_report_renders_in_chromium(planted_report, tmp_path):
    page, pair_id, manifest = planted_report
    dom = browse(page, tmp_path / "profile")
    assert re.search(r'<body[^>]*data-ready="1"', dom), "the page's script did not run (CSP hash?)"
    per_method = {m: min(n, hr.PER_METHOD) for m, n in manifest["totals"]["method"].items()}
    n_cards = sum(per_method.values())
    assert dom.count('<article class="card"') == n_cards
    assert f'data-visible-cards="{n_cards}"' in dom
    # images: every card has one; image-crop cards show original (with the box) and crop
    n_img = len(re.findall(r'<img (?:class="up" )?src="data:image/', dom))
    assert n_img >= n_cards + per_method["image_crop"]
    assert dom.count('<svg class="cropbox"') >= per_method["image_crop"]
    assert dom.count('<mark class="prefix">') == 2 * per_method["dropout_ntp"]
    # plots: lengths per method, pairs per prompt per method, accuracy, filter
    assert dom.count('<svg class="plot"') >= 2 * len(per_method) + 2
    for title in ("Chosen vs rejected length per method", "Pairs per prompt",
                  "Policy accuracy per source and answer type", "Filter removals",
                  "Rows, tokens and time per stage", "Quarantined rows per reason",
                  "prompts per pass rate (share of samples right)"):
        assert title in dom
    # the planted <script>/<img onerror> is text in the card's <pre>, and created no element
    assert pair_id in dom
    assert "&lt;script&gt;window.__pwned=1;" in dom and "&lt;img src=x onerror=" in dom
    assert "<script>window.__pwned" not in dom and '<img src="x"' not in dom
    assert 'data-pwned="' not in dom


def test_filter_and_search_work_offline(planted_report, tmp_path):
    page, pair_id, manifest = planted_report
    n_dropout = min(manifest["totals"]["method"]["dropout_ntp"], hr.PER_METHOD)
    dom = browse(page, tmp_path / "p1", "#method=dropout_ntp")
    assert f'data-visible-cards="{n_dropout}"' in dom
    visible = re.findall(r'<article class="card" id="card-\d+" data-method="([^"]*)" data-source="[^"]*">', dom)
    assert visible and set(visible) == {"dropout_ntp"}  # the others carry hidden=""
    dom = browse(page, tmp_path / "p2", "#q=" + "window.__pwned")
    assert 'data-visible-cards="1"' in dom
    dom = browse(page, tmp_path / "p3", "#method=correctness&source=sample_open")
    assert 'data-visible-cards="0"' in dom  # the sample's open prompts have no correctness pairs


def test_screenshot(planted_report, tmp_path):
    page, _, _ = planted_report
    shot = tmp_path / "report.png"
    browse(page, tmp_path / "profile", screenshot=shot)
    im = Image.open(shot)
    assert im.size == (1400, 3000)
    assert len(set(im.convert("L").resize((70, 150)).getdata())) > 20  # not a blank page
