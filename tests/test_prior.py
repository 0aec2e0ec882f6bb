"""Difficulty-aware rebuilds: ``generate.prior`` reads an earlier build's prompt table, skips the
prompts whose interval there lies wholly outside ``rl_prompts.band``, sizes adaptive sampling's
first round from the prior pass rate, and is part of the config and stage hashes."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import make_config
from methods.adaptive import StopRule, first_round
from methods.prior import point_skip_reason, skip_reason, use_point
from methods.prompt_stats import scoring_settings, wilson
from pipeline.config.settings import ConfigError
from pipeline.config.templates import template_for_source
from schemas import PROMPT_TABLE_SCHEMA

BAND = [0.2, 0.8]


def table_row(cfg, prompt_id: str, correct: int | None, n: int, source: str = "sample_gt", **over) -> dict:
    """A prompt-table row as ``cfg``'s build would write it: ``correct`` of ``n`` right (None: no ground truth)."""
    t = template_for_source(cfg, source, cfg.generate.template)
    low, high = wilson(correct, n) if correct is not None else (None, None)
    return {"prompt_id": prompt_id, "source": source, "row_key": prompt_id, "template_id": t.id,
            "template_hash": t.hash, "model": cfg.model.path, "model_revision": cfg.model.revision or "",
            "samples_drawn": n, "tokens_generated": 10 * n, "correct": correct,
            "pass_rate": correct / n if correct is not None else None, "pass_rate_low": low,
            "pass_rate_high": high, **over}


def as_sampled(cfg, row: dict, question: str = "How many?", answer=("3",), **over) -> dict:
    """``row`` with the question, ground truth, sampling (seed from the prompt id) and scoring that
    ``cfg``'s own build records: a prior that build would repeat exactly."""
    from pipeline.config.templates import extraction_styles
    from pipeline.core.seeds import derive_seed

    g = cfg.generate
    sampling = {"n": g.n, "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
                "max_tokens": g.max_tokens, "seed": derive_seed(cfg.run.seed, row["prompt_id"], "generate"),
                "rounds": None, "stop_reason": None}
    scoring = scoring_settings(cfg.scoring, cfg.source(row["source"]),
                               extraction_styles(cfg).get(row["template_id"], "final_answer"))
    return {**row, "question": question, "answer": list(answer), "sampling": sampling, "scoring": scoring,
            "stop_reason": "fixed_n", **over}


def write_prior(folder: Path, rows: list[dict], schema: pa.Schema = PROMPT_TABLE_SCHEMA,
                manifest: dict | None = None) -> Path:
    (folder / "prompts").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "prompts" / "train-00000-of-00001.parquet")
    (folder / "manifest.json").write_text(json.dumps(manifest or {"name": "prior", "rows": len(rows)}))
    return folder


def prior_rows(cfg) -> list[dict]:
    return [table_row(cfg, "hard", 0, 16), table_row(cfg, "easy", 16, 16), table_row(cfg, "mid", 8, 16),
            table_row(cfg, "edge", 0, 8),  # [0, 0.32] touches the band: sampled
            table_row(cfg, "open", None, 2, source="sample_open")]


def with_prior(folder: Path, **generate):
    return make_config(generate={"prior": str(folder), **generate}, rl_prompts={"band": BAND})


@pytest.fixture
def prior(tmp_path) -> Path:
    return write_prior(tmp_path / "prior", prior_rows(make_config()))


# -- the rule --------------------------------------------------------------------------------

def test_skip_reason_needs_the_whole_interval_outside_the_band():
    assert skip_reason(*wilson(0, 16), BAND) == "too_hard"
    assert skip_reason(*wilson(16, 16), BAND) == "too_easy"
    assert skip_reason(*wilson(0, 8), BAND) is None and skip_reason(*wilson(8, 8), BAND) is None
    assert skip_reason(*wilson(8, 16), BAND) is None
    assert skip_reason(0.0, 0.2, BAND) is None and skip_reason(0.8, 1.0, BAND) is None  # the band's bounds count
    assert skip_reason(None, None, BAND) is None


def test_the_point_rule_is_the_curriculums_own_test_of_the_rate():
    assert point_skip_reason(0.0, BAND) == "too_hard" and point_skip_reason(1.0, BAND) == "too_easy"
    assert point_skip_reason(0.125, BAND) == "too_hard" and point_skip_reason(0.875, BAND) == "too_easy"
    assert point_skip_reason(0.2, BAND) is None and point_skip_reason(0.8, BAND) is None  # the bounds count
    assert point_skip_reason(None, BAND) is None
    assert use_point("point", False) and use_point("auto", True)
    assert not use_point("auto", False) and not use_point("interval", True)


def test_first_round_is_where_the_prior_rate_expects_the_stop_rule_met():
    rule = StopRule(rounds=(4, 8, 12, 16, 24, 32), max_pairs=15, max_reuse=8)
    assert first_round(rule, None) == 4
    assert first_round(rule, 0.5) == 8     # 4 right x 4 wrong = 16 pairs >= 15
    assert first_round(rule, 0.25) == 12   # 3 x 9 -> min(3*8, 9*3) = 24
    assert first_round(rule, 0.0) == 4 and first_round(rule, 1.0) == 4  # never enough: as without a prior
    both = StopRule(rounds=(4, 8, 16), stop="both", min_each=1)
    assert first_round(both, 0.5) == 4 and first_round(both, 0.1) == 16


# -- the config --------------------------------------------------------------------------------

def test_prior_manifest_goes_into_the_config_and_generate_hashes(prior):
    plain = make_config(rl_prompts={"band": BAND})
    cfg = with_prior(prior)
    assert cfg.generate.prior_manifest and len(cfg.generate.prior_manifest) == 64
    assert cfg.config_hash() != plain.config_hash()
    assert cfg.stage_hash("generate") != plain.stage_hash("generate")
    assert cfg.stage_hash("ingest") == plain.stage_hash("ingest")
    # the same folder, rebuilt: another manifest, other hashes
    (prior / "manifest.json").write_text(json.dumps({"name": "prior", "rows": 5, "rebuilt": True}))
    again = with_prior(prior)
    assert again.generate.prior_manifest != cfg.generate.prior_manifest
    assert again.config_hash() != cfg.config_hash()
    assert again.stage_hash("generate") != cfg.stage_hash("generate")
    # the band decides what is skipped: with a prior, generate's hash covers it
    wider = make_config(generate={"prior": str(prior)}, rl_prompts={"band": [0.1, 0.9]})
    assert wider.stage_hash("generate") != again.stage_hash("generate")
    assert plain.stage_hash("generate") == make_config(rl_prompts={"band": [0.1, 0.9]}).stage_hash("generate")
    # so does the rule that judges a prompt out of it
    assert with_prior(prior, prior_skip="interval").stage_hash("generate") != again.stage_hash("generate")


def test_a_config_without_prior_hashes_as_before():
    cfg = make_config()
    assert not {"prior", "prior_policy", "prior_manifest", "prior_skip"} & set(cfg.resolved()["generate"])


def test_a_pinned_prior_manifest_that_changed_is_an_error(prior):
    sha = with_prior(prior).generate.prior_manifest
    assert with_prior(prior, prior_manifest=sha).generate.prior_manifest == sha
    (prior / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="prior_manifest pins"):
        with_prior(prior, prior_manifest=sha)


def test_a_prior_from_another_model_is_an_error_naming_it(tmp_path):
    rows = [dict(r, model="other/model-7b") for r in prior_rows(make_config())]
    folder = write_prior(tmp_path / "p", rows)
    with pytest.raises(ValueError, match=r"model: the prior was generated by other/model-7b.*prior_policy: any"):
        with_prior(folder)
    assert with_prior(folder, prior_policy="any").generate.prior_manifest  # allowed when the config says so
    rev = write_prior(tmp_path / "r", [dict(r, model_revision="abc123") for r in prior_rows(make_config())])
    with pytest.raises(ValueError, match="@abc123"):
        with_prior(rev)


def test_a_prior_in_another_template_is_an_error_naming_the_source(tmp_path):
    rows = prior_rows(make_config())
    rows[0] = dict(rows[0], template_hash="0123456789abcdef")  # the same id, another text
    folder = write_prior(tmp_path / "p", rows)
    with pytest.raises(ValueError, match=r"template of source sample_gt: .*text 0123456789abcdef"):
        with_prior(folder)
    assert with_prior(folder, prior_policy="any").generate.prior_policy == "any"


def test_a_prompt_table_of_another_version_is_an_error(tmp_path):
    rows = prior_rows(make_config())
    missing = pa.schema([f for f in PROMPT_TABLE_SCHEMA if f.name != "pass_rate_high"])
    folder = write_prior(tmp_path / "missing", [{k: v for k, v in r.items() if k != "pass_rate_high"} for r in rows],
                         schema=missing)
    with pytest.raises(ValueError, match="incompatible version.*column pass_rate_high is missing"):
        with_prior(folder)
    typed = pa.schema([f.with_type(pa.string()) if f.name == "pass_rate" else f for f in PROMPT_TABLE_SCHEMA])
    folder = write_prior(tmp_path / "typed", [dict(r, pass_rate=str(r["pass_rate"])) for r in rows], schema=typed)
    with pytest.raises(ValueError, match="column pass_rate is string, this version writes double"):
        with_prior(folder, prior_policy="any")  # never a policy matter


def test_a_folder_that_is_no_finished_build_is_an_error(tmp_path, prior):
    with pytest.raises(ValueError, match="no manifest.json"):
        with_prior(tmp_path / "nowhere")
    (prior / "prompts" / "train-00000-of-00001.parquet").unlink()
    with pytest.raises(ValueError, match="no prompt table"):
        with_prior(prior)
    with pytest.raises(ValueError, match="generate.prior is run.output_dir"):
        make_config(generate={"prior": str(tmp_path / "out")}, run={**make_config().run.model_dump(),
                                                                    "output_dir": str(tmp_path / "out")})


# -- the stage ---------------------------------------------------------------------------------

def ingested(prompt_id: str, answer: list[str], source: str = "sample_gt") -> dict:
    return {"prompt_id": prompt_id, "source": source, "row_key": prompt_id, "question": "How many?", "images": [],
            "image_positions": [], "answer": answer, "answer_type": None, "choices": [], "facts": None}


ROWS = [ingested(p, ["3"]) for p in ("hard", "easy", "mid", "edge", "new")] + [ingested("open", [], "sample_open")]


@pytest.fixture
def fake_vllm(monkeypatch):
    """``prepare`` builds vLLM SamplingParams: a stand-in keeps this test off the engine."""
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: kw))


def prepare_ctx(cfg, rows=ROWS):
    from pipeline.core.graph import make_stage
    from pipeline.core.stage import StageContext

    stage = make_stage("generate", cfg)
    ctx = StageContext("generate", "p", cfg)
    todo, requests = stage.prepare(rows, ctx)
    requests = list(requests)  # built as drawn: todo is complete after
    return {row["prompt_id"]: req for (row, *_), req in zip(todo, requests)}, ctx, stage


def prepare(cfg, rows=ROWS):
    sent, ctx, stage = prepare_ctx(cfg, rows)
    return sent, ctx.stats.counters, stage


def test_generate_skips_out_of_band_prompts_and_counts_them(prior, fake_vllm):
    sent, counters, stage = prepare(with_prior(prior))
    assert sorted(sent) == ["edge", "mid", "new", "open"]
    assert counters["prior.skipped.too_hard"] == 1 and counters["prior.skipped.too_easy"] == 1
    assert counters["prior.skipped_tokens"] == 320 and counters["prior.skipped_samples"] == 32
    assert counters["prior.sampled"] == 2 and counters["prior.unseen"] == 1
    summary = stage.summarize(counters)
    assert summary["prior"]["skipped"] == 2 and summary["prior"]["skipped_by_reason"] == {"too_hard": 1,
                                                                                           "too_easy": 1}
    assert "prior: 2 prompts skipped" in stage.summary_line(summary)
    # without a prior every prompt is sent, and nothing is counted
    sent, counters, stage = prepare(make_config(rl_prompts={"band": BAND}))
    assert len(sent) == len(ROWS) and not any(k.startswith("prior.") for k in counters)
    assert stage.summarize(counters) == {}


def test_adaptive_first_round_starts_from_the_prior_rate(prior, fake_vllm):
    adaptive = {"enabled": True, "rounds": [4, 8, 12, 16]}
    sent, _, _ = prepare(with_prior(prior, n=16, adaptive=adaptive))
    # prior 8/16, each response in at most 3 pairs (scoring.max_pairs_per_response): 4 right x 4 wrong
    # at 8 samples make 12 pairs, 6 x 6 at 12 make 18 >= the 15 the rule stops on
    assert sent["mid"].params["n"] == 12
    assert sent["edge"].params["n"] == 4   # prior 0/8: no round expects a pair, the first round as usual
    assert sent["new"].params["n"] == 4 and sent["open"].params["n"] == 1


def test_the_command_line_reports_a_mismatch_as_a_config_error(tmp_path):
    from helpers import load_config_file, shipped_config

    rows = [dict(r, model="other/model-7b") for r in prior_rows(make_config())]
    folder = write_prior(tmp_path / "p", rows)
    data = shipped_config()
    data["generate"]["prior"] = str(folder)
    with pytest.raises(ConfigError, match="generate.prior .* was made differently: model"):
        load_config_file(tmp_path, data)


# -- a small build, rebuilt with its own prompt table as the prior -----------------------------

#: with n = 4 a Wilson interval is never narrower than [0, 0.49] or [0.51, 1]: this band lets both
#: bounds skip (0/4 is too hard, 4/4 too easy) while the build stays small
SMALL_BAND = "rl_prompts.band=[0.5, 0.5]"


def _start_build(base: Path, *extra: str):
    from helpers import SAMPLE_CONFIG, SMALL, CliRun

    base.mkdir(parents=True, exist_ok=True)
    return CliRun("run", "--config", SAMPLE_CONFIG, "--executor", "local", "--work-dir", base / "work",
                  "--output", base / "out", *SMALL, "--set", "run.stages=[ingest,generate,correctness,write]",
                  "--set", SMALL_BAND, *extra, log=base / "output.txt")


def _result(base: Path) -> tuple[Path, dict]:
    return base / "out", json.loads((base / "work" / "report.json").read_text())


def small_build(base: Path, *extra: str) -> tuple[Path, dict]:
    _start_build(base, *extra).finish(timeout=1200)
    return _result(base)


def small_builds(builds: dict[str, tuple[Path, tuple[str, ...]]]) -> dict[str, tuple[Path, dict]]:
    """Several ``small_build``s that do not depend on each other, run side by side (each has its
    own work folder, output and engine; on a 2-core machine one core each)."""
    runs = {}
    try:
        for name, (base, extra) in builds.items():
            runs[name] = _start_build(base, *extra)
        for run in runs.values():
            run.finish(timeout=1200)
    finally:
        for run in runs.values():
            run.stop()
    return {name: _result(builds[name][0]) for name in runs}


@pytest.fixture(scope="module")
def small_plain(tmp_path_factory, tiny_model) -> tuple[Path, dict]:
    """The small build every rebuild below reads as its prior."""
    return small_build(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def rebuilds(tmp_path_factory, small_plain) -> dict[str, tuple[Path, dict]]:
    """The two rebuilds of ``small_plain`` the tests below check (by the interval rule, and by
    ``auto``: the point rate), made side by side: neither reads the other."""
    out, _ = small_plain
    base = tmp_path_factory.mktemp("rebuilds")
    return small_builds({
        "interval": (base / "interval", ("--set", f"generate.prior={out}", "--set", "generate.prior_skip=interval")),
        "auto": (base / "auto", ("--set", f"generate.prior={out}"))})


def table_of(out: Path) -> dict[str, dict]:
    from publish.prompt_table import read_prompt_table

    return {r["prompt_id"]: r for r in read_prompt_table(str(out)).to_pylist()}


@pytest.mark.build
def test_a_rebuild_skips_what_its_prior_puts_outside_the_band_and_only_that(small_plain, rebuilds):
    out, plain = small_plain
    before = table_of(out)
    want = {pid: skip_reason(r["pass_rate_low"], r["pass_rate_high"], (0.5, 0.5)) for pid, r in before.items()}
    skipped = {pid for pid, why in want.items() if why}
    assert skipped, "the small build has no prompt outside the band: the test would test nothing"

    again, rebuilt = rebuilds["interval"]  # generate.prior=<out>, generate.prior_skip=interval
    counters = rebuilt["stages"]["generate"]["counters"]
    for why in ("too_hard", "too_easy"):
        assert counters.get(f"prior.skipped.{why}", 0) == sum(w == why for w in want.values())
    assert counters["prior.sampled"] == sum(r["pass_rate"] is not None for r in before.values()) - len(skipped)
    after = table_of(again)
    assert set(after) == set(before)  # open prompts and in-band ones sampled again, the rest carried
    assert {p for p, r in after.items() if r["stop_reason"] == "skipped_by_prior"} == skipped
    # the same model and seeds: the prompts sampled again measure the same, for fewer tokens
    assert all(after[p]["pass_rate"] == before[p]["pass_rate"] for p in after)
    spent = plain["stages"]["generate"]["counters"]["tokens_generated"]
    assert counters["tokens_generated"] == spent - sum(before[p]["tokens_generated"] for p in skipped)
    assert counters["prior.skipped_tokens"] == spent - counters["tokens_generated"]
    assert rebuilt["summary"]["generate"]["prior"]["skipped"] == len(skipped)
    assert rebuilt["config_hash"] != plain["config_hash"]


@pytest.mark.build
def test_a_rebuild_sampled_as_its_prior_skips_by_the_point_rate_keeps_the_same_band_and_chains(tmp_path, small_plain,
                                                                                               rebuilds):
    """generate.prior_skip: auto, the prior is this config's own build: every ground-truth prompt is
    judged by its rate, every one outside the band is skipped, and the prompts in the band are the
    plain build's with the same rates.  The rebuild, used as the next prior, skips the same prompts."""
    out, plain = small_plain
    before = table_of(out)
    rated = {p: r for p, r in before.items() if r["pass_rate"] is not None}
    skipped = {p for p, r in rated.items() if not 0.5 <= r["pass_rate"] <= 0.5}
    in_band = {p: r["pass_rate"] for p, r in rated.items() if p not in skipped}
    assert skipped and len(skipped) > sum(1 for r in rated.values()
                                          if skip_reason(r["pass_rate_low"], r["pass_rate_high"], (0.5, 0.5)))

    again, rebuilt = rebuilds["auto"]  # generate.prior=<out>, generate.prior_skip left at auto
    counters = rebuilt["stages"]["generate"]["counters"]
    assert counters["prior.rule.point"] == len(rated) and "prior.rule.interval" not in counters
    assert counters["prior.carried"] == len(skipped)
    after = table_of(again)
    assert set(after) == set(before)
    assert {p for p, r in after.items() if r["stop_reason"] == "skipped_by_prior"} == skipped
    assert {p: r["pass_rate"] for p, r in after.items() if r["pass_rate"] is not None and p not in skipped} == in_band
    spent = plain["stages"]["generate"]["counters"]["tokens_generated"]
    assert counters["tokens_generated"] == spent - sum(before[p]["tokens_generated"] for p in skipped)

    chained, third = small_build(tmp_path / "chained", "--set", f"generate.prior={again}")
    c3 = third["stages"]["generate"]["counters"]
    assert c3["prior.carried"] == len(skipped) and c3["prior.rule.point"] == len(rated)
    assert c3["tokens_generated"] == counters["tokens_generated"]
    last = table_of(chained)
    assert set(last) == set(before)
    assert {p: (r["pass_rate"], r["samples_drawn"], r["correct"]) for p, r in last.items()} == {
        p: (r["pass_rate"], r["samples_drawn"], r["correct"]) for p, r in before.items()}


# -- the point rule for a prior sampled as this build samples (generate.prior_skip) -------------

EXACT_ROWS = [ingested(p, ["3"]) for p in ("hard", "edge", "low", "mid", "easy", "new")] + [
    ingested("open", [], "sample_open")]


def exact_prior_rows(cfg) -> list[dict]:
    """A prior of which ``edge`` (0/8) and ``mid`` (4/8) were sampled exactly as ``cfg`` samples them;
    ``low`` (1/8) with another seed, ``easy`` (8/8) with another question, ``hard`` (0/16) with no record."""
    low = as_sampled(cfg, table_row(cfg, "low", 1, 8))
    return [table_row(cfg, "hard", 0, 16),
            as_sampled(cfg, table_row(cfg, "edge", 0, 8)),
            dict(low, sampling={**low["sampling"], "seed": low["sampling"]["seed"] + 1}),
            as_sampled(cfg, table_row(cfg, "mid", 4, 8)),
            as_sampled(cfg, table_row(cfg, "easy", 8, 8), question="How many? Count them."),
            table_row(cfg, "open", None, 2, source="sample_open")]


@pytest.fixture
def exact_prior(tmp_path) -> Path:
    return write_prior(tmp_path / "exact", exact_prior_rows(make_config()))


def test_auto_judges_by_the_point_rate_only_the_prompts_sampled_exactly_as_this_build_would(exact_prior, fake_vllm):
    sent, counters, stage = prepare(with_prior(exact_prior), EXACT_ROWS)
    # edge 0/8: its interval [0, 0.32] touches the band, but this build would draw the same 8 samples
    assert sorted(sent) == ["easy", "low", "mid", "new", "open"]
    assert counters["prior.rule.point"] == 2 and counters["prior.rule.interval"] == 3  # edge, mid | hard, low, easy
    assert counters["prior.skipped.too_hard"] == 2 and "prior.skipped.too_easy" not in counters
    assert stage.summarize(counters)["prior"]["judged_by"] == {"point": 2, "interval": 3}
    # interval: the rule of a prior measured with other draws, for every prompt
    sent, counters, _ = prepare(with_prior(exact_prior, prior_skip="interval"), EXACT_ROWS)
    assert sorted(sent) == ["easy", "edge", "low", "mid", "new", "open"] and counters["prior.rule.interval"] == 5
    # point: the rate, whatever the prior's sampling (low 1/8 and easy 8/8 out of the band too)
    sent, counters, _ = prepare(with_prior(exact_prior, prior_skip="point"), EXACT_ROWS)
    assert sorted(sent) == ["mid", "new", "open"] and counters["prior.rule.point"] == 5
    assert counters["prior.skipped.too_hard"] == 3 and counters["prior.skipped.too_easy"] == 1


@pytest.mark.parametrize("change", [{"run": {"seed": 99}}, {"generate": {"temperature": 0.7}},
                                    {"generate": {"max_tokens": 64}}, {"scoring": {"threshold": 0.8}},
                                    {"generate": {"adaptive": {"enabled": True}}}])
def test_a_prompt_sampled_or_scored_otherwise_is_judged_by_its_interval(exact_prior, fake_vllm, change):
    """Another seed, sampling setting or scoring setting, or adaptive rounds: the rebuild would not
    measure the prior's rate exactly, so edge (0/8) is sampled again."""
    sections = {"generate": {"prior": str(exact_prior), **change.get("generate", {})},
                "rl_prompts": {"band": BAND}, **{k: v for k, v in change.items() if k != "generate"}}
    if "run" in sections:
        sections["run"] = {**make_config().run.model_dump(), **sections["run"]}
    if "scoring" in sections:
        sections["scoring"] = {**make_config().scoring.model_dump(), **sections["scoring"]}
    sent, counters, _ = prepare(make_config(**sections), EXACT_ROWS)
    assert "edge" in sent and "mid" in sent
    assert "prior.rule.point" not in counters


def side_rows(ctx) -> list[dict]:
    schema, rows = ctx.side_outputs().get("prompts", (None, []))
    assert schema is None or schema == PROMPT_TABLE_SCHEMA
    return rows


def test_skipped_prompts_keep_their_prior_rows_and_the_rebuild_is_a_prior_that_skips_them_again(
        exact_prior, tmp_path, fake_vllm):
    prior_rows_by_id = {r["prompt_id"]: r for r in pq.read_table(exact_prior / "prompts").to_pylist()}
    sent, ctx, stage = prepare_ctx(with_prior(exact_prior), EXACT_ROWS)
    carried = side_rows(ctx)
    assert [r["prompt_id"] for r in carried] == ["edge", "hard"]
    for r in carried:  # the prior's row, counts and rate included; only the stop reason says it was not sampled
        assert r["stop_reason"] == "skipped_by_prior"
        assert {k: v for k, v in r.items() if k != "stop_reason"} == {
            k: v for k, v in prior_rows_by_id[r["prompt_id"]].items() if k != "stop_reason"}
    assert ctx.stats.counters["prior.carried"] == 2
    assert stage.summarize(ctx.stats.counters)["prior"]["carried"] == 2
    # the rebuild's table: the carried rows, and the prompts it sampled again measured as before
    again = [r for pid, r in prior_rows_by_id.items() if pid in sent] + carried
    rebuilt = write_prior(tmp_path / "rebuilt", again)
    sent2, ctx2, _ = prepare_ctx(with_prior(rebuilt), EXACT_ROWS)
    assert sorted(sent2) == sorted(sent)  # chained: what the first prior skipped stays skipped
    assert [r["prompt_id"] for r in side_rows(ctx2)] == ["edge", "hard"]
    # without a prompt table recorded, nothing is carried (the table would hold only these rows)
    _, ctx3, _ = prepare_ctx(make_config(generate={"prior": str(exact_prior)}, rl_prompts={"band": BAND},
                                         correctness={"prompt_table": False}, export={"formats": []}), EXACT_ROWS)
    assert side_rows(ctx3) == [] and "prior.carried" not in ctx3.stats.counters
