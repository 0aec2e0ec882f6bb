"""Decontamination end to end at sample size: ingest, dedup and decontaminate of the whole sample
against a reference file made here from a perturbed slice of it (images re-encoded and resized,
questions re-cased and re-suffixed), plus text-only items that embed a long sample question.
Local executor, no model."""
from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from helpers import ROOT, config_file, encode, run_cli, stage_rows, cli_env
from methods import question_keys as qk
from pipeline.config.templates import SHORT_ANSWER_SUFFIXES

SAMPLE = ROOT / "data" / "sample"


def _sample() -> list[dict]:
    return [dict(json.loads(line), _file=name) for name in ("gt.jsonl", "open.jsonl")
            for line in (SAMPLE / name).read_text().splitlines()]


def _norm(r: dict) -> str:
    return " ".join(qk.tokens(qk.prompt_text(r["question"], r.get("choices") or ()), SUFFIXES))


SUFFIXES = SHORT_ANSWER_SUFFIXES


#: a training source of questions no template makes, some of them leaked into the benchmark below
LEAKS = [
    "In the diagram of the water cycle shown here, which stage follows evaporation before the water falls back as rain?",
    "Looking at the floor plan in the picture, how many doors must a visitor pass to reach the kitchen from the front door?",
    "According to the timetable in this photo, at what time does the last train leave the central station on a Sunday?",
    "Which of the animals drawn in the food web above would lose its only source of food if the grasshoppers disappeared?",
]
#: a question the sample's templates ask of four different charts: its 13-grams are boilerplate
TEMPLATED = "The bar chart shows lengths in m. How long is the longest bar?"


def _reference(folder: Path, rows: list[dict]) -> tuple[Path, set[str]]:
    """A benchmark file: every 7th sample row perturbed (its image enlarged and saved as JPEG, its
    question upper-cased), two LEAKS re-worded around their text, and TEMPLATED.  Returns the file
    and the row ids the image_question rule must catch."""
    (folder / "img").mkdir(parents=True)
    items, by_image = [], set()
    for i, r in enumerate(rows[::7]):
        im = Image.open(SAMPLE / r["image"]).convert("RGB")
        im = im.resize((im.width * 3, im.height * 3), Image.Resampling.BICUBIC)
        (folder / "img" / f"{i}.jpg").write_bytes(encode(im, "JPEG", quality=60))
        items.append({"id": f"bench-{i}", "image": f"img/{i}.jpg", "question": r["question"].upper(),
                      "choices": r.get("choices") or []})
        by_image.add(r["id"])
    items += [{"id": f"text-{i}", "question": f"Question {i + 1}: {q.lower()} Explain your reasoning."}
              for i, q in enumerate(LEAKS[:2])]
    items.append({"id": "templated", "question": f"{TEMPLATED} Answer with a number."})
    path = folder / "bench.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    return path, by_image


def _leaks(folder: Path) -> Path:
    path = folder / "leaks.jsonl"
    path.write_text("".join(json.dumps({"id": f"leak-{i}", "question": q, "image": str(SAMPLE / "images" / "open-0000.png"),
                                        "answer": "x"}) + "\n" for i, q in enumerate(LEAKS)))
    return path


def test_a_perturbed_slice_of_the_sample_is_kept_out(tmp_path):
    rows = _sample()
    ref, by_image = _reference(tmp_path / "bench", rows)
    config = config_file(tmp_path, {
        "run": {"name": "decon", "stages": ["ingest", "dedup", "decontaminate"], "partition_rows": 64},
        "executor": {"kind": "local"},
        "sources": [{"name": "sample_gt", "format": "jsonl", "path": str(SAMPLE / "gt.jsonl")},
                    {"name": "sample_open", "format": "jsonl", "path": str(SAMPLE / "open.jsonl")},
                    {"name": "leaks", "format": "jsonl", "path": str(_leaks(tmp_path)),
                     "allowed_image_roots": [str(SAMPLE)]}],
        "decontaminate": {"references": [{"name": "bench", "format": "jsonl", "path": str(ref),
                                          "require_image": False}]},
    })
    proc = run_cli("run", "--config", config, "--work-dir", tmp_path / "work", "--output", tmp_path / "out",
                   env=cli_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    q = stage_rows(tmp_path / "work" / "decontaminate", "quarantine")
    assert {r["reason"] for r in q} == {"contaminated"}
    removed = {json.loads(r["record"])["row_key"]: r["detail"] for r in q}
    deduped = {r["row_key"] for r in stage_rows(tmp_path / "work" / "dedup", "quarantine")}
    # recall: every perturbed item's prompt is out (unless dedup removed it first), by the right rule
    assert by_image - deduped <= set(removed)
    assert all("rule image_question" in removed[k] for k in by_image - deduped)
    # the two leaked questions go by their 13-grams, the two others stay
    assert {k for k in removed if k.startswith("leak-")} == {"leak-0", "leak-1"}
    assert all("rule ngram" in removed[k] for k in ("leak-0", "leak-1"))
    # precision: anything else removed asks a reference question (the same drawing at another size,
    # or the same question of another chart)
    by_id = {r["id"]: r for r in rows}
    ref_questions = {_norm(by_id[k]) for k in by_image}
    extra = set(removed) - by_image - {"leak-0", "leak-1"}
    assert all(_norm(by_id[k]) in ref_questions for k in extra), \
        {k: (by_id[k]["question"], removed[k]) for k in extra if _norm(by_id[k]) not in ref_questions}
    # a templated question's 13-grams are boilerplate: the four charts asked TEMPLATED stay (unless
    # their own image is in the benchmark)
    templated = {k for k, r in by_id.items() if _norm(r) == _norm({"question": TEMPLATED})}
    assert len(templated) == 4 and not any("rule ngram" in removed.get(k, "") for k in templated)
    assert not any("the bar chart shows" in by_id[k]["question"].lower() and "rule ngram" in removed[k]
                   and _norm(by_id[k]) not in ref_questions for k in extra)
    # counts per reference set and rule, in the run report
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    counters = report["stages"]["decontaminate"]["counters"]
    assert counters["contaminated.bench.image_question"] == sum("rule image_question" in d for d in removed.values())
    assert counters.get("contaminated.bench.ngram", 0) == sum("rule ngram" in d for d in removed.values())
    assert "contaminated prompts removed: bench: image_question" in proc.stdout, proc.stdout
    # the dataset card's section: each reference set with a hash of its files, and the counts
    from pipeline.config.loading import load_config
    from pipeline.sources.references import fingerprint
    from publish.card import stage_sections

    cfg = load_config(config, {"run.work_dir": str(tmp_path / "work")})
    card = "\n".join(stage_sections(cfg))
    fp = fingerprint(cfg.decontaminate.references[0])
    assert len(fp) == 16 and f"(files sha256 {fp})" in card
    assert (f"image_question {counters['contaminated.bench.image_question']}, "
            f"ngram {counters['contaminated.bench.ngram']} prompts removed" in card
            and "Near-duplicates (`dedup`): 13 prompts removed" in card), card


def test_the_html_report_shows_hits_per_reference_set_and_near_duplicates():
    from publish.html_sections import summary_html

    report = {"stages": {}, "summary": {
        "dedup": {"near_duplicates": 13, "prompts_kept": 281, "images_hashed": 294},
        "decontaminate": {"clean": 240, "contaminated": {"mmmu": {"image_question": 4, "ngram": 2},
                                                           "<b>x</b>": {"ngram": 1}}}}}
    page = summary_html(report, None)
    assert "Benchmark contamination removed before generation" in page
    assert "<td><b>mmmu</b></td><td class=num>4</td><td class=num>2</td><td class=num>6</td>" in page
    assert "<td><b>&lt;b&gt;x&lt;/b&gt;</b></td>" in page  # a set's name is escaped
    assert "13 near-duplicate prompts removed before generation, 281 kept" in page
