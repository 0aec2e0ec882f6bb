"""The sample build's trainer exports, moved to another folder, through the trainers' own loaders.

A dataset is normally built on one machine and trained on at another place, so
the dataset folder is copied and the original is moved out of reach for these
tests: ms-swift 4.6.0's ``load_dataset`` (every row survives; image-crop rows
keep ``rejected_images``) and its image path resolution; LLaMA-Factory 0.9.5's
own dataset loading and sharegpt converter; InternVL's MPO layout,
resolved by its documented rule (``annotation`` opened as given, images at
``os.path.join(root, image)``) -- its loader is not on PyPI.  ms-swift and
LLaMA-Factory run in subprocesses with their pinned packages first on the path
(``requirements/{swift,llamafactory}.lock.txt``, installed by scripts/setup-test.sh).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import ROOT, read_jsonl

TAG = "<image>"


def _open(path: str) -> None:
    with Image.open(path) as im:
        im.load()


@pytest.fixture(scope="module")
def moved(sample_build, tmp_path_factory):
    """A copy of the sample build's dataset folder; the original is renamed away meanwhile."""
    dest = tmp_path_factory.mktemp("moved") / "dataset"
    shutil.copytree(sample_build, dest)
    away = sample_build.with_name(sample_build.name + ".away")
    sample_build.rename(away)
    try:
        yield dest
    finally:
        away.rename(sample_build)


_SWIFT = r"""
import json, sys
from swift.dataset import load_dataset
from swift.template.vision_utils import _check_path, load_image

result = {}
for f in sys.argv[1:]:
    train, _ = load_dataset([f], load_from_cache_file=False)
    rows = []
    for r in train.to_list():
        images = [_check_path(i["path"]) for i in r["images"]]  # how ms-swift's template finds a file
        rejected = [_check_path(i["path"]) for i in r.get("rejected_images") or []]
        for path in images + rejected:
            load_image(path)
        rows.append({"images": images, "rejected_images": rejected,
                     "has_rejected_response": r.get("rejected_response") is not None})
    result[f] = rows
print("RESULT " + json.dumps(result))
"""


def _overlay_run(name: str, script: str, args: list[str], cwd: Path, **env: str) -> dict:
    """Run ``script`` with ``.venv/<name>-overlay`` (scripts/setup-test.sh) first on the path.

    A subprocess: ms-swift registers a vLLM plugin that breaks engine start-up without
    torchvision, and LLaMA-Factory needs an older TRL than the test environment's."""
    overlay = Path(sys.prefix) / f"{name}-overlay"
    assert overlay.is_dir(), f"{overlay} missing: scripts/setup-test.sh installs it"
    run_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(overlay), str(ROOT)]), **env}
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env=run_env,
                          capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(line[len("RESULT "):])


def _check_swift(files: list[Path], tmp_path: Path, **env: str) -> None:
    loaded = _overlay_run("swift", _SWIFT, [str(f) for f in files], tmp_path,
                          MODELSCOPE_CACHE=str(tmp_path / "ms-cache"), **env)
    for f in files:
        rows = loaded[str(f)]
        assert len(rows) == len(read_jsonl(f)) > 0, f.name  # ms-swift deleted none
        crop = f.name.startswith("image_crop")
        for r in rows:
            assert bool(r["rejected_images"]) == crop and r["has_rejected_response"] == (not crop)
            if crop:
                assert r["rejected_images"] != r["images"]
            for path in r["images"] + r["rejected_images"]:
                assert os.path.isabs(path) and os.path.isfile(path), path


def test_swift_loads_every_row_of_a_moved_export(moved, tmp_path):
    root = moved / "exports" / "swift"
    files = sorted(root.glob("*.jsonl"))
    assert {f.name for f in files} >= {"train.jsonl", "image_crop_train.jsonl"}
    # run from elsewhere: ROOT_IMAGE_DIR (as the export's README says) is what resolves the paths
    _check_swift(files, tmp_path, ROOT_IMAGE_DIR=str(root))


def test_swift_export_with_root_loads_without_root_image_dir(moved, tmp_path, monkeypatch):
    from pipeline.cli import main

    target = tmp_path / "training-machine" / "swift"
    assert main(["export", "--format", "swift", "--input", str(moved), "--output", str(tmp_path / "staging"),
                 "--root", str(target)]) == 0
    target.parent.mkdir()
    (tmp_path / "staging").rename(target)
    monkeypatch.delenv("ROOT_IMAGE_DIR", raising=False)
    _check_swift(sorted(target.glob("*.jsonl")), tmp_path)


_LLAMAFACTORY = r"""
import importlib.machinery, json, sys, types
from transformers import Seq2SeqTrainingArguments
# mm_plugin imports torchaudio at module level, only for audio inputs; there is no CPU build of
# torchaudio for this torch on PyPI, so an empty module stands in (no audio is loaded here)
stub = types.ModuleType("torchaudio")
stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
sys.modules.setdefault("torchaudio", stub)
from llamafactory.data.loader import _load_single_dataset
from llamafactory.data.parser import get_dataset_list
from llamafactory.hparams import DataArguments, ModelArguments

dataset_dir, out_dir = sys.argv[1], sys.argv[2]
names = sorted(json.load(open(f"{dataset_dir}/dataset_info.json")))
data_args = DataArguments(dataset_dir=dataset_dir, dataset=",".join(names))
model_args = ModelArguments(model_name_or_path="unused")
training_args = Seq2SeqTrainingArguments(output_dir=out_dir, report_to="none")
result = {}
for name, attr in zip(names, get_dataset_list(names, dataset_dir)):
    rows = _load_single_dataset(attr, model_args, data_args, training_args).to_list()
    result[name] = {"rows": len(rows), "images": [r["_images"] for r in rows],
                    "prompt_roles": sorted({m["role"] for r in rows for m in r["_prompt"]}),
                    "responses": sorted({len(r["_response"]) for r in rows}),
                    "tags_match": all(sum(m["content"].count("<image>") for m in r["_prompt"]) == len(r["_images"])
                                      for r in rows)}
print("RESULT " + json.dumps(result))
"""


def test_llamafactory_loads_every_row_of_a_moved_export(moved, tmp_path):
    root = moved / "exports" / "llamafactory"
    result = _overlay_run("llamafactory", _LLAMAFACTORY, [str(root), str(tmp_path / "lf-out")], tmp_path,
                          DISABLE_VERSION_CHECK="1", HF_DATASETS_CACHE=str(tmp_path / "hf-cache"))
    info = json.loads((root / "dataset_info.json").read_text())
    assert set(result) == set(info) and any("image_crop" in n for n in result)
    for name, got in result.items():
        assert got["rows"] == len(read_jsonl(root / info[name]["file_name"])) > 0, name
        assert got["prompt_roles"] == ["user"] and got["responses"] == [2] and got["tags_match"], name
        for images in got["images"]:
            assert images
            for p in images:  # joined to media_dir (= dataset_dir) by LLaMA-Factory's converter
                assert p.startswith(str(root) + "/"), p
                _open(p)


def test_internvl_layout_of_a_moved_export(moved, monkeypatch):
    root = moved / "exports" / "internvl"
    monkeypatch.chdir(root)  # the README's rule: start the trainer here (or export with --root)
    metas = sorted(p.name for p in root.glob("meta*.json"))
    assert "meta.json" in metas and "meta_image_crop.json" in metas
    total = 0
    for meta_file in metas:
        for name, meta in json.loads((root / meta_file).read_text()).items():
            lines = read_jsonl(meta["annotation"])
            assert meta["length"] == len(lines) > 0 and meta["repeat_time"] == 1, name
            for r in lines:
                images = r["image"] if isinstance(r["image"], list) else [r["image"]]
                assert r["question"].count(TAG) == len(images) and r["chosen"] and r["rejected"]
                rejected = r.get("rejected_image", [])
                for p in images + (rejected if isinstance(rejected, list) else [rejected]):
                    _open(os.path.join(meta["root"], p))
            total += len(lines)
    manifest = json.loads((moved / "manifest.json").read_text())
    assert total == sum(s["rows"] for s in manifest["shards"])


def test_no_export_file_names_the_build_folder(moved, sample_build):
    """Only a README's command that writes the export again (on the build machine) names it."""
    built_in = str(sample_build).encode()
    for f in (moved / "exports").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl"):
            assert built_in not in f.read_bytes(), f
        elif f.suffix == ".md":
            command = b".venv/bin/python -m pipeline export "
            assert not [ln for ln in f.read_bytes().splitlines() if built_in in ln and not ln.startswith(command)], f
