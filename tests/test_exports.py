"""Trainer exports: structural checks on every row of every format."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import ROOT, read_jsonl
from pair_data import write_inputs
from pipeline.config.settings import PipelineConfig
from pipeline.run.orchestrator import stage_line
from publish.exports import FORMATS, export
from stages import make_stage
from stages.write import write_dataset

TAG = "<image>"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    import pyarrow as pa
    from schemas import PROMPT_TABLE_SCHEMA
    from test_rl_exports import ROWS as PROMPT_ROWS

    base = tmp_path_factory.mktemp("exports")
    dirs, _ = write_inputs(base / "in")
    side = base / "work" / "correctness" / "side" / "prompts"  # a prompt table, for the RL formats
    side.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(PROMPT_ROWS, schema=PROMPT_TABLE_SCHEMA), side / "part-00000.parquet")
    out = base / "out"
    cfg = PipelineConfig.model_validate({
        "run": {"name": "export-test", "seed": 3, "output_dir": str(out), "work_dir": str(base / "work")},
        "executor": {"kind": "local"}, "rl_prompts": {"band": [0.2, 0.8], "validation_fraction": 0.2},
        "write": {"shard_rows": 10, "test_fraction": 0.25}, "export": {"formats": list(FORMATS)},
    })
    write_dataset(cfg, dirs)
    stage = make_stage("export", cfg)
    stats = stage.run_dataset([], str(out))  # the stage after write in a run
    (out / "export-summary.txt").write_text(stage_line(stage, stats, stats, int(stats.counters[stage.units]), 0, 1.0))
    rows = {}
    for f in glob.glob(str(out / "data" / "*.parquet")) + glob.glob(str(out / "data/image_crop/*.parquet")):
        split = os.path.basename(f).split("-")[0]
        for r in pq.read_table(f, columns=["id", "method", "source", "images", "rejected_images"]).to_pylist():
            rows[r["id"]] = {**r, "split": split}
    return out, rows


def test_every_format_is_written_by_the_export_stage(dataset):
    out, _ = dataset
    # the end-of-stage line counts formats, not the write stage's shards
    assert (out / "export-summary.txt").read_text().startswith(f"[export] formats {len(FORMATS)} ")
    index = json.loads((out / "exports" / "export.json").read_text())
    assert sorted(index["formats"]) == sorted(FORMATS)
    for fmt in FORMATS:
        assert index["formats"][fmt]["rows"] == json.loads((out / "exports" / fmt / "export.json").read_text())["rows"]
        summary = json.loads((out / "exports" / fmt / "export.json").read_text())
        assert summary["format"] == fmt
        for rel in summary["files"]:
            assert (out / "exports" / fmt / rel).is_file(), (fmt, rel)


def test_llamafactory(dataset):
    out, rows = dataset
    root = out / "exports" / "llamafactory"
    info = json.loads((root / "dataset_info.json").read_text())
    assert info
    seen = set()
    for name, entry in info.items():
        assert entry["formatting"] == "sharegpt" and entry["ranking"] is True
        assert entry["columns"] == {"messages": "conversations", "chosen": "chosen",
                                    "rejected": "rejected", "images": "images"}
        crop = entry["file_name"].startswith("image_crop")
        for r in read_jsonl(root / entry["file_name"]):
            canon = rows[r["id"]]
            seen.add(r["id"])
            assert (canon["method"] == "image_crop") == crop
            assert [t["from"] for t in r["conversations"]] == ["human"]
            tags = sum(t["value"].count(TAG) for t in r["conversations"])
            assert tags == len(r["images"]) == len(canon["images"]) >= 1
            assert TAG not in r["chosen"]["value"] and TAG not in r["rejected"]["value"]
            assert r["chosen"]["from"] == r["rejected"]["from"] == "gpt"
            for p in r["images"] + r.get("rejected_images", []):
                assert not os.path.isabs(p) and (root / p).is_file()
            if crop:
                assert len(r["rejected_images"]) == len(r["images"])
                assert r["rejected_images"] != r["images"]
    assert seen == set(rows)


def test_swift(dataset):
    out, rows = dataset
    root = out / "exports" / "swift"
    files = sorted(glob.glob(str(root / "*.jsonl")))
    assert {os.path.basename(f) for f in files} >= {"train.jsonl", "image_crop_train.jsonl"}
    seen = set()
    for f in files:
        for r in read_jsonl(f):
            canon = rows[r["id"]]
            seen.add(r["id"])
            crop = canon["method"] == "image_crop"
            # image-contrast rows: rejected_images and no rejected_response (ms-swift would delete
            # a row whose rejected_response equals the chosen answer)
            assert ("rejected_images" in r) == crop and ("rejected_response" in r) == (not crop)
            roles = [m["role"] for m in r["messages"]]
            assert roles == ["user", "assistant"]
            assert sum(m["content"].count(TAG) for m in r["messages"]) == len(r["images"]) == len(canon["images"])
            if not crop:
                assert TAG not in r["rejected_response"] and r["rejected_response"] != r["messages"][-1]["content"]
            for p in r["images"] + r.get("rejected_images", []):
                assert not os.path.isabs(p) and (root / p).is_file()
            if "rejected_images" in r:
                assert len(r["rejected_images"]) == len(r["images"])
    assert seen == set(rows)
    # the literal tag inside the one response was rewritten, and counted
    assert json.loads((root / "export.json").read_text())["rewritten_image_tags"] == 1


def test_internvl(dataset):
    out, rows = dataset
    root = out / "exports" / "internvl"
    meta = json.loads((root / "meta.json").read_text())
    assert meta
    seen = set()
    for meta_file in ("meta.json", "meta_test.json", "meta_image_crop.json"):
        subsets = json.loads((root / meta_file).read_text())
        for name, m in subsets.items():
            assert set(m) == {"root", "annotation", "data_augment", "repeat_time", "length"}
            assert m["data_augment"] is False and m["repeat_time"] == 1
            # relative to the export folder (InternVL opens them from its working directory)
            assert not os.path.isabs(m["annotation"]) and m["annotation"].endswith(".jsonl")
            assert m["root"] == "../images"  # the build's shared image folder
            lines = read_jsonl(root / m["annotation"])
            assert m["length"] == len(lines) > 0
            for r in lines:
                canon = rows[r["id"]]
                seen.add(r["id"])
                assert name.startswith(f"{canon['source']}_{canon['method']}")
                assert (canon["method"] == "image_crop") == (meta_file == "meta_image_crop.json")
                if meta_file == "meta.json":
                    assert canon["split"] == "train"
                paths = r["image"] if isinstance(r["image"], list) else [r["image"]]
                assert len(paths) == len(canon["images"])
                assert isinstance(r["image"], str) == (len(paths) == 1)
                assert r["question"].count(TAG) == len(paths)
                if len(paths) == 1:
                    assert r["question"].startswith(TAG + "\n")
                for p in paths:
                    Image.open(root / os.path.join(m["root"], p)).verify()
                assert set(r) >= {"image", "question", "chosen", "rejected"}
    assert seen == set(rows)


def test_trl(dataset):
    from datasets import load_dataset

    out, rows = dataset
    root = out / "exports" / "trl"
    text = load_dataset(str(root), cache_dir=str(out.parent / "hf-cache"))
    assert set(text) == {"train", "test"}
    assert text["train"].column_names == ["prompt", "chosen", "rejected", "images"]
    assert isinstance(text["train"][0]["images"][0], Image.Image)
    crops = load_dataset(str(root), "image_crop", cache_dir=str(out.parent / "hf-cache"))
    assert crops["train"].column_names == ["prompt", "chosen", "rejected", "images", "rejected_images"]
    assert isinstance(crops["train"][0]["rejected_images"][0], Image.Image)
    n = sum(len(d) for d in text.values()) + sum(len(d) for d in crops.values())
    assert n == len(rows)


def test_rerun_removes_stale_files_and_keeps_images(dataset, tmp_path):
    out, _ = dataset
    dest = tmp_path / "lf"
    first = export("llamafactory", str(out), str(dest))
    assert (dest / "test.jsonl").exists()
    # the same dataset without a test split: test.jsonl of the first export must go
    base = tmp_path / "again"
    dirs, _ = write_inputs(base / "in")
    cfg = PipelineConfig.model_validate({"run": {"seed": 3}, "executor": {"kind": "local"},
                                         "write": {"shard_rows": 10}})
    write_dataset(cfg, dirs, output_dir=str(base / "out"))
    second = export("llamafactory", str(base / "out"), str(dest))
    assert not (dest / "test.jsonl").exists()
    assert "test.jsonl" in first["files"] and "test.jsonl" not in second["files"]
    on_disk = {str(p.relative_to(dest)) for p in Path(dest).rglob("*") if p.is_file()}
    assert on_disk == set(second["files"]) | {"export.json", ".mmpr-forge.json"}  # + the ownership record


def test_unknown_format_and_missing_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        export("axolotl", str(tmp_path), str(tmp_path / "x"))
    with pytest.raises(FileNotFoundError):
        export("swift", str(tmp_path), str(tmp_path / "x"))


def test_cli_export(dataset, tmp_path):
    from pipeline.cli import main

    out, rows = dataset
    assert main(["export", "--format", "internvl", "--input", str(out), "--output", str(tmp_path / "ivl")]) == 0
    meta = json.loads((tmp_path / "ivl" / "meta.json").read_text())
    assert sum(m["length"] for m in meta.values()) == sum(
        r["method"] != "image_crop" and r["split"] == "train" for r in rows.values())


def test_no_build_paths_in_any_export_file(dataset):
    """A copied dataset folder must not point back at the build machine: no export file names
    the folder it was built in; a README names it only in the command that writes it again,
    which runs on the build machine."""
    out, _ = dataset
    for fmt in FORMATS:
        for f in (out / "exports" / fmt).rglob("*"):
            if f.is_file() and f.suffix in (".json", ".jsonl", ".parquet"):
                assert str(out).encode() not in f.read_bytes(), f
            elif f.suffix == ".md":
                others = [ln for ln in f.read_text().splitlines() if not ln.startswith(CLI + " ")]
                assert not [ln for ln in others if str(out) in ln], f
    readme = (out / "exports" / "swift" / "README.md").read_text()
    assert "ROOT_IMAGE_DIR" in readme
    assert "dataset_dir: <this folder>" in (out / "exports" / "llamafactory" / "README.md").read_text()
    ivl = (out / "exports" / "internvl" / "README.md").read_text()
    assert "`meta_test.json`" in ivl and "os.path.join(root, image)" in ivl


def test_readme_names_only_meta_files_that_exist(tmp_path):
    dirs, _ = write_inputs(tmp_path / "in")
    write_dataset(PipelineConfig.model_validate({"run": {"seed": 3}, "executor": {"kind": "local"}}), dirs,
                  output_dir=str(tmp_path / "out"))
    summary = export("internvl", str(tmp_path / "out"), str(tmp_path / "ivl"))
    assert "meta_test.json" not in summary["subsets"]
    readme = (tmp_path / "ivl" / "README.md").read_text()
    assert "meta_test" not in readme and "`meta_image_crop.json`" in readme


def test_root_writes_paths_for_the_target_machine(dataset, tmp_path):
    """``--root DIR``: every path under DIR, which is where the export is copied before training."""
    from pipeline.cli import main

    out, rows = dataset
    target = tmp_path / "elsewhere"
    for fmt in ("swift", "internvl"):
        assert main(["export", "--format", fmt, "--input", str(out), "--output", str(tmp_path / fmt),
                     "--root", str(target / fmt)]) == 0
    target.mkdir()
    for fmt in ("swift", "internvl"):
        (tmp_path / fmt).rename(target / fmt)
    n = 0
    for f in (target / "swift").glob("*.jsonl"):
        for r in read_jsonl(f):
            for p in r["images"] + r.get("rejected_images", []):
                assert p.startswith(str(target / "swift") + "/") and os.path.isfile(p)
            n += 1
    assert n == len(rows)
    assert str(target / "swift") in (target / "swift" / "README.md").read_text()
    for name, m in json.loads((target / "internvl" / "meta.json").read_text()).items():
        assert m["root"] == str(target / "internvl" / "images")
        first = read_jsonl(m["annotation"])[0]
        Image.open(os.path.join(m["root"], first["image"])).verify()


def test_swift_leaves_out_pairs_whose_rejected_equals_chosen(tmp_path):
    """ms-swift deletes such a row (and crashes on a file it empties): the export leaves it out
    and counts it instead."""
    from pair_data import make_pair
    from schemas import PAIR_SCHEMA
    from schemas.arrow import from_rows

    good = make_pair("src_a", 1, "correctness")
    same = make_pair("src_a", 2, "correctness")
    same["rejected"] = same["chosen"]
    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(from_rows([good, same], PAIR_SCHEMA), tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    summary = export("swift", str(tmp_path / "ds"), str(tmp_path / "swift"))
    assert summary["rows"] == {"default.train": 1}
    assert summary["left_out_rejected_equals_chosen"] == {"train": 1}
    assert [r["id"] for r in read_jsonl(tmp_path / "swift" / "train.jsonl")] == [good["id"]]


def test_the_export_stage_runs_after_write_when_formats_are_listed():
    from pipeline.core.graph import input_stages

    on = PipelineConfig.model_validate({"export": {"formats": ["swift"]}})
    assert on.run.stages[-2:] == ["write", "export"] and input_stages(on, "export") == ["write"]
    assert "export" not in PipelineConfig.model_validate({"export": {"formats": []}}).run.stages
    no_write = PipelineConfig.model_validate({"run": {"stages": ["ingest", "generate"]}, "export": {"formats": ["swift"]}})
    assert "export" not in no_write.run.stages
    with pytest.raises(ValueError, match="unknown export format"):
        PipelineConfig.model_validate({"export": {"formats": ["axolotl"]}})


#: how an export README runs the exporter: from the mmpr-forge checkout, with its virtualenv
CLI = ".venv/bin/python -m pipeline export"


def _commands(readme: str) -> list[str]:
    return [ln for ln in readme.splitlines() if ln.startswith(CLI + " ")]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def _run_as_written(command: str) -> None:
    """A README's command line, pasted into a shell in the mmpr-forge checkout."""
    proc = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"


def test_every_readme_has_the_command_that_writes_it_again(dataset):
    """The command in an export's README runs as written from the checkout (the real --input and
    --output, not placeholders) and writes the very same files."""
    out, _ = dataset
    for fmt in FORMATS:
        folder = out / "exports" / fmt
        readme = (folder / "README.md").read_text()
        again = f"{CLI} --format {fmt} --input {out} --output {folder}"
        assert again in _commands(readme), readme
        assert ("On the machine that wrote this export, from the mmpr-forge checkout (with its `.venv`), this "
                "command writes it again:") in readme, readme
        before = _hashes(folder)
        _run_as_written(again)
        assert _hashes(folder) == before, fmt


def test_internvl_readme_leads_with_root(dataset, tmp_path):
    """InternVL's MPO launch scripts run from ``internvl_chat/``, where relative paths do not resolve:
    the README's first words say to export again with ``--root``, and its command does that."""
    out, rows = dataset
    export("internvl", str(out), str(tmp_path / "ivl"))
    readme = (tmp_path / "ivl" / "README.md").read_text()
    first, command = readme.split("\n\n")[1:3]
    assert first == (
        "**Export again with `--root` before training.** InternVL's MPO launch scripts run from "
        "`internvl_chat/`, not from this folder, and the trainer opens each `annotation` and image "
        "(`os.path.join(root, image)`) from its working directory, so the relative paths written here do not "
        "resolve there. On the machine that wrote this export, from the mmpr-forge checkout (with its "
        "`.venv`), write absolute paths under DIR, the folder this export will have on the training machine, "
        "then copy this folder to DIR:")
    assert command == (f"```bash\n{CLI} --format internvl --input {out} --output {tmp_path / 'ivl'} "
                       "--root DIR\n```")
    target = tmp_path / "on-the-trainer"
    _run_as_written(command.splitlines()[1].replace(" DIR", f" {target}"))
    meta = json.loads((tmp_path / "ivl" / "meta.json").read_text())
    assert meta and all(m["root"] == f"{target}/images" for m in meta.values())
    assert "Paths are absolute, under" in (tmp_path / "ivl" / "README.md").read_text().split("\n\n")[1]


def test_llamafactory_readme_says_media_dir_when_merged_into_its_data_folder(dataset):
    out, _ = dataset
    readme = (out / "exports" / "llamafactory" / "README.md").read_text()
    assert ("To register these datasets in LLaMA-Factory's own `data/dataset_info.json` instead, copy their "
            "entries there with `file_name` made absolute (`<this folder>/train.jsonl`) and set "
            "`media_dir: <this folder>`: LLaMA-Factory joins image paths to `media_dir`, which defaults to "
            "`dataset_dir`, so without it every image fails to open:\n\n```yaml\ndataset_dir: data\n"
            "media_dir: <this folder>\ndataset: export_test_train\nstage: dpo\n```") in readme, readme


def test_the_exports_of_a_build_share_one_image_folder(dataset, tmp_path):
    """Every format of a run names its images in ``exports/images/``, each image written once there;
    no export has an image folder of its own; a rerun removes the shared images no export names."""
    import hashlib

    from publish.exports import export_dataset

    out, rows = dataset
    exports = out / "exports"
    index = json.loads((exports / "export.json").read_text())
    shared = {str(p.relative_to(exports)) for p in (exports / "images").rglob("*") if p.is_file()}
    assert shared and sorted(shared) == index["images"]["files"] and index["images"]["count"] == len(shared)
    assert not [p for p in exports.glob("*/images") if p.is_dir()]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (exports / "images").rglob("*") if p.is_file()}
    assert len(digests) == len(shared)  # each image once
    named = set()
    for f in list(exports.glob("*/*.jsonl")) + list(exports.glob("*/annotations/*.jsonl")):
        for r in read_jsonl(f):
            for key in ("images", "rejected_images", "image", "rejected_image"):
                paths = r.get(key) or []
                for p in [paths] if isinstance(paths, str) else paths:
                    p = p if p.startswith("../") else "../images/" + p  # InternVL's are under its root
                    assert (f.parent / p).resolve().is_file() or (exports / p[3:]).is_file(), (f, p)
                    named.add(os.path.normpath(p[3:]))
    assert named == shared
    # a rerun into a copy with one stray old image: it goes, the others stay
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    stray = "images/zz/" + "0" * 32 + ".png"
    (copy / "exports" / "images" / "zz").mkdir()
    (copy / "exports" / stray).write_bytes(b"old")
    idx = json.loads((copy / "exports" / "export.json").read_text())
    idx["images"]["files"].append(stray)
    (copy / "exports" / "export.json").write_text(json.dumps(idx))
    export_dataset(str(copy), ["swift"], str(copy))  # the other formats' folders still name old images
    assert (copy / "exports" / stray).exists()
    export_dataset(str(copy), list(FORMATS), str(copy))
    assert not (copy / "exports" / stray).exists()
    again = json.loads((copy / "exports" / "export.json").read_text())["images"]["files"]
    assert set(again) == shared and all((copy / "exports" / rel).is_file() for rel in again)
