"""correctness: MMPR pairs from ground truth (DESIGN.md section 1).

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
"""
from __future__ import annotations

from typing import Iterable, Iterator

from methods.consistency import conflicting, states_any
from methods.extract import extract_answers
from methods.match import infer_answer_type, match_answer
from methods.pairs import Scored, select_pairs
from pipeline import __version__
from pipeline.seeds import derive_seed, stable_hash
from pipeline.stage import Stage, StageContext
from pipeline.templates import extraction_style, render_user_text
from schemas import PAIR_SCHEMA, RESPONSE_SCHEMA
from schemas.records import pair_row, provenance


def score_responses(row: dict, config) -> list[Scored]:
    """Extract and match every sample of a response row."""
    cc = config.correctness
    src = config.source(row["source"])
    style = cc.extraction or extraction_style(config, row["template_id"])
    answer_type = row["answer_type"] or "auto"
    if answer_type == "auto":
        answer_type = infer_answer_type(row["answer"], row["choices"])
    kw = dict(threshold=cc.threshold, rel_tol=cc.numeric_rel_tol, relaxed=bool(src and src.relaxed_numeric),
              true_false=bool(src and src.true_false), anls_cutoff=cc.anls_cutoff)
    out = []
    for r in row["responses"]:
        answers = extract_answers(r["text"], style)
        if not answers:
            out.append(Scored(r["index"], r["text"], None, 0.0, False))
            continue
        ans = answers[-1]
        m = match_answer(ans, row["answer"], answer_type, row["choices"], **kw)
        several = len(answers) > 1
        out.append(Scored(
            r["index"], r["text"], ans, m.score, m.correct, m.rule, tuple(answers),
            conflicting=several and conflicting(answers, answer_type, row["choices"], **kw),
            states_truth=m.correct or (several and states_any(answers[:-1], row["answer"], answer_type,
                                                              row["choices"], **kw))))
    return out


class CorrectnessStage(Stage):
    name = "correctness"
    input_schema = RESPONSE_SCHEMA
    output_schema = PAIR_SCHEMA

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        cc, seed = self.config.correctness, self.config.run.seed
        chash = self.config.config_hash()
        for row in rows:
            if not row["answer"]:
                continue
            scored = score_responses(row, self.config)
            right = [s for s in scored if s.usable_chosen]
            wrong = [s for s in scored if s.usable_rejected]
            unparsed = [s for s in scored if s.answer is None]
            key = f"{row['source']}.{row['answer_type']}"
            ctx.stats.inc("prompts")
            ctx.stats.inc("responses", len(scored))
            n_correct = sum(s.correct for s in scored)
            ctx.stats.inc("responses.correct", n_correct)
            ctx.stats.inc("responses.format_error", len(unparsed))
            # right by the last answer, but other statements disagree: never a chosen
            ctx.stats.inc("responses.conflicting_answers", sum(s.correct and s.conflicting for s in scored))
            # wrong by the last answer, but an earlier statement is the ground truth: never a rejected
            ctx.stats.inc("responses.wrong_states_truth", sum(s.states_truth and not s.correct for s in scored))
            ctx.stats.inc(f"accuracy.{key}.correct", n_correct)
            ctx.stats.inc(f"accuracy.{key}.total", len(scored))
            if not right:
                ctx.stats.inc("prompts.all_wrong")
                ctx.side("all_wrong", RESPONSE_SCHEMA, row)
                continue
            if not wrong and not unparsed:
                ctx.stats.inc("prompts.all_correct")
                continue
            pair_seed = derive_seed(seed, row["sample_id"], "correctness")
            pairs = [("correctness", c, r) for c, r in
                     select_pairs(right, wrong, cc.max_pairs_per_prompt, pair_seed, cc.length_balance_ratio)]
            if cc.format_negatives and cc.max_format_pairs_per_prompt:
                pairs += [("format", c, r) for c, r in
                          select_pairs(right, unparsed, cc.max_format_pairs_per_prompt, pair_seed + 1,
                                       cc.length_balance_ratio)]
            ctx.stats.inc(f"pairs_per_prompt.{len(pairs)}")
            by_index = {r["index"]: r for r in row["responses"]}
            user_text = render_user_text(self.config, row)
            for method, c, r in pairs:
                ctx.stats.inc(f"pairs.{method}")
                rc, rr = by_index[c.index], by_index[r.index]
                ctx.stats.inc(f"chars.{method}.chosen", len(c.text))
                ctx.stats.inc(f"chars.{method}.rejected", len(r.text))
                yield pair_row(
                    pair_id=stable_hash(row["sample_id"], method, c.text, r.text),
                    method=method, source=row["source"], question=row["question"],
                    user_text=user_text, images=row["images"], chosen=c.text, rejected=r.text,
                    prov=provenance(
                        sample_id=row["sample_id"], source_row_id=row["row_key"], facts=row["facts"], model=row["model"],
                        model_revision=row["model_revision"], template_id=row["template_id"],
                        template_hash=row.get("template_hash"),
                        sampling=row["sampling"], chosen_index=c.index, rejected_index=r.index,
                        chosen_seed=rc["seed"], rejected_seed=rr["seed"],
                        chosen_tokens=rc["num_tokens"], rejected_tokens=rr["num_tokens"],
                        chosen_finish_reason=rc["finish_reason"], rejected_finish_reason=rr["finish_reason"],
                        answer_type=row["answer_type"], ground_truth=row["answer"],
                        chosen_answer=c.answer, rejected_answer=r.answer,
                        chosen_score=c.score, rejected_score=r.score, match_rule=c.rule,
                        pipeline_version=__version__, config_hash=chash,
                    ))
