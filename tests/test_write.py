"""The write stage: the dataset folder contract (shards, configs, manifest, card, determinism)."""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from helpers import config_file, encode
from pair_data import SOURCES, write_inputs
from pipeline import __version__
from pipeline.config.settings import PipelineConfig
from schemas import PAIR_SCHEMA
from stages import make_stage
from stages.write import write_dataset

TEXT_METHODS = {"correctness", "format", "dropout_ntp"}


def config(out: Path, seed: int = 7, shard_rows: int = 7, test_fraction: float = 0.0, exports=(),
           executor: str = "local", workers: int | None = None, buffer_bytes: int | None = None) -> PipelineConfig:
    buffer = {"write_buffer_mb": buffer_bytes / 2**20} if buffer_bytes else {}
    return PipelineConfig.model_validate({
        "run": {"name": "write-test", "seed": seed, "output_dir": str(out), "work_dir": str(out) + "-work"},
        "executor": {"kind": executor, "write_workers": workers, **buffer},
        "sources": [{"name": s, "format": "jsonl", "path": f"{s}.jsonl"} for s in SOURCES],
        "write": {"shard_rows": shard_rows, "test_fraction": test_fraction}, "export": {"formats": list(exports)},
    })


def load(files, **kw):
    from datasets import load_dataset
    cache = Path(sorted(files)[0]).parents[2] / "hf-cache"
    return load_dataset("parquet", data_files=sorted(files), split="train", cache_dir=str(cache), **kw)


def load_folder(folder: Path, *args):
    """``load_dataset(folder)`` with a cache next to the folder (nothing left in ~/.cache)."""
    from datasets import load_dataset
    return load_dataset(str(folder), *args, cache_dir=str(folder.parent / "hf-cache"))


def shard_files(out: Path, folder: str = "data") -> list[str]:
    return sorted(glob.glob(str(out / folder / "*.parquet")))


def rows_of(files) -> list[dict]:
    cols = ["id", "method", "source", "provenance"]
    return [r for f in files for r in pq.read_table(f, columns=cols).to_pylist()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("pairs")
    return write_inputs(base)


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    dirs, rows = inputs
    out = tmp_path_factory.mktemp("write") / "out"
    stats = write_dataset(config(out), dirs)
    return out, stats, rows


def test_parquet_glob_gives_only_text_pairs_with_pil_images(built):
    out, _, rows = built
    ds = load(shard_files(out))
    assert set(ds["method"]) == TEXT_METHODS
    assert len(ds) == sum(r["method"] in TEXT_METHODS for r in rows)
    assert isinstance(ds[0]["images"][0], Image.Image)
    assert ds.features["images"].feature.__class__.__name__ == "Image"
    assert ds.features["rejected_images"].feature.__class__.__name__ == "Image"
    # the conversational columns come back as written (TRL form)
    row = ds[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"][0]["type"] == "image"
    assert row["chosen"][0]["role"] == "assistant"


def test_folder_configs_default_and_image_crop(built):
    out, _, rows = built
    text = load_folder(out)
    assert list(text) == ["train"]
    assert set(text["train"]["method"]) == TEXT_METHODS
    crops = load_folder(out, "image_crop")
    assert set(crops["train"]["method"]) == {"image_crop"}
    assert len(crops["train"]) == sum(r["method"] == "image_crop" for r in rows)
    r = crops["train"][0]
    assert isinstance(r["images"][0], Image.Image) and isinstance(r["rejected_images"][0], Image.Image)
    assert len(r["images"]) == len(r["rejected_images"])
    assert r["chosen"] == r["rejected"]


def test_every_shard_has_pair_schema_and_hf_metadata(built):
    out, _, _ = built
    for f in shard_files(out) + shard_files(out, "data/image_crop"):
        schema = pq.read_schema(f)
        assert schema.remove_metadata().equals(PAIR_SCHEMA.remove_metadata()), f
        meta = json.loads(schema.metadata[b"huggingface"])
        assert meta["info"]["features"]["images"] == {"feature": {"_type": "Image"}, "_type": "Sequence"}
        assert meta["info"]["features"]["rejected_images"]["feature"] == {"_type": "Image"}


def test_manifest_counts_and_checksums_match_files(built):
    out, stats, rows = built
    m = json.loads((out / "manifest.json").read_text())
    on_disk = sorted(os.path.relpath(f, out) for f in shard_files(out) + shard_files(out, "data/image_crop"))
    assert sorted(s["path"] for s in m["shards"]) == on_disk
    for s in m["shards"]:
        data = (out / s["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
        assert s["bytes"] == len(data)
        assert pq.ParquetFile(out / s["path"]).metadata.num_rows == s["rows"]
    assert m["rows"] == len(rows) == sum(s["rows"] for s in m["shards"])
    assert m["totals"]["method"] == dict(sorted(Counter(r["method"] for r in rows).items()))
    assert m["totals"]["source"] == dict(sorted(Counter(r["source"] for r in rows).items()))
    assert sum(sum(v.values()) for v in m["totals"]["source_method"].values()) == len(rows)
    assert m["pipeline_version"] == __version__
    cfg = config(out)
    assert m["config_hash"] == cfg.config_hash()
    assert m["config"] == cfg.resolved()
    assert m["splits"] == {"default": {"train": sum(r["method"] in TEXT_METHODS for r in rows)},
                           "image_crop": {"train": sum(r["method"] == "image_crop" for r in rows)}}


def test_duplicates_dropped_and_stats(built):
    out, stats, rows = built
    files = shard_files(out) + shard_files(out, "data/image_crop")
    ids = [r["id"] for r in rows_of(files)]
    assert len(ids) == len(set(ids)) == len(rows)
    assert stats.rows_in == len(rows) + 1
    assert stats.rows_out == len(rows)
    assert stats.counters["duplicates_dropped"] == 1
    for method, n in Counter(r["method"] for r in rows).items():
        assert stats.counters[f"written.{method}"] == n
    m = json.loads((out / "manifest.json").read_text())
    assert m["duplicates_dropped"] == 1 and m["rows_in"] == len(rows) + 1


def test_shard_sizes_names_and_a_prompt_in_one_shard(built):
    """Shards are cut at prompt boundaries near ``shard_rows``: every prompt's pairs in one file."""
    out, _, rows = built
    n_text = sum(r["method"] in TEXT_METHODS for r in rows)
    files = shard_files(out)
    count = len(files)
    assert count >= math.ceil(n_text / 7) - 1
    assert [os.path.basename(f) for f in files] == [f"train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
    per_prompt = Counter(r["provenance"]["prompt_id"] for r in rows if r["method"] in TEXT_METHODS)
    assert sum(sizes) == n_text and max(sizes) <= 7 + max(per_prompt.values()) and min(sizes) > 0
    shard_of: dict[str, set] = {}
    for f in files + shard_files(out, "data/image_crop"):
        for r in rows_of([f]):
            shard_of.setdefault((r["method"] == "image_crop", r["provenance"]["prompt_id"]), set()).add(f)
    assert all(len(v) == 1 for v in shard_of.values()), "a prompt's pairs are split over shards"
    assert max(per_prompt.values()) > 1  # the inputs do have prompts with several pairs


def test_shard_cuts_move_to_prompt_boundaries():
    import numpy as np

    from publish.shard_order import shard_cuts

    cases = [  # (prompt sizes in key order, shard_rows, expected shard sizes)
        ([1] * 10, 5, [5, 5]),                 # one pair per prompt: the old balanced cut
        ([3, 3, 3, 3], 5, [3, 6, 3]),          # targets 4 and 8 go to the nearest prompt edge (3, 9)
        ([4, 1, 1, 4], 5, [5, 5]),             # target 5 is a prompt edge
        ([9, 1], 5, [9, 1]),                   # 9 is nearer to target 5 than 0
        ([10, 1, 1], 4, [10, 2]),              # target 4 falls back to 0: two shards, none empty
        ([15] * 4, 20, [15, 30, 15]),          # 15 pairs per prompt, never cut
        ([], 5, []),
    ]
    for sizes, shard_rows, want in cases:
        keys = np.repeat(np.arange(len(sizes), dtype=np.uint64), sizes)
        starts = shard_cuts(keys, shard_rows)
        assert np.diff(np.append(starts, len(keys))).tolist() == want, (sizes, shard_rows)


def test_seeded_shuffle_mixes_sources_and_depends_on_seed(inputs, built, tmp_path):
    out, _, _ = built
    order = [r["id"] for r in rows_of(shard_files(out))]
    sources = [r["source"] for r in rows_of(shard_files(out))]
    runs = 1 + sum(a != b for a, b in zip(sources, sources[1:]))
    assert runs > 10, f"sources are not interleaved: {runs} runs"  # input order is one run per source
    methods = [r["method"] for r in rows_of(shard_files(out))]
    assert 1 + sum(a != b for a, b in zip(methods, methods[1:])) > 10
    other = tmp_path / "seed8"
    write_dataset(config(other, seed=8), inputs[0])
    order8 = [r["id"] for r in rows_of(shard_files(other))]
    assert sorted(order8) == sorted(order) and order8 != order


def test_rerun_is_byte_identical_and_removes_stale_shards(inputs, built, tmp_path):
    out, _, _ = built
    again = tmp_path / "again"
    write_dataset(config(again, shard_rows=3), inputs[0])  # an older write with other shard counts
    stale = set(shard_files(again))
    write_dataset(config(again), inputs[0], output_dir=str(again))
    ref = {os.path.relpath(f, out): Path(f).read_bytes() for f in shard_files(out) + shard_files(out, "data/image_crop")}
    new = {os.path.relpath(f, again): Path(f).read_bytes()
           for f in shard_files(again) + shard_files(again, "data/image_crop")}
    assert new == ref
    assert stale and not stale & set(shard_files(again))  # the older shard names are gone
    m_ref = json.loads((out / "manifest.json").read_text())
    m_new = json.loads((again / "manifest.json").read_text())
    assert [s["sha256"] for s in m_new["shards"]] == [s["sha256"] for s in m_ref["shards"]]
    assert not glob.glob(str(again / ".write-tmp-*"))


def test_test_split_is_by_prompt(inputs, tmp_path):
    out = tmp_path / "split"
    write_dataset(config(out, test_fraction=0.3), inputs[0])
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["splits"]["default"]) == {"train", "test"}
    train = rows_of(glob.glob(str(out / "data" / "train-*.parquet")) + glob.glob(str(out / "data/image_crop/train-*")))
    test = rows_of(glob.glob(str(out / "data" / "test-*.parquet")) + glob.glob(str(out / "data/image_crop/test-*")))
    assert train and test
    train_prompts = {r["provenance"]["prompt_id"] for r in train}
    test_prompts = {r["provenance"]["prompt_id"] for r in test}
    assert not train_prompts & test_prompts
    assert 0.1 < len(test_prompts) / (len(train_prompts) + len(test_prompts)) < 0.5
    ds = load_folder(out)
    assert set(ds) == {"train", "test"} and len(ds["test"]) == m["splits"]["default"]["test"]


def test_dataset_card(built):
    out, _, rows = built
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    configs = {c["config_name"]: c for c in header["configs"]}
    assert configs["default"]["default"] is True
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    assert configs["image_crop"]["data_files"] == [{"split": "train", "path": "data/image_crop/train-*.parquet"}]
    for method in ("correctness", "format", "dropout_ntp", "image_crop"):
        assert re.search(rf"^\| {method} \| \d+ \|", card, re.M), method
    assert "rejected/chosen" in card and "chosen tokens" in card
    assert "python -m pipeline run --config" in card
    assert "dictionary-encoded" in card and "expands the images again in its cache" in card
    resolved = yaml.safe_load(card.rsplit("```yaml\n", 1)[1].split("```")[0])
    assert resolved == config(out).resolved()
    m = json.loads((out / "manifest.json").read_text())
    lengths = m["lengths"]
    assert set(lengths) == {"correctness", "format", "dropout_ntp", "image_crop"}
    assert lengths["image_crop"]["rejected_over_chosen"]["median"] == 1.0
    assert lengths["format"]["rejected_chars"]["mean"] < lengths["format"]["chosen_chars"]["mean"]
    assert lengths["correctness"]["chosen_tokens"]["n"] == sum(r["method"] == "correctness" for r in rows)


def test_write_is_a_dataset_stage(inputs, tmp_path):
    """The registry's write stage consumes whole upstream folders at once (no partitions)."""
    out = tmp_path / "ds"
    stage = make_stage("write", config(out))
    assert stage.name == "write" and stage.kind == "dataset" and stage.input_schema == PAIR_SCHEMA
    stats = stage.run_dataset(inputs[0], str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert stats.rows_out == manifest["rows"] == sum(s["rows"] for s in manifest["shards"]) > 0


def test_single_file_input_without_image_crop_rows(inputs, tmp_path):
    """``stage write --input FILE``: one file, no image-crop rows -> no image_crop shards nor config."""
    f = os.path.join(inputs[0][0], "data", "part-00000.parquet")
    out = tmp_path / "one"
    stats = write_dataset(config(out), [f])
    assert stats.rows_out == pq.ParquetFile(f).metadata.num_rows
    assert not shard_files(out, "data/image_crop")
    header = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    assert [c["config_name"] for c in header["configs"]] == ["default"]
    assert len(load_folder(out)["train"]) == stats.rows_out
    with pytest.raises(ValueError):
        load_folder(out, "image_crop")


def test_cli_stage_write(inputs, tmp_path):
    """``python -m pipeline stage write --input <stage folder> --output DIR`` writes the dataset folder."""
    from pipeline.cli import main

    cfg = config_file(tmp_path, {"run": {"seed": 7, "output_dir": str(tmp_path / "unused")},
                                 "executor": {"kind": "local"}, "write": {"shard_rows": 7}, "export": {"formats": ["swift"]}},
                      "cfg.yaml")
    out = tmp_path / "cli"
    assert main(["stage", "write", "--config", str(cfg), "--input", inputs[0][0], "--output", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["rows"] == m["totals"]["method"]["correctness"] + m["totals"]["method"]["format"]
    assert not (out / "exports").exists()  # exports are the export stage's, after write
    assert main(["stage", "export", "--config", str(cfg), "--input", str(out), "--output", str(out)]) == 0
    assert (out / "exports" / "swift" / "train.jsonl").exists()


def test_parquet_bytes_skips_recompressing_compressed_images_only():
    """JPEG/PNG bytes are stored as they are; a BMP (raw pixels) still gets zstd."""

    import pyarrow as pa

    from pair_data import make_pair
    from schemas.arrow import from_rows
    from stages.write import OUTPUT_SCHEMA, parquet_bytes

    def codecs(rows):
        table = from_rows(rows, PAIR_SCHEMA)
        table = pa.Table.from_arrays(table.columns, schema=OUTPUT_SCHEMA)
        data = parquet_bytes(table)
        assert pq.read_table(pa.BufferReader(data)).equals(table)
        assert parquet_bytes(table) == data  # deterministic
        rg = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0)
        return {rg.column(i).path_in_schema: rg.column(i).compression for i in range(rg.num_columns)}

    rows = [make_pair("src_a", i, "correctness") for i in range(4)]
    c = codecs(rows)
    assert c["images.list.element.bytes"] == "UNCOMPRESSED" and c["id"] == "ZSTD"
    rows[2]["images"] = [{"bytes": encode(Image.new("RGB", (16, 16), (1, 2, 3)), "BMP"), "path": None}]
    assert codecs(rows)["images.list.element.bytes"] == "ZSTD"


def test_spilling_in_small_pieces_gives_the_same_shards(inputs, built, tmp_path, monkeypatch):
    """A tiny scatter budget (many spill files, every shard in many pieces) changes no byte."""
    import stages.write as w

    out, _, _ = built
    monkeypatch.setattr(w, "READ_BATCH_ROWS", 5)
    small = tmp_path / "small"
    small_config = config(small, buffer_bytes=20_000)  # executor.write_buffer_mb
    assert w.scatter_buffer_bytes(small_config) == 20_000
    write_dataset(small_config, inputs[0])
    for f in shard_files(out) + shard_files(out, "data/image_crop"):
        assert (small / os.path.relpath(f, out)).read_bytes() == Path(f).read_bytes()



def test_write_reports_its_time_breakdown_in_the_run_report(built, tmp_path):
    """plan / scatter / gather wall seconds, and inside the tasks where the time went; a whole
    build keeps them in <work>/write/stats.json, which the run report shows."""
    from pipeline.files import storage
    from pipeline.run.orchestrator import dataset_stats_uri
    from pipeline.run.report import build_report

    _, stats, _ = built
    c = stats.counters
    assert {"seconds.plan", "seconds.scatter", "seconds.gather"} <= set(c)
    parts = {k for k in c if k.startswith("task_seconds.")}
    assert parts == {"task_seconds.scatter.read_route", "task_seconds.scatter.spill", "task_seconds.gather.read_order",
                     "task_seconds.gather.encode", "task_seconds.gather.write"}
    assert all(c[k] >= 0 for k in parts) and c["task_seconds.gather.encode"] > 0
    cfg = config(tmp_path / "out")
    storage.write_json(dataset_stats_uri(cfg, "write"), stats.to_dict())
    report = build_report(cfg, {"write": 1.5})
    assert report["stages"]["write"]["counters"]["seconds.gather"] == c["seconds.gather"]
    assert report["stages"]["write"]["wall_s_this_run"] == 1.5


def test_rebuilt_folder_loads_fresh_not_from_the_datasets_cache(inputs, tmp_path):
    """``datasets`` caches a local folder by its card header: a rebuild must still load the new rows."""
    out = tmp_path / "ds"
    orders = []
    for seed in (1, 2, 1):
        write_dataset(config(out, seed=seed, shard_rows=100), inputs[0])
        orders.append(load_folder(out)["train"]["id"])
    assert orders[0] != orders[1] and orders[0] == orders[2]


def _repeated_image_inputs(base: Path, prompts: int = 80, pairs: int = 15) -> tuple[list[str], dict]:
    """``prompts`` prompts x ``pairs`` correctness pairs sharing one noise PNG (~28 KB, incompressible),
    a prompt's pairs spread over two input files; returns (dirs, prompt_id -> PNG bytes)."""
    import numpy as np

    from pipeline.core.seeds import stable_hash
    from schemas.arrow import from_rows
    from schemas.records import pair_row, provenance

    rng = np.random.default_rng(0)
    pngs, rows = {}, []
    for p in range(prompts):
        sid = stable_hash("prompt", p)
        pngs[sid] = encode(Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "RGB"))
        for k in range(pairs):
            chosen, rejected = f"Reasoning {k} for {p}.\nFinal answer: {p}", f"Guess {k}.\nFinal answer: {p + k + 1}"
            rows.append(pair_row(
                pair_id=stable_hash(sid, k), method="correctness", source="src", question=f"q{p}",
                user_text=f"q{p}", images=[{"bytes": pngs[sid], "path": None}], chosen=chosen, rejected=rejected,
                prov=provenance(prompt_id=sid, model="tiny", chosen_tokens=5, rejected_tokens=5)))
    data = base / "correctness" / "data"
    data.mkdir(parents=True)
    for k in range(2):
        pq.write_table(from_rows(rows[k::2], PAIR_SCHEMA), data / f"part-{k:05d}.parquet")
    return [str(base / "correctness")], pngs


def test_a_prompts_repeated_image_is_stored_about_once_and_still_decodes(tmp_path):
    """15 pairs per image: the shards are at most 1.3x "each distinct image once plus the text"
    (plain encoding would be ~15x; so would Parquet's default 1 MB dictionary page limit, which
    these 2 MB of distinct images in a 1,200-row row group pass), rows are shuffled inside a
    shard, and ``datasets`` decodes every image to the pixels that went in."""
    import io as _io

    import numpy as np

    from publish.shard_size import compactness

    dirs, pngs = _repeated_image_inputs(tmp_path / "in")
    out = tmp_path / "out"
    write_dataset(config(out, shard_rows=1200), dirs)
    files = shard_files(out)
    size = compactness(files)
    assert size["distinct_image_bytes"] == sum(map(len, pngs.values()))
    assert size["ratio"] <= 1.3, size
    for f in files:
        sids = [r["provenance"]["prompt_id"] for r in rows_of([f])]
        runs = 1 + sum(a != b for a, b in zip(sids, sids[1:]))
        assert runs > len(set(sids)), f"{f}: rows are not shuffled inside the shard"
        meta = pq.ParquetFile(f).metadata
        leaf = [meta.schema.column(i).path for i in range(meta.num_columns)].index("images.list.element.bytes")
        assert "RLE_DICTIONARY" in meta.row_group(0).column(leaf).encodings
    ds = load(files)
    assert len(ds) == 80 * 15
    for row in ds.select(range(0, len(ds), 97)):
        want = Image.open(_io.BytesIO(pngs[row["provenance"]["prompt_id"]]))
        assert np.array_equal(np.asarray(row["images"][0]), np.asarray(want))
