"""dedup: near-duplicate prompts (the same images and question, re-encoded or reformatted) collapsed to one.

A prompt is a near-duplicate of another when its images match one to one (pHash within
``dedup.image_distance`` bits and the colour check, ``methods.image_hash``), its question
matches (normalised text and choices; 3-gram Jaccard at least ``dedup.question_threshold``,
``methods.question_keys``) and the ground truths agree.  Of each cluster the prompt first in
``prompt_id`` order is kept; the others are quarantined as ``near_duplicate`` with the kept
id and the distances.  Generic questions ("How many circles are there?") never merge prompts
whose images differ: the image check is always part of the rule.

It runs right after ingest, before any token is generated, as a **merging row stage**
(``RowStage.merges``): each partition hashes its prompts and writes a key file
(``side/keys/<part>.parquet``, ~300 bytes a prompt, no images) and passes its rows on; the
driver then merges the key files (``pipeline.sources.prompt_keys``: a few columns at a time,
never rows or images) and redoes only the partitions that hold a near-duplicate, which reuse
their input and quarantine those rows.

**The HTML report** shows removed clusters, kept prompt beside removed ones, with their distances.
The dataset folder keeps no removed prompt, so the redone partitions write thumbnails of the
first ``REPORT_CLUSTERS`` clusters by kept ``prompt_id`` (``shown_clusters``) as the
``report_images`` side output, which the run report copies beside ``report.json``.  A partition
that holds only the kept prompt of a shown cluster is redone for it too: at most
``REPORT_CLUSTERS`` partitions more, and the driver still never reads an image.

**Memory** on the driver for 10M prompts: about 0.8 GB at the peak and 2.5 minutes of one core
(measured at 1M and 2M prompts: 88 and 81 B a prompt; ranks, answer keys, first pHashes, one
key column and its sort at a time, the candidate pairs and the keys of candidate rows only;
``pipeline.sources.prompt_keys``).  Workers hold one
partition.  Defaults come from a measured table (issue 29's notes): k = 10 matches JPEG q50,
50% resizes, 5%-of-area crops and brightness +-10% at 0.997-1.0 recall on the sample, with
0.056% of distinct sample image pairs matching on images alone (the question and answer must
match too).
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from pydantic import Field

from pipeline.config.settings import Section
from pipeline.core.stage import RowStage, StageContext
from schemas import PROMPT_SCHEMA, REPORT_IMAGES_SCHEMA, REPORT_IMAGES_SIDE

SIDE = "keys"
#: the HTML report's thumbnails of removed clusters (``REPORT_IMAGES_SIDE``): the first clusters by
#: kept ``prompt_id``, the first removed members of each by ``prompt_id``, the first images of
#: each prompt, as ``methods.thumbnails`` JPEGs (96 px, 2-4 KB).  At most 24 x (1 + 8) x 4
#: thumbnails, under 3.5 MB whatever the input size (about 100 KB on the sample)
REPORT_CLUSTERS = 24
REPORT_MEMBERS = 8
REPORT_IMAGES = 4


class DedupConfig(Section):
    image_distance: int = Field(10, ge=0, le=32, description=(
        "Images match when their 64-bit pHashes differ in at most this many bits (10: JPEG q50, 50% resizes, "
        "5%-of-area crops and brightness +-10% match; 8 is stricter)"))
    colour_tolerance: float = Field(50.0, ge=0, description=(
        "...and their 8x8 colour thumbnails (chroma) differ by at most this much in any cell (sum over R, G, B "
        "of 0-255 values); pHash sees grey levels only, so a red and a blue circle need this check"))
    question_threshold: float = Field(0.9, gt=0, le=1, description=(
        "Questions match when the Jaccard similarity of their normalised word 3-grams is at least this "
        "(0.9: the sample's closest different questions are at 0.85)"))
    jpeg_draft: bool = Field(False, description=(
        "Decode JPEGs at reduced size in the decoder (3-10x faster on large images; moves pHashes by up to 8 bits "
        "against full decodes, so change it only with a restart)"))


class DedupStage(RowStage):
    name = "dedup"
    Config = DedupConfig
    after = ("ingest",)
    input_schema = PROMPT_SCHEMA
    output_schema = PROMPT_SCHEMA
    merges = True

    def run(self, rows: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        rows = list(rows)
        if rows and "_dedup" in rows[0]:  # a redone partition: the driver's decisions
            yield from self._apply(rows, ctx)
            return
        from pipeline.config.templates import SHORT_ANSWER_SUFFIXES
        from pipeline.sources.prompt_keys import KEYS_SCHEMA, prompt_keys

        for key in prompt_keys(rows, SHORT_ANSWER_SUFFIXES, self.section.jpeg_draft):
            ctx.side(SIDE, KEYS_SCHEMA, key)
        ctx.stats.inc("images_hashed", sum(len(r["images"]) for r in rows))
        ctx.stats.inc("prompts_kept", len(rows))
        yield from rows

    def _apply(self, rows: list[dict], ctx: StageContext) -> Iterator[dict]:
        ctx.stats.inc("images_hashed", sum(len(r["images"]) for r in rows))  # by the partition's first run
        for row in rows:
            found = row.pop("_dedup")
            shown = row.pop("_show", None)
            if shown is not None:
                ctx.side(REPORT_IMAGES_SIDE, REPORT_IMAGES_SCHEMA, self._report_row(row, shown))
            if found is None:
                ctx.stats.inc("prompts_kept")
                yield row
                continue
            ctx.stats.inc("near_duplicates")
            ctx.quarantine(row, "near_duplicate",
                           f"near-duplicate of prompt {found['keep']} (image bits {found['bits']}, colour "
                           f"{found['colour']}, question jaccard {found['jaccard']})")

    @staticmethod
    def _report_row(row: dict, shown: dict) -> dict:
        """A prompt of a shown cluster as the report shows it: thumbnails and, removed, its distances."""
        from methods.thumbnails import thumbnail

        thumbs = [thumbnail(im["bytes"]) for im in row["images"][:REPORT_IMAGES] if im.get("bytes")]
        return {"stage": "dedup", "group": shown["group"], "group_size": shown["size"], "role": shown["role"],
                "prompt_id": row["prompt_id"], "source": row.get("source"), "question": row.get("question"),
                "n_images": len(row["images"]), "thumbnails": [t for t in thumbs if t is not None],
                "image_bits": shown.get("bits"), "colour": shown.get("colour"),
                "question_jaccard": shown.get("jaccard")}

    def redo_rows(self, rows: list[dict], extra: tuple[str, ...]) -> list[dict]:
        decided = json.loads(extra[0])
        drop = {d["position"]: d for d in decided["drop"]}
        show = {d["position"]: d for d in decided.get("show", [])}
        return [{**r, "_dedup": drop.get(i), "_show": show.get(i)} for i, r in enumerate(rows)]

    def redo_partitions(self, planned: list[tuple[str, tuple[str, ...]]], out_dir: str
                        ) -> dict[str, tuple[str, ...]]:
        """Partitions holding a near-duplicate of an earlier kept prompt, with what to drop, and
        those holding a prompt of a cluster the report shows (``shown_clusters``), with what to show."""
        from pipeline.files import storage
        from pipeline.sources.prompt_keys import KeyFiles, near_duplicates

        files = KeyFiles([(name, storage.join(out_dir, "side", SIDE, f"{name}.parquet")) for name, _ in planned])
        s = self.section
        found = near_duplicates(files, s.image_distance, s.colour_tolerance, s.question_threshold)
        ids = files.rows([m.keep for m in found], ["prompt_id"])
        drops: dict[str, list[dict]] = {}
        for m in found:
            name, position = files.where(m.drop)
            drops.setdefault(name, []).append({"position": position, "keep": ids[m.keep]["prompt_id"],
                                               "bits": list(m.image_bits), "colour": list(m.colour),
                                               "jaccard": m.jaccard})
        show: dict[str, list[dict]] = {}
        for g, entry in shown_clusters(found, {g: r["prompt_id"] for g, r in ids.items()}):
            name, position = files.where(g)
            show.setdefault(name, []).append({"position": position, **entry})
        inputs = dict(planned)
        return {name: (*inputs[name], json.dumps({"drop": drops.get(name, []), "show": show.get(name, [])},
                                                 sort_keys=True))
                for name in sorted(drops.keys() | show.keys())}

    @classmethod
    def summarize(cls, counters: dict) -> dict:
        if "images_hashed" not in counters:
            return {}
        return {"prompts_kept": counters.get("prompts_kept", 0), "near_duplicates": counters.get("near_duplicates", 0),
                "images_hashed": counters["images_hashed"]}

    @classmethod
    def summary_line(cls, summary: dict) -> str | None:
        if not summary:
            return None
        return (f"near-duplicates removed: {summary['near_duplicates']}, prompts kept: {summary['prompts_kept']} "
                f"({summary['images_hashed']} images hashed)")

    @classmethod
    def card_section(cls, config, summary: dict) -> str | None:
        s = config.dedup
        return (f"- Near-duplicates (`dedup`): {summary['near_duplicates']} prompts removed, {summary['prompts_kept']} "
                f"kept. A prompt is removed when its images are within {s.image_distance} pHash bits of a kept "
                f"prompt's (and their colours agree), its question's normalised 3-gram Jaccard is at least "
                f"{s.question_threshold} and its ground truth is the same; the kept one is the first by prompt id.")


def shown_clusters(found: list, kept_ids: dict[int, str]) -> list[tuple[int, dict]]:
    """The prompts of the clusters the HTML report shows, as (global key row, what to show):
    the first ``REPORT_CLUSTERS`` clusters by kept ``prompt_id``, each with its kept prompt and
    its first ``REPORT_MEMBERS`` removed ones (``found`` is in ``prompt_id`` order of the removed
    prompt, ``methods.near_duplicates.representatives``), with their distances to the kept one.
    Bounded whatever the input size; the same matches give the same list."""
    clusters: dict[int, list] = {}
    for m in found:
        clusters.setdefault(m.keep, []).append(m)
    out: list[tuple[int, dict]] = []
    for keep in sorted(clusters, key=lambda g: kept_ids[g])[:REPORT_CLUSTERS]:
        group = {"group": kept_ids[keep], "size": 1 + len(clusters[keep])}
        out.append((keep, {**group, "role": "kept"}))
        for m in clusters[keep][:REPORT_MEMBERS]:
            out.append((m.drop, {**group, "role": "removed", "bits": list(m.image_bits),
                                 "colour": [float(c) for c in m.colour], "jaccard": m.jaccard}))
    return out
