"""Response reuse in the written dataset (issue 30): distinct chosen and rejected responses per
method, counted per shard and added up, in the manifest and the dataset card."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from publish.stats import Stats
from schemas import PAIR_SCHEMA
from schemas.arrow import from_rows
from schemas.records import pair_row, provenance

SHARD = SimpleNamespace(config="default", split="train")


def _pair(prompt: str, method: str, chosen: int | None, rejected: int | None, drawn: int = 8) -> dict:
    return pair_row(pair_id=f"{prompt}-{method}-{chosen}-{rejected}", method=method, source="s", question="q",
                    user_text="q", images=[], chosen=f"c{chosen}", rejected=f"r{rejected}",
                    prov=provenance(prompt_id=prompt, row_key=prompt, chosen_index=chosen, rejected_index=rejected,
                                    samples_drawn=drawn))


@pytest.mark.parametrize("shards, expected", [
    # one chosen in 3 pairs, 3 rejected: 3.0 and 1.0
    pytest.param([[("p1", "correctness", 0, 1), ("p1", "correctness", 0, 2), ("p1", "correctness", 0, 3)]],
                 {"correctness": (1, 3.0, 3, 1.0, 8.0)}, id="one-chosen-reused"),
    # the same indexes in two prompts are different responses
    pytest.param([[("p1", "correctness", 0, 1)], [("p2", "correctness", 0, 1)]],
                 {"correctness": (2, 1.0, 2, 1.0, 8.0)}, id="per-prompt-indexes-across-shards"),
    # per method: a chosen in a correctness and a format pair counts once in each
    pytest.param([[("p1", "correctness", 0, 1), ("p1", "correctness", 2, 1), ("p1", "format", 0, 5)]],
                 {"correctness": (2, 1.0, 1, 2.0, 4.0), "format": (1, 1.0, 1, 1.0, 8.0)}, id="per-method"),
    # pairs not made of sampled responses (no index) are left out; a rejected side without one has no ratio
    pytest.param([[("p1", "image_crop", None, None)]], {}, id="no-index"),
    pytest.param([[("p1", "dropout_ntp", 0, None), ("p2", "dropout_ntp", 0, None)]],
                 {"dropout_ntp": (2, 1.0, 0, None, 8.0)}, id="no-rejected-index"),
])
def test_distinct_responses_per_method(shards, expected):
    total = Stats()
    for rows in shards:
        part = Stats()
        part.add(SHARD, from_rows([_pair(*r) for r in rows], PAIR_SCHEMA))
        total.merge(part)
    got = {m: (d["distinct_chosen"], d["pairs_per_chosen"], d["distinct_rejected"], d["pairs_per_rejected"],
               d["samples_per_chosen"]) for m, d in total.diversity().items()}
    assert got == expected


def test_the_card_shows_the_reuse_table():
    from publish.card import render_card
    from helpers import make_config

    stats = Stats()
    stats.add(SHARD, from_rows([_pair("p1", "correctness", 0, i) for i in (1, 2, 3, 4)]
                               + [_pair("p1", "dropout_ntp", 0, None)], PAIR_SCHEMA))
    manifest = {"totals": {"method": stats.totals(3), "source": stats.totals(2), "source_method": stats.source_method()},
                "lengths": stats.lengths(), "diversity": stats.diversity(), "shards": [], "splits": {},
                "pipeline_version": "x", "config_hash": "h", "rows": 4, "duplicates_dropped": 0}
    card = render_card(make_config(), manifest, [])
    assert "## Response reuse" in card
    assert "| correctness | 1 | 4.00 | 4 | 1.00 | 8.00 |" in card
    assert "| dropout_ntp | 1 | 1.00 | - | - | 8.00 |" in card


@pytest.mark.parametrize("cap, pairs, per_chosen", [
    (None, 8, 8.0),  # the old selection: one right answer in every pair
    (3, 3, 3.0),
    (1, 1, 1.0),
])
def test_the_correctness_stage_caps_and_counts_reuse(cap, pairs, per_chosen):
    """One right answer and 8 wrong ones: scoring.max_pairs_per_response bounds the chosen's pairs,
    and the stage's counters say how often it was reused."""
    from helpers import make_config
    from pipeline.config.templates import BUILTIN_TEMPLATES
    from pipeline.core.stage import StageContext
    from stages import make_stage

    texts = ["Two and two make 4.\nFinal answer: 4"] + [f"I make it {n}.\nFinal answer: {n}" for n in range(5, 13)]
    t = BUILTIN_TEMPLATES["mmpr_final_answer"]
    row = {"prompt_id": "p", "source": "s", "row_key": "0", "question": "2 + 2?", "images": [], "image_positions": [],
           "answer": ["4"], "answer_type": "number", "choices": [], "facts": None, "template_id": t.id,
           "template_hash": t.hash, "prompt_text": "", "prompt_tokens": 1, "model": "m", "model_revision": "",
           "sampling": None, "responses": [{"index": i, "text": x, "finish_reason": "stop", "num_tokens": 10, "seed": i}
                                           for i, x in enumerate(texts)]}
    cfg = make_config(sources=[{"name": "s", "format": "jsonl", "path": "x"}],
                      scoring={"max_pairs_per_response": cap})
    ctx = StageContext("correctness", "p", cfg)
    out = list(make_stage("correctness", cfg).run([row], ctx))
    assert len(out) == pairs and len({p["provenance"]["rejected_index"] for p in out}) == pairs
    d = make_stage("correctness", cfg).summarize(ctx.stats.counters)["diversity"]
    assert d["correctness"]["pairs_per_chosen"] == per_chosen and d["correctness"]["pairs_per_rejected"] == 1.0
    assert d["tokens_per_chosen"] == 90.0  # 9 responses x 10 tokens, one distinct chosen
