"""The pipeline on an object store: inputs, work folder, markers, dataset and
quarantine all on S3, served by moto's real S3 server on loopback and reached
through the pipeline's own client path (``pipeline.files.storage`` -> pyarrow's S3
filesystem, configured by ``AWS_ENDPOINT_URL`` like MinIO would be).

S3 has no rename, so completeness is published by markers written after the
data.  The tests check that a build on S3 equals the same build on local
disk byte for byte, and that the crash points of an object store (data
written, marker not; shards rewritten, manifest not yet) resume to the same
dataset with nothing lost or duplicated.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from helpers import finished_at, make_config, shard_hashes, stage_rows
from pipeline.files import storage
from pipeline.config.settings import ConfigError

BUCKET = "mmpr-test"
N_GT, N_OPEN = 24, 8


@pytest.fixture(scope="module")
def s3(s3_server):
    s3_server.create_bucket(Bucket=BUCKET)
    return s3_server


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def s3_sources(s3, sample_data):
    """The first sample prompts as jsonl on S3, with their images beside them
    (relative paths), plus one row whose image is not in the bucket."""
    out = {}
    for name, n in (("gt", N_GT), ("open", N_OPEN)):
        rows = [json.loads(line) for line in (sample_data / f"{name}.jsonl").read_text().splitlines()[:n]]
        if name == "gt":
            rows.append({**rows[0], "id": "missing-image", "image": "images/not-uploaded.png"})
        for row in rows[:n]:
            s3.put_object(Bucket=BUCKET, Key=f"inputs/{row['image']}",
                          Body=(sample_data / row["image"]).read_bytes())
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        s3.put_object(Bucket=BUCKET, Key=f"inputs/{name}.jsonl", Body=body)
        out[name] = f"s3://{BUCKET}/inputs/{name}.jsonl"
    return out


def _config(s3_sources, work: str, out: str):
    return make_config(
        run={"work_dir": work, "output_dir": out, "partition_rows": 8},
        executor={"kind": "local"},
        sources=[{"name": "sample_gt", "format": "jsonl", "path": s3_sources["gt"]},
                 {"name": "sample_open", "format": "jsonl", "path": s3_sources["open"]}],
        generate={"n": 4, "max_tokens": 48},
        dropout_ntp={"max_tokens": 48},
        write={"shard_rows": 40}, export={"formats": ["llamafactory"]},
    )


def _markers(stage: str) -> dict[str, float]:
    """Marker key -> when its partition finished, for one stage of the S3 build."""
    return {f"work/{stage}/markers/{name}": t for name, t in finished_at(f"s3://{BUCKET}/work/{stage}").items()}


@pytest.fixture(scope="module")
def s3_build(s3, s3_sources, engine, tmp_path_factory):
    """The same small build twice: everything on S3, and everything on local disk."""
    from pipeline.run.orchestrator import run_pipeline

    local = tmp_path_factory.mktemp("local_twin")
    remote_cfg = _config(s3_sources, f"s3://{BUCKET}/work", f"s3://{BUCKET}/dataset")
    report = run_pipeline(remote_cfg)
    local_cfg = _config(s3_sources, str(local / "work"), str(local / "out"))
    run_pipeline(local_cfg)
    return remote_cfg, local_cfg, report


@pytest.mark.build  # s3_build: two whole builds
def test_build_on_s3_equals_build_on_local_disk(s3_build, s3):
    remote_cfg, local_cfg, report = s3_build
    remote, local = shard_hashes(remote_cfg.run.output_dir), shard_hashes(local_cfg.run.output_dir)
    assert remote and remote == local  # same shard names, same bytes
    keys = _keys(s3, "")
    assert not [k for k in keys if ".tmp-" in k or ".mmpr-probe" in k], "temp or probe objects left behind"
    for expected in ("dataset/manifest.json", "dataset/README.md", "work/report.json",
                     "dataset/exports/llamafactory/dataset_info.json"):
        assert expected in keys
    # every partition of every stage has its marker on S3
    assert _markers("generate")
    assert report["stages"]["generate"]["rows_out"] > 0


@pytest.mark.build  # s3_build: two whole builds
def test_s3_dataset_reads_back_with_datasets(s3_build, tmp_path):
    remote_cfg = s3_build[0]
    out = remote_cfg.run.output_dir
    manifest = storage.read_json(storage.join(out, "manifest.json"))
    files = []
    for shard in manifest["shards"]:
        data = storage.read_bytes(storage.join(out, shard["path"]))
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        if shard["config"] == "default":
            files.append(tmp_path / shard["path"].replace("/", "_"))
            files[-1].write_bytes(data)
    ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    assert len(ds) == manifest["splits"]["default"]["train"] > 0
    row = ds[0]
    assert row["chosen"] != row["rejected"]
    assert row["images"] and row["images"][0].size[0] > 0  # images travel in the data, decoded by datasets


@pytest.mark.build  # s3_build: two whole builds
def test_missing_s3_image_is_quarantined_with_its_reason(s3_build):
    remote_cfg = s3_build[0]
    rows = stage_rows(storage.join(remote_cfg.run.work_dir, "ingest"), "quarantine")
    bad = [r for r in rows if "missing-image" in json.dumps(r, default=str)]
    assert len(bad) == 1 and bad[0]["reason"] == "missing_image_file"


@pytest.mark.build  # s3_build: two whole builds
def test_resume_on_s3_after_crash_points(s3_build, s3):
    """Crash points of an object store, made by hand, then a rerun:

    * a generate partition whose data was written but whose marker was not
      (the PUT of the marker never happened);
    * the write step stopped after rewriting shards: no manifest, one shard
      gone.
    The rerun redoes exactly that partition, republishes the dataset, and the
    result is byte-identical, with no duplicate rows.
    """
    from pipeline.run.orchestrator import run_pipeline

    remote_cfg = s3_build[0]
    before = shard_hashes(remote_cfg.run.output_dir)
    markers = _markers("generate")
    victim = sorted(markers)[len(markers) // 2]
    s3.delete_object(Bucket=BUCKET, Key=victim)
    s3.delete_object(Bucket=BUCKET, Key="dataset/manifest.json")
    first_shard = sorted(before)[0]
    s3.delete_object(Bucket=BUCKET, Key=f"dataset/data/{first_shard}")

    run_pipeline(remote_cfg)

    assert shard_hashes(remote_cfg.run.output_dir) == before
    after = _markers("generate")
    assert after.keys() == markers.keys()
    redone = sorted(k for k in after if after[k] != markers[k])
    assert redone == [victim]  # only the partition without a marker ran again
    manifest = storage.read_json(storage.join(remote_cfg.run.output_dir, "manifest.json"))
    ids = []
    for shard in manifest["shards"]:
        table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(remote_cfg.run.output_dir, shard["path"]))),
                              columns=["id"])
        ids.extend(table["id"].to_pylist())
    assert len(ids) == len(set(ids)) == manifest["rows"]


def test_unwritable_bucket_fails_fast_with_the_key_to_fix(s3, s3_sources, tmp_path):
    from pipeline.run.orchestrator import run_pipeline

    cfg = _config(s3_sources, str(tmp_path / "work"), "s3://no-such-bucket/dataset")
    with pytest.raises(ConfigError, match=r"run.output_dir: cannot write to s3://no-such-bucket/dataset"):
        run_pipeline(cfg)
    cfg = _config({**s3_sources, "gt": f"s3://{BUCKET}/inputs/nope.jsonl"}, str(tmp_path / "w"), str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"sources.0.path: s3://mmpr-test/inputs/nope.jsonl does not exist"):
        run_pipeline(cfg)


def test_model_folder_on_s3_is_copied_once_per_node(s3, tiny_model, tmp_path):
    """Workers load a model given as an s3:// URI from a complete local copy,
    made once and remade only when the stored folder changes."""
    uri = f"s3://{BUCKET}/models/tiny-idefics3"
    storage.upload_dir(str(tiny_model), uri)
    cache = str(tmp_path / "cache")
    local = Path(storage.localize_dir(uri, cache))
    want = sorted(str(p.relative_to(tiny_model)) for p in tiny_model.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == want
    assert (local / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()
    assert not [p for p in Path(cache).rglob("*.tmp-*")]

    (local / "marker").write_text("kept")  # a second call must reuse this very copy
    assert storage.localize_dir(uri, cache) == str(local) and (local / "marker").exists()

    s3.put_object(Bucket=BUCKET, Key="models/tiny-idefics3/config.json", Body=b'{"changed": true}')
    fresh = Path(storage.localize_dir(uri, cache))
    assert fresh != local and (fresh / "config.json").read_bytes() == b'{"changed": true}'
    assert storage.localize_dir(str(tiny_model)) == str(tiny_model)  # local paths are used in place
    with pytest.raises(FileNotFoundError, match="not a folder or is empty"):
        storage.localize_dir(f"s3://{BUCKET}/models/none", cache)


def test_bad_image_references_on_s3_are_quarantined_per_row(s3, sample_data, tmp_path, monkeypatch):
    """The bad-input corpus's reference rows, read from a prompt file on S3: references
    outside the source's prefix and its allowed_image_roots are that row's quarantine
    reason, never a partition failure, and the other bucket is never asked for its object
    (whose bytes would be readable with the same credentials)."""
    from pipeline.run.orchestrator import run_source
    from stages import make_stage

    s3.create_bucket(Bucket="other-bucket")
    s3.put_object(Bucket="other-bucket", Key="secret.png", Body=(sample_data / "images/int-0000.png").read_bytes())
    s3.put_object(Bucket="other-bucket", Key="public/ok.png", Body=(sample_data / "images/int-0001.png").read_bytes())
    s3.put_object(Bucket=BUCKET, Key="corpus/images/ok.png", Body=(sample_data / "images/int-0002.png").read_bytes())
    rows = {
        "relative": "images/ok.png",
        "absolute-in-prefix": f"s3://{BUCKET}/corpus/images/ok.png",
        "allowlisted-bucket": "s3://other-bucket/public/ok.png",
        "metadata-url": "http://169.254.169.254/latest/meta-data",
        "other-bucket": "s3://other-bucket/secret.png",
        "file-uri": "file:///etc/hostname",
        "same-bucket-outside-prefix": f"s3://{BUCKET}/inputs/gt.jsonl",
        "dot-dot": f"s3://{BUCKET}/corpus/../inputs/images/int-0000.png",
        "relative-escape": "../inputs/images/int-0000.png",
    }
    body = "".join(json.dumps({"id": k, "image": v, "question": "How many circles?", "answer": "3"}) + "\n"
                   for k, v in rows.items())
    s3.put_object(Bucket=BUCKET, Key="corpus/prompts.jsonl", Body=body.encode())
    touched = []
    resolve = storage.resolve
    monkeypatch.setattr(storage, "resolve", lambda uri: (touched.append(uri), resolve(uri))[1])
    cfg = make_config(run={"partition_rows": 4}, sources=[
        {"name": "corpus", "format": "jsonl", "path": f"s3://{BUCKET}/corpus/prompts.jsonl",
         "allowed_image_roots": ["s3://other-bucket/public"]}])
    stats, n, _ = run_source(make_stage("ingest", cfg), str(tmp_path / "ingest"))
    kept = stage_rows(tmp_path / "ingest")
    quarantine = {r["row_key"]: r["reason"] for r in stage_rows(tmp_path / "ingest", "quarantine")}
    assert {r["row_key"] for r in kept} == {"relative", "absolute-in-prefix", "allowlisted-bucket"}
    assert quarantine == {"metadata-url": "image_uri_not_allowed", "other-bucket": "image_uri_not_allowed",
                          "file-uri": "image_uri_not_allowed", "same-bucket-outside-prefix": "image_uri_not_allowed",
                          "dot-dot": "image_uri_not_allowed", "relative-escape": "image_path_escapes_root"}
    assert n == 3 and stats.retries == 0 and "stage_error" not in stats.quarantined
    assert not [u for u in touched if "secret" in u or "169.254" in u or "hostname" in u or "gt.jsonl" in u]
    allowed = next(r for r in kept if r["row_key"] == "allowlisted-bucket")
    from PIL import Image

    def pixels(data: bytes) -> bytes:
        return Image.open(io.BytesIO(data)).convert("RGB").tobytes()
    assert pixels(allowed["images"][0]["bytes"]) == pixels((sample_data / "images/int-0001.png").read_bytes())
