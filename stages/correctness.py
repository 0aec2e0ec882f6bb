"""correctness: MMPR pairs from ground truth (docs/architecture.md, "The methods").

For every prompt with ground truth: extract each sample's final answer, match
it against the ground truth, and pair correct samples (chosen) with incorrect
ones (rejected).  Unparseable samples are *format negatives*: usable as
rejected under their own method tag.  A response stating several different
final answers is never chosen, and one stating the ground truth in any of its
final answers is never rejected (``methods.consistency``; counted as
``responses.conflicting_answers`` / ``responses.wrong_states_truth``): they are
set aside here rather than dropped later by the filter, so another sample of
the same prompt can take their place in the pair.  Prompts where every sample
is wrong (or no right one is usable) go to the ``all_wrong`` side output for
later use (harder prompts, more samples).

Every generated prompt, with ground truth or not, also gets a row in the
``prompts`` side output (``methods.prompt_stats``: samples drawn, the verdict
counts, pass rate and its interval, stop reason, model, seeds, the scoring
settings): the write stage publishes it as the dataset's prompt table.

Each response is in at most ``scoring.max_pairs_per_response`` pairs of each method (the cap
adaptive sampling stops on).  How often responses are reused is counted and summarised
(``diversity``): pairs per distinct chosen and per distinct rejected response, and generated
tokens (of every ground-truth prompt) per distinct chosen used in a correctness pair.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

from pydantic import Field

from methods.pairs import select_pairs
from methods.prompt_stats import prompt_row, scoring_settings
from methods.scoring import pass_rate, pass_rate_bin, score_responses
from pipeline import __version__
from pipeline.config.settings import Section
from pipeline.core.seeds import derive_seed, stable_hash
from pipeline.core.stage import PairMethod, RowStage, StageContext, prefixed
from pipeline.config.templates import extraction_styles, render_user_text, template_by_id
from schemas import PAIR_SCHEMA, PROMPT_TABLE_SCHEMA, RESPONSE_SCHEMA
from schemas.records import pair_row, response_provenance, user_turn

#: the side output the write stage publishes as the prompt table (``prompts/*.parquet``)
PROMPTS_SIDE = "prompts"


def count_distinct(pairs: list[tuple[str, object, object]], inc) -> None:
    """One prompt's distinct chosen and rejected responses per method into the counters
    (``distinct.<method>.chosen`` / ``.rejected``; a prompt's responses are its own, so the
    counts add up across prompts and partitions)."""
    for method in sorted({m for m, _, _ in pairs}):
        inc(f"distinct.{method}.chosen", len({c.index for m, c, _ in pairs if m == method}))
        inc(f"distinct.{method}.rejected", len({r.index for m, _, r in pairs if m == method}))


def diversity(c: dict) -> dict:
    """How often pairs reuse a response, from the counters: per method, pairs per distinct chosen
    and per distinct rejected (1.0: every pair has responses of its own); and generated tokens of
    the ground-truth prompts per distinct chosen used in a correctness pair (what one more chosen
    answer cost)."""
    out: dict = {}
    for method in ("correctness", "format"):
        pairs, chosen = c.get(f"pairs.{method}", 0), c.get(f"distinct.{method}.chosen", 0)
        if pairs and chosen:
            rejected = c.get(f"distinct.{method}.rejected", 0)
            out[method] = {"distinct_chosen": chosen, "distinct_rejected": rejected,
                           "pairs_per_chosen": round(pairs / chosen, 3),
                           "pairs_per_rejected": round(pairs / max(rejected, 1), 3)}
    if "correctness" in out:
        out["tokens_per_chosen"] = round(c.get("sampled_tokens", 0) / out["correctness"]["distinct_chosen"], 1)
    return out


class CorrectnessConfig(Section):
    """The correctness pairs (how responses are scored is the shared ``scoring`` section)."""
    format_negatives: bool = Field(True, description=(
        'Also use unparseable responses (no final answer) as rejected, in pairs of method "format"'))
    max_format_pairs_per_prompt: int = Field(3, ge=0, description=(
        "Most format pairs made from one prompt's responses"))
    length_balance_ratio: Optional[float] = Field(None, gt=1, description=(
        "Prefer rejected responses whose length is within this ratio of the chosen's (null = off)"))
    prompt_table: bool = Field(True, description=(
        "Record every prompt's samples drawn, verdict counts and pass rate (the prompts side output the write "
        "stage publishes as prompts/*.parquet, which the RL exports read)"))


class CorrectnessStage(RowStage):
    name = "correctness"
    #: right vs wrong answers, and (format) parseable vs unparseable ones
    pair_methods = (PairMethod("correctness"), PairMethod("format"))
    after = ("generate",)
    Config = CorrectnessConfig
    #: scoring: which responses are right; sources: relaxed_numeric, true_false; templates: extraction
    uses = ("scoring", "sources", "templates", "run.seed")
    input_schema = RESPONSE_SCHEMA
    output_schema = PAIR_SCHEMA

    @classmethod
    def summarize(cls, c: dict) -> dict:
        if not c.get("responses"):
            return {}
        acc = {}
        for key, total in prefixed(c, "accuracy.").items():
            if key.endswith(".total") and total:
                name = key[: -len(".total")]
                acc[name] = round(c.get(f"accuracy.{name}.correct", 0) / total, 4)
        hist = {int(k): v for k, v in prefixed(c, "pairs_per_prompt.").items()}
        return {
            "policy_accuracy": acc,
            "format_error_rate": round(c.get("responses.format_error", 0) / c["responses"], 4),
            "prompts_all_wrong": c.get("prompts.all_wrong", 0),
            "prompts_all_correct": c.get("prompts.all_correct", 0),
            # responses kept out of pairs: several different final answers / the truth in an earlier one
            "set_aside": {k: c.get(f"responses.{k}", 0) for k in ("conflicting_answers", "wrong_states_truth")},
            "pairs_per_prompt": dict(sorted(hist.items())),
            # prompts per pass-rate decile (0: [0, 0.1) ... 9: [0.9, 1.0])
            "pass_rate_histogram": {int(k): v for k, v in sorted(prefixed(c, "pass_rate.").items(),
                                                                 key=lambda kv: int(kv[0]))},
            "mean_chars": {m: {side: round(c.get(f"chars.{m}.{side}", 0) / max(c.get(f"pairs.{m}", 0), 1), 1)
                               for side in ("chosen", "rejected")}
                           for m in ("correctness", "format") if c.get(f"pairs.{m}")},
            "scoring_errors": prefixed(c, "scoring_errors."),
            "diversity": diversity(c),
        }

    @classmethod
    def summary_line(cls, s: dict) -> str:
        acc = ", ".join(f"{k} {v:.0%}" for k, v in s["policy_accuracy"].items())
        errors = f"; scoring errors {s['scoring_errors']}" if s.get("scoring_errors") else ""
        d = (s.get("diversity") or {}).get("correctness")
        reuse = (f"; correctness pairs per distinct chosen {d['pairs_per_chosen']:.2f}, per distinct rejected "
                 f"{d['pairs_per_rejected']:.2f}, {s['diversity']['tokens_per_chosen']:,.0f} generated tokens per "
                 f"distinct chosen") if d else ""
        return (f"policy accuracy: {acc}; format errors {s['format_error_rate']:.1%}; "
                f"prompts all wrong {s['prompts_all_wrong']}, all correct {s['prompts_all_correct']}{reuse}{errors}")

    def _prompt_row(self, row: dict, scored, source, styles: dict) -> dict:
        """The prompt table's row: the conversation as sent, the verdict counts, the scoring settings."""
        sc, template = self.config.scoring, template_by_id(self.config, row.get("template_id"))
        system = [{"role": "system", "content": [{"type": "text", "text": template.system}]}] if template.system else []
        scoring = scoring_settings(sc, source, styles.get(row["template_id"] or "", "final_answer"))
        prompt = system + [user_turn(render_user_text(self.config, row), len(row["images"] or []))]
        return prompt_row(row, scored, prompt, scoring)

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        cc, sc, seed = self.config.correctness, self.config.scoring, self.config.run.seed
        chash = self.config.config_hash()
        styles = extraction_styles(self.config)
        for row in rows:
            source = self.config.source(row["source"])
            scored = score_responses(row, sc, source, styles, ctx.stats.counters) if row["answer"] else None
            if cc.prompt_table:
                ctx.side(PROMPTS_SIDE, PROMPT_TABLE_SCHEMA, self._prompt_row(row, scored, source, styles))
            if scored is None:
                continue
            right = [s for s in scored if s.usable_chosen]
            wrong = [s for s in scored if s.usable_rejected]
            unparsed = [s for s in scored if s.answer is None]
            key = f"{row['source']}.{row['answer_type']}"
            ctx.stats.inc("prompts")
            ctx.stats.inc("responses", len(scored))
            # tokens the prompt's samples cost (not "tokens_generated": the run report sums that one over stages)
            ctx.stats.inc("sampled_tokens", sum(r.get("num_tokens") or 0 for r in row["responses"]))
            n_correct = sum(s.correct for s in scored)
            ctx.stats.inc("responses.correct", n_correct)
            ctx.stats.inc("responses.format_error", len(unparsed))
            # right by the last answer, but other statements disagree: never a chosen
            ctx.stats.inc("responses.conflicting_answers", sum(s.correct and s.conflicting for s in scored))
            # wrong by the last answer, but an earlier statement is the ground truth: never a rejected
            ctx.stats.inc("responses.wrong_states_truth", sum(s.states_truth and not s.correct for s in scored))
            ctx.stats.inc(f"accuracy.{key}.correct", n_correct)
            ctx.stats.inc(f"accuracy.{key}.total", len(scored))
            rate = pass_rate(scored)
            if rate is not None:
                ctx.stats.inc(f"pass_rate.{pass_rate_bin(rate)}")
            if not right:
                ctx.stats.inc("prompts.all_wrong")
                ctx.side("all_wrong", RESPONSE_SCHEMA, row)
                continue
            if not wrong and not unparsed:
                ctx.stats.inc("prompts.all_correct")
                continue
            pair_seed, cap = derive_seed(seed, row["prompt_id"], "correctness"), sc.max_pairs_per_response
            pairs = [("correctness", c, r) for c, r in
                     select_pairs(right, wrong, sc.max_pairs_per_prompt, pair_seed, cc.length_balance_ratio, cap)]
            if cc.format_negatives and cc.max_format_pairs_per_prompt:
                pairs += [("format", c, r) for c, r in
                          select_pairs(right, unparsed, cc.max_format_pairs_per_prompt, pair_seed + 1,
                                       cc.length_balance_ratio, cap)]
            ctx.stats.inc(f"pairs_per_prompt.{len(pairs)}")
            count_distinct(pairs, ctx.stats.inc)
            by_index = {r["index"]: r for r in row["responses"]}
            user_text = render_user_text(self.config, row)
            for method, c, r in pairs:
                ctx.stats.inc(f"pairs.{method}")
                rc, rr = by_index[c.index], by_index[r.index]
                ctx.stats.inc(f"chars.{method}.chosen", len(c.text))
                ctx.stats.inc(f"chars.{method}.rejected", len(r.text))
                yield pair_row(
                    pair_id=stable_hash(row["prompt_id"], method, c.text, r.text),
                    method=method, source=row["source"], question=row["question"],
                    user_text=user_text, images=row["images"], chosen=c.text, rejected=r.text,
                    prov=response_provenance(
                        row, rc, rr, chosen_answer=c.answer, rejected_answer=r.answer,
                        chosen_score=c.score, rejected_score=r.score, match_rule=c.rule, pass_rate=rate,
                        pipeline_version=__version__, config_hash=chash,
                    ))
