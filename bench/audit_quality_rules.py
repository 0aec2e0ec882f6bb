"""Count the pairs of an existing dataset that the current pair-quality rules would not make.

Usage: python bench/audit_quality_rules.py DATASET_DIR  (prints JSON)

Run it on a dataset built by an older version to see what each rule of issue 13
point 4 removes: a chosen stating conflicting final answers, a rejected stating
the ground truth (in an earlier statement, or in its last one now that equations
match), the chosen answer inside any rejected statement, near-identical crops,
identical texts.  A pair is counted under every rule it breaks.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from collections import Counter

import pyarrow.parquet as pq

from methods.consistency import conflicting, states_any
from methods.crop_signal import MIN_DIFFERENCE, image_difference
from methods.extract import extract_answers
from methods.match import infer_answer_type, match_answer
from methods.quality import same_text
from pipeline.config.templates import EXTRACTION_STYLE
from schemas.records import turn_text


def audit(rows) -> Counter:
    counts: Counter = Counter()
    for row in rows:
        method, prov = row["method"], row["provenance"]
        counts[f"pairs.{method}"] += 1
        chosen, rejected = turn_text(row["chosen"]), turn_text(row["rejected"])
        broken = set()
        if method == "image_crop":
            if image_difference(row["images"][0]["bytes"], row["rejected_images"][0]["bytes"]) < MIN_DIFFERENCE:
                broken.add("near_identical_crop")
        elif same_text(chosen, rejected):
            broken.add("identical_text")
        if method in ("correctness", "format"):
            gt = prov["ground_truth"] or []
            style = EXTRACTION_STYLE.get(prov["template_id"] or "", "final_answer")
            atype = prov["answer_type"] or "auto"
            atype = infer_answer_type(gt) if atype == "auto" else atype
            c_answers = extract_answers(chosen, style)
            if conflicting(c_answers, atype):
                broken.add("chosen_conflicting_answers")
            r_answers = extract_answers(rejected, style)
            if method == "correctness" and r_answers:
                if match_answer(r_answers[-1], gt, atype).correct:
                    broken.add("rejected_now_correct")   # e.g. "x = 2" for GT 2
                elif states_any(r_answers[:-1], gt, atype):
                    broken.add("rejected_states_truth_earlier")
                ca = " ".join((c_answers[-1] if c_answers else "").lower().split())
                if ca and any(ca in " ".join(a.lower().split()) for a in r_answers[:-1]):
                    broken.add("chosen_answer_in_earlier_rejected_statement")
        for rule in broken:
            counts[f"removed.{rule}"] += 1
        counts["removed.any"] += bool(broken)
    return counts


def main(dataset: str) -> None:
    files = sorted(glob.glob(os.path.join(dataset, "data", "**", "*.parquet"), recursive=True))
    rows = (r for f in files for r in pq.read_table(f).to_pylist())
    print(json.dumps(dict(sorted(audit(rows).items())), indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
