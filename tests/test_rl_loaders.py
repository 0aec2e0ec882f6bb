"""The sample build's RL exports through the trainers' own code, and the shipped reward.

verl 0.9.1's ``RLHFDataset`` (``filter_overlong_prompts`` off: its length filter needs
qwen-vl-utils, which needs torchvision, absent here -- left on, it silently drops every row),
ms-swift 4.6.0's ``load_dataset`` as its GRPO calls it (``remove_unused_columns=False``), and one
TRL ``GRPOTrainer`` step on the tiny model with ``methods.reward.reward``.  Each runs in a
subprocess: verl and ms-swift with their overlays first on the path (scripts/setup-test.sh,
``requirements/{verl,swift}.lock.txt``), TRL with the venv's own packages.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from helpers import ROOT
from methods.reward import verdict
from test_trainer_loaders import _overlay_run

_VERL = r"""
import json, sys, tempfile
from omegaconf import OmegaConf
from transformers import AutoProcessor
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
from methods.reward import compute_score

path, model = sys.argv[1:3]
processor = AutoProcessor.from_pretrained(model)
config = OmegaConf.create({"prompt_key": "prompt", "image_key": "images", "max_prompt_length": 1024,
                           "filter_overlong_prompts": False, "cache_dir": tempfile.mkdtemp(),
                           "return_raw_chat": True})
ds = RLHFDataset(data_files=path, tokenizer=processor.tokenizer, config=config, processor=processor)
rows = []
for i in range(len(ds)):
    item = ds[i]
    msgs = item["raw_prompt"]
    images = [p["image"] for m in msgs if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image"]
    for im in images:
        im.convert("RGB").load()
    gt = item["reward_model"]["ground_truth"]
    rows.append({"images": len(images), "index": int(item["index"]), "data_source": item["data_source"],
                 "right": compute_score(item["data_source"], "Final answer: " + gt, gt, item["extra_info"]),
                 "wrong": compute_score(item["data_source"], "I do not know.", gt, item["extra_info"])})
text = processor.apply_chat_template(ds[0]["raw_prompt"], add_generation_prompt=True, tokenize=False)
batch = collate_fn([ds[i] for i in range(min(2, len(ds)))])
print("RESULT " + json.dumps({"rows": rows, "template": text, "batch": sorted(batch)}))
"""

_SWIFT = r"""
import json, sys
from swift.dataset import load_dataset
from swift.template.vision_utils import _check_path, load_image
from methods.reward import reward

train, _ = load_dataset([sys.argv[1]], load_from_cache_file=False, remove_unused_columns=False)
rows = []
for r in train.to_list():
    for im in r["images"]:
        load_image(_check_path(im["path"]))
    extra = {k: [r[k]] * 2 for k in ("answers", "choices", "scoring", "prompt_id", "pass_rate")}
    rows.append({"images": len(r["images"]), "columns": sorted(r), "last_role": r["messages"][-1]["role"],
                 "reward": reward(["Final answer: " + r["solution"], "No idea."], [r["solution"]] * 2,
                                  [r["answer_type"]] * 2, **extra)})
print("RESULT " + json.dumps({"rows": rows}))
"""

_TRL = r"""
import json, sys, tempfile
import datasets, torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import GRPOConfig, GRPOTrainer
from methods.reward import reward

path, model_dir = sys.argv[1:3]
torch.manual_seed(0)
train = datasets.load_dataset("parquet", data_files=path, split="train", cache_dir=tempfile.mkdtemp())
seen = {}
def mmpr_reward(completions, solution, answer_type, **kw):
    out = reward(completions, solution, answer_type, **kw)
    seen.update(kw=sorted(kw), n=len(completions), rewards=out, solution=list(solution),
                answer_type=list(answer_type), answers=list(kw["answers"]), choices=list(kw["choices"]),
                scoring=list(kw["scoring"]), completions=[c[0]["content"] for c in completions])
    return out
processor = AutoProcessor.from_pretrained(model_dir)
model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
args = GRPOConfig(output_dir=tempfile.mkdtemp(), max_steps=1, num_generations=2, per_device_train_batch_size=2,
                  gradient_accumulation_steps=1, max_completion_length=16, use_vllm=False, report_to="none",
                  bf16=False, fp16=False, use_cpu=True, logging_steps=1, save_strategy="no", seed=0,
                  dataloader_num_workers=0)
trainer = GRPOTrainer(model=model, reward_funcs=[mmpr_reward], args=args, train_dataset=train,
                      processing_class=processor)
trainer.train()
print("RESULT " + json.dumps({"rows": len(train), "step": trainer.state.global_step, "seen": seen,
                              "image_type": type(train[0]["images"][0]).__name__}))
"""


def _exports(sample_build) -> Path:
    ex = Path(sample_build) / "exports"
    index = json.loads((ex / "export.json").read_text())
    assert {"trl_grpo", "swift_grpo", "verl"} <= set(index["formats"]), index["formats"].keys()
    return ex


def test_verl_reads_the_verl_export(sample_build, tiny_model, tmp_path):
    ex = _exports(sample_build)
    want = pq.read_table(ex / "verl" / "train.parquet").num_rows
    assert want > 0
    got = _overlay_run("verl", _VERL, [str(ex / "verl" / "train.parquet"), str(tiny_model)], cwd=tmp_path)
    rows = got["rows"]
    print(f"\nverl RLHFDataset read {len(rows)} rows")
    assert len(rows) == want  # none filtered or dropped
    assert all(r["images"] == 1 for r in rows)  # the sample: one image per prompt, decoded
    assert [r["index"] for r in rows] == list(range(want))
    assert all(r["right"] == 1.0 and r["wrong"] == 0.0 for r in rows)
    assert "dummy_tensor" in got["batch"] and "<image>" in got["template"]


def test_swift_grpo_reads_the_swift_grpo_export(sample_build, tmp_path):
    ex = _exports(sample_build)
    lines = (ex / "swift_grpo" / "train.jsonl").read_text().splitlines()
    got = _overlay_run("swift", _SWIFT, [str(ex / "swift_grpo" / "train.jsonl")], cwd=tmp_path,
                       ROOT_IMAGE_DIR=str(ex / "swift_grpo"), MODELSCOPE_CACHE=str(tmp_path / "ms"))
    rows = got["rows"]
    print(f"\nms-swift load_dataset read {len(rows)} rows")
    assert len(rows) == len(lines) > 0
    for r in rows:
        assert r["images"] == 1 and r["last_role"] == "user"
        assert {"solution", "answers", "answer_type", "scoring", "pass_rate"} <= set(r["columns"])
        assert r["reward"] == [1.0, 0.0]


def test_one_trl_grpo_step_with_the_shipped_reward(sample_build, tiny_model, tmp_path):
    ex = _exports(sample_build)
    env = {"PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _TRL, str(ex / "trl_grpo" / "train.parquet"), str(tiny_model)],
                          cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = json.loads(line[len("RESULT "):])
    print(f"\nTRL GRPOTrainer: {got['rows']} rows, step {got['step']}, rewards {got['seen']['rewards']}")
    assert got["step"] == 1 and "Image" in got["image_type"]  # decoded to PIL by the export's metadata
    seen = got["seen"]
    assert seen["n"] == 2 and {"answers", "choices", "scoring", "prompt_id", "pass_rate"} <= set(seen["kw"])
    # the columns reached the reward intact: the same verdicts here, from the export's own rows
    rows = {r["solution"]: r for r in pq.read_table(ex / "trl_grpo" / "train.parquet").to_pylist()}
    assert all(s in rows for s in seen["solution"])
    assert seen["rewards"] == [float(verdict(c.strip(), a, t, ch, sc)) for c, a, t, ch, sc in zip(
        seen["completions"], seen["answers"], seen["answer_type"], seen["choices"], seen["scoring"])]
