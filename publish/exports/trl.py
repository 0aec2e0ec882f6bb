"""``trl``: Parquet with the TRL columns ``prompt``/``chosen``/``rejected``/``images``
(+ ``rejected_images`` in the ``image_crop`` files), provenance dropped, the Hugging
Face image metadata kept; the same ``data/`` and ``data/image_crop/`` layout and a
card with the ``configs:`` header.
"""
from __future__ import annotations

import pyarrow as pa

from pipeline.files import storage
from publish.exports.common import CanonicalShard, ExportFolder, TrainerFormat
from publish.exports.readme import again_section

README = ("# TRL export\n\nColumns `prompt`/`chosen`/`rejected` (conversational) and `images` for TRL's "
          "DPOTrainer; the `image_crop` config adds `rejected_images` (mDPO-style trainers).\n")


class TRL(TrainerFormat):
    name = "trl"

    def write(self, ex: ExportFolder, shards: list[CanonicalShard], dataset_name: str) -> dict:
        from publish.card import card_header
        from publish.parquet import parquet_bytes
        from schemas import PAIR_SCHEMA, with_hf_metadata

        written = []
        for sh in shards:
            cols = ["prompt", "chosen", "rejected", "images"] + (["rejected_images"] if sh.config == "image_crop" else [])
            schema = with_hf_metadata(pa.schema([PAIR_SCHEMA.field(c) for c in cols]))
            table = storage.read_table(sh.uri, columns=cols).cast(schema)
            data = parquet_bytes(table)
            ex.write_bytes(sh.relpath, data)
            ex.rows[f"{sh.config}.{sh.split}"] += table.num_rows
            written.append({"path": sh.relpath, "config": sh.config, "split": sh.split, "rows": table.num_rows,
                            "bytes": data.size, "arrow_bytes": table.nbytes})
        card = card_header(written) + "\n" + README + "\n" + again_section(ex)
        ex.write_bytes("README.md", card.encode())
        return {}
